"""Per-row sampling on device: penalties, greedy, temperature, top-k, top-p, min-p and seeds as arrays.

Every sampling parameter is a per-row array of ``SamplingTensors``, so a batch
that mixes greedy and sampled requests, or changes any value, reuses the same
compiled program; only the row count ``B`` and the static ``num_logprobs`` (``J``)
key the compilation. A row's random key is ``fold_in(key(seed), step)``: its draw
depends on its own seed and step, never on the batch it sits in.

A row's allowed tokens (``allowed``, a bitmask of fixed shape: its structured-output
constraint, all ones for a free row) mask the logits after the penalties, before
greedy or random choice; a batch mixing constrained and free rows is one program.

Logprobs are always those of the *raw* logits (the model's distribution, as
``torch.log_softmax`` gives it), whatever the temperature, truncation or mask
(vLLM's default ``logprobs_mode``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.batch_invariant import fixed_order_log_softmax
from mmjax.engine.sampling_params import GREEDY_EPS, SamplingParams
from mmjax.types import Array, ArrayLike, Bool, Float, Int, UInt, shape_checked


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["temperature", "top_k", "top_p", "min_p", "presence", "frequency", "repetition", "seeds", "steps"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class SamplingTensors:
    """Sampling parameters of the ``B`` rows of a step (one per sequence slot of every replica).

    ``temperature`` 0 means greedy; ``top_k`` 0, ``top_p`` 1, ``min_p`` 0 and the
    penalties 0, 0, 1 mean off. ``steps`` counts the tokens the row's request has
    generated so far. Host (numpy) arrays from ``build``; device ones inside ``sample``.
    """

    temperature: Float[ArrayLike, "B"]
    top_k: Int[ArrayLike, "B"]
    top_p: Float[ArrayLike, "B"]
    min_p: Float[ArrayLike, "B"]
    presence: Float[ArrayLike, "B"]
    frequency: Float[ArrayLike, "B"]
    repetition: Float[ArrayLike, "B"]
    seeds: UInt[ArrayLike, "B"]  # uint32
    steps: Int[ArrayLike, "B"]

    @classmethod
    def build(
        cls, params: Sequence[SamplingParams], seeds: Sequence[int], steps: Sequence[int], pad_to: int
    ) -> SamplingTensors:
        """Host (numpy) tensors for ``params``, padded with greedy rows to ``pad_to``.

        Args:
          params: one per live row, in row order.
          seeds: each row's request seed (``params.seed``, or one the engine drew); any
            int, taken modulo 2**32.
          steps: tokens each row's request has generated so far.
          pad_to: the bucketed row count ``B``.
        """
        n = len(params)
        if not (len(seeds) == len(steps) == n):
            raise ValueError(f"got {n} params, {len(seeds)} seeds and {len(steps)} steps: need one each per row")
        if n > pad_to:
            raise ValueError(f"{n} rows do not fit pad_to={pad_to}")
        temperature = np.zeros(pad_to, np.float32)
        top_k = np.zeros(pad_to, np.int32)
        top_p = np.ones(pad_to, np.float32)
        min_p = np.zeros(pad_to, np.float32)
        presence, frequency = np.zeros(pad_to, np.float32), np.zeros(pad_to, np.float32)
        repetition = np.ones(pad_to, np.float32)
        for i, p in enumerate(params):
            if not p.is_greedy:  # greedy rows keep temperature 0 and no truncation
                # a top_k past the vocabulary keeps all of it, as one past int32 would: clamped, never overflowing
                top_k[i] = min(max(p.top_k, 0), np.iinfo(np.int32).max)
                temperature[i], top_p[i], min_p[i] = p.temperature, p.top_p, p.min_p
            presence[i], frequency[i], repetition[i] = p.presence_penalty, p.frequency_penalty, p.repetition_penalty
        seed_arr = np.zeros(pad_to, np.uint32)
        seed_arr[:n] = [s % 2**32 for s in seeds]
        step_arr = np.zeros(pad_to, np.int32)
        step_arr[:n] = steps
        return cls(temperature, top_k, top_p, min_p, presence, frequency, repetition, seed_arr, step_arr)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["output_counts", "prompt_mask"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SeenTokens:
    """What the penalties need of each row's request: how often each token was generated
    (``output_counts``) and which tokens its prompt holds (``prompt_mask``)."""

    output_counts: Int[ArrayLike, "B V"]
    prompt_mask: Bool[ArrayLike, "B V"]

    @classmethod
    def build(cls, outputs: Sequence[Sequence[int]], prompts: Sequence[Sequence[int]], rows: Sequence[int],
              vocab_size: int, pad_to: int) -> SeenTokens:
        """Host (numpy) arrays of ``pad_to`` rows: request ``i``'s tokens at row ``rows[i]``, zeros elsewhere."""
        counts = np.zeros((pad_to, vocab_size), np.int32)
        mask = np.zeros((pad_to, vocab_size), bool)
        for row, output, prompt in zip(rows, outputs, prompts):
            counts[row] = np.bincount(np.asarray(output, np.int64), minlength=vocab_size)[:vocab_size]
            mask[row, np.asarray(prompt, np.int64)] = True
        return cls(counts, mask)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["tokens", "logprobs", "ranks", "top_ids", "top_logprobs"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class SamplerOutput:
    """The step's next tokens and their raw logprobs.

    Attributes:
      tokens: the sampled token of each row.
      logprobs: its log-softmax under the raw logits (zeros when ``sample`` was asked for none).
      ranks: its 1-based rank under the raw logits (1 = most likely; zeros when asked for none).
      top_ids, top_logprobs: the ``J = num_logprobs`` most likely tokens, descending.
    """

    tokens: Int[ArrayLike, "B"]
    logprobs: Float[ArrayLike, "B"]
    ranks: Int[ArrayLike, "B"]
    top_ids: Int[ArrayLike, "B J"]
    top_logprobs: Float[ArrayLike, "B J"]

    @classmethod
    def without_logprobs(cls, tokens: Int[ArrayLike, "B"], xp=jnp) -> SamplerOutput:
        """``tokens`` with zero logprobs and ranks and no top ones (``xp``: numpy on the host, jnp inside jit)."""
        rows = tokens.shape[0]
        return cls(tokens, xp.zeros(rows, xp.float32), xp.zeros(rows, xp.int32),
                   xp.zeros((rows, 0), xp.int32), xp.zeros((rows, 0), xp.float32))


@functools.partial(jax.jit, static_argnames=("num_logprobs", "batch_invariant"))
@shape_checked
def sample(
    logits: Float[Array, "B V"], tensors: SamplingTensors, seen: SeenTokens | None = None,
    allowed: UInt[Array, "B W"] | None = None, *, num_logprobs: int | None = 0, batch_invariant: bool = False,
) -> SamplerOutput:
    """Sample one token per row: penalties (when ``seen`` is given), the allowed-token mask (when
    ``allowed`` is: bit ``v % 32`` of word ``v // 32``, uint32), then argmax for greedy rows, else
    temperature, top-k, top-p, min-p, categorical. Logprobs are of the raw logits: the sampled
    token's and its rank, and the top ``num_logprobs``; ``num_logprobs=None``: none at all (a log-softmax
    over the vocabulary saved, ~1.5 ms of the benchmark's 18 ms decode step). ``batch_invariant``: the
    logprobs' log-softmax sums in one fixed order (``mmjax.batch_invariant``)."""
    logits = logits.astype(jnp.float32)
    adjusted = logits if seen is None else apply_penalties(logits, tensors, seen)
    if allowed is not None:
        adjusted = jnp.where(allowed_tokens(allowed, logits.shape[-1]), adjusted, -jnp.inf)
    greedy = tensors.temperature < GREEDY_EPS
    argmax = first_argmax(adjusted)
    # The sort over V is the costly part; an all-greedy step (the common case) skips it at run time.
    tokens = jax.lax.cond(
        jnp.all(greedy), lambda: argmax, lambda: jnp.where(greedy, argmax, _sample_random(adjusted, tensors))
    )
    if num_logprobs is None:
        return SamplerOutput.without_logprobs(tokens)
    logprobs, ranks = _token_logprobs(logits, tokens, batch_invariant)
    top_ids, top_logprobs = _top_logprobs(logits, num_logprobs, batch_invariant)
    return SamplerOutput(tokens, logprobs, ranks, top_ids, top_logprobs)


@functools.partial(jax.jit, static_argnames=("num_logprobs", "batch_invariant"))
@shape_checked
def prompt_logprobs(
    logits: Float[Array, "T V"], next_tokens: Int[Array, "T"], *, num_logprobs: int = 0, batch_invariant: bool = False
) -> tuple[Float[Array, "T"], Int[Array, "T"], Int[Array, "T J"], Float[Array, "T J"]]:
    """Raw logprob and 1-based rank of each next prompt token (``logits[t]`` predicts
    ``next_tokens[t]``), and the top ones: ``(logprobs, ranks, top_ids, top_logprobs)``. ``batch_invariant``:
    the log-softmax sums in one fixed order (``mmjax.batch_invariant``), as ``mmjax.score``'s."""
    logits = logits.astype(jnp.float32)
    return (*_token_logprobs(logits, next_tokens, batch_invariant),
            *_top_logprobs(logits, num_logprobs, batch_invariant))


@shape_checked
def allowed_tokens(allowed: UInt[Array, "B W"], vocab_size: int) -> Bool[Array, "B V"]:
    """The bitmask ``allowed`` (32 tokens a word, lowest bit first) as booleans over ``vocab_size`` tokens."""
    bits = (allowed[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1  # [B, W, 32]
    return bits.reshape(allowed.shape[0], -1)[:, :vocab_size].astype(bool)


@shape_checked
def apply_penalties(logits: Float[Array, "B V"], tensors: SamplingTensors, seen: SeenTokens) -> Float[Array, "B V"]:
    """vLLM's penalties: repetition over prompt and output tokens, then frequency and presence over output ones."""
    counts = seen.output_counts.astype(logits.dtype)
    repetition = tensors.repetition[:, None]
    penalised = jnp.where(logits > 0, logits / repetition, logits * repetition)
    logits = jnp.where(seen.prompt_mask | (counts > 0), penalised, logits)
    return logits - tensors.frequency[:, None] * counts - tensors.presence[:, None] * (counts > 0)


def _sample_random(logits: Float[Array, "B V"], tensors: SamplingTensors) -> Int[Array, "B"]:
    """Temperature, then top-k, then top-p on the top-k renormalised distribution, then min-p
    (vLLM's order)."""
    vocab = logits.shape[-1]
    safe_temp = jnp.where(tensors.temperature < GREEDY_EPS, 1.0, tensors.temperature)
    scaled = logits / safe_temp[:, None]
    order = jnp.argsort(scaled, axis=-1, descending=True, stable=True)  # sort once, mask by rank
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    rank = jnp.arange(vocab)[None, :]
    k = jnp.where(tensors.top_k > 0, jnp.minimum(tensors.top_k, vocab), vocab)
    sorted_logits = jnp.where(rank < k[:, None], sorted_logits, -jnp.inf)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # A token stays while the tokens ranked above it hold less than top_p: the smallest
    # set reaching top_p. Rank 0 has mass_before 0 < top_p, so the top token always stays.
    keep = (mass_before < tensors.top_p[:, None]) | (rank == 0)
    sorted_logits = jnp.where(keep, sorted_logits, -jnp.inf)
    # min-p on what is left: the top token (rank 0) has the largest probability.
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    sorted_logits = jnp.where(probs >= tensors.min_p[:, None] * probs[:, :1], sorted_logits, -jnp.inf)
    keys = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.key(s), t))(tensors.seeds, tensors.steps)
    picked = jax.vmap(jax.random.categorical)(keys, sorted_logits)
    return jnp.take_along_axis(order, picked[:, None], axis=-1)[:, 0].astype(jnp.int32)


def first_argmax(x: Float[Array, "B V"]) -> Int[Array, "B"]:
    """``jnp.argmax(x, axis=-1)`` (the first maximum; the first NaN if a row has one), as two plain
    reductions: XLA's CPU argmax is a variadic reduce that does not vectorize. Measured on the 2-core
    host for ``[16, 32064]`` logits: 0.29 ms against jnp.argmax's 1.16 ms, a step of the benchmark's decode."""
    top = jnp.max(x, axis=-1, keepdims=True)
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where((x == top) | jnp.isnan(x), ids, x.shape[-1]), axis=-1)


