"""What the command lines in launch/ share: a parser whose help is the script's docstring, and one
way to report a bad argument."""

from __future__ import annotations

import argparse
import sys


def command_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with the rest as its epilog; no abbreviations."""
    first, *rest = doc.splitlines()
    return argparse.ArgumentParser(
        description=first,
        epilog="\n".join(rest),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


def fail(err: object, code: int = 2) -> int:
    """Print ``error: ERR`` to stderr; returns the exit status (2: a bad argument or config)."""
    print(f"error: {err}", file=sys.stderr)
    return code
