"""The library side of benchmarks/loaders.py: each library's own minimal pipeline, and the data both sides read.

Every arm `arm(case, *, workers, buffer)` builds its loader once and returns `epoch()`, a generator that reads an
epoch and yields the number of samples of each batch once the batch is finished: a float32 (B, C, ...) tensor
normalized with the data set's mean/std and int64 labels, the contract the project's loaders end in (the library
pipelines normalize in the main process, as the project's Loader._finish does; DALI's images in its
crop_mirror_normalize, as the project's DALI loader does). Closing the generator stops the epoch's workers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines import build_loader, prepare
from pipelines import transforms as T
from pipelines.sources.base import Sample, Source

SPLIT_CODE = {"train": 0, "val": 1}


class Photos(Source):
    """Synthetic 500x375 RGB photographs (a smooth colour field plus grain), ~60-100 KB as JPEG q90, 10 classes."""

    name = "photos500"
    kind = "image"
    needs_src = False

    def __init__(self, num_train: int, num_val: int = 32, seed: int = 0):
        self.classes = [str(c) for c in range(10)]
        self.channels = 3
        self.counts, self.seed = {"train": int(num_train), "val": int(num_val)}, int(seed)

    def splits(self) -> list[str]:
        return ["train", "val"]

    def num_samples(self, split: str) -> int:
        return self.counts[split]

    def get(self, split: str, index: int) -> Sample:
        from PIL import Image

        rng = np.random.default_rng([self.seed, SPLIT_CODE[split], index])
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (500, 375), Image.BICUBIC
        )
        grain = rng.integers(-12, 13, (375, 500, 3))
        img = np.clip(np.asarray(field, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        return Sample(img, index % 10, f"{self.name} {split}#{index}")

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "seed": self.seed, "counts": self.counts}


class Volumes(Source):
    """Synthetic 48^3 one-channel uint8 volumes (a smooth field plus grain, 110 KB as npy), 6 classes."""

    name = "volumes48"
    kind = "volume"
    needs_src = False

    def __init__(self, num_train: int, num_val: int = 32, seed: int = 0):
        self.classes = [str(c) for c in range(6)]
        self.channels, self.mean, self.std = 1, (0.5,), (0.25,)
        self.counts, self.seed = {"train": int(num_train), "val": int(num_val)}, int(seed)

    splits, num_samples, describe = Photos.splits, Photos.num_samples, Photos.describe

    def get(self, split: str, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, SPLIT_CODE[split], index])
        coarse = rng.integers(0, 200, (1, 6, 6, 6)).repeat(8, 1).repeat(8, 2).repeat(8, 3)
        vol = (coarse + rng.integers(0, 56, (1, 48, 48, 48))).astype(np.uint8)
        return Sample(vol, index % 6, f"{self.name} {split}#{index}")


def prepare_cases(root: Path, *, quick: bool, workers: int) -> list[dict[str, Any]]:
    """The two cases (written once under `root`, webdataset shards of 100 and FFCV betons): 500x375 JPEGs
    random-resized-cropped to 224, and 48^3 uint8 volumes randomly cropped to 40^3 and flipped."""
    n = 400 if quick else 1600
    cases = [
        dict(case="2D 500x375 JPEG -> 224", dataset=f"photos500_{n}", size=(224, 224), batch=64),
        dict(case="3D 48^3 -> 40^3", dataset=f"volumes48_{n}", size=(40, 40, 40), batch=32),
    ]
    opts = dict(formats=["webdataset", "ffcv"], workers=workers, shard_size=100, progress=False)
    prepare(Photos(n), root, name=cases[0]["dataset"], **opts)
    prepare(Volumes(n), root, name=cases[1]["dataset"], **opts)
    for c in cases:
        split = root / c["dataset"] / "webdataset" / "train"
        manifest = json.loads((split / "manifest.json").read_text())
        c.update(root=str(root), manifest=manifest, kind=manifest["kind"], ext=manifest["encoding"])
        c["tars"] = [str(split / s["url"]) for s in manifest["shardlist"]]
        c["indices"] = [str(split / s["dali_index"]) for s in manifest["shardlist"]]
        c["beton"] = str(root / c["dataset"] / "ffcv" / "train.beton")
        c["batches"] = n // c["batch"]
    return cases


def _finished(case: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> int:
    """Normalize like the project's Loader._finish; the samples in the batch."""
    m = case["manifest"]
    x = T.normalize(x, torch.tensor(m["mean"]), torch.tensor(m["std"]))
    return len(y.to(torch.int64))


# ---- the project's loaders -------------------------------------------------------------------------------
def project(
    case: dict[str, Any], *, backend: str, access: str, workers: int, buffer: int
) -> Callable[[], Iterator[int]]:
    extra = {"shuffle_buffer": buffer} if access == "stream" else {}
    loader = build_loader(backend, root=case["root"], dataset=case["dataset"], split="train", access=access,
                          batch_size=case["batch"], train=True, image_size=case["size"], workers=workers, seed=0,
                          rank=0, world_size=1, **extra)  # fmt: skip

    def epoch() -> Iterator[int]:
        it = iter(loader)
        try:
            for batch in it:
                yield len(batch["label"])
        finally:
            it.close()  # stops the epoch's workers and threads

    return epoch


# ---- webdataset: WebDataset(...).shuffle(N).decode("pil") + the same crop, in WebLoader workers ---------------
def _crop_image(img, *, size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """The project's training crop of a decoded PIL image: Inception random-resized crop, one bilinear resize, a
    flip with probability 1/2, uint8 CHW."""
    from PIL import Image

    top, left, ch, cw = T.random_resized_crop_box(img.height, img.width, rng, (0.08, 1.0))
    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))


