"""Compare position encodings: every (encoding, seed) trained, evaluated and reported as one sweep.

    python launch/compare.py configs/compass2d.yaml --encodings ape,rope_mixed,liere8,liere64,string --seeds 3
    python launch/compare.py configs/compass2d.yaml --seeds 3 \
        --encodings liere8,string,string_circulant,comrope_ap,comrope_ld,rope_mixed_ape,rope_mixed_paper
    python launch/compare.py configs/compass2d.yaml --encodings liere64 --seeds 3 \\
        --variant "liere64-sparse:model.encoding=liere64,sparsity.weight=1e-3"
    python launch/compare.py configs/imagenet/deit3_vit_s.yaml --encodings ape,liere8 --seeds 3 \\
        --slurm "--nodes 1 --gpus-per-node 8 --time 24:00:00"

Runs go one after another on this machine (``--nproc N`` ranks each, via torchrun; ``--parallel
K`` of them at once), or as one Slurm job array through launch/submit.py's submission path
(``--slurm "SUBMIT FLAGS"``). Every run is a child of one parent MLflow run. After training, each
run's exported weights are evaluated at every size of ``--sizes`` (default: the config's
eval.sizes) and with patches shuffled; the report (report.md, report.json,
accuracy_vs_resolution.png in --out, also logged to the parent run) gives per encoding: top-1 mean
and spread over seeds, a bootstrap confidence interval over the test set, the difference to the
first encoding with a paired bootstrap interval, accuracy against evaluation resolution, accuracy
with shuffled patches, parameters, GFLOPs and the measured step time.

A sweep is resumable: run the same command again and finished runs (summary.json present) are
kept, stopped ones resume from their checkpoints. ``--report-only`` rebuilds the report.
``--export DIR`` copies the finished runs' results (summaries, configs, training histories,
evaluations) and the report to DIR without weights: a sweep's evidence, small enough to commit;
copied back into runs/compare/NAME on another machine, the same command goes on from there.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from liere.orchestration.cli import command_parser, exit_without_teardown
from liere.orchestration.sweep import SweepSpec, run_sweep


def main(argv: list[str] | None = None) -> int:
    p = command_parser(__doc__)
    p.add_argument("config", help="YAML experiment; every run starts from it")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.epochs=5")
    p.add_argument("--encodings", default="", help="comma-separated encodings, e.g. ape,rope_mixed,liere8")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="an extra arm with its own overrides (repeatable), e.g. 'l64-sparse:model.encoding=liere64,sparsity.weight=1e-3'",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per encoding")
    p.add_argument(
        "--sizes", nargs="+", default=None, help="evaluation sizes (default: the config's eval.sizes)"
    )
    p.add_argument(
        "--protocols",
        nargs="+",
        default=None,
        choices=["zoom", "extent"],
        help="zoom: inputs resized; extent: a larger canvas at the training scale (default: the config's eval.protocols)",
    )
    p.add_argument(
        "--name", default=None, help="sweep name: MLflow parent run and folder (default: the config's)"
    )
    p.add_argument("--out", default=None, help="sweep folder (default: runs/compare/NAME)")
    p.add_argument("--nproc", type=int, default=1, help="ranks per local run (torchrun when > 1)")
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="local runs at once, the cores shared out (OMP_NUM_THREADS = cores / (parallel x nproc) "
        "unless set): two small runs at once on 2 cores took 1/1.34 of the time of one after the other "
        "(benchmarks/parallel_runs.py)",
    )
    p.add_argument(
        "--slurm", default=None, metavar="FLAGS", help="submit as a job array with these submit.py flags"
    )
    p.add_argument("--no-wait", action="store_true", help="with --slurm: submit and exit (report later)")
    p.add_argument("--report-only", action="store_true", help="evaluate finished runs and write the report")
    p.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="copy the finished runs' results and the report to DIR without weights or checkpoints "
        "(for docs/evidence; copied back, the sweep resumes); trains nothing",
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test set")
    p.add_argument("--eval-batch-size", type=int, default=128)
    args = p.parse_intermixed_args(argv)
    command = "python launch/compare.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    return run_sweep(SweepSpec(**vars(args)), command)


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    exit_without_teardown(main())
