"""``mmjax`` / ``python -m mmjax``: the command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmjax", description="mmjax: multimodal LLM inference in JAX")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a photo and a prompt through LLaVA, end to end (no download)")
    demo.add_argument("--model", help="a llava-hf checkpoint directory (default: a small random one)")
    demo.add_argument("--image", help="an image file (default: the photo that ships with mmjax)")
    demo.add_argument("--prompt", help="the prompt, with one <image> marker")
    demo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from mmjax.demo import DEMO_PROMPT, run_demo

        run_demo(args.model, args.image, args.prompt or DEMO_PROMPT, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
