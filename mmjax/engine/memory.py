"""Sizing the KV cache: device memory minus weights minus the worst-case activations.

Every figure is per device. On a ``("data", "model")`` mesh each device holds
its shard of the weights (``per_device_bytes``) and, for its replica, the pages
of its KV heads; the plan gives the pages of one replica, and every replica
gets that many.

The worst case is the registry's dummy data: the largest step (the whole token
budget, with image placeholders) and the vision encoder on the most images a
prompt may carry. XLA's memory analysis of those compiled programs gives their
temporary memory without running them, on any backend. The embedding arena
(placeholder embeddings of ``max_num_seqs`` prompts per replica) is counted too.

The worst case is estimated only where the budget depends on it: a device that
reports its memory (GPU, TPU) and no size set by the user. On CPU the budget is
a fixed host share, so the two programs are not compiled there (in a first
process that was seconds of compilation for a figure nothing used).

Planning takes the model, the config, the step shapes and the placement as
arguments: it runs before the device runner exists, which is then built with
the plan's page count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from mmjax.engine.config import EngineConfig
from mmjax.engine.programs import lower_encoder, lower_step
from mmjax.engine.shapes import StepShapes
from mmjax.kv_cache import init_kv_pages, kv_pages_bytes
from mmjax.registry import INPUT_REGISTRY
from mmjax.sharding.axes import MODEL
from mmjax.sharding.kv_heads import kv_head_layout
from mmjax.sharding.multihost import agreed_min
from mmjax.sharding.placement import Placement
from mmjax.engine.loaded_model import LoadedModel

#: The KV budget on a host without memory statistics (CPU), unless the user sets one.
DEFAULT_HOST_KV_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How the KV cache was sized; every figure in bytes per device. ``source`` says where the budget came from.

    ``num_pages`` is per data replica (each replica's allocator hands out that
    many); the cache holds ``num_replicas * num_pages`` pages in all.
    """

    device_bytes: int | None
    weights_bytes: int
    activation_bytes: int | None  # None: not estimated, as the budget does not depend on it
    kv_cache_bytes: int
    page_bytes: int
    num_pages: int
    page_size: int
    source: str
    num_replicas: int = 1
    embedding_bytes: int = 0

    @property
    def max_cached_tokens(self) -> int:
        """Tokens the cache holds at once (page 0 is reserved)."""
        return (self.num_pages - 1) * self.page_size

    def describe(self) -> str:
        gib = lambda n: f"{n / 2**30:.3f} GiB"  # noqa: E731
        device = gib(self.device_bytes) if self.device_bytes else "unknown (host)"
        replicas = f" per replica x {self.num_replicas} data replicas" if self.num_replicas > 1 else ""
        activations = ("not estimated (the budget does not depend on them)" if self.activation_bytes is None
                       else gib(self.activation_bytes))
        return (f"KV cache: {self.num_pages} pages x {self.page_size} tokens = {self.max_cached_tokens} tokens"
                f"{replicas}, {gib(self.kv_cache_bytes)} per device ({self.source}); device {device}, "
                f"weights {gib(self.weights_bytes)} per device, worst-case activations {activations}, "
                f"embedding arena {gib(self.embedding_bytes)}")


def tree_bytes(tree) -> int:
    """Bytes of every leaf, whole (all shards together)."""
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def per_device_bytes(tree) -> int:
    """Bytes one device holds of ``tree``: each leaf's largest shard (the whole leaf when unsharded)."""
    total = 0
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
        total += int(np.prod(shape)) * x.dtype.itemsize
    return total


