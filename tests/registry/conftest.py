"""Fixtures: a checkpoint directory in the llava-hf layout (config, tokenizer, image processor)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from mmjax.registry import ModelConfig
from mmjax.testing.tokenizer import make_tiny_tokenizer
from registry_toy import IMAGE_SIZE, ToyVLM, hf_config


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("toy_checkpoint")
    tokenizer = make_tiny_tokenizer(384)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(path)
    hf_config(tokenizer.convert_tokens_to_ids("<image>")).save_pretrained(path)
    return str(path)


@pytest.fixture
def model_config(checkpoint_dir) -> ModelConfig:
    return ModelConfig.from_pretrained(checkpoint_dir, model_cls=ToyVLM)


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512x512 RGB


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
