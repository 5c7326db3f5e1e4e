"""``mmjax`` / ``python -m mmjax``: the command line.

    mmjax demo                                  # random LLaVA-1.5, the shipped photo, no download
    mmjax generate --model DIR --image a.jpg --prompt "USER: <image>\\nWhat is this? ASSISTANT:"
"""

from __future__ import annotations

import argparse
import sys


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a llava-hf checkpoint directory (default: a small random one)")
    parser.add_argument("--image", action="append", help="an image file; repeat for several (default: a photo)")
    parser.add_argument("--prompt", help="the prompt, with one <image> per image")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmjax", description="mmjax: multimodal LLM inference in JAX")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_generation_args(commands.add_parser("demo", help="a photo and a prompt through LLaVA (no download)"))
    _add_generation_args(commands.add_parser("generate", help="generate text for a prompt with images"))
    args = parser.parse_args(argv)
    from mmjax.demo import DEMO_PROMPT, run_demo

    images = args.image or []
    prompt = args.prompt or ("USER: " + "<image>\n" * max(1, len(images)) + "What is shown? ASSISTANT:")
    if args.command == "demo" and not args.prompt and not images:
        prompt = DEMO_PROMPT
    run_demo(args.model, images, prompt, args.dtype, args.max_tokens, args.temperature, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
