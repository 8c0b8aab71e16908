"""Compare position encodings: every (encoding, seed) trained, evaluated and reported as one sweep.

    python launch/compare.py configs/compass2d.yaml --encodings ape,rope_mixed,liere8,liere64,string --seeds 3
    python launch/compare.py configs/compass2d.yaml --encodings liere64 --seeds 3 \\
        --variant "liere64-sparse:model.encoding=liere64,sparsity.weight=1e-3"
    python launch/compare.py configs/imagenet/deit3_vit_s.yaml --encodings ape,liere8 --seeds 3 \\
        --slurm "--nodes 1 --gpus-per-node 8 --time 24:00:00"

Runs go one after another on this machine (``--nproc N`` ranks each, via torchrun), or as one
Slurm job array through launch/submit.py's submission path (``--slurm "SUBMIT FLAGS"``). Every
run is a child of one parent MLflow run. After training, each run's exported weights are
evaluated at every size of ``--sizes`` (default: the config's eval.sizes) and with patches
shuffled; the report (report.md, report.json, accuracy_vs_resolution.png in --out, also logged
to the parent run) gives per encoding: top-1 mean and spread over seeds, a bootstrap confidence
interval over the test set, the difference to the first encoding with a paired bootstrap
interval, accuracy against evaluation resolution, accuracy with shuffled patches, parameters,
GFLOPs and the measured step time.

A sweep is resumable: run the same command again and finished runs (summary.json present) are
kept, stopped ones resume from their checkpoints. ``--report-only`` rebuilds the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


@dataclass
class Run:
    """One training run of the sweep."""

    label: str  # the encoding, or a --variant's label
    seed: int
    overrides: list[str]  # what makes this run differ from the config
    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.label}-s{self.seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
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
        "--name", default=None, help="sweep name: MLflow parent run and folder (default: the config's)"
    )
    p.add_argument("--out", default=None, help="sweep folder (default: runs/compare/NAME)")
    p.add_argument("--nproc", type=int, default=1, help="ranks per local run (torchrun when > 1)")
    p.add_argument(
        "--slurm", default=None, metavar="FLAGS", help="submit as a job array with these submit.py flags"
    )
    p.add_argument("--no-wait", action="store_true", help="with --slurm: submit and exit (report later)")
    p.add_argument("--report-only", action="store_true", help="evaluate finished runs and write the report")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test set")
    p.add_argument("--eval-batch-size", type=int, default=128)
    return p.parse_intermixed_args(argv)


def plan(args: argparse.Namespace, out: Path) -> list[Run]:
    """The runs, seed by seed: every arm (encodings in the order given, then variants) with seed 0,
    then every arm with seed 1, ...: a sweep stopped early has compared every arm already."""
    arms: list[tuple[str, list[str]]] = [(e, [f"model.encoding={e}"]) for e in args.encodings.split(",") if e]
    for v in args.variant:
        label, sep, rest = v.partition(":")
        if not sep or not label or not rest:
            raise ValueError(f"--variant {v!r}: expected LABEL:KEY=VALUE[,KEY=VALUE...]")
        arms.append((label, [o for o in rest.split(",") if o]))
    labels = [a[0] for a in arms]
    if not arms:
        raise ValueError("nothing to compare: give --encodings and/or --variant")
    if len(set(labels)) != len(labels):
        raise ValueError(f"arm labels must be distinct: {labels}")
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: must be >= 1")
    return [
        Run(label, seed, [*ov, f"train.seed={seed}"], out / f"{label}-s{seed}")
        for seed in range(args.seeds)
        for label, ov in arms
    ]


def run_overrides(args, run: Run, sweep: str, parent_id: str | None) -> list[str]:
    """The user's overrides, the arm's, and the bookkeeping (out_dir, names, the parent run)."""
    extra = [
        f"train.out_dir={run.out_dir}",
        f"tracking.run_name={sweep}/{run.name}",
        "eval.shuffle_patches=false",  # compare.py evaluates the exported weights itself
    ]
    if parent_id:
        extra.append(f"tracking.parent_run_id={parent_id}")
    return [*args.overrides, *run.overrides, *extra]


# ---------------------------------------------------------------------------------------------
# MLflow: the parent run
# ---------------------------------------------------------------------------------------------
class Parent:
    """The sweep's parent MLflow run (inactive when tracking is off or the server is unreachable)."""

    def __init__(self, cfg, out: Path, sweep: str, args: argparse.Namespace) -> None:
        from liere.engine.tracking import _reachable, git_commit, resolve_uri

        self.client, self.run_id = None, None
        state = out / "sweep.json"
        known = json.loads(state.read_text()) if state.is_file() else {}
        if not cfg.tracking.enabled:
            return
        uri = resolve_uri(cfg.tracking.uri)
        if not _reachable(uri):
            print(
                f"[compare] MLflow at {uri} is unreachable: no parent run (each run keeps its own offline log)"
            )
            return
        from mlflow.tracking import MlflowClient

        self.client, self.uri = MlflowClient(uri), uri
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.tracking.experiment)
        self.run_id = known.get("parent_run_id")
        if self.run_id:
            try:
                self.client.get_run(self.run_id)
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:
                self.run_id = None
        if not self.run_id:
            run = self.client.create_run(
                exp_id, run_name=sweep, tags={"sweep": "compare", "git_commit": git_commit()}
            )
            self.run_id = run.info.run_id
            params = {
                "config": str(Path(args.config).resolve()),
                "encodings": args.encodings,
                "variants": "; ".join(args.variant),
                "seeds": args.seeds,
                "overrides": " ".join(args.overrides),
            }
            for k, v in params.items():
                self.client.log_param(self.run_id, k, str(v)[:6000])
        state.write_text(json.dumps({"parent_run_id": self.run_id, "mlflow_uri": uri}))

    def log_child_eval(self, run: Run) -> None:
        child = run.summary.get("mlflow_run_id")
        if not (self.client and child and run.eval):
            return
        step = int(run.summary.get("step", 0))
        try:
            for r in run.eval["rows"]:
                key = "eval/top1 " + "x".join(map(str, r["size"])) + (" shuffled" if r["shuffled"] else "")
                self.client.log_metric(child, key, r["top1"], step=step)
        except Exception as err:
            print(f"[compare] could not log {run.name}'s evaluation to MLflow: {err}", file=sys.stderr)

    def finish(self, report: dict[str, Any], files: list[Path], ok: bool) -> None:
        if not self.client:
            return
        for arm in report["arms"]:
            if arm["top1_mean"] is not None:
                self.client.log_metric(self.run_id, f"top1/{arm['label']}", arm["top1_mean"])
        for f in files:
            self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def train_command(args, config: str, overrides: list[str]) -> list[str]:
    train = str(REPO / "launch" / "train.py")
    if args.nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            train,
            config,
            *overrides,
        ]
    return [sys.executable, train, config, *overrides]


