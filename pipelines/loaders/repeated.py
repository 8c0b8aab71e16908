"""Repeated augmentation (Hoffer et al., "Augment your batch", CVPR 2020; DeiT's ``RASampler``,
facebookresearch/deit ``samplers.py``): every sample of an epoch's permutation is read ``repeats``
times in a row, and the copies go to consecutive ranks, so each copy is augmented on another rank.

Per epoch each rank still reads n // world_size positions, as without repetition (DeiT keeps
``floor(n // 256 * 256 / world_size)``): an epoch covers about n / repeats distinct samples. The
order is a pure function of (seed, epoch, rank), so a resume that skips the batches already read
is exact, and the slots of the repeated list that the ranks read are disjoint.
"""

from __future__ import annotations

import numpy as np


def repeated_positions(
    n: int, *, epoch: int, seed: int, rank: int, world_size: int, repeats: int
) -> np.ndarray:
    """Positions (0..n-1 in the split) that ``rank`` reads in ``epoch``, each of the permutation's
    samples repeated ``repeats`` times across consecutive ranks."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    order = np.repeat(np.random.default_rng([seed, epoch]).permutation(n), repeats)  # (n * repeats,)
    total = -(-len(order) // world_size) * world_size
    order = np.concatenate([order, order[: total - len(order)]])  # pad to a multiple of the ranks
    return order[rank::world_size][: n // world_size]
