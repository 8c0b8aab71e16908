"""Patch shuffling for the position-reliance evaluation."""

import pytest
import torch

import liere
from liere.engine.evaluate import shuffle_patches


def patches(x, p):
    """(B, C, *spatial) -> (B, N, C * prod(p)) with patches in raster order."""
    b, c, *spatial = x.shape
    grid = [s // q for s, q in zip(spatial, p)]
    shape = [b, c] + [v for g, q in zip(grid, p) for v in (g, q)]
    n = len(p)
    order = [0] + [2 + 2 * i for i in range(n)] + [1] + [3 + 2 * i for i in range(n)]
    return x.reshape(shape).permute(order).reshape(b, -1, c * torch.Size(p).numel())


@pytest.mark.parametrize("shape,p", [((3, 2, 8, 12), (4, 4)), ((2, 1, 4, 8, 8), (2, 4, 4))])
def test_shuffling_permutes_whole_patches_per_sample(shape, p):
    x = torch.randn(shape)
    y = shuffle_patches(x, p, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    px, py = patches(x, p), patches(y, p)
    for b in range(shape[0]):
        # every shuffled patch is one original patch, each used once
        match = (py[b][:, None] == px[b][None]).all(-1)
        assert bool((match.sum(1) == 1).all()) and bool((match.sum(0) == 1).all())


def test_a_model_without_positions_is_unchanged_and_ape_is_not():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    gen = torch.Generator().manual_seed(1)
    y = shuffle_patches(x, (4, 4), gen)
    kw = dict(img_size=[16, 16], num_classes=10, in_chans=1, global_pool="avg")
    blind = liere.create_model("vit_micro_patch4", encoding="none", **kw).eval()
    ape = liere.create_model("vit_micro_patch4", encoding="ape", **kw).eval()
    with torch.no_grad():
        torch.testing.assert_close(blind(x), blind(y), atol=1e-5, rtol=1e-4)
        assert (ape(x) - ape(y)).abs().max() > 1e-3


def test_inputs_that_are_not_whole_grids_are_refused():
    with pytest.raises(ValueError, match="not a whole grid"):
        shuffle_patches(torch.zeros(1, 1, 10, 16), (4, 4), torch.Generator())
