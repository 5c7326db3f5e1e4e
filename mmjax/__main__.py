"""``mmjax`` / ``python -m mmjax``: the command line.

    mmjax demo                                  # the shipped demo model answers questions about a new drawing
    mmjax generate --model DIR --image a.jpg --prompt "USER: <image>\\nWhat is this? ASSISTANT:"
    mmjax generate --model DIR --mesh data=2,model=4          # sharded over 8 devices
    mmjax generate --model DIR --mesh auto --distributed      # on every host of a TPU pod slice
    mmjax chat --model DIR --image a.jpg --message "What is this?"   # through the checkpoint's chat template
    mmjax serve --model DIR --port 8000                       # OpenAI-compatible HTTP server
"""

from __future__ import annotations

import argparse
import sys


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a llava-hf checkpoint directory (default: the shipped demo model)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", choices=["int8"],
                        help="int8: the decoder's projections and LM head as int8 (default: as stored)")
    parser.add_argument("--mesh", type=_mesh, help='shard over a device mesh: "auto" or "data=D,model=M"')
    parser.add_argument("--chat-template", help="Jinja text or a file to use instead of the checkpoint's template")


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    _add_model_args(parser)
    parser.add_argument("--image", action="append", help="an image file; repeat for several (default: a photo)")
    parser.add_argument("--prompt", help="the prompt, with one <image> per image")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-host run with jax.distributed.initialize() first (run on every host; "
                             "on Cloud TPU it needs no other flag); only process 0 prints")
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-host off Cloud TPU)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)


def _mesh(text: str) -> str | dict[str, int]:
    """``"auto"`` or ``"data=2,model=4"`` -> a mesh argument of ``mmjax.load``."""
    if text == "auto":
        return text
    try:
        sizes = {key.strip(): int(value) for key, value in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "auto" or axis sizes like "data=2,model=4", got {text!r}')
    return sizes


def _join_hosts(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` with the given coordinates (Cloud TPU finds its own); silence
    every process but the first."""
    import os

    import jax

    given = {"coordinator_address": args.coordinator, "num_processes": args.num_processes,
             "process_id": args.process_id}
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
    if jax.process_index() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmjax", description="mmjax: multimodal LLM inference in JAX")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the demo model answers questions about a new drawing (no download)")
    _add_generation_args(demo)
    demo.add_argument("--scene", default=None,
                      help="where to save the drawn scene (default: ./mmjax-demo-scene.png); --seed fixes the scene")
    demo.add_argument("--question", action="append",
                      help='with --image: ask the demo model this '
                           '(repeat for several; default "How many shapes are there?")')
    _add_generation_args(commands.add_parser("generate", help="generate text for a prompt with images"))
    from mmjax.serving_cli import add_chat_args, add_serve_args, run_chat, run_serve

    chat = commands.add_parser("chat", help="a conversation through the checkpoint's chat template")
    _add_generation_args(chat)
    add_chat_args(chat)
    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (chat with images, completions)")
    _add_model_args(serve)
    add_serve_args(serve)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    if args.distributed:
        _join_hosts(args)
    if args.command == "chat":
        return run_chat(args)
    from mmjax.demo import DEMO_PROMPT, FOLLOW_UP_PROMPT, run_demo

    images = args.image or []
    if args.command == "demo" and args.question and (args.model or args.prompt or not images):
        parser.error("--question asks the demo model about --image files: give --image, and no --model or --prompt")
    if args.command == "demo" and not (args.model or args.prompt):
        from mmjax.shapes_demo import DEFAULT_SCENE_PATH, ask_about_images, run_shapes_demo

        if images:
            ask_about_images(images, args.question or [], dtype=args.dtype, mesh=args.mesh,
                             quantization=args.quantization)
        else:
            run_shapes_demo(args.seed, args.scene or DEFAULT_SCENE_PATH, dtype=args.dtype, mesh=args.mesh,
                            quantization=args.quantization)
        return 0
    prompt = args.prompt or ("USER: " + "<image>\n" * max(1, len(images)) + "What is shown? ASSISTANT:")
    follow_up = None  # the same prompt again
    if args.command == "demo" and not args.prompt and not images:
        prompt, follow_up = DEMO_PROMPT, FOLLOW_UP_PROMPT
    run_demo(args.model, images, prompt, args.dtype, args.max_tokens, args.temperature, args.seed, mesh=args.mesh,
             follow_up=follow_up, quantization=args.quantization)
    return 0


if __name__ == "__main__":
    sys.exit(main())
