"""Loader throughput on this machine, two suites.

    python benchmarks/loaders.py                  # each project loader against its library's own pipeline
    python benchmarks/loaders.py --quick          # the same, small (400 samples, 1 round): a smoke run
    python benchmarks/loaders.py --suite backends # the three backends against each other and a ViT-S step

Suite `library` (default; issue 16): for each backend and access mode (webdataset indexed and stream, FFCV, DALI
indexed and stream) the project's loader (pipelines.build_loader) against the library's own minimal pipeline on the
same shards with the same decode and crop (benchmarks/loaders_library.py): `wds.WebDataset(urls,
shardshuffle=...).shuffle(N).decode("pil")` + the project's random-resized crop in the same number of WebLoader
workers; a bare DALI `readers.webdataset -> decoders.image -> random_resized_crop -> crop_mirror_normalize`
pipeline (CPU) under DALIGenericIterator; a bare FFCV `Loader` with the project's pipeline fields. Two cases:
synthetic 500x375 JPEGs cropped to 224 px (batch 64) and 48^3 volumes cropped to 40^3 (batch 32). The arms run
interleaved in one process, round after round (every other round in reverse order), each round one epoch's first
`--batches` batches after its first (worker start-up, JIT and buffer fill left out); the median of the rounds is
kept. Prints samples/s and the ratio project/library, writes benchmarks/results/loaders_vs_library.json.

Suite `backends`: samples/s of the training pipelines for 32 px and 224 px JPEGs and for 3D volumes, each repeat in
a fresh process, against a ViT-S training step on the same CPU (benchmarks/results/loaders.json). Data: compass2d
stored at 32 px and at 256 px (random-resized-cropped to 224 for training), compass3d at 32^3 (cropped to 28^3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipelines import BACKENDS, build_loader, prepare

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

CASES = [
    # name, dataset, stored size, train size, samples, batch size
    ("2D 32px", "compass2d", 32, 32, 12000, 256),
    ("2D 224px", "compass2d", 256, 224, 3000, 64),
    ("3D 28^3", "compass3d", 32, 28, 3000, 32),
]


def prepare_case(root: Path, *, dataset: str, stored: int, samples: int, workers: int) -> str:
    name = f"{dataset}_{stored}"
    prepare(
        dataset,
        root,
        name=name,
        formats=["webdataset", "ffcv"],
        image_size=stored,
        num_train=samples,
        num_val=64,
        workers=workers,
        shard_size=1000,
        progress=False,
        extent_sizes=(),  # no val-extent splits: the compass sets' defaults (48, 64) / (24, 32) need a smaller size
    )
    return name


def measure(
    backend: str, *, root: Path, name: str, size: int, batch: int, batches: int, workers: int
) -> float:
    loader = build_loader(
        backend=backend,
        root=str(root),
        dataset=name,
        split="train",
        batch_size=batch,
        train=True,
        image_size=size,
        workers=workers,
        seed=0,
    )
    batches = min(batches, len(loader))
    it = iter(loader)
    for _ in range(2):  # warm-up: worker start, JIT, pipeline build
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches - 2):
        n += len(next(it)["label"])
    rate = n / (time.perf_counter() - start)
    it.close()  # leave the epoch early: stops the backend's workers and threads
    return rate


def measure_isolated(backend: str, *, repeats: int = 3, **options) -> list[float]:
    """Each repeat in a fresh process, so no backend's threads or caches colour another's numbers."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rates = []
    for _ in range(repeats):
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_measure_into, args=(queue, backend), kwargs=options
        )  # not a Pool: loaders start workers
        proc.start()
        rate = queue.get(timeout=900)
        proc.join()
        if isinstance(rate, str):
            raise RuntimeError(rate)
        rates.append(rate)
    return rates


def _measure_into(queue, backend: str, **options) -> None:
    try:
        queue.put(measure(backend, **options))
    except Exception as exc:  # report instead of hanging the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def vit_step_rate(batch: int, steps: int) -> float | None:
    """Samples/s of forward+backward+AdamW of ViT-S/16 (LieRE-8) at 224 px on this CPU, or None without liere."""
    try:
        import liere
    except ImportError:
        return None
    model = liere.create_model("vit_small_patch16", encoding="liere8", num_classes=8, img_size=224)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 8, (batch,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def machine() -> dict:
    """What the numbers are measured on: CPU, cores, versions, the git commit and the load, taken before a run
    (the caller adds loadavg_after)."""
    import subprocess

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    git = ["git", "-C", str(HERE.parent)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "pipelines", "benchmarks"], capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "git_commit": commit + ("+uncommitted changes" if dirty else ""),
        "loadavg_before": os.getloadavg(),
    }


