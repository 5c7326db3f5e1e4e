"""What ``generate`` returns, with vLLM's names: ``RequestOutput`` holding ``CompletionOutput``s.

Outputs are frozen snapshots: a streamed output does not change after it is
handed to the user; the engine makes a new one each step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

FinishReason = Literal["stop", "length", "error"]


@dataclasses.dataclass(frozen=True)
class Logprob:
    """A token's log-probability under the model's raw distribution.

    Attributes:
      logprob: natural-log probability.
      rank: 1-based rank in the vocabulary (1 = most likely), if known.
      decoded_token: the token's text, if decoded.
    """

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


#: Per generated token: that token and the top ones, id -> Logprob.
SampleLogprobs = list[dict[int, Logprob]]
#: Per prompt token (``None`` for the first, which nothing predicts).
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclasses.dataclass(frozen=True)
class CompletionOutput:
    """One completion of a request.

    Attributes:
      index: the completion's index (always 0: n=1).
      text: the generated text so far (stop string removed unless asked for).
      token_ids: the generated token ids.
      cumulative_logprob: sum of the generated tokens' logprobs; ``None`` unless the request asked for
        ``logprobs`` (as vLLM: they are computed only then).
      logprobs: per generated token, when ``SamplingParams.logprobs`` is set.
      finish_reason: ``"stop"`` (EOS, stop token or string), ``"length"``, or ``None`` while running.
      stop_reason: the stop string or stop token id that ended it; ``None`` for EOS or length.
    """

    index: int
    text: str
    token_ids: tuple[int, ...]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass(frozen=True)
class RequestOutput:
    """The state of one request: its prompt and its completion(s).

    ``.text``, ``.token_ids``, ``.finish_reason`` and ``.logprobs`` read ``outputs[0]``.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    error: str | None = None  # why the prompt was refused (``generate(..., errors="return")``)

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> tuple[int, ...]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.outputs[0].finish_reason

    @property
    def logprobs(self) -> SampleLogprobs | None:
        return self.outputs[0].logprobs


def logprobs_dict(
    token_id: int,
    logprob: float,
    rank: int | None,
    top_ids: Sequence[int],
    top_logprobs: Sequence[float],
    decode: Callable[[int], str] | None = None,
) -> dict[int, Logprob]:
    """vLLM's per-position dict: the chosen token plus the top ones (ranks 1, 2, ...).

    The chosen token comes first; when it is also among the top ones it appears once.
    ``decode`` (e.g. ``lambda i: tokenizer.decode([i])``) fills ``decoded_token``.
    """
    text = decode or (lambda _: None)
    out = {int(token_id): Logprob(float(logprob), None if rank is None else int(rank), text(int(token_id)))}
    for r, (tid, lp) in enumerate(zip(top_ids, top_logprobs), start=1):
        out.setdefault(int(tid), Logprob(float(lp), r, text(int(tid))))
    return out
