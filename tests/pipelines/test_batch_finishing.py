"""Batch finishing on the training device (issue 15, item 9): the raw uint8 batch is copied first,
then normalized and mixed where it landed; on the CPU, the batches are the same bits as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines import transforms as T
from pipelines.loaders.common import Loader

INFO = {"name": "synthetic", "split": "train", "num_samples": 24, "spatial_rank": 2, "native_size": [8, 8],
        "channels": 3, "num_classes": 5, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "kind": "image"}  # fmt: skip


class Synthetic(Loader):
    """A backend of random uint8 batches, the same for the same (epoch, batch): the base class's finishing
    is the code under test."""

    backend = "synthetic"

    def _iter_raw(self, batches, first):
        for i, b in enumerate(batches, start=first):
            gen = torch.Generator().manual_seed(1000 * self.epoch + i)
            shape = (len(b), self.channels, *self.image_size)
            x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
            label = torch.randint(0, self.num_classes, (len(b),), generator=gen)
            yield {"input": x, "label": label, "index": torch.as_tensor(b)}


def loader(train: bool = True, **kw) -> Synthetic:
    mix = dict(mixup=0.8, cutmix=1.0, label_smoothing=0.1) if train else {}
    info = {**INFO, **kw.pop("info", {})}
    return Synthetic(
        info, batch_size=8, train=train, image_size=None, rank=0, world_size=1, seed=3, **mix, **kw
    )


@pytest.mark.parametrize("info", [{}, {"spatial_rank": 3, "native_size": [4, 6, 6], "kind": "volume"}])
def test_on_the_cpu_the_batches_are_the_bits_of_normalizing_then_mixing(info):
    """What _finish did before it knew a device: normalize on the CPU, then mix with the batch's seed."""
    ld = loader(info=info)
    raws = list(ld._iter_raw(ld._batches(), 0))
    for i, (batch, raw) in enumerate(zip(loader(info=info), raws)):
        x = T.normalize(raw["input"], ld.mean, ld.std)
        rng = np.random.default_rng([ld.seed, 0, i, 0, 7])
        want, target = T.mix_batch(x, raw["label"], 5, rng, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
        assert batch["input"].dtype == torch.float32 and batch["input"].device.type == "cpu"
        assert torch.equal(batch["input"], want) and torch.equal(batch["target"], target)
        assert torch.equal(batch["label"], raw["label"]) and batch["label"].dtype == torch.int64


class Ops(TorchDispatchMode):
    """Records each dispatched op with the dtype, device and rank of its first tensor argument."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None:
            self.events.append((str(func.overloadpacket), first.dtype, first.device.type, first.ndim))
        return func(*args, **(kwargs or {}))


def test_the_raw_uint8_batch_goes_to_the_device_first_and_is_normalized_there():
    """A real copy to another device (meta: shapes without values, so nothing can be read back): the only
    copy of the batch is of uint8, and the float work happens on the device, none on the CPU."""
    ld = loader(train=False)
    ld.set_device("meta")
    events: list = []
    with Ops(events):
        batch = next(iter(ld))
    assert batch["input"].device.type == "meta" and batch["input"].dtype == torch.float32
    assert batch["label"].device.type == "cpu"
    batch_ops = [e for e in events if e[3] == 4]  # on (B, C, H, W) tensors; the rest is mean, std, labels
    copies = [e for e in batch_ops if e[0] == "aten._to_copy" and e[2] == "cpu"]
    assert copies == [("aten._to_copy", torch.uint8, "cpu", 4)]  # the one copy off the CPU: the uint8 batch
    assert all(e[2] == "meta" for e in batch_ops[batch_ops.index(copies[0]) + 1 :])  # the rest on the device
    assert ("aten.sub_", torch.float32, "meta", 4) in batch_ops  # normalized there


def test_mixing_happens_after_the_copy_with_the_targets_made_on_the_device(monkeypatch):
    """Training with mixup/cutmix: a recording stand-in for the device copy (meta cannot one-hot: its
    class check reads values) shows the order: uint8 input copied, then normalized, labels copied, then mixed."""
    ld = loader()
    ld.device = torch.device("cuda")  # as set_device would on a GPU: never touched, the copy is the stand-in
    events: list = []

    def copy(x: torch.Tensor) -> torch.Tensor:
        events.append(("copy", x.dtype, x.device.type))
        return x

    monkeypatch.setattr(ld, "_to_device", copy)
    with Ops(events):
        batch = next(iter(ld))
    assert batch["target"].shape == (8, 5)
    names = [e[0] for e in events]
    assert events[names.index("copy")] == ("copy", torch.uint8, "cpu")  # the first copy: the raw batch
    first_float = next(i for i, e in enumerate(events) if e[1] == torch.float32)
    assert names.index("copy") < first_float  # no float work before the copy
    label_copy = names.index("copy", names.index("copy") + 1)
    assert events[label_copy][1] == torch.int64 and label_copy < names.index("aten.flip")  # mixed after


def test_ffcv_augments_image_by_image_on_threads_to_the_same_bits(data_root):
    """FFCV's RandAugment, 3-Augment and colour jitter run in this process; on `workers` threads they give
    the bits of one thread (each image has its own generator)."""
    from data_helpers import make_loader

    opts = dict(
        train=True, image_size=16, batch_size=8, randaugment=[2, 12], three_augment=True, color_jitter=0.3
    )
    serial = make_loader("ffcv", data_root, "compass2d", "train", workers=1, **opts)
    threaded = make_loader("ffcv", data_root, "compass2d", "train", workers=3, **opts)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    keys = np.arange(8) * 7
    want = serial._images(x, keys, 2)
    got = threaded._images(x, keys, 2)
    assert threaded._pool is not None and serial._pool is None
    assert torch.equal(got, want) and not torch.equal(got, x)
