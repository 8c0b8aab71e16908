"""Image folders: `{src}/{split}/{class}/*.jpg`, and ImageNet-1k's layout with a foldered or flat `val/`.

ImageNet's flat val/ is labelled by, in this order of preference: `LOC_val_solution.csv` (Kaggle's
ILSVRC release: `ImageId,PredictionString` whose first token is the wnid), the devkit's
`ILSVRC2012_validation_ground_truth.txt` with `meta.mat` (ILSVRC2012 ids -> wnids), or a two-column
`val_labels.txt`/`.csv` (`file wnid`). Files are passed through as their original bytes.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pipelines.errors import BadSampleError, DataError
from pipelines.sources.base import IMAGENET_MEAN, IMAGENET_STD, Sample, Source
from pipelines.sources.registry import register_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _images_in(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadSampleError(str(path), f"cannot read file ({exc.strerror or exc})") from exc


@register_source
class ImageFolder(Source):
    """Any `{src}/{split}/{class}/image` tree; classes are the sorted folder names of the first split."""

    name = "imagefolder"
    kind = "image"

    def __init__(
        self,
        src: str | os.PathLike,
        *,
        splits: list[str] | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        allow_missing_classes: bool = False,
    ):
        self.src = Path(src)
        if not self.src.is_dir():
            raise DataError(f"{self.src}: not a folder")
        self.extensions = tuple(e.lower() for e in extensions)
        self.channels, self.mean, self.std = 3, tuple(mean), tuple(std)
        self.allow_missing_classes = allow_missing_classes
        names = splits or [s for s in ("train", "val", "test") if (self.src / s).is_dir()]
        if not names:
            raise DataError(
                f"{self.src}: no train/, val/ or test/ folder (expected {self.src}/train/<class>/<image>)"
            )
        self.files: dict[str, list[tuple[Path, int]]] = {}
        self.classes = []
        for split in names:
            self.files[split] = self._scan(split)

    def _class_folders(self, split: str) -> list[str]:
        folder = self.src / split
        if not folder.is_dir():
            raise DataError(f"{folder}: split folder missing")
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _scan(self, split: str) -> list[tuple[Path, int]]:
        found = self._class_folders(split)
        if not self.classes:
            if not found:
                raise DataError(f"{self.src / split}: no class folders")
            self.classes = found
        else:
            missing = sorted(set(self.classes) - set(found))
            extra = sorted(set(found) - set(self.classes))
            if extra:
                raise DataError(
                    f"{self.src / split}: class folder(s) {extra[:5]} not in {self.src / self.splits()[0]}"
                )
            if missing and not self.allow_missing_classes:
                raise DataError(
                    f"{self.src / split}: class folder {self.src / split / missing[0]} is missing"
                    f" ({len(missing)} missing in all); pass allow_missing_classes=True if that is intended"
                )
        out = []
        for label, cls in enumerate(self.classes):
            folder = self.src / split / cls
            if folder.is_dir():
                out += [(p, label) for p in _images_in(folder, self.extensions)]
        if not out:
            raise DataError(f"{self.src / split}: no images with extensions {self.extensions}")
        return out

    def splits(self) -> list[str]:
        return list(self.files)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return len(self.files[split])

    def get(self, split: str, index: int) -> Sample:
        path, label = self.files[split][index]
        return Sample(_read_bytes(path), label, str(path))

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "src": str(self.src.resolve()),
            "splits": self.splits(),
            "counts": {s: len(f) for s, f in self.files.items()},
        }


@register_source
class ImageNet(ImageFolder):
    """ImageNet-1k: `train/<wnid>/*.JPEG`; `val/` foldered by wnid, or flat with one of the label files."""

    name = "imagenet"

    def __init__(self, src: str | os.PathLike, **kwargs: Any):
        self._src_root = Path(src)
        super().__init__(src, splits=["train"], extensions=(".jpeg", ".jpg", ".png"), **kwargs)
        val = self._src_root / "val"
        if val.is_dir():
            if self._class_folders("val"):
                self.files["val"] = self._scan("val")
            else:
                self.files["val"] = self._flat_val(val)

    def _flat_val(self, val: Path) -> list[tuple[Path, int]]:
        images = _images_in(val, self.extensions)
        if not images:
            raise DataError(f"{val}: neither class folders nor images")
        labels = self._val_labels(images)
        index = {c: i for i, c in enumerate(self.classes)}
        out = []
        for p in images:
            wnid = labels.get(p.stem)
            if wnid is None:
                raise DataError(f"{p}: no label for this image in the validation label file")
            if wnid not in index:
                raise DataError(f"{p}: label {wnid!r} is not a class folder of {self._src_root / 'train'}")
            out.append((p, index[wnid]))
        return out

    def _find(self, *names: str) -> Path | None:
        for base in (self._src_root, self._src_root.parent):  # beside train/ and val/, or one level up
            for name in names:
                hits = [
                    h for pattern in (name, f"*/{name}", f"*/*/{name}") for h in sorted(base.glob(pattern))
                ]
                if hits:
                    return hits[0]
        return None

    def _val_labels(self, images: list[Path]) -> dict[str, str]:
        """Image stem -> wnid from whichever official label file is present."""
        loc = self._find("LOC_val_solution.csv")
        if loc is not None:
            with open(loc, newline="") as f:
                rows = csv.DictReader(f)
                if not rows.fieldnames or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
                    raise DataError(
                        f"{loc}: expected the columns ImageId,PredictionString, got {rows.fieldnames}"
                    )
                return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows}
        truth = self._find("ILSVRC2012_validation_ground_truth.txt")
        if truth is not None:
            meta = truth.parent / "meta.mat"
            if not meta.is_file():
                raise DataError(
                    f"{truth}: needs the devkit's meta.mat beside it to map ILSVRC2012 ids to wnids"
                )
            from scipy.io import loadmat  # scipy comes with scikit-learn (the data extra)

            synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
            id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
            ids = [int(line) for line in truth.read_text().split()]
            stems = sorted(p.stem for p in images)  # ILSVRC2012_val_00000001 ... in order
            if len(ids) != len(stems):
                raise DataError(f"{truth}: {len(ids)} labels for {len(stems)} images in val/")
            return {stem: id_to_wnid[i] for stem, i in zip(stems, ids)}
        plain = self._find("val_labels.txt", "val_labels.csv")
        if plain is not None:
            out = {}
            for n, line in enumerate(plain.read_text().splitlines(), 1):
                parts = line.replace(",", " ").split()
                if not parts or parts[0].lower() in ("file", "imageid", "filename"):
                    continue
                if len(parts) < 2:
                    raise DataError(f"{plain}:{n}: expected 'file wnid', got {line!r}")
                out[Path(parts[0]).stem] = parts[1]
            return out
        raise DataError(
            f"{self._src_root / 'val'} is flat but no label file was found: put LOC_val_solution.csv, "
            "ILSVRC2012_validation_ground_truth.txt (+ meta.mat) or val_labels.txt beside it"
        )
