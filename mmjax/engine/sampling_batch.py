"""``SamplingBatch``: everything a step's sampling needs, built on the host, in the sampler's fixed shapes.

The engine builds one per step that samples; ``ModelRunner.sample_step`` is the one path every
request's next token goes through. It takes the step program's own greedy tokens only when that is
provably the same as the sampler's answer: every sampled row greedy, without penalties, logprobs or a
structured-output mask (the sampler's greedy rows are ``first_argmax`` of the same logits then).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mmjax.engine.sampler import SamplingTensors, SeenTokens
from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams


@dataclasses.dataclass(frozen=True)
class SampledRow:
    """One request that samples in this step.

    Attributes:
      row: its row of the step's ``[B, V]`` sampler logits.
      params: its sampling parameters.
      seed: its seed.
      output_token_ids, prompt_token_ids: what the penalties count (the first's length is the row's step,
        which its random key folds in).
    """

    row: int
    params: SamplingParams
    seed: int
    output_token_ids: Sequence[int]
    prompt_token_ids: Sequence[int]


@dataclasses.dataclass(frozen=True)
class SamplingBatch:
    """A step's sampling inputs, on the host.

    Attributes:
      tensors: per-row parameters (``B`` rows; rows nobody samples are greedy padding).
      seen: the penalties' token counts, or None when no row has penalties (a program without them).
      allowed: uint32 ``[B, ceil(V / 32)]`` allowed-token bitmasks (all ones for free rows).
      num_logprobs: ``MAX_LOGPROBS`` when a row asked for logprobs, else None (none computed).
      takes_step_greedy: the step program's greedy tokens are the answer (see the module's docstring).
    """

    tensors: SamplingTensors
    seen: SeenTokens | None
    allowed: np.ndarray
    num_logprobs: int | None
    takes_step_greedy: bool

    @classmethod
    def build(cls, rows: Sequence[SampledRow], allowed: np.ndarray, vocab_size: int) -> SamplingBatch:
        """The batch of ``rows``, with ``allowed`` (``[B, W]``, filled for the constrained rows) giving ``B``."""
        num_rows = allowed.shape[0]
        params, seeds, steps = [SamplingParams(temperature=0.0)] * num_rows, [0] * num_rows, [0] * num_rows
        for r in rows:
            params[r.row], seeds[r.row], steps[r.row] = r.params, r.seed, len(r.output_token_ids)
        tensors = SamplingTensors.build(params, seeds=seeds, steps=steps, pad_to=num_rows)
        seen = None
        if any(r.params.has_penalties for r in rows):
            seen = SeenTokens.build([r.output_token_ids for r in rows], [r.prompt_token_ids for r in rows],
                                    [r.row for r in rows], vocab_size, pad_to=num_rows)
        # Logprobs cost a log-softmax over the vocabulary: computed only in steps where a request asked.
        num_logprobs = MAX_LOGPROBS if any(r.params.logprobs is not None for r in rows) else None
        return cls(tensors, seen, allowed, num_logprobs, all(_takes_step_greedy(r.params) for r in rows))


def _takes_step_greedy(params: SamplingParams) -> bool:
    """Greedy, without penalties, logprobs or a constraint: the step's own greedy token is the sample."""
    return params.is_greedy and not params.has_penalties and params.logprobs is None \
        and params.structured_outputs is None
