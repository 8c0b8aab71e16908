"""Evaluate exported weights at several resolutions, and with patches shuffled:

    python launch/evaluate.py runs/compass2d/liere8-s0 --sizes 32 48 64 --shuffle
    python launch/evaluate.py model.safetensors --dataset compass3d --sizes 16 24 32 --shuffle
    python launch/evaluate.py RUN_DIR --sizes 224 320 384 --split val --batch-size 128 --out eval/
    python launch/evaluate.py runs/compass2d/liere8-s0 --sizes 32 48 64 --protocols zoom extent
    python launch/evaluate.py runs/compass2d/liere8-s0 --sizes 32 64 --positions rescale

Positions: ``--positions`` evaluates a rotary model with another position scheme than its own (the
same weights): e.g. ``rescale`` maps any grid onto the training span where LieRE's default
``proportional`` extends past it at the training spacing; the two agree on the training grid.

Protocols: *zoom* resizes the validation inputs to each size (the same content at more pixels, what
ImageNet at 384 is); *extent* reads the data set's own larger canvases at the training scale (the
compass sets' ``val-extent<S>`` splits: the same marks and distances, more tokens around them).

CHECKPOINT is an exported ``model.safetensors`` or a run's ``out_dir`` (its ``model.safetensors``,
written at the end of training; exported from ``checkpoints/latest`` first if missing). The data
set, root and backend default to the run's ``config.yaml`` next to the weights. Sizes are one
number per axis (``48``) or one per axis spelled out (``8x224x224``). Writes ``eval.json`` (every
row, with per-sample predictions in ``predictions.npz``), ``eval.md`` and ``eval.png`` to --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from liere.orchestration.cli import command_parser, exit_without_teardown, fail
from liere.orchestration.evaluation import evaluate_checkpoint, parse_size
from pipelines import BACKENDS, DataError


def main(argv: list[str] | None = None) -> int:
    p = command_parser(__doc__)
    p.add_argument("checkpoint", help="model.safetensors or a run directory")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None, help="default: the training size")
    p.add_argument("--shuffle", action="store_true", help="also evaluate every size with patches shuffled")
    p.add_argument(
        "--protocols", nargs="+", default=None, choices=["zoom", "extent"],
        help="zoom: the inputs resized; extent: a larger canvas at the training scale (compass sets); "
        "default: the run's eval.protocols",
    )  # fmt: skip
    p.add_argument("--dataset", default=None, help="default: the run's config.yaml")
    p.add_argument("--data-root", default=None, help="default: the run's config.yaml, else data")
    p.add_argument("--split", default=None, help="default: the run's val split")
    p.add_argument("--backend", default=None, choices=BACKENDS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seeds the patch permutations")
    p.add_argument("--out", default=None, help="output folder (default: beside the weights)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--positions", default=None,
        help="evaluate a rotary model with this position scheme instead of its own, e.g. rescale "
        "(outputs default to eval_positions-<scheme>/ beside the weights)",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        evaluate_checkpoint(
            args.checkpoint, sizes=args.sizes, shuffle=args.shuffle, dataset=args.dataset,
            root=args.data_root, split=args.split, backend=args.backend, batch_size=args.batch_size,
            workers=args.workers, seed=args.seed, out_dir=args.out, device=args.device,
            protocols=args.protocols, positions=args.positions,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, DataError) as err:
        return fail(err)
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
