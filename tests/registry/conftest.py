"""Fixtures: a checkpoint directory in the llava-hf layout (config, tokenizer, image processor)."""

from __future__ import annotations

import pytest
from PIL import Image

from mmjax.registry import ModelConfig
from toy_vlm import ToyVLM, make_toy_checkpoint


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> str:
    return make_toy_checkpoint(tmp_path_factory.mktemp("toy_checkpoint"))


@pytest.fixture
def model_config(checkpoint_dir) -> ModelConfig:
    return ModelConfig.from_pretrained(checkpoint_dir, model_cls=ToyVLM)


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512x512 RGB