def _cpu_seconds() -> float:
    """CPU time of this process (its threads: DALI's, FFCV's) and of its finished children (DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_epoch(epoch, *, batches: int) -> tuple[float, float]:
    """(samples/s over `batches` batches after an epoch's first, CPU ms per sample over the whole slice read).

    The rate leaves the start-up out (worker fork, JIT, buffer fill); the CPU cost counts it, and every process
    and thread of the arm, so it moves less with other work on the machine than the rate does."""
    cpu, it = _cpu_seconds(), epoch()
    try:
        first = next(it)
        start, n = time.perf_counter(), 0
        for _, size in zip(range(batches), it):
            n += size
        rate = n / (time.perf_counter() - start)
    finally:
        it.close()  # stops (and reaps) the arm's workers, so their CPU time is counted
    return rate, (_cpu_seconds() - cpu) * 1e3 / (first + n)


def interleaved(case: dict, arms: list[str], *, rounds: int, batches: int, workers: int, buffer: int) -> dict:
    """Every arm on `case`: one loader per arm, then `rounds` rounds of one epoch slice per arm, every other
    round in reverse order; {arm: [(samples/s, CPU ms per sample) per round]}."""
    from loaders_library import ARMS

    epochs = {a: ARMS[a][1](case, workers=workers, buffer=buffer) for a in arms}
    runs: dict[str, list[tuple[float, float]]] = {a: [] for a in arms}
    batches = min(batches or case["batches"], case["batches"]) - 1
    for r in range(rounds):
        for a in arms if r % 2 == 0 else arms[::-1]:
            runs[a].append(time_epoch(epochs[a], batches=batches))
            rate, cpu = runs[a][-1]
            print(f"  round {r + 1}: {a:<19} {rate:>7.0f} samples/s  {cpu:6.2f} CPU ms/sample", flush=True)
    return runs


def ratio_rows(case: dict, runs: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """Per project arm: median samples/s and CPU ms/sample, its library's, and the ratios (goal: samples/s >= 0.9x
    the library's; the webdataset stream >= 0.9x the indexed mode)."""
    from loaders_library import ARMS

    med = {a: statistics.median(r for r, _ in v) for a, v in runs.items()}
    cpu = {a: statistics.median(c for _, c in v) for a, v in runs.items()}
    rows = []
    for arm, rate in med.items():
        ref = ARMS[arm][0]
        if ref is None or ref not in med:
            continue
        row = {"case": case["case"], "loader": arm, "library": ref, "samples_per_s": rate,
               "library_samples_per_s": med[ref], "ratio": rate / med[ref], "cpu_ms_per_sample": cpu[arm],
               "library_cpu_ms_per_sample": cpu[ref], "cpu_ratio": cpu[ref] / cpu[arm],
               "runs": runs[arm], "library_runs": runs[ref]}  # fmt: skip
        backend, _, mode = arm.partition(" ")
        if mode == "stream" and f"{backend} indexed" in med:
            row["stream_vs_indexed"] = rate / med[f"{backend} indexed"]
        rows.append(row)
    return rows


def print_ratios(rows: list[dict]) -> None:
    head = (f"{'case':<23} {'loader':<19} {'project/s':>9} {'library/s':>9} {'ratio':>7}  "
            f"{'CPU ms/sample':>15} {'ratio':>6}  stream/indexed")  # fmt: skip
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        extra = f"{r['stream_vs_indexed']:>13.2f}x" if "stream_vs_indexed" in r else ""
        mark = " " if r["ratio"] >= 0.9 else "!"
        cpu = f"{r['cpu_ms_per_sample']:.2f} / {r['library_cpu_ms_per_sample']:.2f}"
        print(f"{r['case']:<23} {r['loader']:<19} {r['samples_per_s']:>9.0f} {r['library_samples_per_s']:>9.0f} "
              f"{r['ratio']:>6.2f}x{mark} {cpu:>15} {r['cpu_ratio']:>5.2f}x  {extra}")  # fmt: skip
    print("ratio: project/library samples/s (! below the 0.9x goal); CPU ms/sample project / library and its ratio "
          "library/project (above 1: the project's loader costs less CPU)")  # fmt: skip


def library_suite(args: argparse.Namespace) -> int:
    from loaders_library import ARMS, prepare_cases

    info = machine()
    arms = args.arms.split(",") if args.arms else list(ARMS)
    rounds = 1 if args.quick else args.rounds
    batches = 5 if args.quick else args.batches
    rows, runs = [], {}
    for case in prepare_cases(Path(args.root), quick=args.quick, workers=args.workers):
        print(f"{case['case']}: {case['batches']} batches of {case['batch']} per epoch", flush=True)
        runs[case["case"]] = interleaved(case, arms, rounds=rounds, batches=batches, workers=args.workers,
                                         buffer=args.buffer)  # fmt: skip
        rows += ratio_rows(case, runs[case["case"]])
    print_ratios(rows)
    if args.quick:
        print(
            "--quick: 400 samples, one round of a few batches per arm: a smoke run, its ratios measure nothing"
        )
    info["loadavg_after"] = os.getloadavg()
    out = {"machine": info, "quick": args.quick, "workers": args.workers, "rounds": rounds, "timed_batches": batches,
           "shuffle_buffer": args.buffer, "results": rows, "runs": runs,
           "command": "python " + " ".join(sys.argv)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "loaders_vs_library_quick.json" if args.quick else "loaders_vs_library.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1) + "\n")
    m = out["machine"]
    print(f"\n{m['cpu']}, {m['cpu_count']} cores, commit {m['git_commit']}; load average before/after "
          f"{m['loadavg_before'][0]:.1f} / {m['loadavg_after'][0]:.1f}; wrote {RESULTS / name}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["library", "backends"], default="library")
    p.add_argument("--root", default=str(RESULTS / "data"))
    p.add_argument("--batches", type=int, default=None, help="batches per measurement (library: an epoch)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--backends", default=",".join(BACKENDS), help="suite backends: the backends measured")
    p.add_argument("--arms", default="", help="suite library: comma-separated arms (default: all)")
    p.add_argument("--rounds", type=int, default=5, help="suite library: interleaved rounds (median kept)")
    p.add_argument("--buffer", type=int, default=1000, help="suite library: shuffle buffer of both sides")
    p.add_argument(
        "--repeats", type=int, default=3, help="suite backends: fresh-process repeats (median kept)"
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-model", action="store_true", help="suite backends: skip the ViT-S step measurement")
    args = p.parse_args(argv)
    _quiet_numba_finalizers()
    if args.suite == "library":
        return library_suite(args)
    args.batches = args.batches or 30
    return backends_suite(args)


def backends_suite(args: argparse.Namespace) -> int:
    info = machine()
    load_before = info["loadavg_before"]
    batches = 6 if args.quick else args.batches
    backends = args.backends.split(",")
    rows = [_backend_row(args, case, backends=backends, batches=batches) for case in CASES]
    vit = None if args.no_model else vit_step_rate(batch=16, steps=2 if args.quick else 4)
    _print_backends(rows, backends=backends, vit=vit)
    info["loadavg_after"] = os.getloadavg()
    out = {
        "machine": info,
        "workers": args.workers,
        "timed_batches": batches,
        "results": rows,
        "vit_small_224_train_samples_per_s": vit,
        "command": "python " + " ".join(sys.argv),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "loaders_quick.json" if args.quick else "loaders.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1) + "\n")
    print(
        f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other work on the machine lowers every number)"
    )
    print(f"wrote {RESULTS / name}")
    return 0


def _backend_row(args: argparse.Namespace, case: tuple, *, backends: list[str], batches: int) -> dict:
    """One case of the backends suite: every backend's samples/s, each repeat in a fresh process."""
    label, dataset, stored, size, samples, batch = case
    name = prepare_case(
        Path(args.root), dataset=dataset, stored=stored, samples=samples, workers=args.workers
    )
    rates, runs = {}, {}
    for backend in backends:
        runs[backend] = measure_isolated(backend, root=Path(args.root), name=name, size=size, batch=batch,
                                         batches=batches, workers=args.workers,
                                         repeats=1 if args.quick else args.repeats)  # fmt: skip
        rates[backend] = statistics.median(runs[backend])
        print(f"{label:<9} {backend:<11} {rates[backend]:>9.0f} samples/s  (runs: "
              + ", ".join(f"{r:.0f}" for r in runs[backend]) + ")", flush=True)  # fmt: skip
    return {"case": label, "dataset": name, "train_size": size, "batch_size": batch, "samples_per_s": rates,
            "runs": runs}  # fmt: skip


def _print_backends(rows: list[dict], *, backends: list[str], vit: float | None) -> None:
    head = f"{'case':<9} " + " ".join(f"{b:>11}" for b in backends) + "   ffcv/wds  dali/wds"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        rates = r["samples_per_s"]
        ratios = [
            rates[b] / rates["webdataset"] if b in rates and "webdataset" in rates else float("nan")
            for b in ("ffcv", "dali")
        ]
        r["ratio_vs_webdataset"] = {"ffcv": ratios[0], "dali": ratios[1]}
        print(f"{r['case']:<9} " + " ".join(f"{rates[b]:>11.0f}" for b in backends)
              + f"   {ratios[0]:>8.2f}x {ratios[1]:>8.2f}x")  # fmt: skip
    if vit is not None:
        slowest = min(rows[1]["samples_per_s"].values())
        print(
            f"\nViT-S/16 LieRE-8 training step at 224 px on this CPU: {vit:.1f} samples/s; slowest 224 px loader "
            f"{slowest:.0f} samples/s = {slowest / vit:.0f}x the model's demand"
        )


def _quiet_numba_finalizers() -> None:
    """numba's dispatcher finalizers raise KeyError when FFCV's compiled pipelines are collected ("Exception
    ignored in: <finalize object ...>"): harmless noise in the table's output, dropped here; others pass."""
    previous = sys.unraisablehook

    def hook(u) -> None:
        tb = u.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = tb.tb_frame.f_code.co_filename if tb is not None else ""
        if not (isinstance(u.exc_value, KeyError) and "numba" in where):
            previous(u)

    sys.unraisablehook = hook


if __name__ == "__main__":
    sys.exit(main())
