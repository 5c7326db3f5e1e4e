"""``mmjax serve`` under load: N concurrent clients, each sending chat requests with its own image.

The server runs exactly as ``mmjax serve`` runs it (default engine, warmed up) on 127.0.0.1, on the
benchmark checkpoint of ``generate_vs_transformers.py`` (a random LLaVA-1.5, 576 image tokens).
Each client streams its answers (server-sent events), so time to first token is measured where a
user sees it. The peer, in the same run: the same requests through offline ``mmjax.chat`` in one
batch, the most this engine does on this machine; the ratio is what serving costs on top
(HTTP, JSON, base64 images, requests arriving one by one).

Printed (JSON): requests/s, output tokens/s, time to first token and latency p50/p99, the offline
batch's requests/s and tokens/s, and the server's share of them.

    python benchmarks/serve.py [--clients 16] [--requests 32] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _images(count: int) -> list:
    """Distinct 336x336 crops of a photo, a different place and shift each."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photo = data.astronaut()  # 512x512
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        top, left = rng.integers(0, 512 - 336, size=2)
        images.append(Image.fromarray(photo[top:top + 336, left:left + 336]))
    return images


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _messages(url: str, i: int) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": f"Question {i}: what is shown in this image?"}]}]


def _ask(base: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat request; seconds to the first content chunk and to the end."""
    body = json.dumps({"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True, "logprobs": True,
                       "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            # logprobs on: every token arrives in a chunk, even one whose text is empty (the random
            # checkpoint's ids past its small tokenizer's vocabulary decode to "")
            if event.get("choices") and (event["choices"][0].get("logprobs") or {}).get("content") and first is None:
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return {"ttft_s": first, "latency_s": time.perf_counter() - start, "tokens": tokens}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    import jax

    import mmjax
    from generate_vs_transformers import make_checkpoint
    from mmjax.serving.app import ServerConfig
    from mmjax.serving.server import ServerThread

    path = make_checkpoint(tempfile.mkdtemp(prefix="mmjax-bench-serve-"))
    llm = mmjax.load(path)
    engine = llm.engine()
    engine.warmup(prompt_logprobs=False)  # as `mmjax serve` does before it listens
    urls = [_data_url(image) for image in _images(args.requests)]
    conversations = [_messages(url, i) for i, url in enumerate(urls)]

    with ServerThread(llm, engine, ServerConfig(model_name="bench")) as server:
        _ask(server.url, conversations[0], 2)  # one request through every layer before the clock starts
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda m: _ask(server.url, m, args.max_tokens), conversations))
        served_s = time.perf_counter() - start

    params = mmjax.SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    start = time.perf_counter()
    offline = mmjax.chat(llm, conversations, params, use_tqdm=False)
    offline_s = time.perf_counter() - start

    tokens = sum(r["tokens"] for r in results)
    ttft = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    latency = [r["latency_s"] for r in results]
    report = {
        "backend": jax.default_backend(), "clients": args.clients, "requests": args.requests,
        "max_tokens": args.max_tokens, "image_tokens_per_request": 576,
        "server": {
            "requests_per_s": round(args.requests / served_s, 3), "output_tokens_per_s": round(tokens / served_s, 1),
            "ttft_p50_s": round(_percentile(ttft, 50), 3), "ttft_p99_s": round(_percentile(ttft, 99), 3),
            "latency_p50_s": round(_percentile(latency, 50), 3),
            "latency_p99_s": round(_percentile(latency, 99), 3), "wall_s": round(served_s, 2),
        },
        "offline_chat_batch": {
            "requests_per_s": round(args.requests / offline_s, 3),
            "output_tokens_per_s": round(sum(len(o.token_ids) for o in offline) / offline_s, 1),
            "wall_s": round(offline_s, 2),
        },
        "server_over_offline_throughput": round(offline_s / served_s, 3),
        "all_answered_in_full": all(r["tokens"] == args.max_tokens for r in results),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
