"""The loader contract, for every backend: batch format, same samples, rank partition, order, resume."""

from __future__ import annotations

import pytest
import torch
from data_helpers import make_loader, require_backend

from pipelines import BACKENDS, dataset_info


def make(backend, root, dataset="digits", split="val", **kw):
    options = {"batch_size": 32, "train": False, "image_size": None, "workers": 1, **kw}
    return make_loader(backend, root, dataset, split, **options)


def collect(loader):
    idx, labels, inputs = [], [], []
    for b in loader:
        idx.append(b["index"])
        labels.append(b["label"])
        inputs.append(b["input"])
    return torch.cat(idx), torch.cat(labels), torch.cat(inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("dataset", "size", "shape"),
    [
        ("digits", 32, (1, 32, 32)),
        ("compass2d", 16, (3, 16, 16)),
        ("compass3d", 8, (1, 8, 8, 8)),
        ("compass3d", 16, (1, 16, 16, 16)),
    ],
)
def test_batch_contract(backend, data_root, dataset, size, shape):
    for train in (False, True):
        loader = make(backend, data_root, dataset, batch_size=16, train=train, image_size=size)
        batch = next(iter(loader))
        assert set(batch) >= {"input", "label", "index"}
        assert batch["input"].dtype == torch.float32 and tuple(batch["input"].shape) == (16, *shape)
        assert batch["label"].dtype == torch.int64 and batch["label"].shape == (16,)
        info = dataset_info(data_root, dataset)
        assert 0 <= int(batch["label"].min()) and int(batch["label"].max()) < info["num_classes"]
    # normalized with the data set's statistics: about zero mean and unit spread at the native size
    _, _, x = collect(make(backend, data_root, dataset, batch_size=64))
    assert abs(float(x.mean())) < 0.35 and 0.6 < float(x.std()) < 1.5


@pytest.mark.parametrize("dataset", ["digits", "compass2d", "compass3d"])
def test_backends_yield_the_same_samples(data_root, dataset):
    available = [b for b in BACKENDS if b == "webdataset" or _has(b)]
    size = {"digits": 32, "compass2d": 24, "compass3d": 12}[dataset]
    ref_idx, ref_lab, ref_x = collect(make("webdataset", data_root, dataset, image_size=size))
    assert torch.equal(ref_idx, torch.sort(ref_idx).values)  # evaluation order is the split's order
    for backend in available[1:]:
        idx, lab, x = collect(make(backend, data_root, dataset, image_size=size))
        assert torch.equal(idx, ref_idx) and torch.equal(lab, ref_lab), backend
        # same pixels up to the JPEG decoder's rounding (FFCV/DALI use libjpeg-turbo, PIL its own build)
        err = (x - ref_x).abs().mean() * float(dataset_info(data_root, dataset)["std"][0])
        assert err < 0.02, (backend, float(err))


