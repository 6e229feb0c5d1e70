"""The command line of a tool that renders one committed file: write it, or ``--check`` it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def main(render: Callable[[], str], out: Path, tool: str, doc: str | None) -> int:
    """Write ``render()`` to ``--out`` (default ``out``), or with ``--check`` exit 1 if it differs."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--out", type=Path, default=out, help="where to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs, write nothing")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run {tool} and commit it", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0
