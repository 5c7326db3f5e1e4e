"""Structured-output constraints compiled to llguidance grammars, checked and cached per tokenizer.

llguidance (the grammar engine vLLM's ``guidance`` backend and sglang use; chosen over xgrammar by
``benchmarks/grammar_engines.py``, and free of torch) turns a JSON Schema, a regex or a Lark
grammar into token masks. ``GrammarCompiler.compile`` checks a request's constraint once — an
invalid schema, a schema feature llguidance does not implement, a bad regex or grammar is a
``ValueError`` naming it, before any work — and keeps the checked matcher, so a second request with
the same constraint (labelling a data set with one schema) costs a copy.
"""

from __future__ import annotations

import collections
import functools
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import llguidance
import llguidance.hf
from llguidance.gbnf_to_lark import any_to_lark

from mmjax.structured.params import StructuredOutputsParams

#: Whitespace allowed between JSON tokens by default: one optional line break, then at most 20 spaces or
#: tabs (pretty-printed JSON 5 levels deep at 4 spaces). llguidance's own default is unbounded, which lets
#: a model run on in whitespace until ``max_tokens``.
DEFAULT_WHITESPACE = r"(?:\r?\n)?[ \t]{0,20}"

#: Compiled constraints kept per tokenizer (least recently used first out).
CACHE_SIZE = 256

#: Keywords whose value is a schema, or a list or map of schemas (where ``additionalProperties`` is filled in).
_SCHEMA_VALUED = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames",
                  "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def grammar_text(params: StructuredOutputsParams) -> str:
    """The llguidance grammar of ``params`` (not yet checked: ``GrammarCompiler.compile`` does that)."""
    if params.regex is not None:
        return llguidance.LLMatcher.grammar_from_regex(params.regex)
    if params.choice is not None:  # each choice a Lark string literal (JSON escapes), one alternative each
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in params.choice))
    if params.grammar is not None:
        try:
            lark = any_to_lark(params.grammar)
        except Exception as error:  # gbnf_to_lark raises plain exceptions on syntax errors
            raise ValueError(f"grammar: not valid GBNF or Lark ({error})") from None
        return llguidance.LLMatcher.grammar_from_lark(lark)
    schema: dict[str, Any] = {"type": "object"} if params.json_object else json.loads(params.json or "{}")
    if params.disable_additional_properties:
        schema = closed_objects(schema)
    options: dict[str, Any] = {"whitespace_flexible": not params.disable_any_whitespace}
    if not params.disable_any_whitespace:
        options["whitespace_pattern"] = params.whitespace_pattern or DEFAULT_WHITESPACE
    return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)


def closed_objects(schema: Any, close: bool = True) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that does not say otherwise
    (what OpenAI's strict mode and vLLM's ``disable_additional_properties`` do). Only schema positions are
    walked: ``enum``, ``const``, ``default`` and ``examples`` values are data and stay as they are. The
    branches of an ``allOf`` are left open themselves (``close=False``): each may name only some of the
    properties the others add, and closing it would forbid theirs."""
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    for key in _SCHEMA_VALUED:
        if isinstance(out.get(key), Mapping):
            out[key] = closed_objects(out[key])
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(s, close=key != "allOf") for s in out[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {name: closed_objects(s) for name, s in out[key].items()}
    if isinstance(out.get("additionalProperties"), Mapping):
        out["additionalProperties"] = closed_objects(out["additionalProperties"])
    types = out.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types) or "properties" in out
    if close and is_object and "additionalProperties" not in out and "patternProperties" not in out \
            and "allOf" not in out:
        out["additionalProperties"] = False
    return out


class GrammarCompiler:
    """Checks and caches constraints for one tokenizer; thread-safe (the server compiles off the engine's thread).

    Args:
      tokenizer: a Hugging Face fast tokenizer (llguidance reads its ``tokenizer.json``).
      vocab_size: the model's vocabulary ``V`` (its logits' width; may exceed the tokenizer's): masks have
        ``ceil(V / 32)`` 32-bit words a row, and ids the tokenizer lacks are never allowed.
      eos_token_ids: the tokens that end a sequence; allowed only where the grammar accepts.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"structured outputs need a fast (Rust) tokenizer; {type(tokenizer).__name__} is not")
        self.vocab_size = max(int(vocab_size), len(tokenizer))
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size,
                                                      eos_token=[int(t) for t in eos_token_ids])
        self._cache: collections.OrderedDict[StructuredOutputsParams, llguidance.LLMatcher] = \
            collections.OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[StructuredOutputsParams, threading.Lock] = {}  # one lock per constraint compiling
        self.hits = self.misses = 0

    def compile(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        """A fresh matcher for ``params`` at the start of the output. Raises ``ValueError`` naming what is
        wrong with the constraint (llguidance's message) before any work. Threads asking for the same new
        constraint at once compile it once (the others wait for it); different ones compile side by side."""
        with self._lock:
            key_lock = self._building.setdefault(params, threading.Lock())
        with key_lock:
            with self._lock:
                cached = self._cache.get(params)
                if cached is not None:
                    self._cache.move_to_end(params)
                    self.hits += 1
                    return cached.deep_copy()
            try:  # outside the engine-wide lock: llguidance drops the GIL while it builds
                matcher = self._checked_matcher(params)
                with self._lock:  # cached before the key's lock goes: a later thread finds one or the other
                    self.misses += 1
                    self._cache[params] = matcher
                    while len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(params, None)
            return matcher.deep_copy()

    def _checked_matcher(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        grammar = grammar_text(params)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        # Warnings name schema features llguidance would ignore ("Unimplemented keys", "Unknown format"):
        # refused too, so that an output never silently breaks a rule of its schema.
        if is_error or messages:
            raise ValueError(f"{params.kind}: {'; '.join(messages)}")
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"{params.kind}: {matcher.get_error()}")
        return matcher


@functools.lru_cache(maxsize=8)
def compiler_for(tokenizer: Any, vocab_size: int) -> GrammarCompiler:
    """The ``GrammarCompiler`` of a tokenizer and model vocabulary, shared by every engine of the model (the
    tokenizer's conversion to llguidance costs up to a second on a large vocabulary). Sequences end at the
    tokenizer's EOS."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return GrammarCompiler(tokenizer, vocab_size, [] if eos is None else [eos])
