"""Tiny data sets in each real layout, written with the same libraries users' files come from."""

from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path

import numpy as np


def jpeg_bytes(rng: np.random.Generator, size=(40, 30), mode="RGB") -> bytes:
    from PIL import Image

    h, w = size
    arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def imagenet_tree(
    root: Path, classes=("n01440764", "n01443537", "n02102040"), per_class=4, val="flat_loc"
) -> Path:
    """train/<wnid>/*.JPEG and val/ in one of: 'flat_loc' (LOC_val_solution.csv), 'flat_txt' (val_labels.txt),
    'flat_devkit' (ground truth + meta.mat), 'folders'."""
    rng = np.random.default_rng(0)
    for c in classes:
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{c}_{i}.JPEG").write_bytes(jpeg_bytes(rng, (30 + 5 * i, 40)))
    val_labels = [
        (f"ILSVRC2012_val_{i + 1:08d}", classes[(i * 2) % len(classes)]) for i in range(2 * len(classes))
    ]
    for stem, wnid in val_labels:
        folder = root / "val" / wnid if val == "folders" else root / "val"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.JPEG").write_bytes(jpeg_bytes(rng))
    if val == "flat_loc":
        with open(root / "LOC_val_solution.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ImageId", "PredictionString"])
            for stem, wnid in val_labels:
                w.writerow([stem, f"{wnid} 10 10 100 100"])
    elif val == "flat_txt":
        (root / "val_labels.txt").write_text("".join(f"{s}.JPEG {w}\n" for s, w in val_labels))
    elif val == "flat_devkit":
        from scipy.io import savemat

        dev = root / "ILSVRC2012_devkit_t12" / "data"
        dev.mkdir(parents=True)
        ids = {c: 100 + i for i, c in enumerate(classes)}
        synsets = np.zeros((len(classes),), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
        for i, c in enumerate(classes):
            synsets[i] = (ids[c], c)
        savemat(dev / "meta.mat", {"synsets": synsets})
        (dev / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{ids[w]}\n" for _, w in val_labels)
        )
    return root


def cifar100_tree(root: Path, n_train=30, n_test=12) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    fine = [f"fine_{i}".encode() for i in range(100)]
    coarse = [f"coarse_{i}".encode() for i in range(20)]
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": fine, b"coarse_label_names": coarse}, f, protocol=2)
    for name, n in (("train", n_train), ("test", n_test)):
        yy, xx = np.mgrid[0:32, 0:32]
        f = rng.uniform(0.05, 0.3, size=(n, 3, 2, 1, 1))
        phase = rng.uniform(0, 6.28, size=(n, 3, 1, 1))
        smooth = 128 + 100 * np.sin(f[:, :, 0] * yy + f[:, :, 1] * xx + phase)  # JPEG-friendly content
        data = smooth.astype(np.uint8).reshape(n, 3072)
        batch = {
            b"data": data,
            b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
        }
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def medmnist_npz(path: Path, n=(20, 6, 8), size=28, classes=11) -> Path:
    rng = np.random.default_rng(2)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(count, size, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, size=(count, 1))
    np.savez_compressed(path, **arrays)
    return path


def nifti_tree(root: Path, n=6, shape=(20, 18, 12)) -> Path:
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        vol = np.zeros(shape, np.float32)  # (x, y, z)
        vol[..., :] = np.arange(shape[2], dtype=np.float32) * 10  # intensity grows with z
        nib.Nifti1Image(vol, affine=np.diag([1.0, 1.0, 2.0, 1.0])).to_filename(root / f"case{i}.nii.gz")
        rows.append((f"case{i}", ["healthy", "lesion"][i % 2], "val" if i >= n - 2 else "train"))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "split"])
        w.writerows(rows)
    return root


def dicom_series(folder: Path, slices=7, rows=16, cols=12, start_hu=-100.0, step_hu=50.0, seed=0) -> Path:
    """One CT series whose slice k holds the constant value start_hu + k*step_hu; files in shuffled name order."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(slices)
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{order[k]:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "CT"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # z decreases: sorting must use the normal, not names
        ds.ImagePositionPatient = [0, 0, float(-2.5 * k)]
        ds.InstanceNumber = slices - k
        value = start_hu + step_hu * (slices - 1 - k)  # slice at the lowest z has the highest value
        ds.PixelData = np.full((rows, cols), int(value + 1024), np.int16).tobytes()
        ds.save_as(folder / f"{order[k]:03d}.dcm", enforce_file_format=True)
    return folder


def dicom_tree(root: Path, n=4) -> Path:
    rows = []
    for i in range(n):
        dicom_series(root / f"study{i}", seed=i)
        rows.append((f"study{i}", i % 2))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(rows)
    return root


def write_video(path: Path, frames=24, size=(48, 64), fps=10) -> Path:
    """An mpeg4 .avi (the codec of UCF101's xvid files) whose frame k has brightness 8*k."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"qscale": "2"}
        for k in range(frames):
            arr = np.full((h, w, 3), min(255, 8 * k), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def ucf101_tree(root: Path) -> Path:
    classes = ["ApplyEyeMakeup", "Basketball", "YoYo"]
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    train, test = [], []
    for ci, c in enumerate(classes):
        for g in (1, 8):
            rel = f"{c}/v_{c}_g{g:02d}_c01.avi"
            write_video(root / "UCF-101" / rel, frames=20 + 4 * ci)
            (test if g == 1 else train).append(rel)
    for s in (1, 2, 3):
        (lists / f"trainlist0{s}.txt").write_text(
            "".join(f"{r} {classes.index(r.split('/')[0]) + 1}\n" for r in train)
        )
        (lists / f"testlist0{s}.txt").write_text("".join(f"{r}\n" for r in test))
    return root
