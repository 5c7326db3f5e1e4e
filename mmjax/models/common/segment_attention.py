"""Segment attention of the Qwen vision towers: which rows attend which, and the choice of implementation.

transformers runs attention once per segment (a frame, or a window) of
``cu_seqlens``. Here every row attends every row of its own segment, given
segment ids per row, so shapes never depend on the grids; padding rows
(``valid`` false) see nothing, are seen by nothing and output zeros.

Three implementations, equal up to float32 rounding:

- ``dense_segment_attention`` (the plain-jnp reference): a ``[P, P]`` mask and ``[N, P, P]``
  float32 scores; fastest for small buckets, but 17 GB of scores for one 16384-patch image.
- ``blockwise_segment_attention``: flash-style, O(P x block) memory, any layout.
- ``banded_segment_attention``: O(P x run) compute and memory when each segment is a contiguous run of at
  most ``run`` rows (Qwen2.5-VL's windows in window order).

``segment_attention`` picks one by ``P`` and ``Segments.max_run`` (``attention_kind``; thresholds measured by
``benchmarks/vision_attention.py``; see the constants). All three are plain JAX: jit-able with
static shapes, differentiable, and lowered alike for CPU, GPU and TPU.

Shape letters: ``P`` packed patch rows (query and key rows alike), ``N`` heads, ``H`` head dimension.
In einsum strings ``q`` and ``k`` are the query and key rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmjax.models.common.segment_attention_banded import banded_segment_attention
from mmjax.models.common.segment_attention_blockwise import blockwise_segment_attention
from mmjax.types import Array, ArrayLike, Bool, Float, Int, shape_checked

# Measured with benchmarks/vision_attention.py on this project's shared 2-core CPU (16 heads of 80, float32, one
# image nearly filling the bucket, full attention; forward / jax.grad): at 256 rows dense and blockwise tie
# (10.8 / 24 ms against 7.8 / 30 ms), from 512 blockwise wins (33 / 129 against 28 / 96 ms; 1024: 308 / 824
# against 140 / 633; 4096: 5.2 s against 2.1 s) and dense cannot run past that ([N, P, P] float32 scores:
# 2 GB at 4096, 32 GB of temporaries at 16384, where blockwise needs 320 MB).
#: Buckets up to this many rows take the dense attention (the smallest bucket of the default ladder).
DENSE_MAX_ROWS = 256
#: Rows of a query (and key) block of the blockwise attention: 256 is fastest on the costliest case, one
#: image filling the bucket (16384 rows: 35 s against 40 s at 128 and 42 s at 512; 4096 rows: 2.9 s against 3.8 s
#: at 128); 128 is within about 10% on videos.
FLASH_BLOCK = 256
#: Query rows per step of the banded attention (bounds its live scores whatever ``P``): 256 and 512 tie (4096 rows:
#: 355 / 420 ms), 1024 and up are slower. Banded beats blockwise on windows: 4096 rows 154 / 368 ms against
#: 291 / 798, 16384 rows 1.0 s against 1.5 s.
BANDED_CHUNK_ROWS = 512


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Segments:
    """Who attends whom in one tower call: rows of the same segment, both valid.

    ``max_run``: when set, a static promise that every segment is one contiguous run
    of at most this many rows (windows in window order), which allows the banded attention.
    """

    ids: Int[ArrayLike, "P"]
    valid: Bool[ArrayLike, "P"]
    max_run: int | None = dataclasses.field(default=None, metadata={"static": True})


@shape_checked
def segment_mask(segments: Int[ArrayLike, "P"], valid: Bool[ArrayLike, "P"]) -> Bool[Array, "P P"]:
    """``mask[q, k]``: row ``q`` attends row ``k`` (same segment, both real)."""
    segments, valid = jnp.asarray(segments), jnp.asarray(valid)
    return (segments[:, None] == segments[None, :]) & valid[:, None] & valid[None, :]


@shape_checked
def dense_segment_attention(
    q: Float[Array, "P N H"], k: Float[Array, "P N H"], v: Float[Array, "P N H"], mask: Bool[Array, "P P"]
) -> Float[Array, "P N H"]:
    """The reference: bidirectional attention under ``mask``; a row that sees nothing gets zeros (not NaN)."""
    scores = jnp.einsum("qNH,kNH->Nqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.where(mask, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)), 0.0)
    # A padding row's weights are all zero: dividing by ``tiny`` keeps its output 0.
    probs = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return jnp.einsum("Nqk,kNH->qNH", probs.astype(v.dtype), v)


def attention_kind(rows: int, max_run: int | None) -> str:
    """``"dense"``, ``"banded"`` or ``"blockwise"``: what ``segment_attention`` runs for a bucket of ``rows``."""
    if rows <= DENSE_MAX_ROWS:
        return "dense"
    if max_run is not None and 3 * max_run < rows:  # a band of 3 runs per query: only worth it when shorter than P
        return "banded"
    return "blockwise"


@shape_checked
def segment_attention(
    q: Float[Array, "P N H"], k: Float[Array, "P N H"], v: Float[Array, "P N H"], segments: Segments
) -> Float[Array, "P N H"]:
    """Bidirectional attention within segments, by the implementation that suits ``P`` and the layout."""
    ids, valid, run = jnp.asarray(segments.ids), jnp.asarray(segments.valid), segments.max_run
    kind = attention_kind(q.shape[0], run)
    if kind == "dense":
        return dense_segment_attention(q, k, v, segment_mask(ids, valid))
    if kind == "banded":
        return banded_segment_attention(q, k, v, ids, valid, block=run, chunk=max(1, BANDED_CHUNK_ROWS // run))
    return blockwise_segment_attention(q, k, v, ids, valid, block=FLASH_BLOCK)
