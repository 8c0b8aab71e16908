"""Encoding sweeps (launch/compare.py): every (arm, seed) trained, evaluated and reported as one sweep.

Runs go one after another on this machine (``nproc`` ranks each, via torchrun; ``parallel`` of them
at once, the cores shared out), or as one Slurm job array through ``slurm``'s submission path.
Every run is a child of one parent MLflow run. After training, each run's exported weights are
evaluated at every size and with patches shuffled (``evaluation``), and ``report`` compares the
arms. A sweep is resumable: finished runs (summary.json present) are kept, stopped ones resume from
their checkpoints.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


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

    @property
    def finished(self) -> bool:
        return (self.out_dir / "summary.json").is_file()


@dataclass
class SweepSpec:
    """What a sweep compares and how it runs: launch/compare.py's flags, one field each."""

    config: str  # YAML experiment; every run starts from it
    overrides: list[str] = field(default_factory=list)  # for every run
    encodings: str = ""  # comma-separated
    variant: list[str] = field(default_factory=list)  # LABEL:KEY=VALUE,... arms
    seeds: int = 3
    sizes: list[str] | None = None  # evaluation sizes (default: the config's eval.sizes)
    protocols: list[str] | None = None  # zoom and/or extent (default: the config's eval.protocols)
    name: str | None = None  # default: the config's name
    out: str | None = None  # default: runs/compare/NAME
    nproc: int = 1  # ranks per local run
    parallel: int = 1  # local runs at once (each given cores // (parallel * nproc) threads)
    slurm: str | None = None  # launch/submit.py flags: run as a Slurm job array
    no_wait: bool = False
    report_only: bool = False
    export: str | None = None  # copy the finished runs' results (no weights) here, train nothing
    bootstrap: int = 2000  # resamples of the test set
    eval_batch_size: int = 128


def plan(spec: SweepSpec, out: Path) -> list[Run]:
    """The runs, seed by seed: every arm (encodings in the order given, then variants) with seed 0,
    then every arm with seed 1, ...: a sweep stopped early has compared every arm already."""
    arms: list[tuple[str, list[str]]] = [(e, [f"model.encoding={e}"]) for e in spec.encodings.split(",") if e]
    for v in spec.variant:
        label, sep, rest = v.partition(":")
        if not sep or not label or not rest:
            raise ValueError(f"--variant {v!r}: expected LABEL:KEY=VALUE[,KEY=VALUE...]")
        arms.append((label, [o for o in rest.split(",") if o]))
    labels = [a[0] for a in arms]
    if not arms:
        raise ValueError("nothing to compare: give --encodings and/or --variant")
    if len(set(labels)) != len(labels):
        raise ValueError(f"arm labels must be distinct: {labels}")
    if spec.seeds < 1:
        raise ValueError(f"--seeds {spec.seeds}: must be >= 1")
    if spec.parallel < 1:
        raise ValueError(f"--parallel {spec.parallel}: must be >= 1")
    return [
        Run(label, seed, [*ov, f"train.seed={seed}"], out / f"{label}-s{seed}")
        for seed in range(spec.seeds)
        for label, ov in arms
    ]


def eval_sizes(spec: SweepSpec, cfg) -> list[Any] | None:
    """The sizes every run is evaluated at: --sizes, else the config's eval.sizes; the training size
    is always among them (the report's main numbers are at the training size)."""
    from liere.orchestration.evaluation import parse_size

    sizes = [parse_size(s) for s in spec.sizes] if spec.sizes else (list(cfg.eval.sizes) or None)
    train_size = list(cfg.model.img_size)
    if sizes and not any(_same_size(train_size, [s] if isinstance(s, int) else list(s)) for s in sizes):
        sizes = [train_size, *sizes]
    return sizes


def _same_size(size: list[int], wanted: list[int]) -> bool:
    return size == wanted or (len(wanted) == 1 and all(s == wanted[0] for s in size))


