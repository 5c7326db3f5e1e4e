"""A model family's chat through the OpenAI-compatible server (on 127.0.0.1) against the offline engine."""

from __future__ import annotations

import pytest

import mmjax
from mmjax.serving.app import ServerConfig
from mmjax.serving.server import ServerThread


def assert_server_answers_as_offline(llm: mmjax.LLM, offline: mmjax.LLM, offline_messages: list[dict],
                                     http_messages: list[dict], name: str) -> None:
    """The server's reply, its stream and its logprobs for ``http_messages`` (images as data URLs) equal what
    ``mmjax.chat`` gives for ``offline_messages`` (the same images as PIL) on ``offline``, an engine of its own."""
    from openai import OpenAI

    want = mmjax.chat(offline, offline_messages, mmjax.SamplingParams(temperature=0.0, max_tokens=6, logprobs=2),
                      use_tqdm=False)[0]
    with ServerThread(llm, llm.engine(), ServerConfig(model_name=name)) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=name, messages=http_messages, max_tokens=6, temperature=0,
                                               logprobs=True, top_logprobs=2)
        stream = client.chat.completions.create(model=name, messages=http_messages, max_tokens=6, temperature=0,
                                                stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert reply.choices[0].message.content == want.text == streamed
    got = [entry.logprob for entry in reply.choices[0].logprobs.content]
    expected = [entry[token].logprob for entry, token in zip(want.logprobs, want.token_ids)]
    assert got == pytest.approx(expected, abs=1e-5)
