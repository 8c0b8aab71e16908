"""The two resolution protocols: zoom (the validation inputs resized) and extent (the embedded sets'
own larger canvases at the training scale), from the generators through the evaluation loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import require_backend

from liere.orchestration.evaluation import EvalData, evaluate_sizes, extent_split_for, row_name
from liere.orchestration.report import _eval_keys
from pipelines import BACKENDS
from pipelines.errors import DataError
from pipelines.sources.embedded import Compass2D, Compass3D, Digits


def _marks_2d(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    red = (img[..., 0] == 255) & (img[..., 1] == 40)
    green = (img[..., 0] == 40) & (img[..., 1] == 255)
    return red, green


def _corner(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).min(axis=0)


def test_compass2d_extent_keeps_marks_distances_and_labels():
    src = Compass2D(num_train=8, num_val=40)
    assert src.splits() == ["train", "val", "val-extent48", "val-extent64"]
    corners = []
    for i in range(40):
        base, ext = src.get("val", i), src.get("val-extent64", i)
        assert ext.data.shape == (64, 64, 3) and ext.label == base.label
        (r0, g0), (r1, g1) = _marks_2d(base.data), _marks_2d(ext.data)
        assert r0.sum() == r1.sum() == g0.sum() == g1.sum() == src.mark**2  # 2 x 2 px at any canvas
        assert np.array_equal(_corner(g1) - _corner(r1), _corner(g0) - _corner(r0))  # same displacement
        corners.append(_corner(r1))
    assert np.max(corners) > 32  # placed beyond the training canvas, not only inside it


def test_compass3d_extent_keeps_voxels_and_labels():
    src = Compass3D(num_train=8, num_val=20)
    for i in range(20):
        base, ext = src.get("val", i), src.get("val-extent32", i)
        assert ext.data.shape == (1, 32, 32, 32) and ext.label == base.label
        d0 = _corner(base.data[0] == 0) - _corner(base.data[0] == 255)
        d1 = _corner(ext.data[0] == 0) - _corner(ext.data[0] == 255)
        assert (ext.data[0] == 255).sum() == (base.data[0] == 255).sum() and np.array_equal(d0, d1)
        assert (base.data[0] == 255).sum() == (base.data[0] == 0).sum() == src.mark**3 == 8  # 2^3 voxels


def test_digits_extent_keeps_the_digit_whole_on_a_black_canvas():
    """Every stroke pixel of the digit at the training size, unchanged, somewhere on the canvas."""
    src = Digits(size=16)
    assert src.splits() == ["train", "val", "val-extent24", "val-extent32"]
    assert src.num_samples("val-extent32") == src.num_samples("val") == 360
    places = set()
    for i in range(0, 360, 9):
        base, ext = src.get("val", i), src.get("val-extent32", i)
        assert ext.data.shape == (32, 32) and ext.label == base.label
        rows, cols = np.nonzero(ext.data)
        r, c = rows.min() - np.nonzero(base.data)[0].min(), cols.min() - np.nonzero(base.data)[1].min()
        assert np.array_equal(ext.data[r : r + 16, c : c + 16], base.data)  # the digit, whole
        assert ext.data.sum() == base.data.sum()  # nothing else drawn: the background stays black
        assert np.array_equal(src.get("val-extent32", i).data, ext.data)  # a pure function of i
        places.add((int(r), int(c)))
    assert len(places) > 20  # placed anywhere, not always in one corner


def test_unknown_extent_size_is_named():
    with pytest.raises(DataError, match="val-extent40"):
        Compass2D(num_train=8, num_val=4).get("val-extent40", 0)
    with pytest.raises(ValueError, match="must exceed"):
        Compass2D(num_train=8, num_val=4, extent_sizes=(16,))


def _view(data_root, backend: str = "webdataset") -> EvalData:
    return EvalData(
        dataset="compass2d", root=str(data_root), split="val", backend=backend,
        batch_size=130, workers=0, seed=0, crop_ratio=None,
    )  # fmt: skip


def _red_width(batch: dict) -> float:
    """Mean width in pixels of the red mark per input: columns where the red channel is above half
    its range (only the red mark is: the green mark's red is 40, the background's below 24)."""
    r = batch["input"][:, 0]
    lo, hi = r.amin(dim=(1, 2), keepdim=True), r.amax(dim=(1, 2), keepdim=True)
    return float((r > (lo + hi) / 2).any(dim=1).sum(dim=-1).float().mean())


def test_zoom_scales_the_marks_and_extent_keeps_them(data_root):
    """compass2d at 24 px: zoomed to 48 the red mark is twice as wide, on the 48 px extent canvas
    it keeps its width; every protocol sees the same labels for the same indices."""
    view = _view(data_root)
    base = next(iter(view.loader([24, 24])))
    zoom = next(iter(view.loader([48, 48])))
    extent = next(iter(view.loader([48, 48], extent_split_for(view, [24, 24], [48, 48]))))
    assert zoom["input"].shape[-1] == extent["input"].shape[-1] == 48
    width = _red_width(base)  # 1 px drawn; JPEG's chroma subsampling spreads red over about 2
    assert _red_width(extent) == pytest.approx(width, abs=0.3)
    assert 1.6 < _red_width(zoom) / width < 2.6
    for other in (zoom, extent):
        order = torch.argsort(other["index"])
        assert torch.equal(other["label"][order], base["label"][torch.argsort(base["index"])])


def test_evaluate_rows_name_each_protocol(data_root):
    from liere.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_nano_patch8", img_size=[24, 24], num_classes=8, encoding="liere8").eval()
    rows, preds = evaluate_sizes(
        model, _view(data_root), [[24, 24], [48, 48]], shuffle=True, device=torch.device("cpu"),
        protocols=["zoom", "extent"],
    )  # fmt: skip
    names = [row_name(r) for r in rows]
    assert names == ["24x24", "24x24 shuffled", "48x48", "48x48 shuffled", "24x24 extent", "48x48 extent"]
    assert set(preds) == set(names) and all(r["count"] == 130 for r in rows)
    arms = [{"evals": {n: {} for n in names}}]
    assert _eval_keys(arms) == ["24x24", "48x48"] and _eval_keys(arms, "extent") == [
        "24x24 extent",
        "48x48 extent",
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_evaluates_both_protocols(backend, data_root):
    """The sweep's evaluation view through each backend's loader: every sample of val at the training
    size, zoomed and on the larger canvas, with the same labels for the same indices."""
    require_backend(backend)
    view = _view(data_root, backend)
    batches = {
        name: list(view.loader([48, 48] if name != "base" else [24, 24], split))
        for name, split in [
            ("base", None), ("zoom", None), ("extent", extent_split_for(view, [24, 24], [48, 48]))
        ]
    }  # fmt: skip
    labels = {}
    for name, got in batches.items():
        index, label = torch.cat([b["index"] for b in got]), torch.cat([b["label"] for b in got])
        assert got[0]["input"].shape[-1] == (24 if name == "base" else 48) and len(index) == 130
        labels[name] = label[torch.argsort(index)]
    assert torch.equal(labels["base"], labels["zoom"]) and torch.equal(labels["base"], labels["extent"])


def test_extent_reads_the_canvas_in_prepared_pixels(data_root):
    """digits is prepared at 32 px and the digits config trains at 16: its 24 px extent is the
    prepared 48 px canvas resized by the loader (the digit at 16 px on 24, the training scale)."""
    digits = EvalData(**{**vars(_view(data_root)), "dataset": "digits"})
    assert extent_split_for(digits, [16, 16], [24, 24]) == "val-extent48"
    assert extent_split_for(digits, [16, 16], [32, 32]) == "val-extent64"
    assert extent_split_for(digits, [32, 32], [48, 48]) == "val-extent48"  # trained at the prepared size
    with pytest.raises(ValueError, match="no split 'val-extent40'"):
        extent_split_for(digits, [16, 16], [20, 20])
    with pytest.raises(ValueError, match="whole number of pixels"):
        extent_split_for(digits, [24, 24], [25, 25])


def test_extent_refuses_what_it_cannot_draw(data_root):
    view = _view(data_root)
    with pytest.raises(ValueError, match="equal sides"):
        extent_split_for(view, [24, 24], [48, 64])
    cifar = EvalData(**{**vars(view), "dataset": "cifar100"})
    with pytest.raises(ValueError, match="'cifar100' does not draw larger canvases"):
        extent_split_for(cifar, [32, 32], [48, 48])
    with pytest.raises(ValueError, match="val-extent40"):
        extent_split_for(view, [24, 24], [40, 40])