def run_local(args, runs: list[Run], config: str, sweep: str, parent_id: str | None) -> None:
    """One run after another; output to each run's train.log; a failed run is reported, not fatal."""
    for i, run in enumerate(runs, 1):
        if (run.out_dir / "summary.json").is_file():
            print(f"[{i}/{len(runs)}] {run.name}: finished earlier, kept", flush=True)
            continue
        run.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = train_command(args, config, run_overrides(args, run, sweep, parent_id))
        t0 = time.time()
        print(f"[{i}/{len(runs)}] {run.name}: training (log {run.out_dir / 'train.log'})", flush=True)
        with open(run.out_dir / "train.log", "a") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)  # in the caller's directory
        if rc != 0:
            tail = (run.out_dir / "train.log").read_text().splitlines()[-15:]
            run.error = f"exit status {rc}"
            print(
                f"[{i}/{len(runs)}] {run.name}: FAILED ({run.error}); log tail:\n  " + "\n  ".join(tail),
                flush=True,
            )
        else:
            print(f"[{i}/{len(runs)}] {run.name}: done in {time.time() - t0:.0f} s", flush=True)


def run_slurm(args, runs: list[Run], config: str, sweep: str, parent_id: str | None, out: Path) -> bool:
    """Submit the unfinished runs as one job array (launch/submit.py's executor and Trainer);
    wait for them unless --no-wait. Returns whether the report can be written now."""
    from launch import submit

    sargs = submit.parse_args(shlex.split(args.slurm))
    todo = [r for r in runs if not (r.out_dir / "summary.json").is_file()]
    if not todo:
        return True
    executor = submit.make_executor(sargs, out / "submitit" / "%j", sweep)
    with executor.batch():
        jobs = [
            executor.submit(submit.Trainer(config, run_overrides(args, r, sweep, parent_id), str(r.out_dir)))
            for r in todo
        ]
    print(
        f"submitted {len(jobs)} runs as Slurm array {jobs[0].job_id.split('_')[0]} ({executor.cluster})",
        flush=True,
    )
    for job, run in zip(jobs, todo):
        print(f"  {job.job_id}: {run.name} -> {run.out_dir}")
    if args.no_wait:
        print(
            f"when they finish: python launch/compare.py {' '.join(map(shlex.quote, sys.argv[1:]))} --report-only"
        )
        return False
    for job, run in zip(jobs, todo):
        try:
            submit.wait_for(job, executor.cluster)
        except Exception as err:
            run.error = str(err).splitlines()[0]
            print(f"{run.name}: FAILED: {err}", file=sys.stderr, flush=True)
    return True


