"""The DALI backend's pipelines (issue 15, item 13): uint8 out, a deeper prefetch queue, evaluation pipelines built
once and reused, and the GPU graph (mixed decoder, `.gpu()` placement) traced by DALI itself without a GPU."""

from __future__ import annotations

import sys

import pytest
import torch
from data_helpers import make_loader, require

from pipelines import paths


@pytest.fixture()
def dali(monkeypatch):
    """The DALI loader module with an empty pipeline cache and a count of the pipelines built."""
    require("nvidia.dali")
    from pipelines.loaders import dali as module

    module.clear_pipeline_cache()
    built = []
    original = module.DALILoader._build

    def counting(self):
        built.append(self.image_size)
        return original(self)

    monkeypatch.setattr(module.DALILoader, "_build", counting)
    module.built = built
    yield module
    module.clear_pipeline_cache()


def _val(root, **kw):
    options = dict(batch_size=32, train=False, image_size=24, workers=1, device="cpu")
    return make_loader("dali", root, "compass2d", "val", **{**options, **kw})


def _collect(loader):
    batches = list(loader)
    return torch.cat([b["index"] for b in batches]), torch.cat([b["input"] for b in batches])


def test_uint8_out_for_a_gpu_and_normalized_inside_dali_for_the_cpu(dali, data_root):
    """Batches bound for a GPU leave DALI as uint8 (normalized there by the base class); batches that stay
    on the CPU are normalized by DALI's crop_mirror_normalize. Either way the same values as webdataset's."""
    ref = make_loader("webdataset", data_root, "compass2d", "val", batch_size=32, train=False, image_size=24)
    expected = next(iter(ref))["input"]
    lo = _val(data_root)
    lo.device = torch.device("cuda")  # where set_device would send it: only the graph's choice is read here
    raw = next(lo._iter_raw(lo._batches(), 0))
    assert raw["input"].dtype == torch.uint8 and raw["normalized"] is False
    assert tuple(raw["input"].shape) == (32, 3, 24, 24)
    from pipelines import transforms as T

    finished = T.normalize(raw["input"], *lo._stats_on(torch.device("cpu")))  # what the GPU would compute
    assert (finished - expected).abs().mean() < 0.1
    clear = _val(data_root)
    raw = next(clear._iter_raw(clear._batches(), 0))
    assert raw["input"].dtype == torch.float32 and raw["normalized"] is True
    batch = next(iter(clear))
    assert (batch["input"] - expected).abs().mean() < 0.1  # the same pixels, JPEG rounding apart


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_every_prefetch_depth_gives_the_same_batches_and_survives_an_early_exit(dali, data_root, depth):
    ref_idx, ref_x = _collect(_val(data_root, prefetch_queue_depth=1, batch_size=48))
    lo = _val(data_root, prefetch_queue_depth=depth, batch_size=48)  # 130 samples: 3 batches, fewer than 5
    for _ in range(2):  # a new pipeline (primed with fillers when the epoch is short), then the started one
        idx, x = _collect(lo)
        assert torch.equal(idx, ref_idx) and torch.equal(x, ref_x)
    next(iter(lo))  # left after one batch: the runs still scheduled are collected
    idx, x = _collect(lo)
    assert torch.equal(idx, ref_idx) and torch.equal(x, ref_x)
    assert len(dali.built) == (1 if depth == 1 else 2)  # one pipeline per depth, reused by every epoch
    assert depth in [p.prefetch_queue_depth for pipes in dali._IDLE_PIPES.values() for p in pipes]


def test_evaluation_pipelines_are_built_once_per_split_size_and_batch(dali, data_root):
    first = _collect(_val(data_root))
    for _ in range(3):  # every validation builds a new loader: it takes the idle pipeline
        again = _collect(_val(data_root))
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    assert dali.built == [(24, 24)]
    _collect(_val(data_root, image_size=16))  # a sweep size: its own pipeline, kept too
    _collect(_val(data_root, image_size=16))
    _collect(_val(data_root, batch_size=16))
    assert dali.built == [(24, 24), (16, 16), (24, 24)]
    # two evaluations iterated at once never share one pipeline
    a, b = iter(_val(data_root)), iter(_val(data_root))
    ba, bb = next(a), next(b)
    assert len(dali.built) == 4  # the idle one and one new
    assert torch.equal(ba["input"], bb["input"]) and torch.equal(ba["input"], first[1][:32])
    # training pipelines are the loader's own (their random state is the run's), never pooled
    make_kw = dict(batch_size=32, train=True, image_size=24, workers=1, device="cpu")
    for _ in range(2):
        next(iter(make_loader("dali", data_root, "compass2d", "train", **make_kw)))
    assert len(dali.built) == 6


