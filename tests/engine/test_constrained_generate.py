"""Structured outputs through ``generate``: a model with random weights (which never writes valid JSON by
chance) writes outputs that parse and validate (``jsonschema``), full-match their regexes (Python's ``re``)
and grammars, and are members of their choice lists; free requests of the same batch are unchanged."""

from __future__ import annotations

import dataclasses
import json
import re

import jsonschema
import numpy as np
import pytest

import mmjax
from engine_fixtures import LLAVA, load
from mmjax.structured.compiler import compiler_for

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=512)
S = mmjax.StructuredOutputsParams
PROMPTS = ["USER: Describe the scene as JSON. ASSISTANT:", "USER: Hi ASSISTANT:", "USER: What now? ASSISTANT:"]

SCHEMAS = [
    # an object with an integer range and an enum
    {"type": "object", "required": ["count", "color"],
     "properties": {"count": {"type": "integer", "minimum": 0, "maximum": 9},
                    "color": {"enum": ["red", "green", "blue"]}}},
    # arrays with bounds, numbers with ranges, booleans
    {"type": "object", "required": ["scores", "ok"],
     "properties": {"scores": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1},
                               "minItems": 1, "maxItems": 3},
                    "ok": {"type": "boolean"}}},
    # strings with a pattern and lengths, const and null
    {"type": "object", "required": ["date", "tag", "v", "none"],
     "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                    "tag": {"type": "string", "minLength": 1, "maxLength": 4},
                    "v": {"const": 2}, "none": {"type": "null"}}},
    # what pydantic's model_json_schema() writes: $defs, $ref, anyOf with null, titles
    {"$defs": {"Box": {"title": "Box", "type": "object", "required": ["w", "label"],
                       "properties": {"w": {"title": "W", "type": "integer", "minimum": 1, "maximum": 99},
                                      "label": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]}}}},
     "title": "Boxes", "type": "object", "required": ["boxes"],
     "properties": {"boxes": {"type": "array", "items": {"$ref": "#/$defs/Box"}, "minItems": 1, "maxItems": 2}}},
    # a top-level array
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 5}, "minItems": 2, "maxItems": 4},
]


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


def constrained(constraint: S, **kwargs) -> mmjax.SamplingParams:
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_tokens", 440)
    return mmjax.SamplingParams(structured_outputs=constraint, **kwargs)


def declared_keys_only(value, schema: dict, defs: dict) -> bool:
    """Every object in ``value`` has only the keys its schema declares (the default closure)."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return set(value) <= set(props) and all(declared_keys_only(v, props[k], defs) for k, v in value.items())
    if isinstance(value, list) and "items" in schema:
        return all(declared_keys_only(v, schema["items"], defs) for v in value)
    return True


def test_json_schemas_parse_validate_and_stop(llm):
    """Greedy and sampled rows, with penalties on some, in one batch: every output is one JSON value valid
    under its schema, its objects hold only declared keys, whitespace between tokens stays bounded, and a
    completed output ends with finish_reason "stop"."""
    params = []
    for i, schema in enumerate(SCHEMAS):
        params.append(constrained(S(json=schema)))
        params.append(constrained(S(json=json.dumps(schema)), temperature=1.0, seed=i, repetition_penalty=1.2))
    outputs = mmjax.generate(llm, [PROMPTS[i % 3] for i in range(len(params))], params, engine_config=CONFIG,
                             use_tqdm=False)
    for out, p in zip(outputs, params):
        schema, text = p.structured_outputs.schema, out.outputs[0].text
        assert out.outputs[0].finish_reason == "stop", (text, out.outputs[0].finish_reason)
        value = json.loads(text)
        jsonschema.validate(value, schema)
        assert declared_keys_only(value, schema, schema.get("$defs", {})), text
        assert max(map(len, re.findall(r"\s+", text)), default=0) <= 22, repr(text)  # \r\n + 20 spaces or tabs


def test_regexes_choices_and_grammars_match_whole_outputs(llm):
    gbnf = """root ::= select_statement
