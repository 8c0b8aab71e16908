"""Embedded sources: real digits, and compass sets whose label is a function of relative position only."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import get_source, list_sources


def test_registry_lists_every_source():
    assert {
        "digits",
        "compass2d",
        "compass3d",
        "imagenet",
        "imagefolder",
        "cifar100",
        "medmnist3d",
        "nifti",
        "dicom",
        "ucf101",
    } <= set(list_sources())
    with pytest.raises(KeyError, match="unknown source"):
        get_source("mnist")


def test_sources_register_under_their_own_name():
    from pipelines.sources import Source, register_source, source_class

    assert all(source_class(n).name == n for n in list_sources())
    with pytest.raises(ValueError, match="already registered"):

        @register_source
        class Again(Source):
            name = "digits"

    assert source_class("digits").__name__ == "Digits"


def test_digits_are_the_real_sklearn_digits():
    from sklearn.datasets import load_digits

    src = get_source("digits", size=8)
    ref = load_digits()
    assert src.num_samples("train") + src.num_samples("val") == len(ref.target) == 1797
    s = src.get("val", 1)  # val holds every 5th image: #5
    assert s.label == ref.target[5]
    np.testing.assert_allclose(s.data / 255.0 * 16.0, ref.images[5], atol=0.05)
    assert src.channels == 1 and src.num_classes == 10


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


@pytest.mark.parametrize("size", [24, 64])
def test_compass2d_label_is_the_direction_between_marks(size):
    src = get_source("compass2d", size=size, num_train=200, num_val=10)
    anchors = []
    for i in range(200):
        s = src.get("train", i)
        img = s.data.astype(int)
        red = _centroid((img[..., 0] > 200) & (img[..., 1] < 100))
        green = _centroid((img[..., 1] > 200) & (img[..., 0] < 100))
        dy, dx = green - red
        angle = np.degrees(np.arctan2(-dy, dx)) % 360  # rows grow downwards
        assert round(angle / 45) % 8 == s.label, (i, angle, s.label)
        anchors.append(red)
    anchors = np.array(anchors)
    # absolute positions spread over the canvas
    assert anchors.min() < size * 0.25 and anchors.max() > size * 0.6


def test_compass3d_label_is_dominant_axis_and_sign():
    src = get_source("compass3d", size=16, num_train=120, num_val=10)
    names = src.classes
    for i in range(120):
        s = src.get("train", i)
        vol = s.data[0]
        background = vol[(vol != 0) & (vol != 255)]
        assert background.min() >= 116 and background.max() <= 140  # mid grey: one mark above, one below
        d = _centroid(vol == 0) - _centroid(vol == 255)  # (z, y, x)
        axis = int(np.argmax(np.abs(d)))
        name = ("+" if d[axis] > 0 else "-") + "zyx"[axis]
        assert names[s.label] == name


def test_generated_sets_are_deterministic_by_seed():
    a, b, c = (get_source("compass2d", size=32, seed=s, num_train=5, num_val=5) for s in (0, 0, 1))
    assert np.array_equal(a.get("val", 3).data, b.get("val", 3).data)
    assert not np.array_equal(a.get("val", 3).data, c.get("val", 3).data)
    assert not np.array_equal(a.get("val", 3).data, a.get("train", 3).data)


def test_compass2d_shards_keep_the_marks_colours_which_4_2_0_jpeg_smears(tmp_path):
    """The marks are 2 px of pure colour: JPEG's default 4:2:0 chroma subsampling averages colour over
    2 x 2 blocks, so compass2d's shards keep colour at every pixel (revision 2); what a loader decodes
    from the real shards is the drawn image, to JPEG's luminance error."""
    import io
    import tarfile

    from PIL import Image

    from pipelines.shards import encode_image
    from pipelines.writers.webdataset import write_webdataset_split

    src = get_source("compass2d", num_train=40, num_val=10)
    manifest = write_webdataset_split(src, "train", tmp_path)
    assert manifest["params"]["subsampling"] == "4:4:4"
    stored = {}
    for shard in manifest["shardlist"]:
        with tarfile.open(tmp_path / shard["url"]) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    stored[m.name] = np.asarray(
                        Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                    )
    assert len(stored) == 40
    keys = sorted(stored)
    red_kept, red_420 = [], []
    for i in range(40):
        sample = src.get("train", i)
        red = (sample.data[..., 0] == 255) & (sample.data[..., 1] == 40)
        red_kept.append(stored[keys[i]][red].astype(int).mean(0))
        payload, _ = encode_image(sample, 3, None, 90, "4:2:0")
        red_420.append(np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))[red].astype(int).mean(0))
    kept, smeared = np.mean(red_kept, 0), np.mean(red_420, 0)
    assert kept[0] > 240 and kept[1] < 55 and kept[2] < 55, kept
    assert smeared[0] < 200 and smeared[1] > 60, smeared  # what compass2d's revision 1 trained on
    digits = get_source("digits")
    assert digits.jpeg_subsampling is None  # photographs and greyscale keep the encoder's default
