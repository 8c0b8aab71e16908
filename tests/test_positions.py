"""grid_positions: the proportional, rescale and index schemes on 1, 2 and 3 axes."""

import pytest
import torch

from liere.encodings import grid_positions


def test_training_grid_spans_unit_interval_in_row_major_order():
    pos = grid_positions((3, 5), (3, 5))
    assert pos.shape == (15, 2)
    assert pos.dtype == torch.float32
    assert torch.equal(pos[0], torch.tensor([0.0, 0.0]))
    assert torch.equal(pos[1], torch.tensor([0.0, 0.25]))  # last axis varies fastest
    assert torch.equal(pos[-1], torch.tensor([1.0, 1.0]))


def test_proportional_extends_past_one_at_the_training_spacing():
    train = grid_positions((4, 4), (4, 4))
    big = grid_positions((8, 6), (4, 4))
    assert big.shape == (48, 2)
    assert big[:, 0].max().item() == pytest.approx(7 / 3)
    assert big[:, 1].max().item() == pytest.approx(5 / 3)
    # the training grid's positions are a subset, at the same spacing
    spacing = torch.unique(big[:, 0]).diff()
    assert torch.allclose(spacing, torch.full_like(spacing, 1 / 3))
    assert set(map(tuple, train.tolist())) <= set(map(tuple, big.tolist()))


def test_rescale_maps_any_grid_to_unit_interval():
    pos = grid_positions((8, 6, 2), scheme="rescale")
    assert pos.shape == (96, 3)
    assert torch.equal(pos.min(0).values, torch.zeros(3))
    assert torch.equal(pos.max(0).values, torch.ones(3))


def test_index_scheme_and_single_axis():
    pos = grid_positions((5,), scheme="index")
    assert torch.equal(pos[:, 0], torch.arange(5.0))
    one = grid_positions((1, 3), (1, 3))  # an axis of size 1 sits at 0
    assert torch.equal(one[:, 0], torch.zeros(3))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (((4, 4),), {}, "train_grid_shape"),
        (((4, 4), (4,)), {}, "axes"),
        (((4, 0),), {"scheme": "index"}, "positive"),
        (((4, 4),), {"scheme": "spiral"}, "spiral"),
    ],
)
def test_bad_arguments_are_named(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid_positions(*args, **kwargs)