# ---------------------------------------------------------------------------------------------
# MLflow: the parent run
# ---------------------------------------------------------------------------------------------
class Parent:
    """The sweep's parent MLflow run (inactive when tracking is off or the server is unreachable)."""

    def __init__(self, cfg, out: Path, sweep: str, spec: SweepSpec) -> None:
        from liere.engine.tracking import EXPERIMENT_KIND, _reachable, resolve_uri

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
        for key, value in EXPERIMENT_KIND.items():  # model training, not GenAI, in the MLflow UI
            self.client.set_experiment_tag(exp_id, key, value)
        self.run_id = known.get("parent_run_id")
        if self.run_id:
            try:
                self.client.get_run(self.run_id)
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:
                self.run_id = None
        if not self.run_id:
            self.run_id = self._create(exp_id, sweep, spec)
        state.write_text(json.dumps({"parent_run_id": self.run_id, "mlflow_uri": uri}))

    def _create(self, exp_id: str, sweep: str, spec: SweepSpec) -> str:
        from liere.engine.tracking import git_commit

        run = self.client.create_run(
            exp_id, run_name=sweep, tags={"sweep": "compare", "git_commit": git_commit()}
        )
        params = {
            "config": str(Path(spec.config).resolve()),
            "encodings": spec.encodings,
            "variants": "; ".join(spec.variant),
            "seeds": spec.seeds,
            "overrides": " ".join(spec.overrides),
        }
        for k, v in params.items():
            self.client.log_param(run.info.run_id, k, str(v)[:6000])
        return run.info.run_id

    def log_child_eval(self, run: Run) -> None:
        from liere.orchestration.evaluation import row_name

        child = run.summary.get("mlflow_run_id")
        if not (self.client and child and run.eval):
            return
        step = int(run.summary.get("step", 0))
        try:
            for r in run.eval["rows"]:
                self.client.log_metric(child, "eval/top1 " + row_name(r), r["top1"], step=step)
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
@dataclass
class Sweep:
    """A sweep under way: what it asks for, its name and folder, its runs and their parent run."""

    spec: SweepSpec
    name: str
    out: Path
    runs: list[Run]
    command: str  # the command line that started it, for the report
    parent_id: str | None = None

    @property
    def config(self) -> str:
        return str(Path(self.spec.config).resolve())

    def run_overrides(self, run: Run) -> list[str]:
        """The user's overrides, the arm's, and the bookkeeping (out_dir, names, the parent run)."""
        extra = [
            f"train.out_dir={run.out_dir}",
            f"tracking.run_name={self.name}/{run.name}",
            "eval.shuffle_patches=false",  # the sweep evaluates the exported weights itself
        ]
        if self.parent_id:
            extra.append(f"tracking.parent_run_id={self.parent_id}")
        return [*self.spec.overrides, *run.overrides, *extra]

    def train_command(self, run: Run) -> list[str]:
        train = str(REPO / "launch" / "train.py")
        overrides = self.run_overrides(run)
        if self.spec.nproc > 1:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            return [*torchrun, f"--nproc_per_node={self.spec.nproc}", train, self.config, *overrides]
        return [sys.executable, train, self.config, *overrides]

    def run_local(self) -> None:
        """The unfinished runs, ``parallel`` at a time; output to each run's train.log; a failed run
        is reported, not fatal."""
        n, slots = len(self.runs), self.spec.parallel
        env = dict(os.environ)
        if slots > 1 and "OMP_NUM_THREADS" not in env:  # the cores shared out, not oversubscribed
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (slots * self.spec.nproc)))
        todo = []
        for i, run in enumerate(self.runs, 1):
            if run.finished:
                print(f"[{i}/{n}] {run.name}: finished earlier, kept", flush=True)
            else:
                todo.append((i, run))
        active: list[tuple[int, Run, subprocess.Popen, float]] = []
        while todo or active:
            while todo and len(active) < slots:
                i, run = todo.pop(0)
                active.append((i, run, self._start(i, n, run, env), time.time()))
            time.sleep(0.2)
            for entry in [e for e in active if e[2].poll() is not None]:
                active.remove(entry)
                self._ended(*entry, n)

    def _start(self, i: int, n: int, run: Run, env: dict[str, str]) -> subprocess.Popen:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.train_command(run)
        print(f"[{i}/{n}] {run.name}: training (log {run.out_dir / 'train.log'})", flush=True)
        with open(run.out_dir / "train.log", "a") as log:  # the child keeps its own handle
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)  # in our cwd

    def _ended(self, i: int, run: Run, proc: subprocess.Popen, t0: float, n: int) -> None:
        if proc.returncode != 0:
            tail = (run.out_dir / "train.log").read_text().splitlines()[-15:]
            run.error = f"exit status {proc.returncode}"
            print(
                f"[{i}/{n}] {run.name}: FAILED ({run.error}); log tail:\n  " + "\n  ".join(tail), flush=True
            )
        else:
            print(f"[{i}/{n}] {run.name}: done in {time.time() - t0:.0f} s", flush=True)

    def run_slurm(self) -> bool:
        """Submit the unfinished runs as one job array (``slurm``'s executor and RankLauncher); wait
        for them unless no_wait. Returns whether the report can be written now."""
        from liere.orchestration import slurm

        flags = slurm.parse_flags(shlex.split(self.spec.slurm or ""))
        todo = [r for r in self.runs if not r.finished]
        if not todo:
            return True
        executor = slurm.make_executor(flags, self.out / "submitit" / "%j", self.name)
        with executor.batch():
            jobs = [
                executor.submit(slurm.RankLauncher(self.config, self.run_overrides(r), str(r.out_dir)))
                for r in todo
            ]
        array = jobs[0].job_id.split("_")[0]
        print(f"submitted {len(jobs)} runs as Slurm array {array} ({executor.cluster})", flush=True)
        for job, run in zip(jobs, todo):
            print(f"  {job.job_id}: {run.name} -> {run.out_dir}")
        if self.spec.no_wait:
            print(f"when they finish: {self.command} --report-only")
            return False
        for job, run in zip(jobs, todo):
            try:
                slurm.wait_for(job, executor.cluster)
            except Exception as err:
                run.error = str(err).splitlines()[0]
                print(f"{run.name}: FAILED: {err}", file=sys.stderr, flush=True)
        return True

    def evaluate(self, sizes: list[Any] | None, parent: Parent, protocols: list[str]) -> None:
        """Evaluate every finished run (kept from an earlier pass when it covers ``sizes`` under
        every protocol)."""
        from liere.orchestration.evaluation import evaluate_checkpoint

        wanted = [[s] if isinstance(s, int) else s for s in sizes] if sizes else None
        for run in self.runs:
            if not run.finished:
                # --report-only trains nothing: a run not done yet is not its failure
                if not self.spec.report_only:
                    run.error = run.error or "no summary.json: the run did not finish"
                continue
            run.summary = json.loads((run.out_dir / "summary.json").read_text())
            cached = run.out_dir / "compare_eval" / "eval.json"
            if cached.is_file():
                done = json.loads(cached.read_text())
                have = {r.get("protocol", "zoom") for r in done["rows"]}
                sized = wanted is None or all(
                    any(_same_size(r["size"], w) for r in done["rows"]) for w in wanted
                )
                if sized and have >= set(protocols):
                    run.eval = done
                    continue
            print(f"evaluating {run.name}", flush=True)
            run.eval = evaluate_checkpoint(
                run.out_dir,
                sizes=sizes,
                shuffle=True,
                batch_size=self.spec.eval_batch_size,
                out_dir=run.out_dir / "compare_eval",
                protocols=protocols,
            )
            parent.log_child_eval(run)


