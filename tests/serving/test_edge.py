"""Every field checked at the edge: a value out of range, a body no request could mean, or an image the
server refuses is a 400 that names the field (and the range), holds a request id and leaks nothing of
the server; a route or method that does not exist is a clean 404 / 405.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.serving.serving_fixtures import assert_clean_error, data_url, image, image_message, raw_request

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
HELLO = [{"role": "user", "content": "Hello"}]


def _chat(**fields) -> bytes:
    return json.dumps({"messages": HELLO, **fields}).encode()


def _completion(**fields) -> bytes:
    return json.dumps({"prompt": "Hello", **fields}).encode()


def _deep(levels: int) -> bytes:
    return b'{"messages": ' + b"[" * levels + b"]" * levels + b"}"


_PNG_BYTES = base64.b64decode(data_url(image(3)).split(",")[1])
_TRUNCATED_PNG = "data:image/png;base64," + base64.b64encode(_PNG_BYTES[:60]).decode()
_TIFF = "data:image/tiff;base64,SUkqAAgAAAAAAA=="

CASES = {
    "max_tokens 0": (CHAT, _chat(max_tokens=0), "max_tokens",
                     r"max_tokens: Input should be greater than or equal to 1"),
    "max_tokens 0 (completions)": (COMPLETIONS, _completion(max_tokens=0), "max_tokens", r"greater than or equal to 1"),
    "max_completion_tokens 0": (CHAT, _chat(max_completion_tokens=0), "max_completion_tokens", r"greater than"),
    "top_k 2**31": (CHAT, _chat(top_k=2**31), "top_k", r"top_k: Input should be less than or equal to 2147483647"),
    "top_k 2**63 (completions)": (COMPLETIONS, _completion(top_k=2**63), "top_k",
                                  r"less than or equal to 2147483647"),
    "top_k -2": (CHAT, _chat(top_k=-2), "top_k", r"greater than or equal to -1"),
    "seed 2**64": (CHAT, _chat(seed=2**64), "seed", r"less than or equal to 9223372036854775807"),
    "min_p 2": (CHAT, _chat(min_p=2), "min_p", r"less than or equal to 1"),
    "repetition_penalty 0": (CHAT, _chat(repetition_penalty=0), "repetition_penalty", r"greater than 0"),
    "logprobs 21 (completions)": (COMPLETIONS, _completion(logprobs=21), "logprobs", r"less than or equal to 20"),
    "stop_token_ids past the vocabulary": (CHAT, _chat(stop_token_ids=[10**9]), "stop_token_ids",
                                           r"stop_token_ids\[0\]=1000000000: must be in \[0, \d+\)"),
    "17 stop strings": (CHAT, _chat(stop=["x"] * 17), "stop", r"at most 16 items"),
    "an empty cache_salt": (CHAT, _chat(cache_salt=""), "cache_salt", r"at least 1 character"),
    "a token id past the vocabulary": (COMPLETIONS, _completion(prompt=[1, 10**6]), "prompt",
                                       r"token id 1000000 at prompt position 1 is outside the vocabulary"),
    "a negative token id": (COMPLETIONS, _completion(prompt=[[1, -1]]), "prompt", r"greater than or equal to 0"),
    "65 prompts": (COMPLETIONS, _completion(prompt=["a"] * 65), "prompt", r"at most 64 items"),
    "NaN": (CHAT, b'{"messages": [], "temperature": NaN}', None, r"NaN is not a JSON number"),
    "Infinity": (COMPLETIONS, b'{"prompt": "a", "top_p": -Infinity}', None, r"-Infinity is not a JSON number"),
    "a 5,000-digit integer": (CHAT, b'{"messages": [], "seed": ' + b"9" * 5000 + b"}", None,
                              r"an integer of 5000 digits; the server takes at most 20"),
    "JSON nested 50,000 deep": (CHAT, _deep(50_000), None, r"nested too deeply"),
    "JSON nested 40 deep": (CHAT, _deep(40), "messages[0]", r"nested too deeply at messages"),
    "not UTF-8": (CHAT, b'{"messages": "\xff"}', None, r"not UTF-8"),
    "a lone surrogate in an image URL": (
        CHAT, b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": '
              b'{"url": "http://\\ud800.example/a.png"}}]}]}',
        "messages[0].content[0].image_url.url", r"lone surrogate"),
    "a lone surrogate in a key": (CHAT, b'{"messages": [], "\\udfff": 1}', None, r"lone surrogate"),
    "a truncated PNG": (CHAT, json.dumps({"messages": image_message(_TRUNCATED_PNG)}).encode(), None,
                        r"does not decode as an image"),
    "a TIFF": (CHAT, json.dumps({"messages": image_message(_TIFF)}).encode(), None,
               r"not .*a format the server takes \(JPEG, PNG, WEBP, GIF, BMP\)|format the server takes"),
    "a file:// URL": (CHAT, json.dumps({"messages": image_message("file:///etc/passwd")}).encode(), None,
                      r"file:// URLs are refused"),
    "the cloud metadata address": (CHAT, json.dumps({"messages": image_message(
        "http://169.254.169.254/latest/meta-data/")}).encode(), None, r"non-public \(link-local\) address"),
    "a raised media limit": (CHAT, _chat(mm_processor_kwargs={"max_pixels": 10**9}), "mm_processor_kwargs.max_pixels",
                             r"must be in \(0, 262144\] \(a request may lower the server's limit, not raise it\)"),
    "an unknown processor knob": (CHAT, _chat(mm_processor_kwargs={"do_resize": False}),
                                  "mm_processor_kwargs.do_resize", r"not a knob this server takes"),
    "a lowered pixel limit": (CHAT, json.dumps({"messages": image_message(data_url(image(4))),
                                                "mm_processor_kwargs": {"max_pixels": 100}}).encode(), None,
                              r"is 30x30 = 900 pixels; the server allows at most 100"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_field_is_a_clean_400_naming_it(server, name):
    path, body, param, match = CASES[name]
    status, headers, reply = raw_request(server.url, "POST", path, body)
    assert status == 400, (name, reply)
    error = assert_clean_error(status, headers, reply)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"].startswith(param), error
    assert __import__("re").search(match, error["message"]), error["message"]


def test_a_pil_error_does_not_reach_the_client(server):
    """Before, Pillow's message about an unreadable image showed ``<_io.BytesIO object at 0x...>``."""
    junk = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()
    body = json.dumps({"messages": image_message(junk)}).encode()
    status, headers, reply = raw_request(server.url, "POST", CHAT, body)
    assert status == 400 and "BytesIO" not in reply.decode()
    assert_clean_error(status, headers, reply)


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing", 404), ("GET", CHAT, 405),
                                                  ("DELETE", "/v1/models", 405)])
def test_routes_and_methods_that_do_not_exist_are_clean_errors(server, method, path, status):
    got, headers, reply = raw_request(server.url, method, path)
    assert got == status
    assert_clean_error(got, headers, reply)


def test_every_answer_carries_a_request_id(server):
    status, headers, reply = raw_request(server.url, "POST", COMPLETIONS, _completion(max_tokens=2, temperature=0))
    assert status == 200 and headers["x-request-id"].startswith("req-")
    other = raw_request(server.url, "POST", COMPLETIONS, _completion(max_tokens=2, temperature=0))[1]
    assert other["x-request-id"] != headers["x-request-id"]
