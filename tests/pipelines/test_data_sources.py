"""Each real-layout source on tiny fixtures: labels, shapes, ordering, and a prepare + load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_fixtures import cifar100_tree, dicom_tree, imagenet_tree, medmnist_npz, nifti_tree, ucf101_tree
from data_helpers import LIBRARY, require

from pipelines import BACKENDS, build_loader, dataset_info, get_source, prepare
from pipelines.paths import webdataset_manifest

WNIDS = ("n01440764", "n01443537", "n02102040")


@pytest.mark.parametrize("val", ["flat_loc", "flat_txt", "flat_devkit", "folders"])
def test_imagenet_layouts(tmp_path, val):
    require("PIL")
    root = imagenet_tree(tmp_path / "imagenet", val=val)
    src = get_source("imagenet", src=root)
    assert src.classes == list(WNIDS)
    assert src.num_samples("train") == 12 and src.num_samples("val") == 6
    # the fixture labels ILSVRC2012_val_{i + 1} with WNIDS[(2i) % 3]
    seen = set()
    for j in range(6):
        s = src.get("val", j)
        i = int(s.origin[-13:-5]) - 1
        assert s.label == (2 * i) % 3, (val, j, s.origin)
        seen.add(i)
    assert seen == set(range(6))
    assert isinstance(src.get("train", 0).data, bytes)


def test_imagenet_prepare_and_load_passes_jpegs_through(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet")
    rows = prepare("imagenet", tmp_path / "out", src=root, progress=False, shard_size=5)
    assert [(r["split"], r["samples"], r["files"]) for r in rows] == [("train", 12, 3), ("val", 6, 2)]
    info = dataset_info(tmp_path / "out", "imagenet")
    assert info["num_classes"] == 3 and info["channels"] == 3 and info["mean"] == [0.485, 0.456, 0.406]
    loader = build_loader(
        backend="webdataset",
        root=tmp_path / "out",
        dataset="imagenet",
        split="val",
        batch_size=4,
        train=False,
        image_size=24,
        workers=0,
    )
    labels = torch.cat([b["label"] for b in loader])
    assert labels.tolist() == [(2 * i) % 3 for i in range(6)]
    import tarfile

    from pipelines.paths import webdataset_dir

    with tarfile.open(
        webdataset_dir(tmp_path / "out", "imagenet", "train") / "imagenet-train-000000.tar"
    ) as tar:
        stored = tar.extractfile("000000000.jpg").read()
    assert stored == (root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").read_bytes()


def test_image_size_resizes_the_shorter_side(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet")
    prepare("imagenet", tmp_path / "out", src=root, image_size=20, progress=False, splits=["train"])
    m = json.loads(webdataset_manifest(tmp_path / "out", "imagenet", "train").read_text())
    assert min(m["native_size"]) == 20


def test_imagefolder_generic(tmp_path):
    root = imagenet_tree(tmp_path / "folder", val="folders")
    src = get_source("imagefolder", src=root)
    assert src.splits() == ["train", "val"] and src.num_classes == 3


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100(tmp_path, labels):
    import pickle

    root = cifar100_tree(tmp_path)
    src = get_source("cifar100", src=root, labels=labels)
    assert src.num_classes == (100 if labels == "fine" else 20)
    assert src.num_samples("train") == 30 and src.num_samples("val") == 12
    with open(root / "cifar-100-python" / "test", "rb") as f:
        ref = pickle.load(f, encoding="bytes")
    s = src.get("val", 5)
    assert s.label == ref[f"{labels}_labels".encode()][5]
    assert np.array_equal(s.data, ref[b"data"][5].reshape(3, 32, 32).transpose(1, 2, 0))
    assert src.classes[0] == f"{labels}_0"


def test_cifar100_round_trip_through_every_backend(tmp_path):
    root = cifar100_tree(tmp_path / "src")
    formats = ["webdataset"] + (["ffcv"] if _importable("ffcv") else [])
    prepare("cifar100", tmp_path / "out", src=root, formats=formats, progress=False)
    ref = get_source("cifar100", src=root)
    for backend in BACKENDS:
        if backend in LIBRARY and not _importable(LIBRARY[backend]):
            continue
        loader = build_loader(
            backend=backend,
            root=tmp_path / "out",
            dataset="cifar100",
            split="val",
            batch_size=5,
            train=False,
            image_size=32,
            workers=1,
        )
        batches = list(loader)
        labels = torch.cat([b["label"] for b in batches])
        assert labels.tolist() == [ref.get("val", i).label for i in range(12)], backend
        x = batches[0]["input"][0]
        mean = torch.tensor(ref.mean).view(3, 1, 1)
        std = torch.tensor(ref.std).view(3, 1, 1)
        pixels = (x * std + mean) * 255
        err = (pixels - torch.from_numpy(ref.get("val", 0).data).permute(2, 0, 1).float()).abs().mean()
        assert err < 6, (backend, float(err))  # JPEG at quality 90


def _importable(module):
    try:
        require(module)
        return True
    except pytest.skip.Exception:
        return False


def test_medmnist3d(tmp_path):
    path = medmnist_npz(tmp_path / "organmnist3d.npz")
    src = get_source("medmnist3d", src=tmp_path)
    assert src.splits() == ["train", "val", "test"] and src.num_classes == 11
    with np.load(path) as npz:
        s = src.get("test", 3)
        assert np.array_equal(s.data[0], npz["test_images"][3]) and s.label == npz["test_labels"][3, 0]
    prepare("medmnist3d", tmp_path / "out", src=path, progress=False)
    loader = build_loader(
        backend="webdataset",
        root=tmp_path / "out",
        dataset="medmnist3d",
        split="train",
        batch_size=4,
        train=True,
        image_size=24,
        workers=0,
    )
    b = next(iter(loader))
    assert b["input"].shape == (4, 1, 24, 24, 24)
    assert dataset_info(tmp_path / "out", "medmnist3d")["spatial_rank"] == 3


def test_nifti_folder_orders_axes_and_resamples(tmp_path):
    require("nibabel")
    root = nifti_tree(tmp_path / "nifti")
    src = get_source("nifti", src=root, shape=(8, 10, 12))
    assert src.splits() == ["train", "val"] and src.classes == ["healthy", "lesion"]
    assert src.num_samples("train") == 4 and src.num_samples("val") == 2
    s = src.get("train", 1)
    assert s.data.shape == (1, 8, 10, 12) and s.label == 1
    profile = s.data[0].mean(axis=(1, 2))
    assert np.all(np.diff(profile) > 0), "intensity grows along z, which is stored as D"
    crop = get_source("nifti", src=root, shape=(16, 16, 16), mode="crop", window=(55.0, 110.0)).get("val", 0)
    assert crop.data.shape == (1, 16, 16, 16)
    assert crop.data[0, 0].max() == 0 and crop.data[0, 2:14, 8, 8].max() == 255  # padded D, saturated window


def test_dicom_series_sorted_by_position_and_windowed(tmp_path):
    require("pydicom")
    root = dicom_tree(tmp_path / "ct")
    src = get_source("dicom", src=root, shape=(7, 16, 12), val_fraction=0.0)
    assert src.splits() == ["train"] and src.num_samples("train") == 4 and src.classes == ["0", "1"]
    s = src.get("train", 2)
    profile = s.data[0].mean(axis=(1, 2))
    # slices -100 ... 200 HU through the series' own window 40/400 (-160 .. 240 HU)
    expected = np.round((np.arange(-100, 201, 50) + 160) / 400 * 255)
    np.testing.assert_allclose(profile, expected, atol=1)
    bone = get_source("dicom", src=root, shape=(7, 16, 12), window="bone", val_fraction=0.0).get("train", 0)
    assert bone.data.max() < s.data.max()
    prepare("dicom", tmp_path / "out", src=root, progress=False, shape=(8, 8, 8), val_fraction=0.0)
    assert dataset_info(tmp_path / "out", "dicom")["native_size"] == [8, 8, 8]


def test_ucf101_clips(tmp_path):
    require("av")
    root = ucf101_tree(tmp_path / "ucf")
    src = get_source("ucf101", src=root, frames=4, size=32, clips_per_video=2)
    assert src.classes == ["ApplyEyeMakeup", "Basketball", "YoYo"]
    assert src.num_samples("train") == 6 and src.num_samples("val") == 6
    first, second = src.get("val", 0), src.get("val", 1)
    assert first.data.shape == (3, 4, 32, 32) and first.label == 0
    b1, b2 = first.data.mean(axis=(0, 2, 3)), second.data.mean(axis=(0, 2, 3))
    assert np.all(np.diff(b1) > 0) and b2.min() > b1.max(), "frames in time order, second clip later"
    prepare("ucf101", tmp_path / "out", src=root, progress=False, image_size=32, frames=4)
    loader = build_loader(
        backend="webdataset",
        root=tmp_path / "out",
        dataset="ucf101",
        split="val",
        batch_size=3,
        train=False,
        workers=0,
    )
    b = next(iter(loader))
    assert b["input"].shape == (3, 3, 4, 32, 32) and b["label"].tolist() == [0, 1, 2]


def test_png_and_cmyk_files_named_jpeg_are_reencoded(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from pipelines.paths import webdataset_dir

    root = imagenet_tree(tmp_path / "in")
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(root / "train" / WNIDS[0] / "png_inside.JPEG", format="PNG")
    Image.fromarray(arr).convert("CMYK").save(root / "train" / WNIDS[0] / "cmyk.JPEG", format="JPEG")
    prepare("imagenet", tmp_path / "out", src=root, progress=False, splits=["train"])
    with tarfile.open(
        webdataset_dir(tmp_path / "out", "imagenet", "train") / "imagenet-train-000000.tar"
    ) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".jpg"):
                img = Image.open(io.BytesIO(tar.extractfile(member).read()))
                assert img.format == "JPEG" and img.mode == "RGB", member.name
