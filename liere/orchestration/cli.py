"""What the command lines in launch/ share: a parser whose help is the script's docstring, and one
way to report a bad argument."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from typing import NoReturn


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


def exit_without_teardown(code: int) -> NoReturn:
    """End the process with ``code`` once its work is done, skipping the interpreter's module teardown.

    After a run, finalizing the torch, DeepSpeed and MLflow modules takes 2-4 s of every rank, launcher
    and evaluation (measured on a 2-core machine), and nothing in it writes anything: files are closed
    and the process groups destroyed by then. The atexit handlers still run (MLflow's, logging's,
    multiprocessing's and the engine's), then the process exits at once. A non-daemon thread still
    alive may have work left, so then this is a plain ``sys.exit`` that waits for it.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    main = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
