"""``train.init_from`` without DeepSpeed (issue 13): exported weights fill a fresh model exactly at the
training size; an absolute embedding is resampled to a new grid (bicubic 2D, trilinear 3D) the way the
source model resamples it at run time; rotary parameters are kept; what does not fit is named."""

from __future__ import annotations

import pytest
import torch

import liere
from liere.engine.init_from import InitFromError, load_into
from liere.models.io import save_pretrained


def _export(tmp_path, name="vit_nano_patch4", **kwargs):
    torch.manual_seed(1)
    model = liere.create_model(name, **kwargs)
    for p in model.parameters():  # away from the initialisation, so that a fresh model differs
        p.data.add_(0.1 * torch.randn_like(p))
    path = save_pretrained(model.state_dict(), tmp_path / "model.safetensors", name, kwargs)
    return model.eval(), path


def _fresh(name="vit_nano_patch4", **kwargs):
    torch.manual_seed(2)
    return liere.create_model(name, **kwargs)


@pytest.mark.parametrize(
    "size, bigger", [([16, 16], [32, 32]), ([8, 8, 8], [16, 16, 16])], ids=["2d-bicubic", "3d-trilinear"]
)
def test_ape_is_resampled_as_the_source_resamples_it(tmp_path, size, bigger):
    kw = dict(encoding="ape", num_classes=5, in_chans=1)
    source, path = _export(tmp_path, img_size=size, **kw)
    same = _fresh(img_size=size, **kw)
    load_into(same, path)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in source.state_dict().items())
    big = _fresh(img_size=bigger, **kw)
    notes = load_into(big, tmp_path)  # a run directory: its model.safetensors
    grid_from, grid_to = "x".join(str(s // 4) for s in size), "x".join(str(s // 4) for s in bigger)
    assert any(f"encoding.pos_embed resampled {grid_from} -> {grid_to}" in n for n in notes)
    assert big.encoding.pos_embed.shape[1] == 2 ** len(size) * source.encoding.pos_embed.shape[1]
    assert torch.equal(big.cls_token, source.cls_token)  # the class token is kept
    x = torch.randn(2, 1, *bigger)
    with torch.no_grad():
        assert torch.allclose(big.eval()(x), source(x), atol=1e-5)


def test_rotary_parameters_are_kept_at_a_new_grid(tmp_path):
    source, path = _export(tmp_path, encoding="liere8", num_classes=5, img_size=[16, 16], in_chans=1)
    big = _fresh(encoding="liere8", num_classes=5, img_size=[32, 32], in_chans=1)
    load_into(big, path)
    for (name, p), q in zip(source.encoding.named_parameters(), big.encoding.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert big(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_what_does_not_fit_is_named_with_the_file(tmp_path):
    _, path = _export(tmp_path, encoding="liere8", num_classes=5, img_size=[16, 16], in_chans=1)
    other_head = _fresh(encoding="liere8", num_classes=7, img_size=[16, 16], in_chans=1)
    with pytest.raises(InitFromError) as err:
        load_into(other_head, path)
    assert str(path) in str(err.value) and "head.weight is (5, 128) in the file, (7, 128)" in str(err.value)
    assert "train.init_new_head=true" in str(err.value)
    fresh_head = other_head.head.weight.clone()
    notes = load_into(other_head, path, new_head=True)
    assert torch.equal(other_head.head.weight, fresh_head) and any("head.weight newly" in n for n in notes)
    no_bias = _fresh(encoding="liere8", num_classes=5, img_size=[16, 16], in_chans=1, qkv_bias=False)
    with pytest.raises(InitFromError, match=r"blocks\.0\.attn\.qkv\.bias is in the file, not in the model"):
        load_into(no_bias, path)
    with pytest.raises(InitFromError, match="no such file or run directory"):
        load_into(no_bias, tmp_path / "nowhere")
