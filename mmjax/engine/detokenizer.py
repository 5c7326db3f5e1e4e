"""Incremental detokenization and stop conditions for one request (host, plain Python).

Decoding token by token must give the text that decoding all tokens at once
gives. Byte-level BPE splits a multi-byte UTF-8 character over tokens, and
SentencePiece drops a leading space at the start of a decode; both are handled
by vLLM/TGI's window technique: decode ``ids[prefix:read]`` (text already
emitted) and ``ids[prefix:]``, emit the difference, and wait while it ends in an
incomplete character (U+FFFD).

Streaming never emits text it may later take back: while running, the last
``max_stop_len - 1`` characters are held back (a stop string may be completing),
and a stop token's text is never decoded unless ``include_stop_str_in_output``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmjax.engine.outputs import FinishReason
from mmjax.engine.sampling_params import SamplingParams

#: Prompt tokens decoded before the first generated one, so a leading space or a
#: character begun in the prompt comes out as in a one-shot decode (vLLM uses 5).
PROMPT_CONTEXT = 5

Finish = tuple[FinishReason, str | int | None]


class IncrementalDetokenizer:
    """Text and finish state of one request, fed one generated token at a time.

    Call ``append(token_id)`` for each new token (it returns the text delta that is
    now safe to show), then ``check_stop(token_id)`` for the finish state.
    Concatenated deltas always equal ``output_text``.

    Args:
      tokenizer: a Hugging Face tokenizer (``decode``, ``eos_token_id``).
      prompt_token_ids: the prompt, for decoding context.
      params: the request's sampling params (stops, max_tokens, special tokens).
      eos_token_id: the model's EOS (default: the tokenizer's). Known here, its
        text never reaches a delta.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        eos_token_id: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self._ids = [int(t) for t in prompt_token_ids]  # what is decoded (prompt + output - stop tokens)
        self._prefix = max(len(self._ids) - PROMPT_CONTEXT, 0)
        self._read = len(self._ids)
        self._output_ids: list[int] = []
        self._text = ""  # decoded output: whole characters only, until finished
        self._sent = 0  # characters of _text handed out as deltas
        self._last_len = 0  # len(_text) before the last token, to drop that token's text
        self._finish: Finish | None = None

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The generated token ids (stop tokens included)."""
        return tuple(self._output_ids)

    @property
    def output_text(self) -> str:
        """The text so far that is safe to show (all of it once finished)."""
        return self._text[: self._sent]

    @property
    def finished(self) -> bool:
        return self._finish is not None

    def append(self, token_id: int, completes: bool = False) -> str:
        """Add one generated token; return the new text that is safe to show.

        ``completes``: the token completes the request's structured output (its grammar admits nothing
        more): the request ends with ``("stop", None)``, even at ``max_tokens`` (a stop token or string
        in it still reports as such).
        """
        if self._finish is not None:
            raise ValueError(f"request already finished ({self._finish[0]}); cannot append token {token_id}")
        token_id = int(token_id)
        self._output_ids.append(token_id)
        self._last_len = len(self._text)
        stopped_by_token = self._stop_token(token_id, self.eos_token_id)
        if stopped_by_token is None or self.params.include_stop_str_in_output:
            self._ids.append(token_id)
            self._text += self._decode_new()
        finish = stopped_by_token or self._stop_string() or (("stop", None) if completes else self._length())
        if finish is not None:
            self._end(*finish)
        return self._release()

    def check_stop(self, token_id: int, eos_token_id: int | None = None) -> Finish | None:
        """``(finish_reason, stop_reason)`` after ``append(token_id)``, or ``None`` while running.

        ``eos_token_id`` defaults to the constructor's; a different one given here
        also stops, but its text (if it has any) may already have been streamed.
        """
        if not self._output_ids or int(token_id) != self._output_ids[-1]:
            raise ValueError(f"check_stop({token_id}) must follow append({token_id})")
        if self._finish is None and eos_token_id is not None:
            late = self._stop_token(int(token_id), eos_token_id)
            if late is not None:
                if not self.params.include_stop_str_in_output:
                    self._text = self._text[: self._last_len]
                    self._sent = min(self._sent, self._last_len)
                self._end(*late)
        return self._finish

    def finish(self, finish_reason: FinishReason = "length", stop_reason: str | int | None = None) -> str:
        """End the request (the engine calls this for e.g. ``max_model_len``); return the last delta.

        Characters still incomplete at the end are decoded as U+FFFD, as a one-shot decode does.
        """
        if self._finish is None:
            self._end(finish_reason, stop_reason)
        return self._release()

    def _end(self, finish_reason: FinishReason, stop_reason: str | int | None) -> None:
        if finish_reason == "length" or not isinstance(stop_reason, str):
            self._text += self._pending_text()  # a stop string cut the text before anything pending
        self._finish = (finish_reason, stop_reason)

    def _stop_token(self, token_id: int, eos_token_id: int | None) -> Finish | None:
        if token_id == eos_token_id and not self.params.ignore_eos:
            return ("stop", None)
        if token_id in self.params.stop_token_ids:
            return ("stop", token_id)
        return None

    def _stop_string(self) -> Finish | None:
        """The earliest stop string in the new text (or spanning into it); cuts the text there."""
        hits = []
        for stop in self.params.stop:
            at = self._text.find(stop, max(self._last_len - len(stop) + 1, 0))
            if at != -1:
                hits.append((at, stop))
        if not hits:
            return None
        at, stop = min(hits, key=lambda hit: hit[0])
        self._text = self._text[: at + len(stop) if self.params.include_stop_str_in_output else at]
        return ("stop", stop)

    def _length(self) -> Finish | None:
        return ("length", None) if len(self._output_ids) >= self.params.max_tokens else None

    def _decode_new(self) -> str:
        """Whole characters the last token completes; advances the window when there are any."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # nothing yet (a skipped special token), or a character still incomplete
        self._prefix, self._read = self._read, len(self._ids)
        return new_text[len(prefix_text) :]

    def _pending_text(self) -> str:
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        return self._decode(self._ids[self._prefix :])[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        # No clean-up: it rewrites " ." etc. differently in a window than in the whole text.
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.params.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def _release(self) -> str:
        end = len(self._text)
        if self._finish is None:
            end -= max(self.params.max_stop_len - 1, 0)
        end = max(end, self._sent)
        delta, self._sent = self._text[self._sent : end], end
        return delta
