"""Sizing the KV cache: device memory minus weights minus the worst-case activations.

Every figure is per device. On a ``("data", "model")`` mesh each device holds
its shard of the weights (``per_device_bytes``) and, for its replica, the pages
of its KV heads; the plan gives the pages of one replica, and every replica
gets that many.

The worst case is the registry's dummy data: the largest step (the whole token
budget, with image placeholders) and the vision encoder on the most images a
prompt may carry. XLA's memory analysis of those compiled programs gives their
temporary memory without running them, on any backend.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.engine.batch import empty_step_batch
from mmjax.engine.step import encode_multimodal, paged_step
from mmjax.kv_cache import kv_pages_bytes
from mmjax.registry import INPUT_REGISTRY
from mmjax.sharding.mesh import DATA, MODEL
from mmjax.sharding.multihost import agreed_min

if TYPE_CHECKING:
    from mmjax.engine.engine import LLMEngine

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
    activation_bytes: int
    kv_cache_bytes: int
    page_bytes: int
    num_pages: int
    page_size: int
    source: str
    num_replicas: int = 1

    @property
    def max_cached_tokens(self) -> int:
        """Tokens the cache holds at once (page 0 is reserved)."""
        return (self.num_pages - 1) * self.page_size

    def describe(self) -> str:
        gib = lambda n: f"{n / 2**30:.3f} GiB"  # noqa: E731
        device = gib(self.device_bytes) if self.device_bytes else "unknown (host)"
        replicas = f" per replica x {self.num_replicas} data replicas" if self.num_replicas > 1 else ""
        return (f"KV cache: {self.num_pages} pages x {self.page_size} tokens = {self.max_cached_tokens} tokens"
                f"{replicas}, {gib(self.kv_cache_bytes)} per device ({self.source}); device {device}, "
                f"weights {gib(self.weights_bytes)} per device, worst-case activations {gib(self.activation_bytes)}")


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
    activation_bytes: int, min_pages: int, max_useful_pages: int, num_pages: int | None = None,
    kv_cache_bytes: int | None = None, memory_utilization: float = 0.9, num_replicas: int = 1,
) -> MemoryPlan:
    """Decide the number of KV pages of one replica.

    ``num_kv_heads`` is the KV heads one device holds, ``weights_bytes`` its share
    of the weights and ``kv_cache_bytes`` its budget; ``num_pages`` is per replica.

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
        free = int(device * memory_utilization) - weights_bytes - activation_bytes
        num_pages, source = max(free, 0) // page_bytes, f"{memory_utilization:.0%} of device memory"
    else:
        num_pages, source = DEFAULT_HOST_KV_BYTES // page_bytes, "default host budget"
    if not source.endswith("by the user") and num_pages > max_useful_pages:
        num_pages, source = max_useful_pages, source + ", capped at max_num_seqs x max_model_len"
    plan = MemoryPlan(device, weights_bytes, activation_bytes, num_pages * page_bytes, page_bytes,
                      int(num_pages), page_size, source, num_replicas)
    if num_pages < min_pages:
        raise ValueError(f"the KV cache would hold {num_pages} pages but one longest sequence needs "
                         f"{min_pages}: {plan.describe()}; lower max_model_len or give more memory")
    return plan


def plan_engine_memory(engine: LLMEngine) -> MemoryPlan:
    """``engine``'s pages per replica, from one device's memory (every device holds the same share)."""
    text, config, mesh = engine.text_config, engine.config, engine.mesh
    kv_heads_per_device = text.num_kv_heads
    if mesh is not None and text.num_kv_heads % mesh.shape[MODEL] == 0:
        kv_heads_per_device //= mesh.shape[MODEL]
    plan = plan_kv_cache(
        num_layers=text.num_layers, num_kv_heads=kv_heads_per_device, head_dim=text.head_dim,
        dtype=engine.llm.dtype, page_size=config.page_size, weights_bytes=per_device_bytes(engine.llm.state),
        activation_bytes=worst_case_activation_bytes(engine), min_pages=engine.pages_per_seq + 1,
        max_useful_pages=config.max_num_seqs * engine.pages_per_seq + 1,
        num_pages=config.num_pages, kv_cache_bytes=config.kv_cache_bytes,
        memory_utilization=config.memory_utilization, num_replicas=engine.num_replicas,
    )
    num_pages = agreed_min(plan.num_pages)  # every host must size its cache alike
    if num_pages == plan.num_pages:
        return plan
    return dataclasses.replace(plan, num_pages=num_pages, kv_cache_bytes=num_pages * plan.page_bytes,
                               source=plan.source + ", the least of all hosts")


def worst_case_activation_bytes(engine: LLMEngine) -> int:
    """Temporary memory of the largest step and of encoding the dummy data's images (compiled, not run)."""
    llm, config = engine.llm, engine.config
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(llm.model_config, config.max_num_batched_tokens)
    total = 0
    if dummy.multi_modal_data:
        mm = llm.mm_registry.map_input(llm.model_config, dummy.multi_modal_data)
        replica = None if engine.replicas is None else engine.replicas.first_owned()
        compiled = encode_multimodal.lower(*engine.encoder_inputs(mm, replica)).compile()
        total += compiled.memory_analysis().temp_size_in_bytes
    pages = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=engine.kv_sharding),
                         jax.eval_shape(lambda: engine.init_pages(2)))
    compiled = paged_step.lower(llm.graphdef, llm.state, pages, *abstract_batch(engine, config.max_num_batched_tokens),
                                impl=config.impl, kv_sharding=engine.kv_sharding).compile()
    return total + compiled.memory_analysis().temp_size_in_bytes


def abstract_batch(engine: LLMEngine, num_tokens: int, decode: bool = False) -> tuple:
    """``ShapeDtypeStruct``s of a step of ``num_tokens`` tokens per replica, with image embeddings,
    placed as ``engine`` places a real step's inputs (for compile-only analysis)."""
    cfg = engine.config
    batch = empty_step_batch(engine.num_replicas, num_tokens, decode=decode, max_num_seqs=cfg.max_num_seqs,
                             pages_per_seq=engine.pages_per_seq, page_size=cfg.page_size)
    sharding = None
    if engine.mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(engine.mesh, PartitionSpec(DATA))

    def spec(shape, dtype) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    rows = (engine.num_replicas, num_tokens)
    return (spec(rows, jnp.int32), jax.tree.map(lambda x: spec(x.shape, x.dtype), batch.metadata),
            spec(batch.logits_indices.shape, jnp.int32),
            spec((*rows, engine.text_config.hidden_size), engine.llm.dtype), spec(rows, jnp.bool_))