def run_sweep(spec: SweepSpec, command: str) -> int:
    """Train (unless report_only), evaluate and report every run of ``spec``; ``command`` is the
    command line, quoted in the report. The exit status: 0, 1 (a run failed), 2 (a bad sweep)."""
    from liere.engine.config import ConfigError, load_config
    from liere.orchestration.cli import fail
    from liere.orchestration.report import write_report

    try:
        base = load_config(spec.config, spec.overrides)
    except ConfigError as err:
        return fail(err)
    name = spec.name or Path(spec.config).stem
    out = Path(spec.out or REPO / "runs" / "compare" / name).resolve()
    try:
        runs = plan(spec, out)
        for run in runs:  # every arm's config is checked before anything runs
            load_config(spec.config, [*spec.overrides, *run.overrides])
    except (ValueError, ConfigError) as err:
        return fail(err)
    if spec.export:
        return export(spec, base, out, runs)
    sizes = eval_sizes(spec, base)
    out.mkdir(parents=True, exist_ok=True)
    parent = Parent(base, out, name, spec)
    sweep = Sweep(spec, name, out, runs, command, parent.run_id)
    t0 = time.time()
    print(
        f"sweep {name}: {len(runs)} runs ({len(runs) // spec.seeds} arms x {spec.seeds} seeds) -> {out}"
        + (f"; MLflow parent run {parent.run_id} at {parent.uri}" if parent.run_id else ""),
        flush=True,
    )
    if not spec.report_only:
        if spec.slurm is not None:
            if not sweep.run_slurm():
                return 0
        else:
            sweep.run_local()
    sweep.evaluate(sizes, parent, list(spec.protocols or base.eval.protocols))
    report, files = write_report(
        runs, out, base, command=command, resamples=spec.bootstrap, wall_s=time.time() - t0
    )
    failed = [r for r in runs if r.error]
    parent.finish(report, files, ok=not failed)
    print(f"\nreport: {out / 'report.md'}", flush=True)
    if spec.report_only and (waiting := [r.name for r in runs if not r.finished]):
        left = ", ".join(waiting)
        print(f"not finished, so not in the report: {left} (the command without --report-only trains them)")
    if failed:
        print("failed runs: " + ", ".join(f"{r.name} ({r.error})" for r in failed), file=sys.stderr)
        return 1
    return 0


def export(spec: SweepSpec, base, out: Path, runs: list[Run]) -> int:
    """--export: the finished runs' results without weights, and the sweep's top-level files."""
    from liere.engine.tracking import resolve_uri
    from liere.orchestration.cli import fail
    from liere.orchestration.export import export_sweep

    if not out.is_dir():
        return fail(f"--export: no sweep folder {out} (give --name or --out of the sweep)")
    uri = resolve_uri(base.tracking.uri) if base.tracking.enabled else None
    try:
        copied = export_sweep(out, Path(spec.export), runs, uri)
    except ValueError as err:
        return fail(err)
    left = [r.name for r in runs if not r.finished]
    print(f"exported {len(copied)} finished runs of {out} to {Path(spec.export).resolve()} (no weights)")
    if left:
        print("not finished, so not exported: " + ", ".join(left))
    return 0
