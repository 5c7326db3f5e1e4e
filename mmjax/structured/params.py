"""``StructuredOutputsParams``: what a request's output must match, with vLLM's (v1) names.

Exactly one of ``json``, ``regex``, ``choice``, ``grammar`` and ``json_object`` is set. The
object is frozen, hashable and checked on construction (types and shapes only; whether a schema,
regex or grammar compiles is checked by ``mmjax.structured.compiler``, also before any work).
"""

from __future__ import annotations

import dataclasses
import json as json_module
from collections.abc import Mapping, Sequence
from typing import Any

#: The constraint fields: exactly one is set.
CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StructuredOutputsParams:
    """The form a request's output must take (vLLM's ``StructuredOutputsParams``).

    Attributes:
      json: a JSON Schema, as a dict or a JSON string; the output is one JSON value valid under it.
        Objects take no properties beyond ``properties`` unless the schema says ``additionalProperties``
        (as strict backends do: ``disable_additional_properties=False`` keeps JSON Schema's default).
      regex: a regular expression the whole output matches (Rust ``regex`` syntax, as llguidance's).
      choice: the output is exactly one of these strings.
      grammar: a context-free grammar in GBNF (llama.cpp's dialect, vLLM's documented examples), or in
        Lark syntax (llguidance's own).
      json_object: any JSON object (``{"type": "object"}``), as OpenAI's ``response_format={"type": "json_object"}``.
      disable_any_whitespace: no whitespace between JSON tokens at all (compact JSON).
      disable_additional_properties: objects without ``additionalProperties`` take no other keys (default True).
      whitespace_pattern: a regex for the whitespace between JSON tokens; by default one optional line
        break and at most 20 spaces or tabs (``mmjax.structured.compiler.DEFAULT_WHITESPACE``), so a model
        cannot run on in whitespace.
    """

    json: str | Mapping[str, Any] | None = None
    regex: str | None = None
    choice: Sequence[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = True
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        given = [name for name in CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            what = "none was" if not given else f"{len(given)} were ({', '.join(given)})"
            raise ValueError(f"StructuredOutputsParams takes exactly one of {', '.join(CONSTRAINTS)}; {what} given")
        if self.json is not None:
            set_("json", _schema_text(self.json))
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ValueError(f"regex={self.regex!r}: must be a non-empty str")
        if self.choice is not None:
            set_("choice", _choices(self.choice))
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise ValueError(f"grammar={self.grammar!r}: must be a non-empty str (GBNF or Lark)")
        if self.json_object not in (None, True, False):
            raise TypeError(f"json_object={self.json_object!r}: must be a bool")
        for name in ("disable_any_whitespace", "disable_additional_properties"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}={getattr(self, name)!r}: must be a bool")
        if self.whitespace_pattern is not None and not isinstance(self.whitespace_pattern, str):
            raise TypeError(f"whitespace_pattern={self.whitespace_pattern!r}: must be a str")

    @property
    def kind(self) -> str:
        """Which constraint is set: one of ``CONSTRAINTS``."""
        return next(name for name in CONSTRAINTS if getattr(self, name) not in (None, False))

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema as a dict (``json``), or None for the other kinds."""
        return None if self.json is None else json_module.loads(self.json)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> StructuredOutputsParams:
        """From vLLM's request field ``structured_outputs`` (a dict of these names); unknown names are refused."""
        if not isinstance(fields, Mapping):
            raise TypeError(f"structured_outputs must be an object, got {type(fields).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"structured_outputs has unknown fields {unknown}; known: {sorted(known)}")
        return cls(**fields)


def _schema_text(schema: Any) -> str:
    """The schema as canonical JSON text (sorted keys: equal schemas are one cache entry)."""
    if isinstance(schema, str):
        try:
            schema = json_module.loads(schema)
        except json_module.JSONDecodeError as error:
            raise ValueError(f"json: not valid JSON ({error})") from None
    if isinstance(schema, bool):  # `true` accepts any value; `false` none
        raise ValueError("json: a boolean schema constrains nothing useful; give an object schema")
    if not isinstance(schema, Mapping):
        raise TypeError(f"json: must be a JSON Schema object (a dict or its JSON text), got {type(schema).__name__}")
    try:
        return json_module.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"json: the schema is not JSON-serialisable ({error})") from None


def _choices(choice: Any) -> tuple[str, ...]:
    if isinstance(choice, (str, bytes)) or not isinstance(choice, Sequence):
        raise TypeError(f"choice={choice!r}: must be a list of str")
    if not choice:
        raise ValueError("choice=[]: give at least one choice")
    if not all(isinstance(c, str) for c in choice):
        raise TypeError(f"choice={list(choice)!r}: every choice must be a str")
    if any(c == "" for c in choice):
        raise ValueError(f"choice={list(choice)!r}: choices must be non-empty")
    return tuple(choice)
