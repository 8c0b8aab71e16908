"""Convert a data set into webdataset shards and/or FFCV betons, once, with a progress bar per split.

python launch/prepare_data.py digits --out data --formats webdataset,ffcv
python launch/prepare_data.py imagenet --src /datasets/imagenet --out data --image-size 256 --workers 16
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a fresh clone

from pipelines import DataError, format_summary, list_sources, prepare


def _kv(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=list_sources(), help="data set layout to read")
    p.add_argument(
        "--src", help="folder (or file) holding the data set; not needed for digits/compass2d/compass3d"
    )
    p.add_argument(
        "--out", required=True, help="output root; writes OUT/NAME/webdataset/SPLIT and OUT/NAME/ffcv"
    )
    p.add_argument("--formats", default="webdataset", help="comma-separated: webdataset,ffcv")
    p.add_argument(
        "--image-size", type=int, help="generated sets: their size; others: resize the shorter side to N"
    )
    p.add_argument("--workers", type=int, default=1, help="parallel writer processes")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality when re-encoding")
    p.add_argument("--splits", help="comma-separated subset of the source's splits")
    p.add_argument("--name", help="output name (default: the source name)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable samples (counted and logged)")
    p.add_argument("--overwrite", action="store_true", help="rewrite even if a complete output exists")
    p.add_argument("--volume-dtype", default="uint8", choices=["uint8", "float16"])
    p.add_argument(
        "--ffcv-max-resolution", type=int, help="FFCV: longest side stored (default: as in the shards)"
    )
    p.add_argument(
        "--ffcv-write-mode", choices=["raw", "jpg", "smart"], help="FFCV image storage (default: by size)"
    )
    p.add_argument(
        "--option",
        "-o",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="source argument, e.g. -o labels=coarse (cifar100), -o frames=16 (ucf101), -o window=[40,400] (dicom)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.time()
    try:
        rows = prepare(
            args.source,
            args.out,
            src=args.src,
            formats=args.formats.split(","),
            image_size=args.image_size,
            workers=args.workers,
            shard_size=args.shard_size,
            quality=args.quality,
            volume_dtype=args.volume_dtype,
            skip_bad=args.skip_bad,
            splits=args.splits.split(",") if args.splits else None,
            name=args.name,
            overwrite=args.overwrite,
            progress=not args.quiet,
            ffcv_max_resolution=args.ffcv_max_resolution,
            ffcv_write_mode=args.ffcv_write_mode,
            **dict(args.option),
        )
    except (DataError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(rows))
    print(f"done in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
