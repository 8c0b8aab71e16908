"""The canvas probe: every input at the training scale, pasted whole at a patch-aligned spot."""

import pytest
import torch

from liere.engine.canvas import place_on_canvas


def test_each_input_lands_whole_at_a_patch_aligned_offset_on_its_border_colour():
    x = torch.rand(6, 3, 8, 8)
    x[..., 0, :] = x[..., -1, :] = x[..., :, 0] = x[..., :, -1] = 0.25  # a uniform border per image
    out = place_on_canvas(x, [16, 24], (4, 4), torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 16, 24)
    offsets = set()
    for i in range(6):
        found = [
            (r, c)
            for r in range(0, 16 - 8 + 1, 4)
            for c in range(0, 24 - 8 + 1, 4)
            if torch.equal(out[i, :, r : r + 8, c : c + 8], x[i])
        ]
        assert len(found) == 1, found  # the image itself, unchanged, at exactly one patch-aligned spot
        (r, c), canvas = found[0], out[i].clone()
        canvas[:, r : r + 8, c : c + 8] = 0.25
        assert torch.allclose(canvas, torch.full_like(canvas, 0.25))  # the rest is the border colour
        offsets.add((r, c))
    assert len(offsets) > 1  # offsets differ between inputs


def test_the_same_generator_seed_gives_the_same_canvases_and_3d_works():
    x = torch.rand(2, 1, 4, 8, 8)
    a = place_on_canvas(x, [8, 16, 16], (2, 4, 4), torch.Generator().manual_seed(3))
    b = place_on_canvas(x, [8, 16, 16], (2, 4, 4), torch.Generator().manual_seed(3))
    assert a.shape == (2, 1, 8, 16, 16) and torch.equal(a, b)


@pytest.mark.parametrize(("canvas", "message"), [([4, 8], "must hold"), ([10, 8], "whole number")])
def test_a_canvas_that_cannot_hold_the_input_on_the_patch_grid_is_refused(canvas, message):
    with pytest.raises(ValueError, match=message):
        place_on_canvas(torch.rand(1, 1, 8, 8), canvas, (4, 4), torch.Generator())