def _log_softmax(logits: Float[Array, "T V"], batch_invariant: bool) -> Float[Array, "T V"]:
    return fixed_order_log_softmax(logits) if batch_invariant else jax.nn.log_softmax(logits, axis=-1)


def _token_logprobs(logits: Float[Array, "T V"], tokens: Int[Array, "T"], batch_invariant: bool = False
                    ) -> tuple[Float[Array, "T"], Int[Array, "T"]]:
    logprobs = _log_softmax(logits, batch_invariant)
    chosen = jnp.take_along_axis(logprobs, tokens[:, None].astype(jnp.int32), axis=-1)
    ranks = 1 + jnp.sum(logprobs > chosen, axis=-1, dtype=jnp.int32)
    return chosen[:, 0], ranks


def _top_logprobs(logits: Float[Array, "T V"], num_logprobs: int, batch_invariant: bool = False
                  ) -> tuple[Int[Array, "T J"], Float[Array, "T J"]]:
    if num_logprobs == 0:  # lax.top_k rejects k=0
        rows = logits.shape[0]
        return jnp.zeros((rows, 0), jnp.int32), jnp.zeros((rows, 0), jnp.float32)
    top_logprobs, top_ids = jax.lax.top_k(_log_softmax(logits, batch_invariant), num_logprobs)
    return top_ids.astype(jnp.int32), top_logprobs
