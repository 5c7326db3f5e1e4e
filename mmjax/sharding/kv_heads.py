"""The one rule for where a decoder's KV heads live on a mesh's ``"model"`` axis.

Memory planning (heads per device), the partition rules (k/v projections split
or replicated), the KV pages' sharding and the sharded attention all ask
``kv_head_layout``; none decides it again.

- ``K % model == 0`` (split): each device holds ``K / model`` KV heads, the
  ones its ``N / model`` query heads read (GQA groups stay whole);
- ``model % K == 0`` with ``K < model`` (replicated): every device holds all
  ``K`` heads, computed by replicated k/v projections, and its query heads
  read the one KV head ``axis_index * K // model``;
- anything else is refused.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import PartitionSpec

from mmjax.sharding.axes import DATA, MODEL


@dataclasses.dataclass(frozen=True)
class KVHeadLayout:
    """How ``num_kv_heads`` KV heads lie on a model axis of ``model_axis`` devices."""

    num_kv_heads: int
    model_axis: int

    @property
    def split(self) -> bool:
        """Each device holds its own ``K / model`` heads (else every device holds all ``K``)."""
        return self.num_kv_heads % self.model_axis == 0

    @property
    def heads_per_device(self) -> int:
        """KV heads in one device's pages (what one page costs there)."""
        return self.num_kv_heads // self.model_axis if self.split else self.num_kv_heads

    @property
    def head_axis(self) -> str | None:
        """The mesh axis of the KV-head dimension: ``"model"`` when split, None when replicated."""
        return MODEL if self.split else None

    @property
    def kv_pages_spec(self) -> PartitionSpec:
        """Spec of a layer's pages ``[K, A, G, H]``: heads by this rule, pages over ``"data"``."""
        return PartitionSpec(self.head_axis, DATA)


def kv_head_layout(num_kv_heads: int, model_axis: int) -> KVHeadLayout:
    """The layout of ``num_kv_heads`` KV heads on ``model_axis`` devices (see the module docstring).

    Raises:
      ValueError: neither divides the other; the message gives both and the rule.
    """
    k = num_kv_heads
    if k >= model_axis and k % model_axis:
        raise ValueError(f"the mesh's 'model' axis ({model_axis} devices) does not divide the KV heads "
                         f"(num_kv_heads): {k} % {model_axis} = {k % model_axis} (fewer KV heads than the "
                         f"model axis would be replicated; more must be a multiple of it)")
    if k < model_axis and model_axis % k:
        raise ValueError(f"the KV heads (num_kv_heads = {k}) do not divide the mesh's 'model' axis "
                         f"({model_axis} devices): {model_axis} % {k} = {model_axis % k}; with fewer KV heads "
                         f"than devices each KV head is replicated on model/num_kv_heads devices")
    return KVHeadLayout(num_kv_heads, model_axis)