def _has(backend):
    try:
        require_backend(backend)
        return True
    except pytest.skip.Exception:
        return False


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True])
def test_two_ranks_are_disjoint_and_cover_the_split(backend, data_root, train):
    n = dataset_info(data_root, "compass2d")["splits"]["val"]  # 130: not a multiple of 2 x batch
    parts = []
    for rank in range(2):
        loader = make(
            backend,
            data_root,
            "compass2d",
            batch_size=16,
            train=train,
            image_size=16,
            rank=rank,
            world_size=2,
            drop_last=False,
        )
        idx, _, _ = collect(loader)
        assert len(idx) == len(set(idx.tolist())) == loader.num_samples
        parts.append(set(idx.tolist()))
    assert not parts[0] & parts[1]
    if train:  # training drops n % world_size samples so every rank has as many batches
        assert len(parts[0]) == len(parts[1]) == n // 2
    else:
        assert parts[0] | parts[1] == set(range(n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_len_is_equal_on_every_rank(backend, data_root):
    lens = [
        len(
            make(
                backend,
                data_root,
                "digits",
                "train",
                batch_size=50,
                train=True,
                image_size=16,
                rank=r,
                world_size=3,
            )
        )
        for r in range(3)
    ]
    assert lens == [1437 // 3 // 50] * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffle_is_deterministic_per_seed_and_epoch(backend, data_root):
    def order(seed, epoch):
        loader = make(
            backend, data_root, "compass2d", "train", batch_size=20, train=True, image_size=16, seed=seed
        )
        loader.set_epoch(epoch)
        return collect(loader)[0].tolist()

    a = order(0, 0)
    assert a == order(0, 0)
    assert a != order(0, 1) and a != order(1, 0)
    assert sorted(a) != a and len(a) == 300


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_skips_exactly_the_consumed_batches(backend, data_root):
    kw = dict(dataset="compass2d", split="train", batch_size=20, train=True, image_size=16, seed=3)
    full = make(backend, data_root, **kw)
    full.set_epoch(2)
    expected = [b["index"].tolist() for b in full]
    assert full.epoch == 3, "an epoch read to its end moves the loader to the next one"

    first = make(backend, data_root, **kw)
    first.set_epoch(2)
    it = iter(first)
    seen = [next(it)["index"].tolist() for _ in range(4)]
    state = first.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 4
    assert seen == expected[:4]

    resumed = make(backend, data_root, **kw)
    resumed.load_state_dict(state)
    rest = [b["index"].tolist() for b in resumed]
    assert rest == expected[4:]
    assert resumed.state_dict()["epoch"] == 3 and len(resumed) == len(expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixup_and_cutmix_make_soft_targets(backend, data_root):
    for kw in ({"mixup": 0.8}, {"cutmix": 1.0}, {"mixup": 0.8, "cutmix": 1.0}):
        loader = make(
            backend, data_root, "compass2d", "train", batch_size=16, train=True, image_size=16, **kw
        )
        b = next(iter(loader))
        t = b["target"]
        assert t.shape == (16, 8) and torch.allclose(t.sum(1), torch.ones(16))
        assert (t.max(1).values < 1).any(), "some targets are mixtures"
    vol = next(
        iter(
            make(backend, data_root, "compass3d", "train", batch_size=8, train=True, image_size=8, cutmix=1.0)
        )
    )
    assert vol["target"].shape == (8, 6) and vol["input"].shape == (8, 1, 8, 8, 8)


def test_eval_resizes_to_any_resolution(data_root):
    for size in (20, 48, 130):
        b = next(iter(make("webdataset", data_root, "compass2d", image_size=size, batch_size=4)))
        assert b["input"].shape == (4, 3, size, size)
    b = next(iter(make("webdataset", data_root, "compass3d", image_size=(6, 10, 14), batch_size=4)))
    assert b["input"].shape == (4, 1, 6, 10, 14)


def test_augmentations_are_reproducible(data_root):
    a = next(iter(make("webdataset", data_root, "compass2d", "train", train=True, image_size=16)))["input"]
    b = next(iter(make("webdataset", data_root, "compass2d", "train", train=True, image_size=16)))["input"]
    assert torch.equal(a, b)


def test_float16_volumes_read_the_same_on_every_backend(tmp_path):
    from pipelines import prepare

    formats = ["webdataset"] + (["ffcv"] if _has("ffcv") else [])
    prepare(
        "compass3d",
        tmp_path,
        formats=formats,
        image_size=10,
        num_train=40,
        num_val=20,
        volume_dtype="float16",
        progress=False,
    )
    ref_idx, ref_lab, ref_x = collect(make("webdataset", tmp_path, "compass3d", image_size=8, batch_size=8))
    for backend in [b for b in ("ffcv", "dali") if _has(b)]:
        idx, lab, x = collect(make(backend, tmp_path, "compass3d", image_size=8, batch_size=8))
        assert torch.equal(idx, ref_idx) and torch.equal(lab, ref_lab)
        assert x.dtype == torch.float32 and (x - ref_x).abs().mean() < 0.05, backend


def test_loader_options_are_the_config_words(data_root):
    """build_loader takes the data options under the names of the config's `data` section."""
    import dataclasses

    from liere.engine.config import DataConfig

    words = {"workers", "crop_scale", "eval_crop_ratio", "mixup", "cutmix", "flip", "randaugment"}
    assert words <= {f.name for f in dataclasses.fields(DataConfig)}
    loader = make(
        "webdataset",
        data_root,
        train=True,
        image_size=16,
        workers=0,
        crop_scale=(0.5, 1.0),
        eval_crop_ratio=0.9,
        mixup=0.2,
        cutmix=0.3,
        flip=False,
        randaugment=[1, 5],
    )
    assert (loader.workers, loader.crop_scale, loader.eval_crop_ratio) == (0, (0.5, 1.0), 0.9)
    assert (loader.mixup, loader.cutmix, loader.flip, loader.randaugment) == (0.2, 0.3, False, (1, 5))
    with pytest.raises(TypeError, match="num_workers"):
        make("webdataset", data_root, num_workers=0)
