"""``mmjax serve`` and ``mmjax chat``: the server and a one-shot conversation from the command line
(above the serving layer: it loads through ``mmjax.load`` and the demo checkpoint)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", help="the name clients pass as model (default: the directory's)")
    parser.add_argument("--limit-mm-per-prompt", type=_limits, default={"image": 1},
                        help='most items per prompt, e.g. "image=2,video=1" (default: image=1, 1 of the others)')
    parser.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    parser.add_argument("--max-num-seqs", type=int, help="most requests in one step (default: backend-sized)")
    parser.add_argument("--max-num-batched-tokens", type=int, help="most tokens in one step (default: backend-sized)")
    parser.add_argument("--kv-cache-bytes", type=int, help="bytes for the KV cache (default: sized from memory)")
    parser.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false",
                        help="do not reuse cached KV pages of earlier requests (vLLM's flag; on by default)")
    parser.add_argument("--encoder-cache-tokens", type=int,
                        help="arena rows of cached image embeddings (default: 8 prompts at the image limit; 0: off)")
    parser.add_argument("--mm-processor-cache-gb", type=float, default=1.0,
                        help="host memory for mapped image inputs, by content (default 1; 0: off)")
    parser.add_argument("--allowed-local-media-path",
                        help="directory under which file:// image URLs may be read (regular files only; default: none)")
    parser.add_argument("--image-fetch-timeout", type=float, default=10.0,
                        help="seconds one http(s) image may take in all: resolving, connecting, redirects, every "
                             "byte (one deadline; default 10)")
    parser.add_argument("--allowed-media-domains", type=_names, metavar="HOST[,HOST...]",
                        help="fetch http(s) images only from these hosts and hosts below them (default: any host)")
    parser.add_argument("--allow-private-media-addresses", action="store_true",
                        help="also fetch images from loopback, private, link-local and other non-public addresses "
                             "(a trusted network only; refused by default)")
    parser.add_argument("--no-media-url-fetch", dest="allow_url_fetch", action="store_false",
                        help="never fetch http(s) image URLs (data: URLs, and file:// where allowed, still work)")
    parser.add_argument("--max-media-redirects", type=int, default=3,
                        help="redirects one image fetch follows, each checked as the first URL (default 3)")
    parser.add_argument("--max-concurrent-media-fetches", type=int, default=16,
                        help="image fetches in flight at once; beyond, a request waits within its deadline, then "
                             "gets 503 (default 16)")
    parser.add_argument("--image-formats", type=_names, default=None, metavar="FORMAT[,FORMAT...]",
                        help="Pillow formats decoded (default: JPEG,PNG,WEBP,GIF,BMP); any other is refused")
    parser.add_argument("--max-image-bytes", type=int, default=20 * 2**20, help="most bytes of one image")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="most pixels of one image, read from its header before decoding")
    parser.add_argument("--max-video-bytes", type=int, default=64 * 2**20, help="most bytes of one encoded video")
    parser.add_argument("--max-video-frames", type=int, default=768,
                        help="most frames of one video (video_url parts: read from the container's header before "
                             "decoding, and counted while decoding; default 768)")
    parser.add_argument("--max-video-pixels", type=int, default=2**27,
                        help="most frames x width x height of one video, checked as --max-video-frames is "
                             "(default 2**27: 400 MiB of RGB frames)")
    parser.add_argument("--max-request-bytes", type=int, default=32 * 2**20, help="most bytes of one request body")
    parser.add_argument("--max-num-queued-requests", type=int, default=256,
                        help="requests admitted beyond those the engine runs at once (--max-num-seqs); past it, "
                             "HTTP 503 with Retry-After before any work (default 256)")
    parser.add_argument("--api-key", default=os.environ.get("MMJAX_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/ routes (default: $MMJAX_API_KEY, else "
                             "none); /health and /metrics stay open")
    parser.add_argument("--shutdown-drain", type=float, default=30.0,
                        help="seconds in-flight requests may take to finish on shutdown")
    parser.add_argument("--no-warmup", action="store_true",
                        help="start serving at once; programs compile on first use instead of before")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return names


def _limits(text: str) -> dict[str, int]:
    try:
        return {key.strip(): int(value) for key, value in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected limits like "image=2", got {text!r}') from None


def run_serve(args: argparse.Namespace) -> int:
    """Load the checkpoint, size and warm the engine, and serve until interrupted."""
    import mmjax
    from mmjax.serving.app import ServerConfig
    from mmjax.serving.media import MediaLimits
    from mmjax.demo import resolve_model
    from mmjax.serving.server import default_model_name, serve

    model = resolve_model(args.model)
    # The registry checks the same video ceilings model-wide (a request may only lower them).
    video_ceilings = {"max_video_frames": args.max_video_frames, "max_video_pixels": args.max_video_pixels}
    llm = mmjax.load(model, dtype=args.dtype, quantization=args.quantization,
                     limit_mm_per_prompt=args.limit_mm_per_prompt, max_model_len=args.max_model_len, mesh=args.mesh,
                     mm_processor_cache_gb=args.mm_processor_cache_gb, mm_processor_kwargs=video_ceilings)
    engine_fields = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
                     "kv_cache_bytes": args.kv_cache_bytes, "enable_prefix_caching": args.enable_prefix_caching,
                     "encoder_cache_tokens": args.encoder_cache_tokens}
    engine = llm.engine(mmjax.EngineConfig(**{k: v for k, v in engine_fields.items() if v is not None}))
    print(f"mmjax serve: {engine.memory.describe()}", flush=True)
    if not args.no_warmup:
        print(f"mmjax serve: compiled {engine.warmup(prompt_logprobs=False)} programs ahead of time", flush=True)
    formats = {} if args.image_formats is None else {"image_formats": args.image_formats}
    media = MediaLimits(fetch_timeout_s=args.image_fetch_timeout, max_image_bytes=args.max_image_bytes,
                        max_image_pixels=args.max_image_pixels, allowed_local_media_path=args.allowed_local_media_path,
                        allow_url_fetch=args.allow_url_fetch, allowed_media_domains=args.allowed_media_domains,
                        allow_private_addresses=args.allow_private_media_addresses,
                        max_redirects=args.max_media_redirects, max_fetches_in_flight=args.max_concurrent_media_fetches,
                        max_video_bytes=args.max_video_bytes, **video_ceilings, **formats)
    model_name = args.served_model_name or default_model_name(args.model or "mmjax-demo-shapes-llava")
    config = ServerConfig(model_name=model_name,
                          chat_template=args.chat_template, media=media, max_request_bytes=args.max_request_bytes,
                          shutdown_drain_s=args.shutdown_drain, max_num_queued_requests=args.max_num_queued_requests,
                          api_key=args.api_key or None)
    serve(llm, engine, config, host=args.host, port=args.port)
    return 0


def add_chat_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--message", help="the user's message (the images given with --image come first)")
    parser.add_argument("--messages", help="a JSON file holding a whole conversation, OpenAI's message format")


def run_chat(args: argparse.Namespace) -> int:
    """One conversation through the checkpoint's chat template, the reply streamed to stdout."""
    import mmjax
    from mmjax.demo import open_images, resolve_model

    if (args.message is None) == (args.messages is None):
        raise SystemExit("mmjax chat: give exactly one of --message TEXT and --messages FILE.json")
    if args.messages is not None:
        with open(args.messages, encoding="utf-8") as f:
            messages = json.load(f)
    else:
        images = open_images(args.image) if args.image else []
        content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": args.message}]}]
    path = resolve_model(args.model)
    llm = mmjax.load(path, dtype=args.dtype, limit_mm_per_prompt={"image": max(1, len(args.image or []))},
                     mesh=args.mesh, quantization=args.quantization)
    params = mmjax.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    shown = 0
    try:
        for output in mmjax.chat(llm, messages, params, chat_template=args.chat_template, stream=True):
            sys.stdout.write(output.text[shown:])
            sys.stdout.flush()
            shown = len(output.text)
    except mmjax.PromptError as err:
        raise SystemExit(f"mmjax chat: {err.error}") from err
    print()
    return 0
