"""Structured outputs through the server: OpenAI's ``response_format`` and vLLM's ``structured_outputs``.

The tiny checkpoint has random weights, so only the constraint can make its outputs valid JSON, one of
the choices or a match of the regex: these tests fail if the server drops the constraint on the way.
"""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import openai
import pytest

import mmjax
from tests.serving.serving_fixtures import assert_clean_error, raw_request

MODEL = "tiny-llava"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
MESSAGES = [{"role": "user", "content": "Give me a number as JSON."}]


def _json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_chat_json_schema_gives_valid_json_that_stops(client):
    got = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200, temperature=0,
                                         response_format=_json_schema_format(SCHEMA))
    jsonschema.validate(json.loads(got.choices[0].message.content), SCHEMA)
    assert got.choices[0].finish_reason == "stop"


def test_streamed_json_schema_joins_to_valid_json(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200, temperature=0.8,
                                                 seed=3, stream=True, response_format=_json_schema_format(SCHEMA)))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_json_object_gives_a_json_object(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    got = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=200, temperature=0,
                                    extra_body={"response_format": _json_schema_format(schema)})
    jsonschema.validate(json.loads(got.choices[0].text), schema)
    got = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                         response_format={"type": "json_object"})
    assert got.choices[0].message.content.lstrip().startswith("{")  # may be cut by max_tokens, never free text


def test_completions_choice_equals_the_offline_answer(client, reference_llm):
    constraint = {"choice": ["yes", "no"]}
    got = client.completions.create(model=MODEL, prompt=["Is the sea wet?", "Is fire cold?"], max_tokens=20,
                                    temperature=0, extra_body={"structured_outputs": constraint})
    params = mmjax.SamplingParams(max_tokens=20, temperature=0.0, structured_outputs=constraint)
    want = mmjax.generate(reference_llm, ["Is the sea wet?", "Is fire cold?"], params)
    assert [c.text for c in got.choices] == [w.text for w in want]
    assert all(c.text in ("yes", "no") and c.finish_reason == "stop" for c in got.choices)


def test_chat_regex_is_matched_whole(client):
    got = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=50, temperature=1.0, seed=5,
                                         extra_body={"structured_outputs": {"regex": "[a-c]{3}-[0-9]{2}"}})
    assert re.fullmatch("[a-c]{3}-[0-9]{2}", got.choices[0].message.content)


def test_the_constraint_compiles_off_the_engine_loop_thread(client, server, monkeypatch):
    engine, threads = server.app.state.serving.engine, []
    real = engine.check_structured_outputs
    monkeypatch.setattr(engine, "check_structured_outputs",
                        lambda params: threads.append(threading.current_thread().name) or real(params))
    client.completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=0,
                              extra_body={"structured_outputs": {"regex": "[a-z]+"}})
    assert len(threads) == 1 and threads[0].startswith("mmjax-map")


def _bad_constraints() -> dict[str, tuple[str, dict, str, str]]:
    """name: (route, body fields, the param named, a pattern of the message)."""
    chat, completions = "/v1/chat/completions", "/v1/completions"
    return {
        "unknown response_format type": (chat, {"response_format": {"type": "structural_tag"}},
                                         "response_format.type", r"'text', 'json_object' or 'json_schema'"),
        "json_schema without its schema": (chat, {"response_format": {"type": "json_schema", "json_schema": {
            "name": "x"}}}, "response_format.json_schema.schema", r"schema: Field required"),
        "json_schema type without json_schema": (completions, {"response_format": {"type": "json_schema"}},
                                                 "response_format", r"needs a json_schema object"),
        "schema that does not compile": (chat, {"response_format": _json_schema_format(
            {"type": "object", "if": {}})}, "response_format", r"schema: Unimplemented keys: \[\"if\"\]"),
        "regex that does not compile": (completions, {"structured_outputs": {"regex": "a(b"}},
                                        "structured_outputs", r"(?s)structured_outputs: regex: .*unclosed group"),
        "grammar that does not parse": (chat, {"structured_outputs": {"grammar": "root ::= ("}},
                                        "structured_outputs", r"structured_outputs: grammar: not valid GBNF"),
        "empty choice": (completions, {"structured_outputs": {"choice": []}}, "structured_outputs",
                         r"choice=\[\]: give at least one choice"),
        "two constraints": (completions, {"structured_outputs": {"choice": ["a"], "regex": "a"}},
                            "structured_outputs", r"exactly one of .* 2 were"),
        "unknown structured_outputs field": (chat, {"structured_outputs": {"jsonn": {}}}, "structured_outputs",
                                             r"unknown fields \['jsonn'\]"),
        "both fields": (chat, {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
                        "response_format", r"response_format or structured_outputs, not both"),
        "vLLM's older guided_json": (completions, {"guided_json": SCHEMA}, "guided_json", r"structured_outputs"),
    }


@pytest.mark.parametrize("name", sorted(_bad_constraints()))
def test_a_bad_constraint_is_a_clean_400_naming_its_field(server, name):
    path, fields, param, pattern = _bad_constraints()[name]
    prompt = {"messages": MESSAGES} if path.endswith("chat/completions") else {"prompt": "x"}
    status, headers, body = raw_request(server.url, "POST", path, json.dumps({**prompt, **fields}).encode())
    assert status == 400, (name, body)
    error = assert_clean_error(status, headers, body)
    assert error["param"] == param and error["type"] == "invalid_request_error", (name, error)
    assert re.search(pattern, error["message"]), (name, error["message"])


def test_the_official_client_hears_the_bad_schema(client):
    with pytest.raises(openai.BadRequestError, match="Unimplemented keys") as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4,
                                       response_format=_json_schema_format({"type": "object", "if": {}}))
    assert refused.value.body["param"] == "response_format"


def test_openapi_documents_the_constraint_fields(server):
    status, _, raw = raw_request(server.url, "GET", "/openapi.json")
    components = json.loads(raw)["components"]["schemas"]
    assert components["ResponseFormat"]["properties"]["type"]["enum"] == ["text", "json_object", "json_schema"]
    assert "schema" in components["JsonSchemaFormat"]["required"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        properties = components[name]["properties"]
        assert "response_format" in properties
        published = properties["structured_outputs"]["anyOf"][0]["properties"]
        assert set(published) >= {"json", "regex", "choice", "grammar", "json_object"}
