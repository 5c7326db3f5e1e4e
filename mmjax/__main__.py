"""``python -m mmjax`` / ``mmjax``: the command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmjax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run a real photo through the multimodal pipeline (no download)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from mmjax.demo import run_registry_demo

        run_registry_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
