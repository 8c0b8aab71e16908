"""Repeated augmentation: disjoint slots per rank, copies on other ranks, an order exact on resume."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.loaders.repeated import repeated_positions


@pytest.mark.parametrize("n, world, repeats", [(100, 4, 3), (97, 2, 3), (64, 8, 3), (50, 3, 1)])
def test_ranks_read_disjoint_slots_of_the_repeated_order(n, world, repeats):
    per_rank = [
        repeated_positions(n, epoch=2, seed=5, rank=r, world_size=world, repeats=repeats)
        for r in range(world)
    ]
    assert all(len(p) == n // world for p in per_rank)
    # interleaving the ranks rebuilds the prefix of the repeated permutation: every slot read once
    full = np.repeat(np.random.default_rng([5, 2]).permutation(n), repeats)
    woven = np.stack(per_rank, axis=1).reshape(-1)
    assert np.array_equal(woven, full[: len(woven)])
    if world >= repeats:  # each copy of a sample on another rank: no rank reads a sample twice
        assert all(len(set(p.tolist())) == len(p) for p in per_rank)
    if repeats == 1:
        assert len(set(np.concatenate(per_rank).tolist())) == world * (n // world)


def test_copies_land_on_consecutive_ranks():
    world, repeats = 4, 3
    per_rank = [
        repeated_positions(40, epoch=0, seed=0, rank=r, world_size=world, repeats=repeats)
        for r in range(world)
    ]
    first = per_rank[0][0]
    assert [p[0] for p in per_rank[:3]] == [first] * 3 and per_rank[3][0] != first


def test_order_is_a_function_of_seed_epoch_rank_so_resume_is_exact():
    a = repeated_positions(1000, epoch=7, seed=1, rank=1, world_size=4, repeats=3)
    b = repeated_positions(1000, epoch=7, seed=1, rank=1, world_size=4, repeats=3)
    assert np.array_equal(a, b)
    skipped = a[5 * 16 :]  # a resume after 5 batches of 16 reads exactly the rest
    assert np.array_equal(np.concatenate([a[: 5 * 16], skipped]), a)
    assert not np.array_equal(a, repeated_positions(1000, epoch=8, seed=1, rank=1, world_size=4, repeats=3))


def test_refusals():
    with pytest.raises(ValueError, match="repeats"):
        repeated_positions(10, epoch=0, seed=0, rank=0, world_size=1, repeats=0)
    with pytest.raises(ValueError, match="rank"):
        repeated_positions(10, epoch=0, seed=0, rank=2, world_size=2, repeats=3)
