"""The rotations read nothing back to the host on their device path (issue 15, item 11).

On a GPU a host read (``.item()``, ``.tolist()``, ``int(t)``), a data-dependent output size
(``unique``, ``nonzero``, boolean masks) or ``linalg.solve``'s error check waits for the device.
Every one of them reaches the aten dispatcher as one of SYNC_OPS, so recording the dispatched ops
on the CPU finds them without a GPU; a meta tensor (no values at all) and
``torch.compile(fullgraph=True)`` confirm it two more ways.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from liere import encodings
from liere.encodings.expm import skew_expm

SYNC_OPS = {
    "aten._local_scalar_dense", "aten._linalg_check_errors", "aten._unique2", "aten.unique_dim",
    "aten.unique_consecutive", "aten.nonzero", "aten.masked_select", "aten.repeat_interleave",
    "aten.equal", "aten.is_nonzero",
}  # fmt: skip


class HostSyncs(TorchDispatchMode):
    """Records the dispatched ops that read a value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in SYNC_OPS:
            self.found.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def syncs(fn) -> list[str]:
    """The host reads of ``fn()``, its backward included."""
    with HostSyncs() as rec:
        out = fn()
        out.float().square().sum().backward()
    return rec.found


def exponents() -> torch.Tensor:
    """``init: paper`` LieRE-8 exponents at twice the training grid: several squaring levels."""
    enc = encodings.build(
        "liere", head_dim=32, num_heads=2, depth=2, num_axes=2, grid_shape=(8, 8), block_size=8
    )
    pos = enc.positions((8, 8)) * 2.0
    return enc.skew(torch.einsum("na,alhkm->lhnkm", pos, enc.upper.detach())).reshape(-1, 8, 8)


def test_the_detector_sees_the_syncs_of_the_grouped_exponential_and_of_linalg_solve():
    X = exponents().requires_grad_()
    assert "aten._local_scalar_dense" in syncs(lambda: skew_expm(X, host_reads=True))
    S = torch.randn(8, 8).requires_grad_()
    eye = torch.eye(8)
    assert "aten._linalg_check_errors" in syncs(lambda: torch.linalg.solve(eye + S - S.T, eye))


def test_the_exponential_reads_nothing_back_on_its_device_path():
    X = exponents().requires_grad_()
    assert syncs(lambda: skew_expm(X, host_reads=False)) == []
    meta = skew_expm(X.detach().to("meta"))  # the default off the CPU; a meta tensor has no value to read
    assert meta.device.type == "meta" and meta.shape == X.shape
    with pytest.raises(NotImplementedError):  # unique's output size needs the values
        skew_expm(X.detach().to("meta"), host_reads=True)  # the probe bites: the grouped path reads
    torch._dynamo.reset()
    compiled = torch.compile(skew_expm, fullgraph=True, backend="eager")  # a host read breaks the graph
    assert torch.equal(compiled(X.detach()), skew_expm(X.detach(), host_reads=False))


@pytest.mark.parametrize("name", ["string", "string_circulant"])
def test_string_rotations_read_nothing_back(name):
    enc = encodings.build(name, head_dim=16, num_heads=2, depth=2, num_axes=2, grid_shape=(4, 4))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a basis away from the identity
    pos = enc.positions((4, 4))
    assert syncs(lambda: enc.rotation(pos)) == []
    R = enc.rotation(pos).double()
    eye = torch.eye(16, dtype=torch.float64)
    assert (R @ R.transpose(-1, -2) - eye).abs().max() < 1e-5  # still orthogonal


def test_coordinate_augmentation_reads_its_seed_and_step_once_then_draws_without_host_reads():
    enc = encodings.build(
        "rope_mixed", head_dim=16, num_heads=2, depth=2, num_axes=2, grid_shape=(4, 4),
        augment={"shift": 0.5, "jitter": 1.5, "rescale": 2.0},
    )  # fmt: skip
    enc.train()
    enc.prepare((4, 4))  # the first draw reads the seed and step buffers, once
    with HostSyncs() as rec:
        enc.prepare((4, 4))
        enc.prepare((4, 4))
    assert rec.found == [] and int(enc.augment.step) == 3  # the buffer still counts (checkpoints carry it)
