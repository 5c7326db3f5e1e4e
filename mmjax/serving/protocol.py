"""The OpenAI request bodies the server takes (pydantic, strict types), and their ``SamplingParams``.

Unknown fields are ignored, as OpenAI clients send extras; fields mmjax cannot honour
(``n > 1``, tools, ``logit_bias``, ``echo``, ``suffix``) are refused by name.
vLLM's extra sampling fields (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``stop_token_ids``, ...) are accepted too.

Structured outputs: OpenAI's ``response_format`` (``json_object``, ``json_schema``; on completions too,
as vLLM takes it) or vLLM's ``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``,
``json_object``) become ``SamplingParams.structured_outputs``. Their shapes are checked here; whether
the constraint compiles is checked by the engine, on a worker thread, before the request is queued.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from mmjax.structured.params import StructuredOutputsParams

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

#: The shape of vLLM's ``structured_outputs`` published in /openapi.json (``StructuredOutputsParams.from_dict``
#: checks it): exactly one of the constraints, and the JSON options.
_STRUCTURED_OUTPUTS_SCHEMA = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "json": {"anyOf": [{"type": "object"}, {"type": "string"}],
                 "description": "a JSON Schema (or its JSON text): the output is one JSON value valid under it"},
        "regex": {"type": "string", "description": "a regular expression the whole output matches"},
        "choice": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                   "description": "the output is exactly one of these strings"},
        "grammar": {"type": "string", "description": "a context-free grammar, in GBNF or Lark syntax"},
        "json_object": {"type": "boolean", "description": "any JSON object"},
        "disable_any_whitespace": {"type": "boolean", "description": "compact JSON: no whitespace between tokens"},
        "disable_additional_properties": {"type": "boolean", "default": True,
                                          "description": "objects take no keys their schema does not name"},
        "whitespace_pattern": {"type": "string", "description": "a regex for the whitespace between JSON tokens"},
    },
}


def _publish_structured_outputs(schema: dict[str, Any]) -> None:
    """The published schema of ``structured_outputs``: its fields, or null."""
    schema["anyOf"] = [_STRUCTURED_OUTPUTS_SCHEMA, {"type": "null"}]
    schema["description"] = "vLLM's structured outputs: exactly one of json, regex, choice, grammar, json_object."


#: vLLM's older request fields for structured outputs, refused with a pointer to ``structured_outputs``.
_GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}


class RequestRefused(ValueError):
    """A request the server will not run; ``param`` names the field at fault (OpenAI's ``error.param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the output must be valid under."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: str | None = Field(None, max_length=256)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON Schema object")
    strict: bool | None = Field(None, description="taken and ignored: objects never take keys their schema "
                                "does not name (unless it says additionalProperties), as in strict mode")


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: ``text`` (no constraint), ``json_object`` (any JSON object) or
    ``json_schema`` (JSON valid under ``json_schema.schema``)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self) -> StructuredOutputsParams | None:
        """The output constraint this format asks for (None for ``text``), or ``RequestRefused``."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return StructuredOutputsParams(json_object=True)
        if self.json_schema is None:
            raise RequestRefused("response_format: type 'json_schema' needs a json_schema object holding the "
                                 "schema", "response_format")
        return StructuredOutputsParams(json=self.json_schema.schema_)


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
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = Field(None, json_schema_extra=_publish_structured_outputs)

    @property
    def constraint_field(self) -> str:
        """The field the output constraint comes from (a refusal of the constraint names it)."""
        given = self.response_format is not None and self.response_format.type != "text"
        return "response_format" if given else "structured_outputs"

    def constraint_refused(self, error: Exception) -> RequestRefused:
        """``error`` (a constraint of the wrong shape, or one the engine cannot compile) as a refusal naming
        the field it came from."""
        field, message = self.constraint_field, str(error)
        if field == "response_format" and self.response_format.type == "json_schema":  # type: ignore[union-attr]
            return RequestRefused(f"response_format.json_schema.schema: {message.removeprefix('json: ')}", field)
        return RequestRefused(message if message.startswith(field) else f"{field}: {message}", field)

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        """The output constraint (``response_format`` or ``structured_outputs``), None, or ``RequestRefused``."""
        if self.constraint_field == "response_format":
            if self.structured_outputs is not None:
                raise RequestRefused("give response_format or structured_outputs, not both", "response_format")
            make = self.response_format.constraint  # type: ignore[union-attr]
        elif self.structured_outputs is None:
            return None
        else:
            make = functools.partial(StructuredOutputsParams.from_dict, self.structured_outputs)
        try:
            return make()
        except RequestRefused:
            raise
        except (TypeError, ValueError) as err:
            raise self.constraint_refused(err) from err

    def _refuse_unsupported(self) -> None:
        guided = sorted(_GUIDED_FIELDS.keys() & (self.model_extra or {}).keys())
        if guided:
            raise RequestRefused(f"{guided[0]} is not supported (vLLM's older name); give structured_outputs="
                                 f"{{\"{_GUIDED_FIELDS[guided[0]]}\": ...}}", guided[0])
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
        constraint = self.structured_outputs_params()
        if constraint is not None:
            fields["structured_outputs"] = constraint
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
