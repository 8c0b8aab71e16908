"""What checking the per-sample CRC-32s costs (shards/checksum.py): samples/s with and without verification.

    python benchmarks/shard_checksums.py            # prints a table, writes benchmarks/results/shard_checksums.json
    python benchmarks/shard_checksums.py --quick    # fewer samples (a smoke run)

Data: real JPEG shards, compass2d stored at 256 px (ImageNet-like: random-resized-cropped to 224 for training)
and at 32 px (CIFAR-like), prepared once under benchmarks/results/data. Measured per case:
- read: ShardReader.read (payload, label, index) with the checksum verified, against the same reads unverified;
- train: the webdataset training loader in one process (workers=0: the per-sample CPU cost, not the parallelism
  of this 2-core machine), decode + random-resized crop + flip + normalize, verified against unverified;
- ffcv (when FFCV is installed): the FFCV training loader, whose Python-side check is the only one it gets.
Each timing is the best of `--reps` runs, alternating verified and unverified runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import build_loader, prepare
from pipelines.shards import ShardReader

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CASES = [("2D 224px from 256px JPEGs", 256, 224, 2000, 32), ("2D 32px JPEGs", 32, 32, 8000, 128)]


def prepare_case(root: Path, stored: int, samples: int) -> str:
    name = f"compass2d_{stored}"
    formats = ["webdataset"]
    try:
        import ffcv  # noqa: F401

        formats.append("ffcv")
    except ImportError:
        pass
    prepare("compass2d", root, name=name, formats=formats, image_size=stored, num_train=samples, num_val=64,
            workers=2, shard_size=1000, progress=False)  # fmt: skip
    return name


def unverified(reader: ShardReader) -> None:
    """Turn a reader's checks off (as for shards written without checksums)."""
    reader._crc = (np.full_like(reader._crc[0], -1), reader._crc[1])


def time_reads(split_dir: Path, verify: bool) -> float:
    reader = ShardReader(split_dir)
    if not verify:
        unverified(reader)
    t0 = time.perf_counter()
    for pos in range(len(reader)):
        reader.read(pos)
    return len(reader) / (time.perf_counter() - t0)


def time_loader(backend: str, root: Path, name: str, size: int, batch: int, *, verify: bool = True) -> float:
    loader = build_loader(backend=backend, root=str(root), dataset=name, split="train", batch_size=batch,
                          train=True, image_size=size, workers=0 if backend == "webdataset" else 1)  # fmt: skip
    if not verify:
        if backend == "webdataset":
            unverified(loader.reader)
        else:
            loader._sums = None
    if backend == "ffcv":  # numba compiles on the first epoch
        next(iter(loader))
    t0 = time.perf_counter()
    n = sum(len(b["label"]) for b in loader)
    return n / (time.perf_counter() - t0)


def best(fn, reps: int) -> tuple[float, float]:
    """Best samples/s of verified and unverified runs, alternated."""
    on, off = [], []
    for _ in range(reps):
        on.append(fn(verify=True))
        off.append(fn(verify=False))
    return max(on), max(off)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    root = RESULTS / "data"
    rows = []
    for label, stored, size, samples, batch in CASES:
        samples = samples // 4 if args.quick else samples
        name = prepare_case(root, stored, samples)
        split_dir = root / name / "webdataset" / "train"
        mean_bytes = float(ShardReader(split_dir).sizes.mean())
        measures = {
            "read": partial(time_reads, split_dir),
            "train": partial(time_loader, "webdataset", root, name, size, batch),
        }
        if (root / name / "ffcv" / "train.beton").is_file():
            measures["ffcv"] = partial(time_loader, "ffcv", root, name, size, batch)
        for what, fn in measures.items():
            on, off = best(fn, args.reps)
            rows.append({"case": label, "measure": what, "samples": samples, "mean_jpeg_bytes": round(mean_bytes),
                         "verified_per_s": round(on, 1), "unverified_per_s": round(off, 1),
                         "ratio": round(on / off, 4)})  # fmt: skip
            print(
                f"{label:<28} {what:<6} verified {on:>10.1f}/s  unverified {off:>10.1f}/s  ratio {on / off:.3f}"
            )
    out = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shard_checksums.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'shard_checksums.json'}")


if __name__ == "__main__":
    main()
