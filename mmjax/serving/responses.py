"""OpenAI response bodies (plain dicts) from ``RequestOutput`` snapshots: completions, streamed chunks,
usage, logprobs in both APIs' shapes, and errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmjax.engine.outputs import Logprob, RequestOutput


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(outputs: Sequence[RequestOutput]) -> dict[str, int]:
    """Token counts; the prompt's include each image's placeholder tokens (what the model read)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(o.token_ids) for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(output: RequestOutput) -> str | None:
    return output.finish_reason if output.finish_reason in ("stop", "length") else None


def _top(position: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    ranked = [(t, lp) for t, lp in position.items() if lp.rank is not None]
    return sorted(ranked, key=lambda item: item[1].rank)[:k]


def _token_text(token_id: int, logprob: Logprob) -> str:
    return logprob.decoded_token if logprob.decoded_token is not None else f"<token {token_id}>"


def chat_logprobs(output: RequestOutput, start: int, top_k: int) -> dict[str, Any]:
    """``choices[i].logprobs`` of the chat API for generated tokens ``start:``."""
    content = []
    for token_id, position in zip(output.token_ids[start:], (output.logprobs or [])[start:]):
        chosen = position[token_id]
        text = _token_text(token_id, chosen)
        content.append({
            "token": text, "logprob": chosen.logprob, "bytes": list(text.encode("utf-8")),
            "top_logprobs": [{"token": _token_text(t, lp), "logprob": lp.logprob,
                              "bytes": list(_token_text(t, lp).encode("utf-8"))} for t, lp in _top(position, top_k)],
        })
    return {"content": content}


def completion_logprobs(output: RequestOutput, start: int, top_k: int, text_offset: int) -> dict[str, Any]:
    """``choices[i].logprobs`` of the completions API for generated tokens ``start:``; offsets count
    from ``text_offset`` characters into the completion."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    for token_id, position in zip(output.token_ids[start:], (output.logprobs or [])[start:]):
        chosen = position[token_id]
        text = _token_text(token_id, chosen)
        tokens.append(text)
        token_logprobs.append(chosen.logprob)
        tops.append({_token_text(t, lp): lp.logprob for t, lp in _top(position, top_k)})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_completion(response_id: str, created: int, model: str, output: RequestOutput,
                    top_logprobs: int | None) -> dict[str, Any]:
    """The whole ``chat.completion`` object of a finished request."""
    choice = {"index": 0, "message": {"role": "assistant", "content": output.text},
              "logprobs": None if top_logprobs is None else chat_logprobs(output, 0, top_logprobs),
              "finish_reason": finish_reason(output)}
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [choice], "usage": usage([output])}


def chat_chunk(response_id: str, created: int, model: str, delta: dict[str, Any], *,
               finish: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with one choice."""
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [choice]}


def usage_chunk(response_id: str, created: int, model: str, kind: str,
                outputs: Sequence[RequestOutput]) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
    return {"id": response_id, "object": kind, "created": created, "model": model, "choices": [],
            "usage": usage(outputs)}


def completion(response_id: str, created: int, model: str, outputs: Sequence[RequestOutput],
               logprobs: int | None) -> dict[str, Any]:
    """The whole ``text_completion`` object; choice ``i`` answers prompt ``i``."""
    choices = [{"index": i, "text": o.text, "finish_reason": finish_reason(o),
                "logprobs": None if logprobs is None else completion_logprobs(o, 0, logprobs, 0)}
               for i, o in enumerate(outputs)]
    return {"id": response_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage(outputs)}


def completion_chunk(response_id: str, created: int, model: str, index: int, text: str, *,
                     finish: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed ``text_completion`` object with the new text of choice ``index``."""
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    return {"id": response_id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice]}
