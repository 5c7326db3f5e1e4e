"""The compiled programs of an engine, described without running them.

Warm-up compiles every step variant ``step_variants`` lists; memory planning
compiles the largest step and the encoder from abstract inputs
(``ShapeDtypeStruct``s placed as real inputs would be), so XLA's memory
analysis sizes the KV cache before a single page exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.engine.batch import empty_step_batch
from mmjax.engine.shapes import StepShapes
from mmjax.engine.step import encoder_program, step_program
from mmjax.sharding.placement import Placement


def step_variants(shapes: StepShapes, with_prompt_logprobs: bool = True) -> list[tuple[int, bool, bool]]:
    """``(num_tokens, decode, all_logits)`` of every step program a workload can run.

    Every token bucket as a prefill step (and, with prompt logprobs, one that
    returns every token's logits); every decode bucket as a decode step.
    """
    variants = []
    for tokens in shapes.token_buckets:
        variants.append((tokens, False, False))
        if with_prompt_logprobs:
            variants.append((tokens, False, True))
    return variants + [(tokens, True, False) for tokens in shapes.decode_buckets]


def abstract_step_args(
    shapes: StepShapes, placement: Placement, *, num_tokens: int, decode: bool, all_logits: bool = False,
    embedding_width: int = 0, dtype: Any = jnp.float32, rope_axes: int = 1,
) -> tuple[tuple, dict]:
    """``paged_step``'s arguments after ``kv_pages`` and its optional keyword inputs, as
    ``ShapeDtypeStruct``s placed as a real step's."""
    batch = empty_step_batch(shapes.num_replicas, num_tokens, decode=decode, max_num_seqs=shapes.max_num_seqs,
                             pages_per_seq=shapes.pages_per_seq, page_size=shapes.page_size, all_logits=all_logits,
                             with_embeddings=bool(embedding_width), rope_axes=rope_axes)
    spec = lambda x: placement.abstract(x.shape, x.dtype)  # noqa: E731
    args = (spec(batch.input_ids), jax.tree.map(spec, batch.metadata), spec(batch.logits_indices))
    if embedding_width:
        arena = placement.abstract((shapes.num_replicas, shapes.embedding_rows, embedding_width), dtype)
        args += (arena, spec(batch.embedding_slots))
    return args, {name: spec(value) for name, value in batch.step_extras().items()}


def abstract_kv_pages(pages: Any, placement: Placement) -> Any:
    """``ShapeDtypeStruct``s of ``pages`` (abstract or real), placed as the engine's."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement.kv_sharding), pages)


def lower_step(
    graphdef: nnx.GraphDef, state: nnx.State, kv_pages: Any, shapes: StepShapes, placement: Placement, *,
    num_tokens: int, decode: bool, impl: str, embedding_width: int, dtype: Any, all_logits: bool = False,
    rope_axes: int = 1, batch_invariant: bool = False,
) -> jax.stages.Lowered:
    """The runner's step program (``step_program``) lowered for a step of ``num_tokens`` tokens per
    replica (``kv_pages`` may be abstract)."""
    args, extras = abstract_step_args(shapes, placement, num_tokens=num_tokens, decode=decode, all_logits=all_logits,
                                      embedding_width=embedding_width, dtype=dtype, rope_axes=rope_axes)
    leaves, state_def = jax.tree.flatten(state)
    program = step_program(graphdef, state_def, impl=impl, kv_sharding=placement.kv_sharding,
                           batch_invariant=batch_invariant)
    return program.lower(leaves, abstract_kv_pages(kv_pages, placement), *args, greedy=not all_logits, **extras)


def encoder_output_rows(graphdef: nnx.GraphDef, state: nnx.State, mm_kwargs: Mapping[str, Any]) -> int:
    """Rows ``multimodal_embeddings`` returns for inputs of these shapes (traced, not run)."""
    out = jax.eval_shape(lambda s, m: nnx.merge(graphdef, s).multimodal_embeddings(**m), state, dict(mm_kwargs))
    return out.shape[0]


def lower_encoder(
    graphdef: nnx.GraphDef, placement: Placement, mm_kwargs: Mapping[str, np.ndarray], *, embedding_rows: int,
    embedding_width: int, dtype: Any, batch_invariant: bool = False,
) -> jax.stages.Lowered:
    """The runner's encoder program (``encoder_program``) lowered for ``mm_kwargs`` on the first replica
    this process holds."""
    replica = placement.owned_replicas()[0]
    sharding = placement.replica_sharding(replica)
    state = placement.replica_state(replica)
    arena = jax.ShapeDtypeStruct((1, embedding_rows, embedding_width), dtype, sharding=sharding)
    mm = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=sharding) for k, v in mm_kwargs.items()}
    rows = jax.ShapeDtypeStruct((encoder_output_rows(graphdef, state, mm),), jnp.int32, sharding=sharding)
    leaves, state_def = jax.tree.flatten(state)
    program = encoder_program(graphdef, state_def, sharding, batch_invariant=batch_invariant)
    return program.lower(leaves, arena, mm, rows)
