"""Corrupt prepared data, for real (flipped bytes in shards and betons), is a named bad sample: raised, or with
bad_samples="skip" replaced, counted and capped; it never hangs a loader; data prepared before the
checksums still loads; NaN voxels in volumes are background by default, or refused."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_loader, require

from pipelines import BadSampleError, DataError, build_loader, prepare
from pipelines.errors import TooManyBadSamplesError
from pipelines.paths import ffcv_file, webdataset_dir
from pipelines.shards import dali_index_lines, read_dali_index, sha256_file

TRAIN = dict(batch_size=16, train=True, image_size=16)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """digits: webdataset shards of 500 samples, and a .beton when FFCV is installed."""
    root = tmp_path_factory.mktemp("integrity")
    try:
        import ffcv  # noqa: F401

        formats = ["webdataset", "ffcv"]
    except ImportError:
        formats = ["webdataset"]
    prepare("digits", root, formats=formats, shard_size=500, progress=False)
    return root


@pytest.fixture
def root(prepared, tmp_path):
    """A private copy of the prepared digits, to damage."""
    shutil.copytree(prepared / "digits", tmp_path / "digits")
    return tmp_path


def _shard(root: Path, number: int = 0) -> Path:
    return webdataset_dir(root, "digits", "train") / f"digits-train-{number:06d}.tar"


def _flip_jpeg_byte(shard: Path, sample: int) -> str:
    """Flip one byte in the middle of one sample's JPEG; returns the sample's key."""
    offset, size = read_dali_index(shard.with_suffix(".idx"))[sample]["jpg"]
    data = bytearray(shard.read_bytes())
    data[offset + size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with tarfile.open(shard) as tar:
        return [m.name.partition(".")[0] for m in tar if m.name.endswith(".jpg")][sample]


def _train_loader(root: Path, backend: str = "webdataset", **options):
    return make_loader(backend, root, "digits", "train", **{**TRAIN, "workers": 2, **options})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend,workers", [("webdataset", 0), ("webdataset", 2), ("dali", 1)])
def test_a_flipped_jpeg_byte_is_a_named_bad_sample(root, backend, workers):
    shard = _shard(root)
    key = _flip_jpeg_byte(shard, 7)
    loader = _train_loader(root, backend, workers=workers, shuffle=False)
    pattern = rf"{shard.name}: sample '{key}' of split 'train'.*crc32 .* differs"
    with pytest.raises(BadSampleError, match=pattern):
        for _ in loader:
            pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["webdataset", "dali"])
def test_skip_replaces_the_bad_sample_and_counts_it(root, backend, caplog):
    key = _flip_jpeg_byte(_shard(root, 1), 3)
    loader = _train_loader(root, backend, bad_samples="skip")
    with caplog.at_level(logging.WARNING):
        sizes = [len(batch["label"]) for batch in loader]
    assert len(sizes) == len(loader) and set(sizes) == {TRAIN["batch_size"]}
    assert loader.bad_samples == 1 and loader.state_dict()["bad_samples"] == 1
    assert f"sample '{key}'" in caplog.text and "bad sample 1 of at most 100 replaced" in caplog.text
    for _ in loader:  # the next epoch meets it again: the count is cumulative
        pass
    assert loader.bad_samples == 2


@pytest.mark.timeout(120)
def test_more_bad_samples_than_the_cap_end_the_epoch_named(root):
    shard = _shard(root, 2)
    for sample in (1, 5, 9):
        _flip_jpeg_byte(shard, sample)
    loader = _train_loader(root, bad_samples="skip", max_bad_samples=2)
    with pytest.raises(
        TooManyBadSamplesError, match=r"3 bad samples .* max_bad_samples=2.*digits-train-000002"
    ):
        for _ in loader:
            pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("checksums", [True, False])
def test_4kib_flipped_in_a_shard_is_named_never_a_hang(root, checksums):
    if not checksums:
        _strip_checksums(webdataset_dir(root, "digits", "train"))
    shard = _shard(root)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    shard.write_bytes(bytes(data))
    loader = _train_loader(root, shuffle=False)
    with pytest.raises(BadSampleError, match=rf"{shard.name}: sample '\d+' of split 'train'"):
        for _ in loader:
            pass


def _strip_checksums(split_dir: Path) -> None:
    """Rewrite a split as the writer did before checksums: the tars without `.crc32`, index and manifest to match."""
    manifest = json.loads((split_dir / "manifest.json").read_text())
    for record in manifest["shardlist"]:
        tar_path = split_dir / record["url"]
        old = tar_path.with_suffix(".old")
        tar_path.rename(old)
        with tarfile.open(old) as src, tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as dst:
            for member in src:
                if not member.name.endswith(".crc32"):
                    dst.addfile(member, src.extractfile(member))
        old.unlink()
        tar_path.with_suffix(".idx").write_text("\n".join(dali_index_lines(tar_path)) + "\n")
        record.update(filesize=tar_path.stat().st_size, sha256=sha256_file(tar_path))
    manifest.pop("sample_checksums")
    (split_dir / "manifest.json").write_text(json.dumps(manifest))


def test_shards_without_checksums_still_load_and_say_so(root, caplog):
    split_dir = webdataset_dir(root, "digits", "val")
    _strip_checksums(split_dir)
    with caplog.at_level(logging.WARNING):
        loader = make_loader("webdataset", root, "digits", "val", batch_size=32, train=False, workers=0)
    assert "without per-sample checksums" in caplog.text and str(split_dir) in caplog.text
    assert not loader.reader.checked
    assert sum(len(b["label"]) for b in loader) == loader.num_samples_total


def _beton_sample_region(beton: Path, pos: int) -> tuple[int, int]:
    from pipelines.shards.beton import BetonChecksums

    sums = BetonChecksums(beton)
    k = int(sums.bounds[pos])
    return int(sums.ptr[k]), int(sums.size[k])


def _flip_beton_byte(root: Path, pos: int) -> Path:
    beton = ffcv_file(root, "digits", "train")
    offset, size = _beton_sample_region(beton, pos)
    data = bytearray(beton.read_bytes())
    data[offset + size // 2] ^= 0x01
    beton.write_bytes(bytes(data))
    return beton


@pytest.mark.timeout(180)
def test_ffcv_checks_each_sample_raise_and_skip(root, caplog):
    require("ffcv")
    beton = _flip_beton_byte(root, 11)
    loader = _train_loader(root, "ffcv", workers=1, shuffle=False)
    with pytest.raises(BadSampleError, match=rf"{beton.name}: sample #11 of split 'train'.*crc32"):
        for _ in loader:
            pass
    loader = _train_loader(root, "ffcv", workers=1, bad_samples="skip")
    with caplog.at_level(logging.WARNING):
        sizes = [len(batch["label"]) for batch in loader]
    assert len(sizes) == len(loader) and set(sizes) == {TRAIN["batch_size"]}
    assert loader.bad_samples == 1 and "sample #11" in caplog.text


def test_policy_values_are_checked(prepared):
    with pytest.raises(ValueError, match=r"bad_samples='ignore'"):
        build_loader(
            root=prepared, dataset="digits", split="val", batch_size=8, train=False, bad_samples="ignore"
        )
    with pytest.raises(ValueError, match=r"max_bad_samples=-1"):
        build_loader(
            root=prepared, dataset="digits", split="val", batch_size=8, train=False, max_bad_samples=-1
        )


def test_config_keys_are_validated():
    from liere.engine.config import ConfigError, load_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs" / "demo.yaml", ["data.bad_samples=skip", "data.max_bad_samples=5"])
    assert cfg.data.bad_samples == "skip" and cfg.data.max_bad_samples == 5
    with pytest.raises(ConfigError, match=r"data.bad_samples='drop'"):
        load_config(repo / "configs" / "demo.yaml", ["data.bad_samples=drop"])
    with pytest.raises(ConfigError, match=r"data.max_bad_samples=-3"):
        load_config(repo / "configs" / "demo.yaml", ["data.max_bad_samples=-3"])


# ---- NaN voxels ------------------------------------------------------------------------------------------------
NIBABEL_MOVED = "tests/data/resampled_anat_moved.nii"  # nibabel's registered-and-resampled scan, NaN outside


def _nan_tree(root: Path) -> tuple[Path, Path]:
    """Two NIfTI volumes: nibabel's own resampled_anat_moved.nii when installed (else one made with NaN outside
    a field of view), and a clean one; labels.csv."""
    nib = require("nibabel")
    root.mkdir(parents=True)
    moved = Path(nib.__file__).parent / NIBABEL_MOVED
    if moved.is_file():
        shutil.copy(moved, root / "moved.nii")
    else:
        vol = np.full((17, 21, 3), np.nan, np.float32)
        vol[3:14, 4:18] = 500.0
        nib.Nifti1Image(vol, np.eye(4)).to_filename(root / "moved.nii")
    nib.Nifti1Image(np.arange(17 * 21 * 3, dtype=np.float32).reshape(17, 21, 3), np.eye(4)).to_filename(
        root / "clean.nii"
    )
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "label", "split"], ["moved", "a", "train"], ["clean", "b", "train"]])
    return root, root / "moved.nii"


def test_nan_voxels_are_background_by_default(tmp_path):
    from pipelines import format_summary, get_source

    src, moved = _nan_tree(tmp_path / "in")
    source = get_source("nifti", src=src, shape=(4, 8, 8), window=(0.0, 20000.0))
    sample = source.get("train", 0)
    assert sample.repaired and "NaN voxels" in sample.repaired
    raw = np.asarray(__import__("nibabel").load(str(moved)).get_fdata())
    background = np.round(np.nanmin(raw) / 20000.0 * 255 + 127.5)  # (v - lo) / width * 255 with lo = -10000
    assert sample.data.min() >= background - 1  # NaN became the volume's smallest intensity, nothing darker
    rows = prepare("nifti", tmp_path / "out", src=src, shape=(4, 8, 8), progress=False)
    assert rows[0]["samples"] == 2 and rows[0]["repaired"] == 1 and rows[0]["skipped"] == 0
    assert "repaired" in format_summary(rows).splitlines()[0]


def test_nan_refuse_names_the_file(tmp_path):
    src, moved = _nan_tree(tmp_path / "in")
    with pytest.raises(BadSampleError, match=rf"{moved.name}: volume holds \d+ NaN voxels .*nan='refuse'"):
        prepare("nifti", tmp_path / "out", src=src, shape=(4, 8, 8), progress=False, nan="refuse")
    with pytest.raises(ValueError, match=r"nan='zero'"):
        prepare("nifti", tmp_path / "out2", src=src, shape=(4, 8, 8), progress=False, nan="zero")


@pytest.mark.timeout(120)
def test_a_corrupt_shard_is_named_when_converting_to_ffcv(root):
    require("ffcv")
    from pipelines.writers.ffcv import write_ffcv_split

    key = _flip_jpeg_byte(_shard(root), 2)
    with pytest.raises(DataError, match=rf"sample '{key}' of split 'train'"):
        write_ffcv_split(
            webdataset_dir(root, "digits", "train"), root / "x.beton", root / "x.json", overwrite=True
        )