def device_memory_bytes() -> int | None:
    """This process's first device's memory limit, where the backend reports one (GPU, TPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def plan_kv_cache(
    *, num_layers: int, num_kv_heads: int, head_dim: int, dtype, page_size: int, weights_bytes: int,
    activation_bytes: int | Callable[[], int], min_pages: int, max_useful_pages: int, num_pages: int | None = None,
    kv_cache_bytes: int | None = None, memory_utilization: float = 0.9, num_replicas: int = 1,
    embedding_bytes: int = 0,
) -> MemoryPlan:
    """Decide the number of KV pages of one replica.

    ``num_kv_heads`` is the KV heads one device holds, ``weights_bytes`` its share
    of the weights, ``embedding_bytes`` its embedding arena and ``kv_cache_bytes``
    its budget; ``num_pages`` is per replica. ``activation_bytes`` may be a function
    that estimates them: it is called only if the budget comes from device memory.

    A budget from memory is capped at ``max_useful_pages`` (every sequence slot
    at full length): more pages could never be used.

    Raises:
      ValueError: the budget leaves fewer than ``min_pages`` pages (not even one
        longest sequence fits); the message gives every figure.
    """
    page_bytes = num_layers * kv_pages_bytes(num_kv_heads, page_size, head_dim, dtype)
    device = device_memory_bytes()
    if num_pages is not None:
        source = "num_pages set by the user"
    elif kv_cache_bytes is not None:
        num_pages, source = kv_cache_bytes // page_bytes, "kv_cache_bytes set by the user"
    elif device is not None:
        activation_bytes = activation_bytes() if callable(activation_bytes) else activation_bytes
        free = int(device * memory_utilization) - weights_bytes - activation_bytes - embedding_bytes
        num_pages, source = max(free, 0) // page_bytes, f"{memory_utilization:.0%} of device memory"
    else:
        num_pages, source = DEFAULT_HOST_KV_BYTES // page_bytes, "default host budget"
    if callable(activation_bytes):  # not needed: the budget came from elsewhere
        activation_bytes = None
    if not source.endswith("by the user") and num_pages > max_useful_pages:
        num_pages, source = max_useful_pages, source + ", capped at max_num_seqs x max_model_len"
    plan = MemoryPlan(device, weights_bytes, activation_bytes, num_pages * page_bytes, page_bytes,
                      int(num_pages), page_size, source, num_replicas, embedding_bytes)
    if num_pages < min_pages:
        raise ValueError(f"the KV cache would hold {num_pages} pages but one longest sequence needs "
                         f"{min_pages}: {plan.describe()}; lower max_model_len or give more memory")
    return plan


def plan_engine_memory(llm: LoadedModel, config: EngineConfig, shapes: StepShapes, placement: Placement) -> MemoryPlan:
    """Pages per replica for ``llm`` (a loaded ``mmjax.LLM``) served with ``config``, from one device's
    memory (every device holds the same share)."""
    model = llm.model
    text = model.text_config
    model_axis = 1 if placement.mesh is None else placement.mesh.shape[MODEL]
    width = model.embedding_width if shapes.embedding_rows else 0
    plan = plan_kv_cache(
        num_layers=text.num_layers, num_kv_heads=kv_head_layout(text.num_kv_heads, model_axis).heads_per_device,
        head_dim=text.head_dim, dtype=llm.dtype, page_size=config.page_size,
        weights_bytes=per_device_bytes(llm.state),
        activation_bytes=lambda: worst_case_activation_bytes(llm, config, shapes, placement),
        embedding_bytes=shapes.embedding_rows * width * np.dtype(llm.dtype).itemsize,
        min_pages=shapes.pages_per_seq + 1, max_useful_pages=config.max_num_seqs * shapes.pages_per_seq + 1,
        num_pages=config.num_pages, kv_cache_bytes=config.kv_cache_bytes,
        memory_utilization=config.memory_utilization, num_replicas=shapes.num_replicas,
    )
    num_pages = agreed_min(plan.num_pages)  # every host must size its cache alike
    if num_pages == plan.num_pages:
        return plan
    return dataclasses.replace(plan, num_pages=num_pages, kv_cache_bytes=num_pages * plan.page_bytes,
                               source=plan.source + ", the least of all hosts")


def worst_case_activation_bytes(
    llm: LoadedModel, config: EngineConfig, shapes: StepShapes, placement: Placement
) -> int:
    """Temporary memory of the largest step and of encoding the dummy data's items (compiled, not run)."""
    model = llm.model
    text = model.text_config
    width = model.embedding_width if shapes.embedding_rows else 0
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(llm.model_config, config.max_num_batched_tokens)
    total = 0
    if dummy.multi_modal_data:
        mm = llm.mm_registry.map_input(llm.model_config, dummy.multi_modal_data)
        lowered = lower_encoder(llm.graphdef, placement, mm, embedding_rows=shapes.embedding_rows,
                                embedding_width=width, dtype=llm.dtype, batch_invariant=config.batch_invariant)
        total += lowered.compile().memory_analysis().temp_size_in_bytes
    pages = jax.eval_shape(lambda: init_kv_pages(text.num_layers, text.num_kv_heads, 2 * shapes.num_replicas,
                                                 shapes.page_size, text.head_dim, llm.dtype))
    lowered = lower_step(llm.graphdef, llm.state, pages, shapes, placement, num_tokens=config.max_num_batched_tokens,
                         decode=False, impl=config.impl, embedding_width=width, dtype=llm.dtype,
                         rope_axes=getattr(text, "rope_position_axes", 1), batch_invariant=config.batch_invariant)
    return total + lowered.compile().memory_analysis().temp_size_in_bytes