def test_evaluation_stream_pipeline_is_reused_from_the_shard_start(dali, data_root):
    from pipelines.loaders.dali_stream import DALIStreamLoader

    split = paths.webdataset_dir(data_root, "compass2d", "val")

    def stream():
        return DALIStreamLoader(split, batch_size=32, train=False, image_size=24, rank=1, world_size=2, seed=0,
                                workers=1, device="cpu")  # fmt: skip

    first = _collect(stream())
    again = _collect(stream())
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert len(dali.built) == 1
    it = iter(stream())
    next(it)
    it.close()  # left mid-shard: that pipeline is dropped, the next loader builds a fresh one
    assert torch.equal(_collect(stream())[0], first[0]) and len(dali.built) == 2
    with pytest.raises(ValueError, match="repeated_aug=3 with the DALI stream"):
        DALIStreamLoader(split, batch_size=8, train=True, image_size=16, rank=0, world_size=1, seed=0, repeated_aug=3,
                         device="cpu")  # fmt: skip


def _ops(node, seen=None):
    """Every operator upstream of a traced DALI DataNode: (schema name, device, output device, input devices)."""
    seen = {} if seen is None else seen
    op = node.source
    if op is not None and id(op) not in seen:
        name = getattr(op._op, "schema_name", type(op._op).__name__)
        seen[id(op)] = (name, op._op.device, node.device, [i.device for i in op.inputs])
        for i in op.inputs:
            _ops(i, seen)
    return list(seen.values())


@pytest.mark.parametrize("train", [True, False])
def test_gpu_graph_decodes_with_nvjpeg_and_keeps_the_images_on_the_gpu(dali, data_root, train):
    """DALI traces the graph function for device 0 without a GPU (only build() needs one) and refuses a CPU
    operator fed GPU data itself: the decoder must be `mixed` and everything after it run on the GPU."""
    from nvidia.dali import Pipeline

    kw = dict(three_augment=True, color_jitter=0.3) if train else {}
    lo = make_loader("dali", data_root, "compass2d", "val", batch_size=8, train=train, image_size=24, device="cpu",
                     **kw)  # fmt: skip
    lo.gpu = True
    with Pipeline(batch_size=8, num_threads=1, device_id=0):
        out = lo._graph()
    ops = _ops(out)
    decoders = [o for o in ops if o[0].startswith("decoders__")]
    assert len(decoders) == 1 and decoders[0][1] == "mixed" and out.device == "gpu"
    images = [o for o in ops if o[3] and "gpu" in o[3]]  # operators on image data
    assert all(o[2] == "gpu" for o in images)
    names = {o[0] for o in ops}
    assert "CropMirrorNormalize" in names
    if train:
        assert {"GaussianBlur", "random__Uniform", "reductions__Mean", "Cat"} <= names
        assert all(o[1] == "gpu" for o in ops if o[0] in ("GaussianBlur", "Cat", "reductions__Mean"))


def test_gpu_graph_moves_volumes_to_the_gpu_before_their_crops(dali, data_root):
    from nvidia.dali import Pipeline

    lo = make_loader(
        "dali", data_root, "compass3d", "train", batch_size=4, train=True, image_size=8, device="cpu"
    )
    lo.gpu = True
    with Pipeline(batch_size=4, num_threads=1, device_id=0):
        out = lo._graph()
    ops = _ops(out)
    assert out.device == "gpu"
    assert all(o[1] == "gpu" for o in ops if o[0] in ("Crop", "Flip", "Resize", "Transpose"))
    assert any(o[0] == "Crop" for o in ops)


def test_a_missing_dali_install_is_named_with_the_way_out(data_root, monkeypatch):
    """A machine without DALI (stood in for by hiding the installed package): the loader names the
    backend, the install that brings it and the other backend, instead of a bare ModuleNotFoundError."""
    from pipelines import build_loader

    require("nvidia.dali")
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match=r"data.backend=dali needs NVIDIA DALI.*make install.*webdataset"):
        build_loader(
            backend="dali", root=str(data_root), dataset="compass2d", split="val", batch_size=8, train=False
        )
