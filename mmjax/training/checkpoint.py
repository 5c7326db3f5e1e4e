"""Saving a trained model in the Hugging Face layout that ``mmjax.load`` and transformers both read."""

from __future__ import annotations

import os
import shutil

from mmjax.models.architectures import family_of
from mmjax.models.common.family import save_checkpoint
from mmjax.engine.loaded_model import LoadedModel

#: Files of the source checkpoint that a trained one rewrites (weights and their index, the config).
_REWRITTEN = ("config.json", "model.safetensors", "model.safetensors.index.json")


def save_pretrained(llm: LoadedModel, directory: str | os.PathLike) -> str:
    """Write ``llm`` (e.g. ``train(...).llm``) to ``directory``: weights as safetensors with HF names,
    ``config.json``, and the source checkpoint's tokenizer, chat template and processor files.

    Raises:
      NotImplementedError: a model that is not one of mmjax's families (``mmjax.models.ARCHITECTURES``).
      ValueError: the source checkpoint directory is unknown (a model built in code).
    """
    model = llm.model
    family = family_of(model)
    source = llm.model_config.model
    if source is None:
        raise ValueError("the model has no checkpoint directory to take its tokenizer and processor from")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    for name in sorted(os.listdir(source)):
        if name in _REWRITTEN or name.endswith(".safetensors"):
            continue
        if os.path.isfile(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(directory, name))
    return save_checkpoint(family, model, llm.hf_config, directory)
