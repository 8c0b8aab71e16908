"""What ``launch/compare.py --parallel K`` buys on this machine: K training runs one after another
(each with every core's thread) against the same K runs at once (cores / K threads each).

    python benchmarks/parallel_runs.py --config configs/compass2d.yaml
    python benchmarks/parallel_runs.py --config configs/compass3d.yaml --steps 200 --runs 2

Each run is ``launch/train.py`` on the config (seeds 0..K-1, ``--steps`` optimizer steps, tracking
off, no shuffled-patch evaluation): start-up, data, training, the final evaluation and the weights'
export, as a sweep pays them. The wall time of the K runs both ways and their ratio are printed and
saved to ``benchmarks/results/parallel_runs_<config>.json``. Run it on a quiet machine: the ratio is
the point, and another job's load changes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def train_command(config: str, seed: int, steps: int, out: Path) -> list[str]:
    return [
        sys.executable, str(REPO / "launch" / "train.py"), config, f"train.seed={seed}",
        f"train.max_steps={steps}", f"train.out_dir={out}", "tracking.enabled=false",
        "eval.shuffle_patches=false", "train.log_every=50",
    ]  # fmt: skip


def wall(commands: list[list[str]], at_once: bool, threads: int, logs: Path) -> float:
    """Seconds for the commands, one after another or all at once, each with ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    procs = []
    for i, cmd in enumerate(commands):
        with open(logs / f"{'together' if at_once else 'alone'}-{i}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if at_once:
            procs.append(proc)
        elif proc.wait() != 0:
            raise SystemExit(f"run failed: see {log.name}")
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a run failed: see the logs in {logs}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/compass2d.yaml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--runs", type=int, default=2, help="K: runs, and runs at once")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="parallel_runs_") as tmp:
        tmp = Path(tmp)
        cmds = {m: [train_command(args.config, s, args.steps, tmp / m / f"s{s}") for s in range(args.runs)]
                for m in ("alone", "together")}  # fmt: skip
        # the data set prepared (and the DeepSpeed extension built) before anything is timed
        wall([train_command(args.config, 0, 2, tmp / "warm")], False, cores, tmp)
        alone = wall(cmds["alone"], False, cores, tmp)
        together = wall(cmds["together"], True, max(1, cores // args.runs), tmp)
    row = {
        "config": args.config, "steps": args.steps, "runs": args.runs, "cores": cores,
        "one_after_another_s": round(alone, 1), "at_once_s": round(together, 1),
        "speedup": round(alone / together, 2),
    }  # fmt: skip
    print(
        f"{args.runs} runs of {args.steps} steps ({args.config}, {cores} cores): one after another "
        f"{alone:.1f} s ({cores} threads each), at once {together:.1f} s "
        f"({max(1, cores // args.runs)} each): {alone / together:.2f}x"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"parallel_runs_{Path(args.config).stem}.json"
    out.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
