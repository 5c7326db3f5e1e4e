"""Files that ship inside mmjax: the demo photo and the demo model."""

from __future__ import annotations

import os
from importlib import resources

#: The demo model's directory name under ``mmjax/assets``.
DEMO_MODEL_DIR = "shapes-llava"


def demo_checkpoint() -> str:
    """The directory of the demo model that ships with mmjax: a tiny LLaVA-1.5 (llava-hf layout)
    trained by ``scripts/train_demo_model.py`` on the shapes task (``mmjax.training.shapes_task``).

    ``mmjax.load(mmjax.demo_checkpoint())`` loads it like any checkpoint; transformers reads it too.

    Raises:
      FileNotFoundError: the package was installed without its data files.
    """
    path = os.fspath(resources.files(__name__).joinpath(DEMO_MODEL_DIR))
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"the demo model is missing from {path}: reinstall mmjax with its package data, "
                                f"or write it with scripts/train_demo_model.py")
    return path
