"""The OpenAI request bodies the server takes (pydantic, strict types), and their ``SamplingParams``.

Unknown fields are ignored, as OpenAI clients send extras; fields mmjax cannot honour
(``n > 1``, tools, ``logit_bias``, JSON response formats, ``echo``, ``suffix``) are refused by name.
vLLM's extra sampling fields (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``stop_token_ids``, ...) are accepted too.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams

INT32_MAX = 2**31 - 1
#: Most stop strings, stop token ids and prompts (of one completions request) a request may give.
MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, MAX_PROMPTS = 16, 64, 64

TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
StopString = Annotated[str, Field(min_length=1, max_length=1024)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_LOGPROBS)]

#: The shape of ``messages`` published in /openapi.json (the server checks them with ``parse_messages``).
_MESSAGES_SCHEMA = {
    "type": "array", "minItems": 1,
    "items": {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [
            {"type": "object", "required": ["type", "text"],
             "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
            {"type": "object", "required": ["type", "image_url"],
             "properties": {"type": {"const": "image_url"}, "image_url": {
                 "type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}}},
            {"type": "object", "required": ["type", "video_url"],
             "properties": {"type": {"const": "video_url"}, "video_url": {
                 "type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}}},
        ]}}]},
    }},
}


class RequestRefused(ValueError):
    """A request the server will not run; ``param`` names the field at fault (OpenAI's ``error.param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = Field(None, max_length=256)
    max_tokens: TokenCount | None = None
    temperature: float | None = Field(None, ge=0, le=1e6)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP_STRINGS)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    n: int | None = Field(None, ge=1, le=INT32_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    # vLLM's extras
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=1e6)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    #: Keys the processor, encoder and prefix caches with it: requests of different salts share nothing cached.
    cache_salt: str | None = Field(None, min_length=1, max_length=256)
    #: Only lowers the server's media limits (``mmjax.serving.request_limits``).
    mm_processor_kwargs: dict[str, Any] | None = None

    def _refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise RequestRefused(f"n={self.n}: only n=1 (one choice per request) is supported", "n")
        if self.logit_bias:
            raise RequestRefused("logit_bias is not supported", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise RequestRefused("stream_options is only allowed with stream=true", "stream_options")

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """These fields as ``SamplingParams`` (``max_tokens`` already resolved), or ``RequestRefused``."""
        self._refuse_unsupported()
        given = {
            "max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
            "stop": self.stop, "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty, "top_k": self.top_k, "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty, "stop_token_ids": self.stop_token_ids,
            "logprobs": logprobs,
        }
        fields = {k: v for k, v in given.items() if v is not None}
        try:
            return SamplingParams(**fields, ignore_eos=self.ignore_eos, skip_special_tokens=self.skip_special_tokens,
                                  include_stop_str_in_output=self.include_stop_str_in_output)
        except ValueError as err:
            param = str(err).split("=", 1)[0] if "=" in str(err).split(":", 1)[0] else None
            raise RequestRefused(str(err), param) from err


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[Any] = Field(json_schema_extra=_MESSAGES_SCHEMA)
    max_completion_tokens: TokenCount | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_logprobs(self) -> int | None:
        """``SamplingParams.logprobs``: None (off), else the number of top logprobs wanted."""
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestRefused("top_logprobs needs logprobs=true", "top_logprobs")
        if not self.logprobs:
            return None
        top = self.top_logprobs or 0
        if not 0 <= top <= MAX_LOGPROBS:
            raise RequestRefused(f"top_logprobs={top}: must be in [0, {MAX_LOGPROBS}]", "top_logprobs")
        return top

    def _refuse_unsupported(self) -> None:
        super()._refuse_unsupported()
        if self.tools or self.tool_choice not in (None, "none"):
            raise RequestRefused("tools and tool_choice are not supported", "tools")
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise RequestRefused(f"response_format {self.response_format.get('type')!r} is not supported; "
                                 "only 'text'", "response_format")


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``: ``prompt`` is a string, a list of token ids, or a list of either."""

    prompt: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)] | list[TokenId] \
        | Annotated[list[list[TokenId]], Field(max_length=MAX_PROMPTS)]
    logprobs: TopLogprobs | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request, one choice each (index = position)."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt or any(len(p) == 0 for p in prompt):
            raise RequestRefused("prompt must be a non-empty string or list of token ids (or a list of them)",
                                 "prompt")
        return list(prompt)

    def _refuse_unsupported(self) -> None:
        super()._refuse_unsupported()
        for name, value, allowed in (("echo", self.echo, False), ("suffix", self.suffix, None),
                                     ("best_of", self.best_of, None)):
            if value not in (allowed, 1 if name == "best_of" else allowed):
                raise RequestRefused(f"{name} is not supported", name)


def describe_validation_error(error: ValidationError) -> tuple[str, str | None]:
    """A pydantic error as one sentence naming the fields at fault, and the first field's name."""
    problems, first = [], None
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not _is_type_tag(p))
        first = first or loc or None
        shown = "" if item["type"] == "missing" else f" (got {_shown(item.get('input'))})"
        problems.append(f"{loc or 'body'}: {item['msg']}{shown}")
    return "invalid request: " + "; ".join(dict.fromkeys(problems)), first


def _shown(value: Any) -> str:
    """The client's value as JSON (never a Python repr), cut to 60 characters."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _is_type_tag(part: Any) -> bool:
    """pydantic names the union member it tried (``'str'``, ``'list[int]'``) inside ``loc``."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or part.startswith("list["))
