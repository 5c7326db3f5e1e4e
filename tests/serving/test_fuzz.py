"""Fuzzing both generation routes from the request schemas the server publishes in /openapi.json.

Bodies are drawn from each schema (and, field by field, replaced by arbitrary JSON) by hypothesis;
every answer must be a 2xx or a clean 4xx (no 5xx, no leak), and a well-formed stream running
meanwhile must come out exactly as the offline reference says.
"""

from __future__ import annotations

import concurrent.futures
import json
from typing import Any

import mmjax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.serving_fixtures import assert_clean_error, raw_request

ROUTES = {"/v1/chat/completions": "ChatCompletionRequest", "/v1/completions": "CompletionRequest"}

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def from_schema(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> st.SearchStrategy:
    """Values valid under ``schema`` (the subset of JSON schema pydantic emits), mostly."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components, depth + 1) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(low, schema.get("maximum"), allow_nan=False, allow_infinity=False,
                         exclude_min="exclusiveMinimum" in schema)
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30))
    if kind == "array":
        items = from_schema(schema.get("items", {}), components, depth + 1) if depth < 6 else _JSON
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 3), 3))
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {k: from_schema(v, components, depth + 1) for k, v in properties.items()}
        return st.fixed_dictionaries({k: fields[k] for k in required},
                                     optional={k: v for k, v in fields.items() if k not in required})
    return _JSON


@st.composite
def bodies(draw, schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A body from ``schema``, some fields swapped for arbitrary JSON; generation kept to a few tokens."""
    body = draw(from_schema(schema, components))
    for key in list(body):
        if draw(st.integers(0, 9)) == 0:
            body[key] = draw(_JSON)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > 4:
            body[key] = 4
    if not any(isinstance(body.get(k), int) for k in ("max_tokens", "max_completion_tokens")):
        body["max_tokens"] = 2
    return body


def test_fuzzed_requests_get_no_5xx_and_leave_a_concurrent_stream_alone(server, client, reference_llm):
    status, _, raw = raw_request(server.url, "GET", "/openapi.json")
    assert status == 200
    spec = json.loads(raw)
    components = spec["components"]["schemas"]
    for path, name in ROUTES.items():  # each route's body is published, by reference
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/" + name) and components[name]["properties"]
    messages = [{"role": "user", "content": "Tell me a long story about the sea."}]
    want = mmjax.chat(reference_llm, messages, mmjax.SamplingParams(temperature=0.0, max_tokens=150,
                                                                    ignore_eos=True))[0].text

    def stream() -> str:
        chunks = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=150, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True})
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(stream)
        _fuzz(server, components)
        assert running.result() == want


def _fuzz(server, components: dict[str, Any]) -> None:
    route = st.sampled_from(sorted(ROUTES))

    @settings(max_examples=80, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data) -> None:
        path = data.draw(route)
        body = data.draw(bodies(components[ROUTES[path]], components))
        status, headers, reply = raw_request(server.url, "POST", path, json.dumps(body).encode())
        assert status < 500, (path, body, reply)
        if status >= 400:
            assert_clean_error(status, headers, reply)

    one()
