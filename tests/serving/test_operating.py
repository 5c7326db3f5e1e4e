"""Operating the server: /metrics parsed with Prometheus' own parser, admission control under a burst
(503 + Retry-After before any image is fetched), the API key, a clean log line for a client that hangs
up mid-body, image servers that answer malformed HTTP, and one request's failing parameters failing it
alone while a neighbour's stream goes on.

One server with its own engine: 2 sequences a step and no queue beyond them, an API key, and
private addresses allowed (its image servers listen on 127.0.0.1).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import socket

import mmjax
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmjax.engine.sampler import SamplingTensors
from mmjax.serving.app import ServerConfig
from mmjax.serving.server import ServerThread
from tests.serving.conftest import MEDIA
from tests.serving.raw_http import answer, hang, raw_server
from tests.serving.serving_fixtures import assert_clean_error, data_url, image, image_message, raw_request, \
    wait_until_idle

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def guarded(served_llm):
    engine = served_llm.engine(mmjax.EngineConfig(max_num_seqs=2, max_num_batched_tokens=256, max_model_len=1024))
    config = ServerConfig(model_name="tiny-llava", media=dataclasses.replace(MEDIA, allow_private_addresses=True),
                          api_key=KEY, max_num_queued_requests=0)
    with ServerThread(served_llm, engine, config) as running:
        yield running


def _post(server, body: dict, headers=AUTH) -> tuple[int, dict, bytes]:
    return raw_request(server.url, "POST", CHAT, json.dumps(body).encode(), headers)


def _metrics(server) -> dict[str, float]:
    status, _, body = raw_request(server.url, "GET", "/metrics")
    assert status == 200
    return {sample.name + json.dumps(sample.labels, sort_keys=True) * bool(sample.labels): sample.value
            for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


def test_the_api_key_guards_the_v1_routes_only(guarded):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, got_headers, body = _post(guarded, {"messages": [{"role": "user", "content": "hi"}]}, headers)
        assert status == 401
        assert assert_clean_error(status, got_headers, body)["type"] == "authentication_error"
    assert raw_request(guarded.url, "GET", "/health")[0] == 200
    assert raw_request(guarded.url, "GET", "/metrics")[0] == 200
    assert raw_request(guarded.url, "GET", "/v1/models", headers=AUTH)[0] == 200


def test_metrics_count_tokens_latencies_caches_and_no_compilation_after_start(guarded, reference_llm):
    before = _metrics(guarded)
    messages = image_message(data_url(image(60)))
    status, _, body = _post(guarded, {"messages": messages, "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert status == 200
    usage = json.loads(body)["usage"]
    after = _metrics(guarded)
    assert after["mmjax_generation_tokens_total"] - before["mmjax_generation_tokens_total"] == 5
    assert after["mmjax_prompt_tokens_total"] - before["mmjax_prompt_tokens_total"] == usage["prompt_tokens"]
    assert after["mmjax_time_to_first_token_seconds_count"] - before["mmjax_time_to_first_token_seconds_count"] == 1
    assert after["mmjax_time_per_output_token_seconds_count"] - before["mmjax_time_per_output_token_seconds_count"] == 1
    for cache in ("prefix_cache", "encoder_cache", "processor_cache"):
        assert after[f"mmjax_{cache}_queries_total"] >= after[f"mmjax_{cache}_hits_total"] >= 0
    assert after["mmjax_processor_cache_queries_total"] > before.get("mmjax_processor_cache_queries_total", 0)
    assert after["mmjax_num_requests_running"] == 0 and after["mmjax_kv_cache_pages_total"] > 0
    assert after['mmjax_requests_total{"route": "/v1/chat/completions", "status": "2xx"}'] >= 1
    assert "mmjax_compilations_after_start_total" in after


def test_a_burst_past_capacity_gets_503_with_retry_after_before_any_fetch(guarded):
    long = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 400, "temperature": 0,
            "ignore_eos": True, "stream": True}
    holders, rejected = [], _metrics(guarded)["mmjax_requests_rejected_total"]
    try:
        for _ in range(2):  # the capacity: 2 sequences a step, no queue
            conn = socket.create_connection(tuple(guarded.url.removeprefix("http://").split(":")))
            body = json.dumps(long).encode()
            conn.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: "
                         f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            assert b"200 OK" in conn.recv(4096)  # admitted and streaming
            holders.append(conn)
        with raw_server(hang()) as (port, heads):
            burst = {"messages": image_message(f"http://127.0.0.1:{port}/a.png"), "max_tokens": 2}
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: _post(guarded, burst), range(8)))
            assert heads == []  # refused before any image was fetched
        for status, headers, body in answers:
            assert status == 503 and headers["retry-after"] == "1"
            assert assert_clean_error(status, headers, body)["code"] == "server_busy"
        assert _metrics(guarded)["mmjax_requests_rejected_total"] - rejected == 8
    finally:
        for conn in holders:
            conn.close()
    assert wait_until_idle(guarded.app.state.serving.engine)
    status, _, _ = _post(guarded, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200  # the places came back when the clients hung up


def test_a_client_that_hangs_up_mid_body_costs_one_log_line(guarded, caplog):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="mmjax.serving"):
            conn = socket.create_connection(tuple(guarded.url.removeprefix("http://").split(":")))
            conn.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: "
                         "application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\"".encode())
            conn.close()
            for _ in range(200):
                if any("before its request was read" in r.getMessage() for r in caplog.records):
                    break
                __import__("time").sleep(0.02)
        assert any("closed the connection before its request was read" in r.getMessage() for r in caplog.records)
        assert not any(r.exc_info for r in records + caplog.records)  # no traceback
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)


@pytest.mark.parametrize("handler, match", [
    (answer(b"", "2OO NOT A STATUS"), r"malformed HTTP response"),
    (lambda conn, head, stop: conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200000 + b"\r\n"),
     r"malformed HTTP response"),
    (answer(b"<html>not an image</html>", headers=("Content-Type: image/png",)), r"does not decode as an image"),
    (answer(b"", "302 Found", ("Location: ftp://127.0.0.1/a.png",)), r"redirects to a URL that is not http\(s\)"),
])
def test_image_servers_that_misbehave_get_a_clean_400(guarded, handler, match):
    with raw_server(handler) as (port, _):
        status, headers, body = _post(guarded, {"messages": image_message(f"http://127.0.0.1:{port}/a.png")})
    error = assert_clean_error(status, headers, body)
    assert status == 400 and __import__("re").search(match, error["message"]), error
    assert str(port) not in error["message"]


def test_parameters_that_fail_inside_a_step_fail_their_request_alone(guarded, reference_llm, monkeypatch):
    real = SamplingTensors.build

    def build(params, *args, **kwargs):  # a request with seed 666 cannot be sampled, as top_k 2**31 once could not
        if any(p.seed == 666 for p in params):
            raise OverflowError("injected: a parameter the sampler cannot hold")
        return real(params, *args, **kwargs)

    monkeypatch.setattr(SamplingTensors, "build", staticmethod(build))
    messages = image_message(data_url(image(61)))
    want = mmjax.chat(reference_llm, messages, mmjax.SamplingParams(max_tokens=12, temperature=0.5, seed=7,
                                                                   ignore_eos=True))[0].text
    body = {"messages": messages, "max_tokens": 12, "temperature": 0.5, "ignore_eos": True, "stream": True}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        good = pool.submit(raw_request, guarded.url, "POST", CHAT, json.dumps({**body, "seed": 7}).encode(), AUTH)
        bad = pool.submit(raw_request, guarded.url, "POST", CHAT, json.dumps({**body, "seed": 666}).encode(), AUTH)
        good_events, bad_events = (_events(f.result()[2]) for f in (good, bad))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in good_events if e.get("choices")) == want
    failure = [e for e in bad_events if "error" in e]
    assert len(failure) == 1 and "injected" not in json.dumps(failure)
    assert failure[0]["error"]["type"] == "server_error" and failure[0]["error"]["request_id"].startswith("req-")
    assert wait_until_idle(guarded.app.state.serving.engine)


def _events(body: bytes) -> list[dict]:
    chunks = [c.removeprefix("data: ") for c in body.decode().split("\n\n") if c]
    assert chunks[-1] == "[DONE]"
    return [json.loads(c) for c in chunks[:-1]]
