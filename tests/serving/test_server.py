"""The OpenAI-compatible server, driven by the official ``openai`` client on 127.0.0.1.

Reference answers are ``mmjax.chat`` / ``mmjax.generate`` on a second handle of the same
checkpoint (greedy decoding does not depend on the batch around a request).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import re
import time
import urllib.error
import urllib.request

import openai
import pytest

import mmjax
from tests.serving.conftest import MAX_REQUEST_BYTES
from tests.serving.serving_fixtures import (
    closed_port_url,
    data_url,
    image,
    image_message,
    wait_until_idle,
)

MODEL = "tiny-llava"


def _offline_chat(llm, messages, max_tokens=8, **params):
    params.setdefault("temperature", 0.0)
    return mmjax.chat(llm, messages, mmjax.SamplingParams(max_tokens=max_tokens, **params))[0]


def _post(server, path: str, body: bytes, content_type="application/json") -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _post_headers_only(server, path: str, content_length: int) -> tuple[int, dict]:
    """Declare a body of ``content_length`` bytes and send none: the server must answer from the headers
    (sending the body too would race its early reply and end in a broken pipe)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(content_length))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_chat_with_a_base64_image_equals_mmjax_chat(client, reference_llm):
    messages = image_message(data_url(image(10)))
    got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    want = _offline_chat(reference_llm, messages)
    assert got.choices[0].message.content == want.text
    assert got.choices[0].message.role == "assistant" and got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)  # image placeholders included
    assert got.usage.completion_tokens == len(want.token_ids) == 8
    assert got.object == "chat.completion" and got.model == MODEL


def test_max_completion_tokens_stop_and_seed(client, reference_llm):
    messages = image_message(data_url(image(11)))
    full = _offline_chat(reference_llm, messages, max_tokens=12)
    got = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=5, temperature=0)
    assert got.usage.completion_tokens == 5
    stop = full.text[3:5]
    assert len(stop) == 2
    cut = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == full.text[:full.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=1.0,
                                              seed=7, top_p=0.9).choices[0].message.content for _ in range(2)]
    offline = _offline_chat(reference_llm, messages, max_tokens=6, temperature=1.0, seed=7, top_p=0.9).text
    assert sampled == [offline, offline]  # a seeded request's samples depend on its seed only


def test_streamed_answer_joins_to_the_same_text(client, reference_llm):
    messages = image_message(data_url(image(12)))
    want = _offline_chat(reference_llm, messages, max_tokens=10)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_the_raw_stream_is_server_sent_events_ending_with_done(server):
    body = json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "stream": True})
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_logprobs_equal_the_offline_ones(client, reference_llm):
    messages = image_message(data_url(image(13)))
    want = _offline_chat(reference_llm, messages, max_tokens=4, logprobs=3)
    got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0,
                                         logprobs=True, top_logprobs=3).choices[0].logprobs.content
    assert len(got) == 4
    for position, token_id, offline in zip(got, want.token_ids, want.logprobs):
        assert position.logprob == pytest.approx(offline[token_id].logprob, abs=1e-5)
        ranked = sorted((lp for lp in offline.values() if lp.rank is not None), key=lambda lp: lp.rank)
        assert [t.logprob for t in position.top_logprobs] == pytest.approx([lp.logprob for lp in ranked], abs=1e-5)
        assert position.bytes == list(position.token.encode())


def test_32_concurrent_clients_each_get_their_own_answer(client, reference_llm):
    conversations = [image_message(data_url(image(100 + i)), f"Picture {i}: what is it?") for i in range(32)]
    want = mmjax.chat(reference_llm, conversations, mmjax.SamplingParams(temperature=0.0, max_tokens=6))

    def ask(messages):
        return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6,
                                              temperature=0).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(ask, conversations))
    assert got == [w.text for w in want]
    assert len(set(got)) > 1  # the answers depend on the images: a mix-up could not pass


def test_completions_text_token_ids_and_a_batch(client, reference_llm):
    prompts = ["USER: Write about the sea. ASSISTANT:", "USER: Count to five. ASSISTANT:"]
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=6)
    want = mmjax.generate(reference_llm, prompts, params)
    one = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=6, temperature=0)
    assert one.choices[0].text == want[0].text and one.object == "text_completion"
    ids = client.completions.create(model=MODEL, prompt=list(want[1].prompt_token_ids), max_tokens=6, temperature=0)
    assert ids.choices[0].text == want[1].text
    batch = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0)
    assert [c.text for c in sorted(batch.choices, key=lambda c: c.index)] == [w.text for w in want]
    assert batch.usage.completion_tokens == 12
    streamed = ["", ""]
    for chunk in client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == [w.text for w in want]
    lp = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=3, temperature=0, logprobs=2)
    assert len(lp.choices[0].logprobs.tokens) == 3 and "".join(lp.choices[0].logprobs.tokens) == lp.choices[0].text


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        assert response.status == 200


