"""The official-architecture options of the ViT change exactly what they say (issue 13)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import liere

BASE = dict(encoding="liere8", num_classes=10, img_size=32)


def _model(**kw):
    torch.manual_seed(0)
    return liere.create_model("vit_micro_patch4", **{**BASE, **kw})


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_qkv_bias_off_removes_exactly_the_qkv_biases():
    on, off = _model(), _model(qkv_bias=False)
    assert all(b.attn.qkv.bias is None for b in off.blocks)
    dim, depth = on.embed_dim, len(on.blocks)
    assert _count(on) - _count(off) == depth * 3 * dim
    assert {n for n, _ in on.named_parameters()} - {n for n, _ in off.named_parameters()} == {
        f"blocks.{i}.attn.qkv.bias" for i in range(depth)
    }


def test_norm_eps_reaches_every_layernorm():
    m = _model(norm_eps=1e-5)
    norms = [x for x in m.modules() if isinstance(x, nn.LayerNorm)]
    assert len(norms) == 2 * len(m.blocks) + 1 and all(x.eps == 1e-5 for x in norms)
    assert all(x.eps == 1e-6 for x in _model().modules() if isinstance(x, nn.LayerNorm))


def test_head_drop_off_is_identity_and_the_other_dropouts_stay():
    m = _model(drop_rate=0.1, head_drop=False)
    assert isinstance(m.head_drop, nn.Identity)
    assert m.pos_drop.p == 0.1 and m.blocks[0].mlp.drop.p == 0.1
    assert isinstance(_model(drop_rate=0.1).head_drop, nn.Dropout)


def test_official_init_statistics():
    """PyTorch's default Linear init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; LayerNorm
    ones/zeros; the class token N(0, 1) (official models/vit.py:177); ours trunc-normal 0.02, zero biases."""
    torch.manual_seed(0)
    big = liere.create_model(
        "vit_small_patch16", encoding="ape", num_classes=1000, img_size=224, init="official"
    )
    fc1 = big.blocks[0].mlp.fc1
    bound = 1 / fc1.in_features**0.5
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.99 * bound
    assert abs(fc1.weight.std().item() - bound / 3**0.5) < 0.02 * bound  # std of U(-b, b)
    assert fc1.bias.abs().max() > 0.5 * bound  # PyTorch draws biases too
    assert abs(big.cls_token.std().item() - 1.0) < 0.15
    assert abs(big.encoding.pos_embed.std().item() - 1.0) < 0.01  # official APE: torch.randn (vit.py:174)
    assert torch.equal(big.blocks[0].norm1.weight, torch.ones(384))
    torch.manual_seed(0)
    ours = liere.create_model("vit_small_patch16", encoding="ape", num_classes=1000, img_size=224)
    w = ours.blocks[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(ours.blocks[0].mlp.fc1.bias) == 0
    assert abs(ours.cls_token.std().item() - 0.02) < 0.01


def test_layer_scale_adds_two_gains_per_block_and_scales_the_branches():
    m = _model(layer_scale=1e-4)
    depth, dim = len(m.blocks), m.embed_dim
    assert _count(m) - _count(_model()) == 2 * depth * dim
    assert torch.allclose(m.blocks[0].ls1.gamma, torch.full((dim,), 1e-4))
    block = m.blocks[0].eval()
    x = torch.randn(2, 5, dim)
    rotation = m.encoding.prepare((2, 2), 1)
    with torch.no_grad():
        branch = block(x, rotation, 0) - x  # both branches at gain 1e-4: a small change
        plain = _model().blocks[0].eval()
        plain.load_state_dict({k: v for k, v in block.state_dict().items() if "ls" not in k})
        full = plain(x, rotation, 0) - x
    assert branch.abs().max() < 1e-3 * full.abs().max() * 10
    names = {n for n, _ in m.named_parameters() if ".ls" in n}
    assert names == {f"blocks.{i}.ls{j}.gamma" for i in range(depth) for j in (1, 2)}


def test_drop_path_schedules():
    lin, uni = _model(drop_path_rate=0.1), _model(drop_path_rate=0.1, drop_path_schedule="uniform")
    assert [b.drop_path for b in uni.blocks] == [0.1] * len(uni.blocks)
    assert lin.blocks[0].drop_path == 0.0 and lin.blocks[-1].drop_path == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kw", [dict(init="xavier"), dict(layer_scale=0.0), dict(drop_path_schedule="cosine")]
)
def test_bad_options_are_named(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        _model(**kw)


def test_options_survive_export(tmp_path):
    from liere.models.io import save_pretrained

    options = dict(BASE, qkv_bias=False, init="official", norm_eps=1e-5, head_drop=False, layer_scale=1e-4)
    m = _model(**options)
    path = save_pretrained(m.state_dict(), tmp_path / "m.safetensors", "vit_micro_patch4", options)
    back = liere.load_model(path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), m.eval()(x))
