"""Array type aliases and the one vocabulary of dimension names used across mmjax.

Every shape annotation, einsum string and docstring in mmjax uses these
letters, each with exactly one meaning:

    R  data replicas (the mesh's "data" axis; 1 on one device)
    B  sequences: the rows of a batch, the sequence slots of a step
    T  query tokens of a step (packed)        S  key/value positions attended over
    L  prompt length (tokens)
    D  decoder (model) width                  E  vision-tower width
    F  MLP hidden width
    N  query heads     K  key/value heads     Q  query heads per KV head (N = K * Q)
    H  head dimension                         V  vocabulary size
    I  images or tiles fed to the vision tower
    P  vision patches per image or tile       C  image channels
    Y, X  image height, width (pixels)
    G  page size (tokens per KV page)         A  pages in the KV cache
    W  pages per sequence (block-table width)
    M  placeholder embeddings of a request's multimodal items
    U  rows of the device's embedding arena
    J  top logprobs kept per token

A dimension used in one place only gets a word (``"num_tiles"``) instead of a
letter; an einsum string, which takes single characters, writes such a
dimension in lower case and says what it is. Shapes are written jaxtyping
style, e.g. ``Float[Array, "B T D"]``; ``"*B"`` is any number of leading axes.

Runtime checking of these annotations: ``shape_checked`` (``mmjax.shape_checks``).
"""

from __future__ import annotations

from typing import Union

import jax
import numpy as np
from jaxtyping import Array, Bool, Float, Int, UInt  # noqa: F401  (re-exported)

from mmjax.shape_checks import shape_checked  # noqa: F401  (re-exported)

#: An array that may live on the host (numpy) or on a device (jax).
ArrayLike = Union[np.ndarray, jax.Array]