def _crop_volume(vol: np.ndarray, *, size: tuple[int, int, int], rng: np.random.Generator) -> torch.Tensor:
    """The project's training crop of a decoded volume (transforms.volume_transform: random crop, flip)."""
    return T.volume_transform(torch.from_numpy(vol.copy()), size, True, rng).contiguous()


def wds_library(case: dict[str, Any], *, workers: int, buffer: int) -> Callable[[], Iterator[int]]:
    import webdataset as wds

    crop = _crop_image if case["kind"] == "image" else _crop_volume
    crop = functools.partial(crop, size=case["size"], rng=np.random.default_rng())
    dataset = (
        wds.WebDataset(case["tars"], shardshuffle=len(case["tars"]), seed=0, empty_check=False)
        .shuffle(buffer)
        .decode("pil")
        .to_tuple(case["ext"], "cls")
        .map_tuple(crop, int)
        .batched(case["batch"], partial=False)
    )
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers)

    def epoch() -> Iterator[int]:
        for x, y in loader:  # a generator closed early drops the DataLoader iterator: its workers stop
            yield _finished(case, x, y)

    return epoch


# ---- DALI: readers.webdataset -> decoders.image -> random_resized_crop (CPU) ----------------------------------
def _dali_graph(case: dict[str, Any], buffer: int):
    from nvidia.dali import fn, types

    data, cls = fn.readers.webdataset(paths=case["tars"], index_paths=case["indices"], ext=[case["ext"], "cls"],
                                      dtypes=[types.UINT8, types.UINT8], random_shuffle=True, initial_fill=buffer,
                                      name="Reader")  # fmt: skip
    m = case["manifest"]
    if case["kind"] == "image":
        img = fn.decoders.image(data, device="cpu", output_type=types.RGB)
        img = fn.random_resized_crop(img, size=list(case["size"]), random_area=[0.08, 1.0])
        out = fn.crop_mirror_normalize(img, mirror=fn.random.coin_flip(probability=0.5), dtype=types.FLOAT,
                                       output_layout="CHW", mean=[v * 255.0 for v in m["mean"]],
                                       std=[v * 255.0 for v in m["std"]])  # fmt: skip
        return out, cls
    vol = fn.reshape(fn.decoders.numpy(data), layout="CDHW")
    d, h, w = case["size"]
    pos = {f"crop_pos_{a}": fn.random.uniform(range=[0.0, 1.0]) for a in "zyx"}
    vol = fn.crop(vol, crop_d=d, crop_h=h, crop_w=w, **pos)
    return fn.flip(vol, horizontal=fn.random.coin_flip(probability=0.5)), cls


def dali_library(case: dict[str, Any], *, workers: int, buffer: int) -> Callable[[], Iterator[int]]:
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    graph = functools.partial(_dali_graph, case, buffer)
    pipe = pipeline_def(graph, batch_size=case["batch"], num_threads=workers, device_id=None, seed=0)()
    pipe.build()
    it = DALIGenericIterator([pipe], ["input", "label"], reader_name="Reader", auto_reset=True,
                             last_batch_policy=LastBatchPolicy.DROP)  # fmt: skip

    def epoch() -> Iterator[int]:
        while True:  # the reader runs on across epochs (no workers to restart): stopped by the caller
            for (out,) in it:
                y = out["label"][:, 0].to(torch.int64) - ord(
                    "0"
                )  # `.cls` is ASCII: one digit for < 10 classes
                x = out["input"]
                yield len(y) if case["kind"] == "image" else _finished(case, x, y)

    return epoch


# ---- FFCV: a bare Loader with the project's fields -----------------------------------------------------------
def ffcv_library(case: dict[str, Any], *, workers: int, buffer: int) -> Callable[[], Iterator[int]]:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    pipes: dict[str, Any] = {"label": [IntDecoder(), ToTensor(), Squeeze(-1)], "index": None}
    if case["kind"] == "image":
        pipes["image"] = [RandomResizedCropRGBImageDecoder(case["size"]), RandomHorizontalFlip(), ToTensor(),
                          ToTorchImage(channels_last=False)]  # fmt: skip
    else:
        pipes["volume"] = [NDArrayDecoder(), ToTensor()]
    loader = Loader(case["beton"], batch_size=case["batch"], num_workers=workers, order=OrderOption.RANDOM,
                    pipelines=pipes, drop_last=True, seed=0)  # fmt: skip
    rng = np.random.default_rng(0)

    def epoch() -> Iterator[int]:
        it = iter(loader)
        try:
            for x, y in it:
                if (
                    case["kind"] != "image"
                ):  # FFCV has no 3D crop: the project's, per sample, as FFCVLoader does
                    x = torch.stack([T.volume_transform(v, case["size"], True, rng) for v in x])
                yield _finished(case, x, y)
        finally:
            it.close()

    return epoch


ARMS = {
    # name: (library arm it is compared with, the arm)
    "webdataset indexed": (
        "webdataset library",
        functools.partial(project, backend="webdataset", access="indexed"),
    ),
    "webdataset stream": (
        "webdataset library",
        functools.partial(project, backend="webdataset", access="stream"),
    ),
    "webdataset library": (None, wds_library),
    "ffcv": ("ffcv library", functools.partial(project, backend="ffcv", access="indexed")),
    "ffcv library": (None, ffcv_library),
    "dali indexed": ("dali library", functools.partial(project, backend="dali", access="indexed")),
    "dali stream": ("dali library", functools.partial(project, backend="dali", access="stream")),
    "dali library": (None, dali_library),
}
