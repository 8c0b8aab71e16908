"""Learned sparsity of LieRE generators: group norms, the penalty's gradient, the proximal step, report, schedule."""

import pytest
import torch
from omegaconf import OmegaConf

import liere
from liere.encodings.sparsity import (
    group_penalty,
    group_soft_threshold,
    group_weights,
    report_markdown,
    sparsity_report,
    tile_group_norms,
)
from liere.engine.regularizer import SparsityPenalty, SparsityProximal, sparsity_steps


def dense_model(**kw):
    return liere.create_model(
        "vit_micro_patch4", encoding="liere64", img_size=[16, 16], num_classes=10, in_chans=1, **kw
    )


def test_group_norms_are_the_norms_of_each_tile_pair_over_axes():
    gen = dense_model().encoding.generator_matrices()  # (axes, L, H, K, 64, 64)
    norms = tile_group_norms(gen, 8)
    assert norms.shape == (6, 2, 1, 8, 8)
    i, j = 2, 5
    pair = gen[:, 3, 1, 0, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].square().sum() * 2  # (i,j) and (j,i)
    assert norms[3, 1, 0, i, j].item() == pytest.approx(pair.sqrt().item(), rel=1e-5)
    diag = gen[:, 3, 1, 0, 8 * i : 8 * i + 8, 8 * i : 8 * i + 8].square().sum()
    assert norms[3, 1, 0, i, i].item() == pytest.approx(diag.sqrt().item(), rel=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        tile_group_norms(gen, 7)


def test_penalty_reaches_every_generator_and_pulls_towards_zero():
    enc = dense_model().encoding
    penalty = group_penalty(enc, 8)
    penalty.backward()
    g = enc.upper.grad
    assert g.abs().gt(0).float().mean() > 0.99  # every entry belongs to a group
    # the subgradient of a norm points along the parameters: a step against it shrinks every group
    with torch.no_grad():
        before = tile_group_norms(enc.generator_matrices(), 8)
        enc.upper -= 1e-3 * g
        after = tile_group_norms(enc.generator_matrices(), 8)
    assert bool((after < before).all())


def test_report_counts_the_tiles_that_were_zeroed():
    enc = dense_model(encoding_options={"init": "small"}).encoding
    with torch.no_grad():
        full = enc.generator_matrices()
        keep = torch.zeros(64, 64, dtype=torch.bool)
        for b in range(8):  # keep only the 8 x 8 diagonal tiles: LieRE-8's structure
            keep[8 * b : 8 * b + 8, 8 * b : 8 * b + 8] = True
        masked = torch.where(keep, full, torch.zeros(()))
        rows, cols = enc._rows, enc._cols
        enc.upper.copy_(masked[..., rows, cols])
    report = sparsity_report(enc, tile=8, threshold=0.05)
    assert report["off_diagonal_active"] == 0.0
    assert report["diagonal_active"] == 1.0
    assert len(report["layers"]) == 6
    text = report_markdown(report)
    assert "| all | 0.0 | 100.0 |" in text
    with torch.no_grad():
        enc.upper[:, 1] = 0  # layer 1: every group at 0 (the proximal step does this), none active
    layers = sparsity_report(enc, tile=8, threshold=0.05)["layers"]
    assert [(r["off_diagonal_active"], r["diagonal_active"]) for r in layers[:3]] == [(0, 1), (0, 0), (0, 1)]


def test_with_one_tile_a_block_the_report_counts_the_blocks_still_turning():
    """LieRE_8 shrunk with tile 8: each block is one group, and one at 0 rotates nothing. The engine reports
    it only when a sparsity term was on (unshrunk, every block turns: nothing to report); the compare
    report shows '-' for the off-diagonal share there is none of."""
    from types import SimpleNamespace

    from liere.engine.regularizer import reportable
    from liere.orchestration.report import _cost, _sparsity_table

    model = liere.create_model(
        "vit_micro_patch4", encoding="liere8", img_size=[16, 16], num_classes=10, in_chans=1
    )
    assert not reportable(model, 8) and reportable(model, 8, shrunk=True) and reportable(model, 4)
    assert not reportable(model, 3, shrunk=True) and not reportable(model, 16, shrunk=True)
    enc = model.encoding
    blocks = tile_group_norms(enc.generator_matrices(), 8).shape[-3]
    with torch.no_grad():  # zero one of the blocks of layer 0, head 0, in every axis
        gen = enc.generator_matrices()
        gen[:, 0, 0, 1] = 0
        enc.upper.copy_(gen[..., enc._rows, enc._cols])
    report = sparsity_report(enc, tile=8, threshold=0.05)
    total = tile_group_norms(enc.generator_matrices(), 8).numel()
    assert report["off_diagonal_active"] is None and report["diagonal_active"] == pytest.approx(1 - 1 / total)
    assert blocks > 1 and "| all | n/a |" in report_markdown(report)
    runs = [
        SimpleNamespace(
            summary={"sparsity": {k: report[k] for k in ("tile", "off_diagonal_active", "diagonal_active")}}
        )
    ]
    arm = {"label": "liere8-prox", "top1_mean": 0.9, **_cost(runs)}
    row = _sparsity_table([arm])[-1]
    assert row.startswith("| liere8-prox | 8 | - | ") and f"{100 * (1 - 1 / total):.1f}" in row


def test_only_liere_encodings_have_a_penalty():
    model = liere.create_model("vit_micro_patch4", encoding="rope_mixed", img_size=[16, 16], num_classes=10)
    with pytest.raises(TypeError, match="LieRE"):
        group_penalty(model.encoding, 8)


def test_schedule_waits_then_ramps_linearly():
    cfg = OmegaConf.create({"sparsity": {"weight": 0.1, "tile": 8, "start_epoch": 1, "ramp_epochs": 2}})
    s = SparsityPenalty(cfg, steps_per_epoch=10)
    assert s.factor(0) == 0.0 and s.factor(9) == 0.0
    assert s.factor(10) == pytest.approx(0.1 / 20)
    assert s.factor(19) == pytest.approx(0.05)
    assert s.factor(29) == pytest.approx(0.1) and s.factor(100) == pytest.approx(0.1)
    model = dense_model()
    assert s(model, 0) is None
    assert s(model, 50).item() == pytest.approx(0.1 * group_penalty(model.encoding, 8).item(), rel=1e-5)


def test_soft_threshold_lowers_every_group_norm_by_the_amount_and_zeroes_the_small_ones():
    enc = dense_model().encoding
    u = enc.upper.detach().clone()
    before = tile_group_norms(enc.skew(u), 8)
    weights = group_weights(8, 8)  # sqrt(group size): 1 off the diagonal, sqrt(7/16) on it
    amount = (before / weights).median().item()  # about half of the groups fall to zero
    out, zero = group_soft_threshold(enc, u, 8, amount)
    assert out.shape == u.shape and out.dtype == u.dtype
    after = tile_group_norms(enc.skew(out), 8)
    dead = before <= amount * weights
    assert 0.3 < dead.float().mean().item() < 0.7
    upper = torch.triu(torch.ones(8, 8, dtype=torch.bool))
    assert zero == pytest.approx(dead[..., upper].float().mean().item())
    assert torch.allclose(after[~dead], (before - amount * weights)[~dead], atol=1e-5)
    rows, cols = enc._rows // 8, enc._cols // 8
    entry_dead = dead[..., rows, cols].unsqueeze(0).expand_as(u)  # (axes, L, H, K, entries)
    assert bool((out[entry_dead] == 0).all())  # exactly zero, not small
    ratio = out[~entry_dead] / u[~entry_dead]  # survivors keep their direction: a positive scale
    assert bool((ratio > 0).all() and (ratio < 1).all())
    assert torch.equal(group_soft_threshold(enc, u, 8, 0.0)[0], u)


def test_size_weights_treat_diagonal_tiles_and_pairs_alike_at_initialisation():
    for tile in (4, 8, 16):
        w = group_weights(64 // tile, tile)
        assert w[0, 0].item() == pytest.approx(((tile - 1) / (2 * tile)) ** 0.5) and w[0, 1].item() == 1.0
        enc = dense_model(encoding_options={"init": "small"}).encoding
        norms = tile_group_norms(enc.generator_matrices(), tile) / w  # per unit of weight
        n = norms.shape[-1]
        diag = norms.diagonal(dim1=-2, dim2=-1)
        off = norms[..., torch.triu(torch.ones(n, n, dtype=torch.bool), 1)]
        # unweighted, the diagonal tiles would start (1 - w) smaller: 34% at tile 8
        assert diag.median().item() == pytest.approx(off.median().item(), rel=0.08), tile


def test_the_method_picks_a_loss_penalty_or_a_proximal_step():
    def steps(**sparsity):
        cfg = OmegaConf.create({"sparsity": {"tile": 8, "start_epoch": 0, "ramp_epochs": 0, **sparsity}})
        return sparsity_steps(cfg, steps_per_epoch=10)

    assert steps(weight=0.0, method="proximal") == (None, None)
    penalty, proximal = steps(weight=0.1, method="penalty")
    assert isinstance(penalty, SparsityPenalty) and proximal is None
    penalty, proximal = steps(weight=2.0, method="proximal")
    assert penalty is None and isinstance(proximal, SparsityProximal) and proximal.factor(0) == 2.0


def test_encoding_weight_decay_shrinks_the_generators_alone():
    from liere.engine.config import OptimConfig
    from liere.engine.optim import build_optimizer

    model = dense_model()
    cfg = OmegaConf.structured(OptimConfig(lr=0.1, weight_decay=0.2, encoding_weight_decay=0.5))
    opt = build_optimizer(model, cfg)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {
        "decay": 0.2,
        "no_decay": 0.0,
        "encoding": 0.5,
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's own update is 0: what moves is the decay
    opt.step()
    for name, p in model.named_parameters():
        if name.startswith("encoding."):
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5))
        elif p.ndim <= 1:
            torch.testing.assert_close(p.detach(), before[name])
    assert build_optimizer(model, OmegaConf.structured(OptimConfig())).param_groups[-1]["weight_decay"] == 0.0
