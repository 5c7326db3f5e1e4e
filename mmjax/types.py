"""Array type aliases and the one vocabulary of dimension names used across mmjax.

Every shape annotation, einsum string and docstring in mmjax uses these letters:

    B  batch (sequences in a step)          T  query tokens (this step)
    S  key/value tokens (attended over)     L  prompt length (tokens)
    D  model (embedding) width              F  MLP hidden width
    N  query heads                          K  key/value heads
    H  head dimension                       V  vocabulary size
    I  images (or other multimodal items)   P  vision patches per image (incl. CLS)
    C  image channels                       Y, X  image height, width (pixels)
    G  page (block) size in tokens          A  pages in the cache

Shapes are written jaxtyping style, e.g. ``Float[Array, "B T D"]``.
"""

from __future__ import annotations

from typing import Union

import jax
import numpy as np
from jaxtyping import Array, Bool, Float, Int  # noqa: F401  (re-exported)

#: An array that may live on the host (numpy) or on a device (jax).
ArrayLike = Union[np.ndarray, jax.Array]
