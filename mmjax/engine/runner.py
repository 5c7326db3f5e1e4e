"""``ModelRunner``: everything of an engine that lives on the device.

It owns the model state, the KV pages, the embedding arena (each request's
placeholder embeddings, computed here and never fetched), the placement of a
step's inputs on the mesh and the jitted programs: encoder, step, sampler.
The engine (``mmjax.engine.engine``) keeps the host side — requests,
scheduling, page allocation, detokenization, stats — and calls the runner
through the public methods below. The model is reached only through
``mmjax.models.common.interface.EngineModel``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.engine.batch import StepBatch, empty_step_batch
from mmjax.engine.programs import encoder_output_rows, lower_step
from mmjax.engine.sampler import SamplerOutput, prompt_logprobs, sample
from mmjax.engine.sampling_batch import SamplingBatch
from mmjax.engine.shapes import StepShapes
from mmjax.engine.step import (
    encode_batch_invariant, encoder_program, pad_logit_rows, step_program, write_arena_rows)
from mmjax.kv_cache import KVPages, init_kv_pages
from mmjax.models.common.interface import EngineModel
from mmjax.sharding.multihost import fetch
from mmjax.sharding.placement import Placement


@functools.partial(jax.tree_util.register_dataclass, data_fields=["logits", "greedy_tokens"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class StepOutput:
    """A step's results, on the device.

    Attributes:
      logits: f32 ``[R * S, V]``, ``S = min(T, B)`` rows per replica (the rows that can be real;
        ``ModelRunner.sample`` pads them to ``[R * B, V]``), or ``[R * T, V]`` when the step returns
        every token's logits.
      greedy_tokens: i32 ``[R * B]``, each row's greedy token (``first_argmax`` of its logits, as the
        sampler's greedy rows without penalties); None when the step returns every token's logits.
    """

    logits: jax.Array
    greedy_tokens: jax.Array | None


class ModelRunner:
    """The device side of one engine.

    Args:
      graphdef, state: the model, split (``nnx.split``); an ``EngineModel``.
      shapes: the engine's step shapes.
      placement: where the arrays go (one device or the mesh).
      num_pages: KV pages of each replica (from the memory plan).
      dtype: the KV cache's and the arena's dtype (the parameters').
      impl: the attention implementation ("auto", "pallas", "cpu", "xla", "reference").
      batch_invariant: trace the step and encoder programs in batch-invariant numerics (``mmjax.batch_invariant``).
    """

    def __init__(self, graphdef: nnx.GraphDef, state: nnx.State, *, shapes: StepShapes, placement: Placement,
                 num_pages: int, dtype: Any, impl: str = "auto", batch_invariant: bool = False):
        self.graphdef, self.state = graphdef, state
        self.shapes, self.placement, self.impl = shapes, placement, impl
        self.batch_invariant = batch_invariant
        self.dtype = jnp.dtype(dtype)
        self.text_config, row_width = model_text_config(graphdef, state)
        self._state_leaves, self._state_def = jax.tree.flatten(state)
        self._step = step_program(graphdef, self._state_def, impl=impl, kv_sharding=placement.kv_sharding,
                                  batch_invariant=batch_invariant)
        owned = placement.owned_replicas()
        self._replica_leaves = {r: jax.tree.leaves(placement.replica_state(r)) for r in owned}
        self._encode = {r: encoder_program(graphdef, self._state_def, placement.replica_sharding(r),
                                           batch_invariant=batch_invariant) for r in owned}
        self._encode_batch = {r: encoder_program(graphdef, self._state_def, placement.replica_sharding(r),
                                                 batched=True, batch_invariant=batch_invariant) for r in owned}
        self.num_pages = num_pages
        self.kv_pages = self._init_pages()
        width = row_width if shapes.embedding_rows else 0
        self.embedding_width = width
        self.rope_axes = getattr(self.text_config, "rope_position_axes", 1)
        self._arenas = {r: self._new_arena(r) for r in placement.owned_replicas()} if width else {}
        self._encoder_rows: dict[tuple, int] = {}

    def _init_pages(self) -> tuple[KVPages, ...]:
        """``num_pages`` pages for each replica, replica ``r``'s at ``r * num_pages``.

        On one device they are committed to it, as the pages every step returns are once one of its inputs is
        (the pages, or the arena, which always is): uncommitted new pages made the first step of a fresh cache
        compile a program of its shape that later steps of that shape, given committed pages, compiled again
        (e.g. the same prompt after ``update_weights`` or ``reset_caches``)."""
        text = self.text_config
        sharding = self.placement.kv_sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return init_kv_pages(text.num_layers, text.num_kv_heads, self.shapes.num_replicas * self.num_pages,
                             self.shapes.page_size, text.head_dim, self.dtype, sharding=sharding)

    def set_weights(self, state: nnx.State) -> None:
        """Run with ``state`` from now on: the same tree as the current state, each leaf placed as the old
        one (``mmjax.engine.weights.placed_like``), so every compiled program takes it as it is. The KV
        pages and arenas stay (their contents are the caller's to forget)."""
        leaves, state_def = jax.tree.flatten(state)
        if state_def != self._state_def:
            raise ValueError("set_weights takes a state of the runner's structure")
        self.state, self._state_leaves = state, leaves
        self.placement.set_state(state)
        self._replica_leaves = {r: jax.tree.leaves(self.placement.replica_state(r)) for r in self._replica_leaves}

    # -- after a failure ---------------------------------------------------------------

    def lost_device_state(self) -> bool:
        """Whether a failed program left the KV pages or an arena deleted (donated, never returned)."""
        arrays = [*jax.tree.leaves(self.kv_pages), *self._arenas.values()]
        return any(x.is_deleted() for x in arrays)

    def reset(self) -> None:
        """Fresh, zeroed KV pages and arenas, as a new runner has (every cached token is gone)."""
        self.kv_pages = self._init_pages()
        self._arenas = {r: self._new_arena(r) for r in self._arenas}

    def _new_arena(self, replica: int) -> jax.Array:
        """Zeros, committed to the replica's devices (the default device on one): as committed as the arena the
        encoder returns, so the first encode after warm-up runs the program warm-up compiled (an uncommitted
        arena compiled a second one once the program store was on)."""
        device = self.placement.replica_sharding(replica) or jax.local_devices()[0]
        return jnp.zeros((1, self.shapes.embedding_rows, self.embedding_width), self.dtype, device=device)

    # -- multimodal items ------------------------------------------------------------

    def encode(self, mm_kwargs: Mapping[str, np.ndarray], replica: int, rows: np.ndarray) -> None:
        """Run the encoder on a request's items, on ``replica``'s devices, into arena ``rows``.

        ``rows[m]``: the arena row of placeholder embedding ``m``. A process that holds
        none of ``replica``'s devices does nothing (its rows of the step are not read there).
        """
        self.encode_many([(mm_kwargs, rows)], replica)

    def encode_many(self, items: Sequence[tuple[Mapping[str, np.ndarray], np.ndarray]], replica: int) -> None:
        """``encode`` for several requests whose items have the same shapes, in one encoder call.

        ``items``: ``(mm_kwargs, rows)`` of each request; at most the largest of
        ``shapes.encoder_batch_buckets``. More than one is padded to the next bucket with
        copies of the first request's inputs, whose rows are all dropped.
        """
        if not self.placement.owns(replica):
            return
        first = items[0][0]
        num_out = self.encoder_output_rows(first)
        padded = np.stack([self._padded_rows(mm, rows, num_out) for mm, rows in items])  # [n, M]
        sharding = self.placement.replica_sharding(replica)
        if len(items) == 1 and self.batch_invariant:  # the program mmjax.score encodes with, then the arena
            mm = self.placement.put_on_replica(dict(first), replica)
            embeds = encode_batch_invariant(self.graphdef, self.state, mm)
            self._arenas[replica] = write_arena_rows(self._arenas[replica], embeds, jax.device_put(padded[0], sharding))
            return
        if len(items) == 1:
            mm = self.placement.put_on_replica(dict(first), replica)
            self._arenas[replica] = self._encode[replica](self._replica_leaves[replica], self._arenas[replica], mm,
                                                          jax.device_put(padded[0], sharding))
            return
        if any(self.input_key(mm) != self.input_key(first) for mm, _ in items[1:]):
            raise ValueError("encode_many takes requests whose items have the same shapes")
        size = min((b for b in self.shapes.encoder_batch_buckets if b >= len(items)), default=None)
        if size is None:
            raise ValueError(f"{len(items)} requests are more than one encoder call takes "
                             f"({max(self.shapes.encoder_batch_buckets)}, EngineConfig.max_encoder_batch)")
        fill = size - len(items)
        stacked = {k: np.stack([np.asarray(mm[k]) for mm, _ in items] + [np.asarray(first[k])] * fill)
                   for k in first}
        rows = np.concatenate([padded, np.full((fill, num_out), self.shapes.embedding_rows, np.int32)])
        mm = self.placement.put_on_replica(stacked, replica)
        self._arenas[replica] = self._encode_batch[replica](self._replica_leaves[replica], self._arenas[replica],
                                                            mm, jax.device_put(rows, sharding))

    def _padded_rows(self, mm_kwargs: Mapping[str, np.ndarray], rows: np.ndarray, num_out: int) -> np.ndarray:
        """``rows`` padded to the encoder's ``num_out`` outputs with the dropped row ``U``."""
        if len(rows) > num_out:
            raise ValueError(f"the prompt has {len(rows)} placeholder tokens but its items give only {num_out} "
                             f"embeddings ({ {k: tuple(np.shape(v)) for k, v in mm_kwargs.items()} })")
        padded = np.full(num_out, self.shapes.embedding_rows, np.int32)  # rows past U are dropped
        padded[: len(rows)] = rows
        return padded

    @staticmethod
    def input_key(mm_kwargs: Mapping[str, Any]) -> tuple:
        """What makes two requests' encoder inputs one compiled shape: names, shapes and dtypes."""
        return tuple(sorted((k, tuple(np.shape(v)), str(v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype))
                            for k, v in mm_kwargs.items()))

    def encoder_output_rows(self, mm_kwargs: Mapping[str, Any]) -> int:
        """Rows ``multimodal_embeddings`` returns for inputs of these shapes (bucketed, so a few values)."""
        key = self.input_key(mm_kwargs)
        if key not in self._encoder_rows:
            self._encoder_rows[key] = encoder_output_rows(self.graphdef, self.state, mm_kwargs)
        return self._encoder_rows[key]

    def arena(self, replica: int) -> jax.Array:
        """Replica ``replica``'s embedding arena ``[1, U, D]``, on that replica's devices."""
        return self._arenas[replica]

    def embeddings(self) -> jax.Array | None:
        """The arenas of every replica as one ``[R, U, D]`` array split over "data" (no copy)."""
        if not self._arenas:
            return None
        shape = (self.shapes.num_replicas, self.shapes.embedding_rows, self.embedding_width)
        return self.placement.stack_replicas(self._arenas, shape)

    # -- steps -------------------------------------------------------------------------

    def execute(self, batch: StepBatch) -> StepOutput:
        """Run one step and keep its new pages; returns its logits and greedy tokens, on the device."""
        put = self.placement.put
        embeddings = ()
        if batch.embedding_slots is not None:
            embeddings = (self.embeddings(), put(batch.embedding_slots))
        extras = {name: put(value) for name, value in batch.step_extras().items()}
        logits, greedy, self.kv_pages = self._step(
            self._state_leaves, self.kv_pages, put(batch.input_ids), jax.tree.map(put, batch.metadata),
            put(batch.logits_indices), *embeddings, greedy=not batch.all_logits, **extras)
        return StepOutput(logits, None if batch.all_logits else greedy)

    def empty_batch(self, num_tokens: int, *, decode: bool, all_logits: bool = False) -> StepBatch:
        """A step of this runner's shapes that schedules no sequence (writes nothing): for warm-up."""
        s = self.shapes
        return empty_step_batch(s.num_replicas, num_tokens, decode=decode, max_num_seqs=s.max_num_seqs,
                                pages_per_seq=s.pages_per_seq, page_size=s.page_size, all_logits=all_logits,
                                with_embeddings=bool(self.embedding_width), rope_axes=self.rope_axes)

    def lower_step(self, num_tokens: int, *, decode: bool, all_logits: bool = False) -> jax.stages.Lowered:
        """The step program for ``num_tokens`` tokens per replica, lowered (not run)."""
        return lower_step(self.graphdef, self.state, self.kv_pages, self.shapes, self.placement,
                          num_tokens=num_tokens, decode=decode, impl=self.impl, all_logits=all_logits,
                          embedding_width=self.embedding_width, dtype=self.dtype, rope_axes=self.rope_axes,
                          batch_invariant=self.batch_invariant)

    # -- reading the logits ------------------------------------------------------------------

    def take_rows(self, logits: jax.Array, rows: Iterable[int]) -> jax.Array:
        """``logits[rows]``, padded with row 0 to the step's ``R * B`` sample rows (one compiled shape)."""
        index = np.zeros(self.shapes.sample_rows, np.int32)
        rows = list(rows)
        index[: len(rows)] = rows
        return logits[jax.device_put(index)]

    def sample_step(self, step: StepOutput, batch: SamplingBatch) -> SamplerOutput:
        """The step's next tokens, on the host: the one path every request's token takes. The step
        program's greedy tokens when ``batch.takes_step_greedy`` (provably the sampler's answer then),
        else the sampler over the step's logits."""
        if batch.takes_step_greedy and step.greedy_tokens is not None:
            return self.fetch_greedy_tokens(step)
        return self.sample(step.logits, batch)

    def fetch_greedy_tokens(self, step: StepOutput) -> SamplerOutput:
        """The step's greedy tokens on the host, as a ``SamplerOutput`` without logprobs (what
        ``sample`` returns for rows that are greedy, without penalties, logprobs or a mask)."""
        return SamplerOutput.without_logprobs(np.asarray(fetch(step.greedy_tokens)), xp=np)

    def sample(self, logits: jax.Array, batch: SamplingBatch) -> SamplerOutput:
        """Sample every row of a step's ``logits`` (``[R * S, V]``, or ``take_rows``' ``[R * B, V]``); the
        result on the host."""
        return fetch(sample(self.sampler_logits(logits), batch.tensors, batch.seen, batch.allowed,
                            num_logprobs=batch.num_logprobs, batch_invariant=self.batch_invariant))

    def sampler_logits(self, logits: jax.Array) -> jax.Array:
        """A step's ``[R * S, V]`` logits in the sampler's one shape, ``[R * B, V]`` (each replica's rows
        padded with zeros); a step of ``B`` or more tokens already has it."""
        s = self.shapes
        if logits.shape[0] == s.sample_rows:
            return logits
        return _padded_logit_rows(logits.reshape(s.num_replicas, -1, logits.shape[-1]), s.max_num_seqs)

    def prompt_logprobs(self, logits: jax.Array, next_tokens: np.ndarray, num_logprobs: int) -> Any:
        """Each token's logprob of the token after it, its rank and the top ``num_logprobs``; on the host."""
        return fetch(prompt_logprobs(logits, jax.device_put(next_tokens), num_logprobs=num_logprobs,
                                     batch_invariant=self.batch_invariant))


_padded_logit_rows = jax.jit(pad_logit_rows, static_argnums=1)


def model_text_config(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[Any, int]:
    """The decoder config of an ``EngineModel`` and the width of its placeholder rows (refused, naming
    what is missing, if it is not one)."""
    model = nnx.merge(graphdef, state)
    if not isinstance(model, EngineModel):
        missing = [m for m in ("text_config", "embed_text", "embedding_width", "merge_embeddings",
                               "decoder_hidden_states", "logits", "multimodal_embeddings", "encoder_input_variants")
                   if not hasattr(model, m)]
        raise TypeError(f"{type(model).__name__} does not implement mmjax.models.common.interface.EngineModel: "
                        f"missing {missing} (see docs/adding_a_multimodal_model.md)")
    return model.text_config, model.embedding_width