select_statement ::= "SELECT " column " from " table " where " condition
column ::= "col_1 " | "col_2 "
table ::= "table_1 " | "table_2 "
condition ::= column "= " number
number ::= "1 " | "2 "
"""
    lark = 'start: greeting " " name "!"\ngreeting: "hello" | "hi"\nname: /[a-z]{2,5}/'
    cases = [  # constraint, an independent check of the whole output
        (S(regex=r"\d{4}-\d{2}-\d{2}"), lambda t: re.fullmatch(r"\d{4}-\d{2}-\d{2}", t)),
        (S(regex=r"(yes|no)( [a-z]{1,5}){0,2}"), lambda t: re.fullmatch(r"(yes|no)( [a-z]{1,5}){0,2}", t)),
        (S(choice=["yes", "no", "maybe so", 'a "quoted\\" one', "日本"]),
         lambda t: t in ["yes", "no", "maybe so", 'a "quoted\\" one', "日本"]),
        (S(grammar=gbnf), lambda t: re.fullmatch(
            r"SELECT (col_1 |col_2 ) from (table_1 |table_2 ) where (col_1 |col_2 )= (1 |2 )", t)),
        (S(grammar=lark), lambda t: re.fullmatch(r"(hello|hi) [a-z]{2,5}!", t)),
    ]
    params = [constrained(c, temperature=t, seed=7) for c, _ in cases for t in (0.0, 1.0)]
    outputs = mmjax.generate(llm, [PROMPTS[i % 3] for i in range(len(params))], params, engine_config=CONFIG,
                             use_tqdm=False)
    for out, (_, check) in zip(outputs, [case for case in cases for _ in range(2)]):
        assert out.outputs[0].finish_reason == "stop" and check(out.outputs[0].text), out.outputs[0].text


def test_free_requests_are_unchanged_by_constrained_neighbours(llm):
    free = [mmjax.SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
            mmjax.SamplingParams(temperature=0.9, seed=11, max_tokens=12, ignore_eos=True)]
    alone = mmjax.generate(llm, PROMPTS[:2], free, engine_config=CONFIG, use_tqdm=False)
    mixed_params = [free[0], constrained(S(json=SCHEMAS[0])), free[1], constrained(S(choice=["a", "b"]))]
    mixed = mmjax.generate(llm, [PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[2]], mixed_params,
                           engine_config=CONFIG, use_tqdm=False)
    assert [mixed[0].token_ids, mixed[2].token_ids] == [alone[0].token_ids, alone[1].token_ids]
    assert mixed[3].outputs[0].text in ("a", "b")


def test_length_is_never_reported_as_success(llm):
    [cut] = mmjax.generate(llm, PROMPTS[0], constrained(S(json=SCHEMAS[3]), max_tokens=3), engine_config=CONFIG,
                           use_tqdm=False)
    assert cut.outputs[0].finish_reason == "length" and len(cut.token_ids) == 3


def test_a_completed_grammar_ends_the_request_even_when_eos_is_ignored(llm):
    """The grammar admits nothing after "yes": the request stops there with "stop" (not "length"), also when
    ``ignore_eos`` would have it run on, and when the completing token is its ``max_tokens``-th."""
    choice = S(choice=["yes", "no"])
    outputs = mmjax.generate(llm, PROMPTS[:2], [constrained(choice, ignore_eos=True), constrained(choice)],
                             engine_config=CONFIG, use_tqdm=False)
    for out in outputs:
        assert out.outputs[0].finish_reason == "stop" and out.outputs[0].text in ("yes", "no")
    tokens = len(outputs[0].token_ids)
    [exact] = mmjax.generate(llm, PROMPTS[0], constrained(choice, max_tokens=tokens), engine_config=CONFIG,
                             use_tqdm=False)
    assert exact.outputs[0].finish_reason == "stop" and exact.token_ids == outputs[0].token_ids


def test_stop_strings_compose_and_logprobs_are_of_the_raw_distribution(llm):
    [out] = mmjax.generate(llm, PROMPTS[1], constrained(S(regex=r"abc-[a-z]{3}"), stop=["-"], logprobs=2),
                           engine_config=CONFIG, use_tqdm=False)
    assert out.outputs[0].text == "abc" and out.outputs[0].stop_reason == "-"
    # The first token's logprob is that of the model's own distribution (the logits before the mask).
    _, logits = llm.logits(PROMPTS[1])
    raw = logits[-1].astype(np.float64)
    raw = raw - raw.max() - np.log(np.exp(raw - raw.max()).sum())
    first = out.token_ids[0]
    assert abs(out.outputs[0].logprobs[0][first].logprob - raw[first]) < 1e-4
    assert out.outputs[0].logprobs[0][first].rank == 1 + int((raw > raw[first]).sum())


def test_eos_is_allowed_only_where_the_grammar_accepts(llm):
    """Masks of a fresh matcher, read bit by bit: EOS is off until the output is a whole match."""
    from mmjax.structured.masks import GrammarState, fill_masks

    compiler = compiler_for(llm.tokenizer, llm.hf_config.text_config.vocab_size)
    state = GrammarState(S(regex="ab{2,3}"), compiler.compile(S(regex="ab{2,3}")))
    eos = llm.tokenizer.eos_token_id

    def allowed() -> np.ndarray:
        masks = np.zeros((1, (compiler.vocab_size + 31) // 32), np.uint32)
        fill_masks(masks, [(0, state)])
        return np.unpackbits(masks.view(np.uint8), bitorder="little")[:compiler.vocab_size].astype(bool)

    for token in llm.tokenizer.encode("abb", add_special_tokens=False):
        assert not allowed()[eos] and allowed()[token]
        state.accept(token)
    assert allowed()[eos] and state.accepting and not state.complete  # "abb" matches; "abbb" would too
    with pytest.raises(ValueError, match="breaks the request's regex constraint"):
        state.accept(llm.tokenizer.encode("z", add_special_tokens=False)[0])


@pytest.mark.parametrize("constraint, message", [
    ({"json": {"type": "object", "if": {"type": "string"}, "then": {}}},
     r'json: .*Unimplemented keys: \["if", "then"\]'),
    ({"json": {"type": "string", "format": "no-such-format"}}, "json: .*Unknown format: no-such-format"),
    ({"json": "{not json"}, "json: not valid JSON"),
    ({"regex": "a(b"}, "(?s)regex: .*unclosed group"),
    ({"grammar": "root ::= \"a\" undefined_rule"}, "grammar: "),
])
def test_bad_constraints_are_refused_before_any_work(llm, constraint, message):
    engine = llm.engine(CONFIG)
    with pytest.raises(ValueError, match=message):
        engine.add_request(PROMPTS[0], mmjax.SamplingParams(structured_outputs=constraint))
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize("fields, error, message", [
    ({}, ValueError, "exactly one of json, regex, choice, grammar, json_object; none was given"),
    ({"json": {"type": "object"}, "regex": "a"}, ValueError, r"2 were \(json, regex\) given"),
    ({"choice": []}, ValueError, r"choice=\[\]: give at least one choice"),
    ({"choice": "yes"}, TypeError, "must be a list of str"),
    ({"choice": ["a", 1]}, TypeError, "every choice must be a str"),
    ({"json": True}, ValueError, "a boolean schema"),
    ({"json": ["a"]}, TypeError, "must be a JSON Schema object"),
    ({"regex": ""}, ValueError, "must be a non-empty str"),
    ({"grammar": " "}, ValueError, "must be a non-empty str"),
])
def test_bad_params_say_what_was_expected(fields, error, message):
    with pytest.raises(error, match=message):
        S(**fields)


def test_params_from_vllm_dicts():
    params = mmjax.SamplingParams(structured_outputs={"choice": ["a", "b"]})
    assert params.structured_outputs == S(choice=("a", "b"))
    assert S(json='{"type": "object", "b": 1}') == S(json={"b": 1, "type": "object"})  # one cache entry
    with pytest.raises(ValueError, match=r"unknown fields \['guided_json'\]"):
        mmjax.SamplingParams(structured_outputs={"guided_json": {}})
    with pytest.raises(TypeError, match="must be a StructuredOutputsParams"):
        mmjax.SamplingParams(structured_outputs="json")


def test_constraints_are_compiled_once_per_tokenizer(llm):
    compiler = compiler_for(llm.tokenizer, llm.hf_config.text_config.vocab_size)
    schema = S(json={"type": "object", "properties": {"unique_to_this_test": {"type": "boolean"}}})
    misses = compiler.misses
    params = constrained(schema)
    outputs = mmjax.generate(llm, PROMPTS, [params, params, dataclasses.replace(params, temperature=1.0, seed=1)],
                             engine_config=CONFIG, use_tqdm=False)
    assert compiler.misses == misses + 1 and all(o.outputs[0].finish_reason == "stop" for o in outputs)


def test_a_failing_grammar_fails_its_request_alone(llm, monkeypatch):
    from mmjax.structured.masks import GrammarState

    free = mmjax.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    [want] = mmjax.generate(llm, PROMPTS[0], free, engine_config=CONFIG, use_tqdm=False)
    real = GrammarState.accept

    def accept(self, token):
        if self.params.choice == ("boom", "bang"):
            raise ValueError("injected: the grammar engine failed")
        return real(self, token)

    monkeypatch.setattr(GrammarState, "accept", accept)
    params = [free, constrained(S(choice=["boom", "bang"])), constrained(S(choice=["yes", "no"]))]
    good, bad, other = mmjax.generate(llm, PROMPTS, params, engine_config=CONFIG, errors="return", use_tqdm=False)
    assert bad.finish_reason == "error" and "injected: the grammar engine failed" in bad.error
    assert good.token_ids == want.token_ids and other.outputs[0].text in ("yes", "no")
    assert not llm.engine(CONFIG).has_unfinished_requests()


def test_objects_are_closed_where_the_schema_is_silent():
    """Checked with ``jsonschema``: undeclared keys are refused in objects at any depth (``$defs``, ``items``,
    ``anyOf``), kept where the schema allows them, and ``allOf``'s branches may still add each other's keys;
    ``enum``/``const`` data is not touched."""
    from mmjax.structured.compiler import closed_objects

    def valid(schema, value) -> bool:
        return jsonschema.Draft202012Validator(schema).is_valid(value)

    nested = {"$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}}},
              "type": "object", "properties": {"ps": {"type": "array", "items": {"$ref": "#/$defs/P"}},
                                               "q": {"anyOf": [{"properties": {"y": {}}}, {"type": "null"}]}}}
    closed = closed_objects(nested)
    for extra in ({"ps": [{"x": 1, "z": 2}]}, {"q": {"y": 1, "z": 2}}, {"ps": [], "other": 1}):
        assert valid(nested, extra) and not valid(closed, extra)
    assert valid(closed, {"ps": [{"x": 1}], "q": {"y": 1}})
    open_map = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert closed_objects(open_map) == open_map and valid(closed_objects(open_map), {"any": 1})
    split = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert valid(closed_objects(split), {"a": 1, "b": 2})
    data = {"enum": [{"k": 1}], "const": {"properties": {}}, "default": {"type": "object"}}
    assert closed_objects(data) == data


def test_preempted_constrained_requests_resume_where_their_grammar_stood(llm):
    """A KV cache too small for the batch preempts requests mid-output; each comes back (recomputed), its
    grammar state kept, and writes the same tokens as with room to spare."""
    params = [constrained(S(regex=f"[a-z]{{{n}}}")) for n in (40, 44, 48, 52)]
    roomy = mmjax.generate(llm, PROMPTS + PROMPTS[:1], params, engine_config=CONFIG, use_tqdm=False)
    small = dataclasses.replace(CONFIG, num_pages=24, max_model_len=160)
    engine = llm.engine(small)
    preempted = engine.stats["preemptions"]
    tight = mmjax.generate(llm, PROMPTS + PROMPTS[:1], params, engine_config=small, use_tqdm=False)
    assert engine.stats["preemptions"] > preempted, "the small cache should force a preemption"
    for out, again, n in zip(roomy, tight, (40, 44, 48, 52)):
        assert re.fullmatch(f"[a-z]{{{n}}}", again.outputs[0].text) and again.token_ids == out.token_ids


def test_chat_takes_the_same_constraints(llm):
    [out] = mmjax.chat(llm, [{"role": "user", "content": "Yes or no?"}], constrained(S(choice=["yes", "no"])),
                       engine_config=CONFIG, use_tqdm=False)
    assert out.outputs[0].text in ("yes", "no") and out.outputs[0].finish_reason == "stop"


def test_generate_compiles_constraints_on_its_mapping_workers(llm, monkeypatch):
    """A new constraint is compiled where the prompt is mapped, off the thread that runs the steps; the engine
    then finds it compiled."""
    import threading

    from mmjax.structured.compiler import GrammarCompiler

    threads, real = [], GrammarCompiler._checked_matcher

    def checked(self, params):
        threads.append(threading.current_thread())
        return real(self, params)

    monkeypatch.setattr(GrammarCompiler, "_checked_matcher", checked)
    params = constrained(S(choice=["a new", "constraint"]))
    outputs = mmjax.generate(llm, PROMPTS, params, engine_config=CONFIG, use_tqdm=False)
    assert all(o.outputs[0].text in ("a new", "constraint") for o in outputs)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()


def test_threads_asking_for_one_new_constraint_compile_it_once(llm):
    from concurrent.futures import ThreadPoolExecutor

    compiler = compiler_for(llm.tokenizer, llm.hf_config.text_config.vocab_size)
    params = S(json={"type": "object", "properties": {"asked_by_eight_threads": {"type": "integer"}}})
    misses = compiler.misses
    with ThreadPoolExecutor(8) as pool:
        matchers = list(pool.map(lambda _: compiler.compile(params), range(8)))
    assert compiler.misses == misses + 1 and len({id(m) for m in matchers}) == 8  # each its own copy
