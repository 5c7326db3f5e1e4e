"""``SamplingParams``: how one request is sampled and when it stops, with vLLM's names and defaults.

A frozen, keyword-only dataclass: hashable, validated once on construction, with
``stop`` and ``stop_token_ids`` normalised to tuples. The device never sees it;
`mmjax.engine.sampler.SamplingTensors.build` turns a batch of them into arrays.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

from mmjax.structured.params import StructuredOutputsParams

#: The most top-k logprobs a request may ask for (per generated or prompt token).
MAX_LOGPROBS = 20

#: A temperature below this samples greedily (vLLM's ``_SAMPLING_EPS``): dividing by it would overflow.
GREEDY_EPS = 1e-5


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Sampling and stopping for one request.

    Attributes:
      n: completions per prompt; only 1 is supported.
      max_tokens: most tokens to generate (finish reason ``"length"``).
      temperature: 0 (or below ``GREEDY_EPS``) samples greedily.
      top_k: keep the k most likely tokens; -1 or 0 keeps all.
      top_p: keep the smallest set of tokens whose probability is >= top_p, in (0, 1].
      min_p: drop tokens less likely than ``min_p`` times the most likely one, in [0, 1] (0 = off).
      presence_penalty: subtracted from the logit of every token already generated, in [-2, 2].
      frequency_penalty: subtracted once per time a token was generated, in [-2, 2].
      repetition_penalty: divides positive (multiplies negative) logits of tokens in the
        prompt or the output, > 0 (1 = off). Penalties apply before temperature, greedy
        included, as in vLLM; returned logprobs stay those of the raw logits.
      seed: per-request seed; ``None`` lets the engine pick one.
      stop: strings that end generation; the text is cut before them.
      stop_token_ids: token ids that end generation (besides EOS).
      ignore_eos: keep generating past EOS.
      logprobs: top logprobs to return per generated token, in [0, MAX_LOGPROBS].
      prompt_logprobs: top logprobs to return per prompt token, same bounds.
      include_stop_str_in_output: keep the stop string (or stop token's text) in the text.
      skip_special_tokens: leave special tokens out of the text.
      structured_outputs: the form the output must take (a JSON schema, a regex, a choice, a grammar),
        enforced by masking the tokens that would break it; a dict of its fields is taken too. A
        constrained output that completes ends with ``finish_reason="stop"``; one cut by ``max_tokens``
        with ``"length"``.
    """

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("n", _int("n", self.n))
        if self.n != 1:
            raise ValueError(f"n={self.n}: only n=1 (one completion per prompt) is supported")
        set_("max_tokens", _int("max_tokens", self.max_tokens, minimum=1))
        set_("temperature", _real("temperature", self.temperature))
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 samples greedily)")
        set_("top_k", _int("top_k", self.top_k, minimum=-1, hint="-1 or 0 disables top-k"))
        set_("top_p", _real("top_p", self.top_p))
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1] (1 disables top-p)")
        set_("min_p", _real("min_p", self.min_p))
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p={self.min_p}: must be in [0, 1] (0 disables min-p)")
        for name in ("presence_penalty", "frequency_penalty"):
            set_(name, _real(name, getattr(self, name)))
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name}={getattr(self, name)}: must be in [-2, 2] (0 disables it)")
        set_("repetition_penalty", _real("repetition_penalty", self.repetition_penalty))
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty}: must be > 0 (1 disables it)")
        if self.seed is not None:
            set_("seed", _int("seed", self.seed))
        set_("stop", _stop_strings(self.stop))
        set_("stop_token_ids", _token_ids(self.stop_token_ids))
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a bool")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                set_(name, _int(name, getattr(self, name), minimum=0, maximum=MAX_LOGPROBS))
        if isinstance(self.structured_outputs, dict):
            set_("structured_outputs", StructuredOutputsParams.from_dict(self.structured_outputs))
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise TypeError(f"structured_outputs={self.structured_outputs!r}: must be a StructuredOutputsParams "
                            "(or a dict of its fields)")

    @classmethod
    def greedy(cls, **kwargs: Any) -> SamplingParams:
        """Greedy decoding (temperature 0) with the other fields as given."""
        return cls(temperature=0.0, **kwargs)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def has_penalties(self) -> bool:
        """Whether sampling needs the counts of the tokens seen so far."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    @property
    def max_stop_len(self) -> int:
        """Length of the longest stop string (0 without any)."""
        return max(map(len, self.stop), default=0)


def _int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    # bool is an int subclass, but `max_tokens=True` is a bug, not a request for 1 token.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r}: must be an int, got {type(value).__name__}")
    value = int(value)
    low_ok = minimum is None or value >= minimum
    high_ok = maximum is None or value <= maximum
    if not (low_ok and high_ok):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}={value}: must be {bounds}" + (f" ({hint})" if hint else ""))
    return value


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r}: must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value}: must be finite")
    return float(value)


def _stop_strings(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    strings = (stop,) if isinstance(stop, str) else stop
    if not isinstance(strings, Sequence) or not all(isinstance(s, str) for s in strings):
        raise ValueError(f"stop={stop!r}: must be a str or a list of str")
    if any(s == "" for s in strings):
        raise ValueError(f"stop={stop!r}: stop strings must be non-empty")
    return tuple(strings)


def _token_ids(ids: Any) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"stop_token_ids={ids!r}: must be a list of int")
    return tuple(_int("stop_token_ids", i, minimum=0) for i in ids)
