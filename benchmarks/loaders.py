"""Loader throughput per backend on this machine: samples/s of the training pipelines for 32 px and
224 px JPEGs and for 3D volumes, against the speed of a ViT-S training step on the same CPU.

    python benchmarks/loaders.py                 # prints a table, writes benchmarks/results/loaders.json
    python benchmarks/loaders.py --quick         # fewer batches (a smoke run)

Data: compass2d stored at 32 px and at 256 px (random-resized-cropped to 224 for training), compass3d at
32^3 (cropped to 28^3), prepared once under benchmarks/results/data. Each backend reads one warm-up
epoch slice first (FFCV compiles with numba, DALI builds its pipeline), then is timed over whole batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import BACKENDS, build_loader, prepare

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

CASES = [
    # name, dataset, stored size, train size, samples, batch size
    ("2D 32px", "compass2d", 32, 32, 12000, 256),
    ("2D 224px", "compass2d", 256, 224, 3000, 64),
    ("3D 28^3", "compass3d", 32, 28, 3000, 32),
]


def prepare_case(root: Path, dataset: str, stored: int, samples: int, workers: int) -> str:
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
    )
    return name


def measure(backend: str, root: Path, name: str, size: int, batch: int, batches: int, workers: int) -> float:
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


def measure_isolated(*args, repeats: int = 3) -> list[float]:
    """Each repeat in a fresh process, so no backend's threads or caches colour another's numbers."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rates = []
    for _ in range(repeats):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure_into, args=(queue, *args))  # not a Pool: loaders start workers
        proc.start()
        rate = queue.get(timeout=900)
        proc.join()
        if isinstance(rate, str):
            raise RuntimeError(rate)
        rates.append(rate)
    return rates


def _measure_into(queue, *args) -> None:
    try:
        queue.put(measure(*args))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(RESULTS / "data"))
    p.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument(
        "--repeats", type=int, default=3, help="fresh-process repeats per measurement (median kept)"
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-model", action="store_true", help="skip the ViT-S step measurement")
    args = p.parse_args(argv)
    root = Path(args.root)
    load_before = os.getloadavg()
    batches = 6 if args.quick else args.batches
    backends = args.backends.split(",")
    rows = []
    for label, dataset, stored, size, samples, batch in CASES:
        name = prepare_case(root, dataset, stored, samples, args.workers)
        rates, runs = {}, {}
        for backend in backends:
            runs[backend] = measure_isolated(
                backend,
                root,
                name,
                size,
                batch,
                batches,
                args.workers,
                repeats=1 if args.quick else args.repeats,
            )
            rates[backend] = statistics.median(runs[backend])
            print(
                f"{label:<9} {backend:<11} {rates[backend]:>9.0f} samples/s  (runs: "
                + ", ".join(f"{r:.0f}" for r in runs[backend])
                + ")",
                flush=True,
            )
        rows.append(
            {
                "case": label,
                "dataset": name,
                "train_size": size,
                "batch_size": batch,
                "samples_per_s": rates,
                "runs": runs,
            }
        )
    vit = None if args.no_model else vit_step_rate(batch=16, steps=2 if args.quick else 4)

    print()
    head = f"{'case':<9} " + " ".join(f"{b:>11}" for b in backends) + "   ffcv/wds  dali/wds"
    print(head)
    print("-" * len(head))
    for r in rows:
        rates = r["samples_per_s"]
        ratios = [
            rates[b] / rates["webdataset"] if b in rates and "webdataset" in rates else float("nan")
            for b in ("ffcv", "dali")
        ]
        r["ratio_vs_webdataset"] = {"ffcv": ratios[0], "dali": ratios[1]}
        print(
            f"{r['case']:<9} "
            + " ".join(f"{rates[b]:>11.0f}" for b in backends)
            + f"   {ratios[0]:>8.2f}x {ratios[1]:>8.2f}x"
        )
    if vit is not None:
        slowest = min(rows[1]["samples_per_s"].values())
        print(
            f"\nViT-S/16 LieRE-8 training step at 224 px on this CPU: {vit:.1f} samples/s; slowest 224 px loader "
            f"{slowest:.0f} samples/s = {slowest / vit:.0f}x the model's demand"
        )
    out = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "workers": args.workers,
        "timed_batches": batches,
        "results": rows,
        "vit_small_224_train_samples_per_s": vit,
        "command": "python " + " ".join(sys.argv),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loaders.json").write_text(json.dumps(out, indent=1) + "\n")
    print(
        f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other work on the machine lowers every number)"
    )
    print(f"wrote {RESULTS / 'loaders.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
