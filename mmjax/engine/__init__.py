"""The inference engine: the jitted paged step (and, as it grows, scheduling and generate)."""

from mmjax.engine.step import check_paged_support, paged_step

__all__ = ["check_paged_support", "paged_step"]
