"""Folders of 3D scans with a CSV of labels: NIfTI files (nibabel) or DICOM series (pydicom).

Layouts: `{src}/{id}.nii[.gz]` or `{src}/{id}/**.dcm` (one folder per study, as in the RSNA CT
challenges), and a CSV (default `{src}/labels.csv`) with an id column, a label column and
optionally a split column; without one, a stable hash of the id puts `val_fraction` of studies in val.
Volumes become (1, D, H, W) uint8 of a fixed `shape`, by trilinear resampling ("resize") or center
crop/pad ("crop"), after intensity windowing: a CT window (center, width) in Hounsfield units, the
series' own window tags ("dicom"), or the 0.5-99.5 percentile range ("auto").
NaN voxels (registered or resampled scans hold them outside the field of view): `nan="background"` (the
default) maps them to the volume's smallest finite intensity, its background in MRI (0) and CT (air, about
-1000 HU; 0 would be water there), counted as repaired in the preparation summary; `nan="refuse"` makes such a
volume a bad sample naming the file. Infinite values are always refused.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.errors import BadSampleError, DataError
from pipelines.sources.base import Sample, Source
from pipelines.sources.registry import register_source

# Common CT windows (center, width) in HU, as used in radiology practice and the RSNA challenge notebooks.
NAN_POLICIES = ("background", "refuse")
CT_WINDOWS = {
    "brain": (40, 80),
    "subdural": (80, 200),
    "soft_tissue": (40, 400),
    "lung": (-600, 1500),
    "bone": (400, 1800),
}


def window_to_uint8(vol: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Map intensities to [0, 255]: a (center, width) window, or the 0.5-99.5 percentile range when None."""
    if window is None:
        lo, hi = np.percentile(vol, [0.5, 99.5])
    else:
        center, width = window
        lo, hi = center - width / 2.0, center + width / 2.0
    if hi <= lo:
        hi = lo + 1.0
    return np.round(np.clip((vol - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def fit_shape(vol: np.ndarray, shape: tuple[int, int, int], mode: str) -> np.ndarray:
    """(D, H, W) uint8 -> `shape`, by trilinear resize or by center crop / zero pad."""
    if tuple(vol.shape) == tuple(shape):
        return vol
    if mode == "resize":
        t = torch.from_numpy(vol.astype(np.float32))[None, None]
        out = F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0]
        return out.round().clamp(0, 255).to(torch.uint8).numpy()
    if mode != "crop":
        raise ValueError(f"mode must be 'resize' or 'crop', got {mode!r}")
    out = np.zeros(shape, np.uint8)
    src, dst = [], []
    for have, want in zip(vol.shape, shape):
        if have >= want:
            s = (have - want) // 2
            src.append(slice(s, s + want))
            dst.append(slice(0, want))
        else:
            d = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(d, d + have))
    out[tuple(dst)] = vol[tuple(src)]
    return out


class _VolumeFolder(Source):
    kind = "volume"
    file_kind = ""

    def __init__(
        self,
        src: str | os.PathLike,
        *,
        labels: str | os.PathLike | None = None,
        shape: tuple[int, int, int] | list[int] = (64, 128, 128),
        mode: str = "resize",
        window: tuple[float, float] | list[float] | str | None = None,
        id_column: str = "id",
        label_column: str = "label",
        split_column: str = "split",
        val_fraction: float = 0.2,
        mean: float = 0.25,
        std: float = 0.3,
        nan: str = "background",
    ):
        self.src = Path(src)
        if not self.src.is_dir():
            raise DataError(f"{self.src}: not a folder")
        self.labels_path = Path(labels) if labels else self.src / "labels.csv"
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape must have 3 entries (D, H, W), got {shape}")
        self.mode = mode
        if nan not in NAN_POLICIES:
            raise ValueError(f"nan={nan!r}: expected one of {NAN_POLICIES}")
        self.nan = nan
        self.window = CT_WINDOWS[window] if isinstance(window, str) and window in CT_WINDOWS else window
        if isinstance(self.window, str) and self.window not in ("auto", "dicom"):
            raise ValueError(
                f"window must be (center, width), 'auto', 'dicom' or one of {sorted(CT_WINDOWS)}"
            )
        self.channels = 1
        # Intensities are windowed to [0, 255] per volume, so fixed statistics serve (override per data set).
        self.mean, self.std = (float(mean),), (float(std),)
        rows = self._read_csv(id_column, label_column, split_column)
        names = sorted(
            {r[1] for r in rows},
            key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit() else 0, v),
        )
        self.classes = names
        index = {c: i for i, c in enumerate(names)}
        self.items: dict[str, list[tuple[Path, int, str]]] = {}
        for ident, label, split in rows:
            if split is None:
                h = int(hashlib.sha1(ident.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
                split = "val" if h < val_fraction else "train"
            self.items.setdefault(split, []).append((self._locate(ident), index[label], ident))
        order = [s for s in ("train", "val", "test") if s in self.items]
        self.items = {s: self.items[s] for s in order + [s for s in self.items if s not in order]}

    def _read_csv(self, id_col: str, label_col: str, split_col: str) -> list[tuple[str, str, str | None]]:
        if not self.labels_path.is_file():
            raise DataError(
                f"{self.labels_path}: label CSV missing (columns {id_col},{label_col}[,{split_col}])"
            )
        with open(self.labels_path, newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            for col in (id_col, label_col):
                if col not in fields:
                    raise DataError(f"{self.labels_path}: no column {col!r} (columns: {fields})")
            rows = [
                (r[id_col].strip(), r[label_col].strip(), (r.get(split_col) or "").strip() or None)
                for r in reader
            ]
        if not rows:
            raise DataError(f"{self.labels_path}: no rows")
        return rows

    def _locate(self, ident: str) -> Path:
        raise NotImplementedError

    def _read(self, path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
        """(D, H, W) float32 intensities and the file's own window, if it has one."""
        raise NotImplementedError

    def splits(self) -> list[str]:
        return list(self.items)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return len(self.items[split])

    def get(self, split: str, index: int) -> Sample:
        path, label, _ = self.items[split][index]
        try:
            vol, own_window = self._read(path)
        except BadSampleError:
            raise
        except Exception as exc:
            raise BadSampleError(
                str(path), f"cannot read {self.file_kind} ({type(exc).__name__}: {exc})"
            ) from exc
        if vol.ndim != 3 or min(vol.shape) < 1:
            raise BadSampleError(str(path), f"expected a 3D volume, got shape {vol.shape}")
        vol, repaired = self._nan_to_background(vol, path)
        if not np.all(np.isfinite(vol)):
            raise BadSampleError(str(path), "volume holds infinite values")
        if self.window == "dicom":
            window = own_window
        elif self.window in (None, "auto"):
            window = None
        else:
            window = tuple(float(v) for v in self.window)
        vol8 = fit_shape(window_to_uint8(vol, window), self.shape, self.mode)
        return Sample(vol8[None], label, str(path), repaired)

    def _nan_to_background(self, vol: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
        """The volume with NaN voxels set to its smallest finite value (nan="background"), and what was done."""
        nan = np.isnan(vol)
        count = int(nan.sum())
        if not count:
            return vol, None
        finite = np.isfinite(vol)
        if self.nan == "refuse" or not finite.any():
            why = "no finite voxel at all" if not finite.any() else "nan='refuse'; nan='background' maps them"
            raise BadSampleError(str(path), f"volume holds {count} NaN voxels of {vol.size} ({why})")
        background = float(vol[finite].min())
        vol = np.where(nan, np.float32(background), vol)
        return vol, f"{count} NaN voxels of {vol.size} mapped to background {background:g}"

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "src": str(self.src.resolve()),
            "labels": str(self.labels_path),
            "shape": self.shape,
            "mode": self.mode,
            "window": self.window,
            "nan": self.nan,
            "counts": {s: len(v) for s, v in self.items.items()},
        }


@register_source
class NiftiFolder(_VolumeFolder):
    """`{src}/{id}.nii.gz` (or `.nii`), reoriented to the closest canonical (RAS) axes, stored as (D=z, H=y, W=x)."""

    name = "nifti"
    file_kind = "NIfTI"

    def _locate(self, ident: str) -> Path:
        for candidate in (self.src / ident, self.src / f"{ident}.nii.gz", self.src / f"{ident}.nii"):
            if candidate.is_file():
                return candidate
        raise DataError(f"{self.src}: no NIfTI file for id {ident!r} listed in {self.labels_path}")

    def _read(self, path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
        import nibabel as nib

        img = nib.as_closest_canonical(nib.load(str(path)))
        vol = np.asarray(img.get_fdata(dtype=np.float32))
        if vol.ndim == 4 and vol.shape[3] == 1:
            vol = vol[..., 0]
        return np.ascontiguousarray(vol.transpose(2, 1, 0)), None  # (x, y, z) -> (z, y, x)


@register_source
class DicomFolder(_VolumeFolder):
    """`{src}/{id}/` holding one DICOM series (searched recursively); slices ordered by position along the
    slice normal (ImagePositionPatient . normal of ImageOrientationPatient), else by InstanceNumber;
    pixel values rescaled to Hounsfield units with RescaleSlope/RescaleIntercept."""

    name = "dicom"
    file_kind = "DICOM series"

    def __init__(self, src: str | os.PathLike, **kwargs: Any):
        kwargs.setdefault("window", "dicom")
        super().__init__(src, **kwargs)

    def _locate(self, ident: str) -> Path:
        folder = self.src / ident
        if not folder.is_dir():
            raise DataError(f"{folder}: study folder for id {ident!r} (listed in {self.labels_path}) missing")
        return folder

    def _read(self, path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
        import pydicom

        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BadSampleError(str(path), "no files in the study folder")
        slices = []
        for f in files:
            try:
                ds = pydicom.dcmread(str(f))
            except Exception as exc:
                raise BadSampleError(
                    str(f), f"not a readable DICOM file ({type(exc).__name__}: {exc})"
                ) from exc
            if "PixelData" not in ds:
                continue  # e.g. a DICOMDIR or a structured report beside the images
            slices.append(ds)
        if not slices:
            raise BadSampleError(str(path), "no DICOM file with pixel data")

        def position(ds) -> float:
            if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
                o = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
                return float(
                    np.dot(np.cross(o[:3], o[3:]), np.asarray(ds.ImagePositionPatient, dtype=np.float64))
                )
            return float(getattr(ds, "InstanceNumber", 0))

        slices.sort(key=position)
        planes = []
        for ds in slices:
            try:
                arr = ds.pixel_array.astype(np.float32)
            except Exception as exc:  # compressed transfer syntaxes need pylibjpeg or GDCM
                raise BadSampleError(
                    str(path), f"cannot decode pixel data ({type(exc).__name__}: {exc})"
                ) from exc
            planes.append(
                arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
            )
        shapes = {p.shape for p in planes}
        if len(shapes) != 1:
            raise BadSampleError(str(path), f"slices of different sizes {sorted(shapes)}")
        first = slices[0]
        window = None
        if "WindowCenter" in first and "WindowWidth" in first:

            def scalar(v) -> float:
                return float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)

            window = (scalar(first.WindowCenter), scalar(first.WindowWidth))
        return np.stack(planes), window