def _bad_requests(big_image_url):
    good_image = data_url(image(20))
    user = lambda *parts: [{"role": "user", "content": list(parts)}]  # noqa: E731
    url_part = lambda url: {"type": "image_url", "image_url": {"url": url}}  # noqa: E731
    return {
        "unknown role": (dict(messages=[{"role": "wizard", "content": "hi"}]), r"role 'wizard'"),
        "unknown part type": (dict(messages=user({"type": "input_audio", "input_audio": {}})), r"type 'input_audio'"),
        "image that does not decode": (dict(messages=user(url_part("data:image/png;base64,aGVsbG8="))),
                                       r"does not decode as an image"),
        "loopback url": (dict(messages=user(url_part(closed_port_url()))), r"non-public \(loopback\) address"),
        "oversized image": (dict(messages=user(url_part(big_image_url))), r"allows at most 65536"),
        "too many images": (dict(messages=user(*[url_part(good_image)] * 3)), r"3 images; this model takes at most 2"),
        "prompt longer than the context": (dict(messages=user({"type": "text", "text": "sea " * 3000})),
                                           r"more than the context length 2048"),
        "max_tokens past the context": (dict(messages=user(url_part(good_image)), max_tokens=10**6),
                                        r"max_tokens asks for 1000000"),
        "negative temperature": (dict(messages=user(url_part(good_image)), temperature=-1),
                                 r"temperature: Input should be greater than or equal to 0 \(got -1\)"),
        "top_p above 1": (dict(messages=user(url_part(good_image)), top_p=1.5),
                          r"top_p: Input should be less than or equal to 1 \(got 1.5\)"),
        "presence penalty": (dict(messages=user(url_part(good_image)), presence_penalty=3),
                             r"presence_penalty: Input should be less than or equal to 2 \(got 3\)"),
        "n above 1": (dict(messages=user(url_part(good_image)), n=2), r"only n=1"),
        "top_logprobs too many": (dict(messages=user(url_part(good_image)), logprobs=True, top_logprobs=50),
                                  r"top_logprobs: Input should be less than or equal to 20 \(got 50\)"),
        "max_tokens a string": (dict(messages=user(url_part(good_image)), max_tokens="many"), r"max_tokens"),
        "messages missing": (dict(), r"messages: Field required"),
        "tools": (dict(messages=user(url_part(good_image)), tools=[{"type": "function", "function": {"name": "f"}}]),
                  r"tools and tool_choice are not supported"),
    }


def test_each_bad_request_gets_400_and_the_server_keeps_serving(client, server, reference_llm):
    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    for name, (body, match) in _bad_requests(data_url(noise)).items():
        status, reply = _post(server, "/v1/chat/completions", json.dumps({"model": MODEL, **body}).encode())
        assert status == 400, (name, reply)
        error = reply["error"]
        assert error["type"] == "invalid_request_error", name
        assert re.search(match, error["message"]), (name, error["message"])
    status, reply = _post(server, "/v1/chat/completions", b'{"messages": [')
    assert status == 400 and "not valid JSON" in reply["error"]["message"]
    status, reply = _post(server, "/v1/chat/completions", b'["a list"]')
    assert status == 400 and "must be a JSON object" in reply["error"]["message"]
    status, reply = _post(server, "/v1/completions", json.dumps({"prompt": "hi", "echo": True}).encode())
    assert status == 400 and "echo is not supported" in reply["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    status, reply = _post_headers_only(server, "/v1/chat/completions", MAX_REQUEST_BYTES + 1)
    assert status == 413 and "at most" in reply["error"]["message"]
    with pytest.raises(openai.BadRequestError) as refused:  # the official client sees the same
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    assert refused.value.status_code == 400
    test_chat_with_a_base64_image_equals_mmjax_chat(client, reference_llm)  # still serving
    assert wait_until_idle(server.app.state.serving.engine)


def test_a_client_that_disconnects_frees_its_pages(client, server, monkeypatch):
    engine = server.app.state.serving.engine
    messages = image_message(data_url(image(30)))
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=400, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert engine.scheduler.running  # it was generating ...
    stream.close()
    assert wait_until_idle(engine)  # ... and hanging up freed everything
    # A non-streamed request whose client gives up (and closes the socket). Each step is held 20 ms, so its
    # 2000 tokens would take 40 s or more whatever the host's speed: the client's 1.5 s run out first, and
    # only an abort frees its pages in the 30 s allowed.
    real_step, real_abort, aborted = engine.step, engine.abort, []
    monkeypatch.setattr(engine, "step", lambda: time.sleep(0.02) or real_step())
    monkeypatch.setattr(engine, "abort", lambda request: aborted.append(request) or real_abort(request))
    body = json.dumps({"messages": messages, "max_tokens": 2000, "temperature": 0, "ignore_eos": True}).encode()
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(TimeoutError):
        urllib.request.urlopen(request, timeout=1.5)
    assert wait_until_idle(engine, timeout_s=30)
    assert len(aborted) == 1


def test_a_request_that_fails_while_running_gets_500_and_the_others_finish(client, server, reference_llm,
                                                                            monkeypatch):
    import mmjax.engine.engine as engine_module

    real = engine_module.record_sample

    def faulty(request, *args, **kwargs):
        if "poison" in (request.processed.prompt or ""):
            raise RuntimeError("injected fault while sampling")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(engine_module, "record_sample", faulty)
    good = image_message(data_url(image(50)))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        bad = pool.submit(client.chat.completions.create, model=MODEL, max_tokens=6, temperature=0,
                          messages=[{"role": "user", "content": "poison"}])
        fine = [pool.submit(client.chat.completions.create, model=MODEL, max_tokens=6, temperature=0, messages=good)
                for _ in range(2)]
        with pytest.raises(openai.InternalServerError, match=r"the server failed .* request id req-\w+") as failed:
            bad.result()
        assert "injected fault" not in str(failed.value)  # the details went to the log, not to the client
        answers = [f.result().choices[0].message.content for f in fine]
    assert answers == [_offline_chat(reference_llm, good, max_tokens=6).text] * 2
    assert wait_until_idle(server.app.state.serving.engine)
