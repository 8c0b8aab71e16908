"""Train a LieRE ViT: python launch/train.py CONFIG [key=value ...] [--dry-run]

Runs under torchrun, the deepspeed launcher, srun, or as a plain single process. Also installed
as ``liere-train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("config", help="YAML experiment (configs/*.yaml)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 model.encoding=rope_mixed"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate, build model and first batch, then exit"
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )  # deepspeed launcher
    args = parser.parse_intermixed_args(argv)  # options before, between or after the overrides

    from liere.engine.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from liere.engine.checkpoint import CheckpointError
    from liere.engine.distributed import DeviceError
    from liere.engine.messages import user_message
    from liere.engine.trainer import run
    from pipelines.errors import DataError

    user_errors = (ConfigError, DataError, CheckpointError, DeviceError)
    if args.dry_run:
        user_errors += (ValueError,)
    try:
        run(cfg, dry_run=args.dry_run)
    except user_errors as err:  # what the config or the data got wrong: a message on every rank, exit 2
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    from liere.orchestration.cli import exit_without_teardown

    exit_without_teardown(code)
