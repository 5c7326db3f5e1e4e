"""The engine loop: requests join between steps, a failure stays with its request, shutdown drains or aborts,
and ``mmjax serve`` itself starts, answers and stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import mmjax
import mmjax.engine.engine as engine_module
from mmjax.serving.engine_loop import EngineLoop, EngineStopped, OutputStream
from tests.engine.engine_fixtures import LLAVA, checkpoint, load
from tests.serving.serving_fixtures import data_url, image, image_message, wait_until_idle

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=512)


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


def _processed(llm, text: str):
    return llm.process(f"USER: {text} ASSISTANT:")


async def _run(loop: EngineLoop, processed, params, request_id):
    async with await loop.open(processed, params, request_id) as stream:
        return await stream.last()


def test_requests_join_while_others_run_and_each_gets_a_fresh_engines_answer(llm, monkeypatch):
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    texts = ["Tell me a story.", "Count to five.", "What is the sea?"]
    want = [o.token_ids for o in mmjax.generate(load(LLAVA), [f"USER: {t} ASSISTANT:" for t in texts], params,
                                                engine_config=CONFIG, use_tqdm=False)]
    engine = llm.engine(CONFIG)
    # The first request's third step waits until the others are queued: they join while it decodes,
    # whatever the machine's speed (it has 9 of its 12 tokens still to make).
    decoding, others_queued = threading.Event(), threading.Event()
    real_step = engine.step

    def step_that_lets_the_others_join():
        if engine.stats["steps"] == 2:
            decoding.set()
            others_queued.wait(timeout=120)
        return real_step()

    monkeypatch.setattr(engine, "step", step_that_lets_the_others_join)
    loop = EngineLoop(engine).start()

    async def joined_while_running():
        first = asyncio.ensure_future(_run(loop, _processed(llm, texts[0]), params, "r0"))
        assert await asyncio.to_thread(decoding.wait, 120)
        streams = [OutputStream(loop, f"r{i}") for i in (1, 2)]
        taken = [loop.submit(_processed(llm, texts[i]), params, s.request_id, s.sink) for i, s in zip((1, 2), streams)]
        others_queued.set()
        for future in taken:
            await asyncio.wrap_future(future)
        return [await first] + [await s.last() for s in streams]

    outputs = asyncio.run(joined_while_running())
    loop.shutdown()
    assert [o.token_ids for o in outputs] == want
    assert engine.stats["steps"] < sum(len(w) for w in want)  # they shared steps


def test_a_request_that_fails_in_a_step_fails_alone(llm, monkeypatch):
    engine = llm.engine(CONFIG)
    loop = EngineLoop(engine).start()
    real = engine_module.record_sample

    def faulty(request, *args, **kwargs):
        if request.request_id == "bad" and len(request.output_token_ids) == 3:
            raise RuntimeError("injected fault while sampling")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(engine_module, "record_sample", faulty)
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

    async def together():
        return await asyncio.gather(*(_run(loop, _processed(llm, "Tell me a story."), params, rid)
                                      for rid in ("good-0", "bad", "good-1")))

    good0, bad, good1 = asyncio.run(together())
    loop.shutdown()
    assert bad.finish_reason == "error" and "injected fault while sampling" in bad.error
    assert good0.finish_reason == good1.finish_reason == "length" and good0.token_ids == good1.token_ids
    assert wait_until_idle(engine)


def test_shutdown_aborts_what_is_running_and_refuses_new_requests(llm):
    engine = llm.engine(CONFIG)
    loop = EngineLoop(engine).start()
    long = mmjax.SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)

    async def cut_short():
        stream = await loop.open(_processed(llm, "Tell me a long story."), long, "long")
        await stream.__anext__()  # it is running
        await asyncio.get_running_loop().run_in_executor(None, loop.shutdown, 0.0)
        return await stream.last()

    output = asyncio.run(cut_short())
    assert output.finished and "shutting down" in output.error and len(output.token_ids) < 400
    assert wait_until_idle(engine, timeout_s=1)
    with pytest.raises(EngineStopped, match="takes no new requests"):
        loop.submit(_processed(llm, "hi"), long, "late", lambda _: None).result(timeout=5)


def test_shutdown_with_a_drain_period_lets_requests_finish(llm):
    engine = llm.engine(CONFIG)
    loop = EngineLoop(engine).start()
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)

    async def drained():
        stream = await loop.open(_processed(llm, "Count to five."), params, "short")
        await asyncio.get_running_loop().run_in_executor(None, loop.shutdown, 60.0)
        return await stream.last()

    output = asyncio.run(drained())
    assert output.finish_reason == "length" and output.error is None and len(output.token_ids) == 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mmjax_serve_starts_answers_and_stops_on_ctrl_c():
    port = _free_port()
    command = [sys.executable, "-m", "mmjax", "serve", "--model", checkpoint(LLAVA), "--port", str(port),
               "--no-warmup", "--shutdown-drain", "5", "--served-model-name", "tiny"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu",
                                   "MMJAX_COMPILATION_CACHE": os.environ["MMJAX_WORKER_COMPILATION_CACHE"]})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.stdout.read()
        body = json.dumps({"model": "tiny", "messages": image_message(data_url(image(40))), "max_tokens": 4,
                           "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
        assert reply["usage"]["completion_tokens"] == 4 and reply["choices"][0]["finish_reason"] == "length"
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
        log = server.stdout.read()
        assert "Application shutdown complete" in log and "Traceback" not in log, log
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