def evaluate_runs(args, runs: list[Run], sizes, parent: Parent) -> None:
    from launch.evaluate import evaluate_checkpoint

    for run in runs:
        summary = run.out_dir / "summary.json"
        if not summary.is_file():
            run.error = run.error or "no summary.json: the run did not finish"
            continue
        run.summary = json.loads(summary.read_text())
        cached = run.out_dir / "compare_eval" / "eval.json"
        wanted = [[s] if isinstance(s, int) else s for s in sizes] if sizes else None
        if cached.is_file():
            done = json.loads(cached.read_text())
            if wanted is None or all(any(_same_size(r["size"], w) for r in done["rows"]) for w in wanted):
                run.eval = done
                continue
        print(f"evaluating {run.name}", flush=True)
        run.eval = evaluate_checkpoint(
            run.out_dir,
            sizes=sizes,
            shuffle=True,
            batch_size=args.eval_batch_size,
            out_dir=run.out_dir / "compare_eval",
        )
        parent.log_child_eval(run)


def _same_size(size: list[int], wanted: list[int]) -> bool:
    return size == wanted or (len(wanted) == 1 and all(s == wanted[0] for s in size))


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from liere.engine.config import ConfigError, load_config

    try:
        base = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sweep = args.name or Path(args.config).stem
    out = Path(args.out or REPO / "runs" / "compare" / sweep).resolve()
    try:
        runs = plan(args, out)
        for run in runs:  # every arm's config is checked before anything runs
            load_config(args.config, [*args.overrides, *run.overrides])
    except (ValueError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from launch.evaluate import parse_size

    sizes = [parse_size(s) for s in args.sizes] if args.sizes else (list(base.eval.sizes) or None)
    train_size = list(base.model.img_size)
    if sizes and not any(_same_size(train_size, [s] if isinstance(s, int) else list(s)) for s in sizes):
        sizes = [train_size, *sizes]  # the report's main numbers are at the training size
    out.mkdir(parents=True, exist_ok=True)
    parent = Parent(base, out, sweep, args)
    config = str(Path(args.config).resolve())
    t0 = time.time()
    print(
        f"sweep {sweep}: {len(runs)} runs ({len(runs) // args.seeds} arms x {args.seeds} seeds) -> {out}"
        + (f"; MLflow parent run {parent.run_id} at {parent.uri}" if parent.run_id else ""),
        flush=True,
    )
    ready = True
    if not args.report_only:
        if args.slurm is not None:
            ready = run_slurm(args, runs, config, sweep, parent.run_id, out)
        else:
            run_local(args, runs, config, sweep, parent.run_id)
    if not ready:
        return 0
    evaluate_runs(args, runs, sizes, parent)
    from launch.report import write_report

    command = "python launch/compare.py " + " ".join(
        map(shlex.quote, argv if argv is not None else sys.argv[1:])
    )
    report, files = write_report(runs, out, base, command, args.bootstrap, time.time() - t0)
    failed = [r for r in runs if r.error]
    parent.finish(report, files, ok=not failed)
    print(f"\nreport: {out / 'report.md'}", flush=True)
    if failed:
        print("failed runs: " + ", ".join(f"{r.name} ({r.error})" for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
