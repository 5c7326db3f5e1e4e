"""Device-side KV pages and the scatter that writes new tokens into them.

Layout, per decoder layer: ``k`` and ``v`` are separate ``[K, A, G, H]`` arrays
(KV heads, pages in the cache, page size, head dim). Why this one:

- one page of one KV head is a contiguous ``[G, H]`` tile, which is exactly
  the block both kernels read (a TPU BlockSpec block / a Triton gather);
- the leading ``K`` axis is the tensor-parallel axis: sharding heads over a
  mesh splits the cache without touching the page axis;
- it is the layout of JAX's own Pallas paged attention (GPU and TPU), so the
  benchmark can run both kernels on the same pages.

A *slot* is ``page * G + offset``; the slot mapping of a step says where each
query token's K/V goes. Slot ``-1`` marks a padding token whose write is dropped.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mmjax.kernels_cpu.zeroed_pages import zeroed_arrays, zeroed_unavailable
from mmjax.types import Array, Float, Int, shape_checked

PADDING_SLOT = -1


@functools.partial(jax.tree_util.register_dataclass, data_fields=["k", "v"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class KVPages:
    """One layer's paged K/V cache."""

    k: Float[Array, "K A G H"]
    v: Float[Array, "K A G H"]

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[0]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def head_dim(self) -> int:
        return self.k.shape[3]


def init_kv_pages(
    num_layers: int, num_kv_heads: int, num_pages: int, page_size: int, head_dim: int,
    dtype: jnp.dtype = jnp.bfloat16, sharding: jax.sharding.Sharding | None = None,
) -> tuple[KVPages, ...]:
    """Zeroed pages for every layer: a tuple of `KVPages` (a PyTree to donate to a step).

    ``sharding``: create each array already placed so (each device allocates only its
    shard; a pod's cache would not fit on one device first). On one CPU device the zeros are
    the operating system's (``mmjax.kernels_cpu.zeroed_pages``): a page's memory is touched, and
    resident, once a step reaches it, and a new cache costs no time to write.
    """
    shape = (num_kv_heads, num_pages, page_size, head_dim)
    if _on_one_cpu_device(sharding) and zeroed_unavailable() is None:
        arrays = zeroed_arrays(shape, dtype, 2 * num_layers, sharding)
        return tuple(KVPages(arrays[2 * i], arrays[2 * i + 1]) for i in range(num_layers))
    return tuple(KVPages(jnp.zeros(shape, dtype, device=sharding), jnp.zeros(shape, dtype, device=sharding))
                 for _ in range(num_layers))


def _on_one_cpu_device(sharding: jax.sharding.Sharding | None) -> bool:
    """Whether arrays placed by ``sharding`` (None: the default device) live on one CPU device."""
    if sharding is None:
        return jax.default_backend() == "cpu"
    devices = sharding.device_set
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def kv_pages_bytes(num_kv_heads: int, page_size: int, head_dim: int, dtype: jnp.dtype) -> int:
    """Bytes one page costs in one layer (K and V): what memory profiling divides by."""
    return 2 * num_kv_heads * page_size * head_dim * jnp.dtype(dtype).itemsize


@jax.jit
@shape_checked
def write_kv_to_pages(
    pages: KVPages,
    k: Float[Array, "T K H"],
    v: Float[Array, "T K H"],
    slot_mapping: Int[Array, "T"],
) -> KVPages:
    """Returns `pages` with token t's K/V stored at slot ``slot_mapping[t]``.

    Pure: the caller's jitted step donates `pages`, so XLA updates them in place.
    Tokens whose slot is negative (padding) are dropped, so the null page stays untouched.
    """
    _, num_pages, page_size, _ = pages.k.shape
    page = jnp.where(slot_mapping < 0, num_pages, slot_mapping // page_size)  # out of range -> dropped
    offset = slot_mapping % page_size

    def scatter(dst: Array, new: Array) -> Array:
        new = jnp.swapaxes(new, 0, 1).astype(dst.dtype)  # [K, T, H]
        return dst.at[:, page, offset].set(new, mode="drop")

    return KVPages(scatter(pages.k, k), scatter(pages.v, v))
