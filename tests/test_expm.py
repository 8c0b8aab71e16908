"""The fast skew-symmetric exponential: accuracy against float64 and exact gradients."""

import math

import pytest
import torch

from liere import encodings
from liere.encodings.expm import THETA, skew_expm, squarings


def generators(block_size, init, axes=2, grid=14, depth=2, heads=3, scale=1.0):
    """Every (layer, head, token, block) exponent of a LieRE encoding on a grid, scaled."""
    enc = encodings.build(
        "liere",
        head_dim=64,
        num_heads=heads,
        depth=depth,
        num_axes=axes,
        grid_shape=(grid,) * axes,
        block_size=block_size,
        init=init,
    )
    pos = enc.positions((grid,) * axes) * scale
    return enc.skew(torch.einsum("na,alhkm->lhnkm", pos, enc.upper.detach())).reshape(
        -1, block_size, block_size
    )


@pytest.mark.parametrize(
    "block_size, init, axes, scale",
    [
        (8, "paper", 2, 1.0),  # 1-norms up to ~60
        (8, "paper", 3, 2.0),  # a grid twice the training size: up to ~250
        (64, "paper", 2, 1.0),  # dense: up to ~450
        (16, "paper", 2, 2.0),
        (8, "small", 2, 1.0),
        (4, "small", 3, 1.0),
    ],
)
def test_within_1e5_of_float64_matrix_exp_over_the_norms_training_sees(block_size, init, axes, scale):
    X = generators(block_size, init, axes, grid=8 if block_size == 64 else 14, scale=scale)
    if X.shape[0] > 4000:
        X = X[torch.randperm(X.shape[0])[:4000]]
    norms = X.abs().sum(-2).amax(-1)
    ref = torch.linalg.matrix_exp(X.double())
    got = skew_expm(X)
    assert got.dtype == torch.float32
    assert (got.double() - ref).abs().max() < 1e-5, f"max 1-norm {norms.max():.0f}"
    eye = torch.eye(block_size, dtype=torch.float64)
    assert (got.double() @ got.double().transpose(-1, -2) - eye).abs().max() < 1e-5


def test_squarings_are_sized_per_matrix():
    X = torch.zeros(3, 4, 4)
    X[1, 0, 1], X[1, 1, 0] = 1.0, -1.0
    X[2, 0, 1], X[2, 1, 0] = 100.0, -100.0
    assert squarings(X).tolist() == [0, 0, math.ceil(math.log2(100 / THETA))]
    out = skew_expm(X)
    assert torch.equal(out[0], torch.eye(4))
    assert torch.allclose(
        out[2, :2, :2],
        torch.tensor([[math.cos(100), math.sin(100)], [-math.sin(100), math.cos(100)]]),
        atol=1e-5,
    )


@pytest.mark.parametrize("norm", [0.5, 5.0, 60.0])
def test_gradients_are_exact(norm):
    """gradcheck in float64, from inside one scaling level and across several."""
    torch.manual_seed(0)
    u = torch.randn(6, 6, dtype=torch.float64)
    A = u - u.T
    A = A / A.abs().sum(0).max() * norm
    scales = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)  # three squaring levels in one batch
    X = (A * scales[:, None, None]).requires_grad_()
    assert torch.autograd.gradcheck(skew_expm, (X,), atol=1e-7, rtol=1e-5)


def _paper_exponents():
    """Paper-initialised exponents over several squaring levels: 8 x 8 at twice the grid, dense 64 x 64."""
    torch.manual_seed(0)
    return [generators(8, "paper", 2, grid=14, scale=2.0)[::8], generators(64, "paper", 2, grid=8)[::4]]


def test_the_path_without_host_reads_gives_the_grouped_bits_and_gradients():
    """``init: paper`` exponents over many squaring levels: the masked path (accelerators, compile)
    and the grouped path (CPU, eager) agree bit for bit, forward and backward."""
    for X in _paper_exponents():
        assert len(torch.unique(squarings(X))) > 2  # several levels: the grouping is exercised
        X = X.requires_grad_()
        grouped, masked = skew_expm(X, host_reads=True), skew_expm(X, host_reads=False)
        w = torch.randn_like(grouped)
        (g_grouped,) = torch.autograd.grad(grouped, X, w)
        (g_masked,) = torch.autograd.grad(masked, X, w)
        assert torch.equal(grouped, masked)
        assert torch.equal(g_grouped, g_masked)
    assert torch.equal(skew_expm(X), skew_expm(X, host_reads=True))  # the CPU default is the grouped path


def test_past_the_squaring_bound_the_path_without_host_reads_is_nan_not_wrong():
    from liere.encodings.expm import MAX_SQUARINGS

    X = torch.zeros(2, 2, 2)
    big = THETA * 2.0 ** (MAX_SQUARINGS + 1)
    X[1, 0, 1], X[1, 1, 0] = big, -big
    masked = skew_expm(X, host_reads=False)
    assert torch.equal(masked[0], torch.eye(2)) and masked[1].isnan().all()
    assert torch.isfinite(skew_expm(X, host_reads=True)).all()  # the grouped path has no bound
