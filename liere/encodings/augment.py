"""Training-time augmentation of token coordinates for rotary encodings: shift, jitter, rescale
(DINOv3) and per-token perturbation, global offset (ComRoPE).

- DINOv3 (``dinov3/layers/rope_position_encoding.py``) maps the grid to [-1, 1], then adds a
  uniform shift in [-shift, shift] per axis, multiplies each axis by a log-uniform factor in
  [1/jitter, jitter] and all axes by one log-uniform factor in [1/rescale, rescale]. Here the same
  is done in the encoding's own units: the box of the grid's cells (centres +- half a patch spacing)
  is mapped to [-1, 1] per axis, augmented, and mapped back; under the ``centered`` scheme this is
  exactly DINOv3's computation. DINOv3's released ViTs train with
  ``rescale=2`` and no shift or jitter (preset ``"dinov3"``).
- ComRoPE (Longin-Yu/ComRoPE ``model.py``, ``get_positions``) adds to every token's integer
  coordinates ``clamp(N(0, 1) * perturb / 2, -1/2, 1/2)`` (here: in units of the patch spacing),
  and a global ``N(0, 1) * offset`` in units of the grid's extent (their positions span [0, 1]).

Every draw comes from a generator seeded by ``(seed, step)``: ``seed`` is drawn from torch's
global generator when the encoding is built (so the run's seed fixes it), ``step`` counts the
training forward passes. Both are persistent buffers, so a checkpoint restores them and a resumed
run draws exactly what the uninterrupted one would. Nothing happens in eval mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

PRESETS: dict[str, dict[str, float]] = {"dinov3": {"rescale": 2.0}}
KEYS = ("shift", "jitter", "rescale", "perturb", "offset")


def parse_augment(spec: str | dict[str, Any] | None) -> dict[str, float] | None:
    """``None`` / ``{}``: off; a preset name; or a dict with any of ``KEYS`` (0 / 1 / None: op off)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown augment preset {spec!r}; expected one of {list(PRESETS)}")
        spec = PRESETS[spec]
    unknown = set(spec) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown augment option(s) {sorted(unknown)}; expected some of {KEYS}")
    amounts = {k: float(spec.get(k) or 0.0) for k in KEYS}
    for k in ("jitter", "rescale"):
        if amounts[k] and amounts[k] < 1:
            raise ValueError(f"augment {k} is a factor >= 1 (log-uniform in [1/{k}, {k}]), got {amounts[k]}")
    if any(v < 0 for v in amounts.values()):
        raise ValueError(f"augment amounts must be >= 0, got {amounts}")
    return amounts if any(amounts.values()) else None


class PositionAugment(nn.Module):
    """Random coordinate augmentation, one draw per training forward pass, shared by the batch."""

    def __init__(self, amounts: dict[str, float]) -> None:
        super().__init__()
        self.amounts = dict(amounts)
        # from the run's seeded global generator; on the CPU, so that models built on the meta device work
        seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        self._host: tuple[int, int] | None = None  # (seed, step) as read once: no device read per step

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._host = None  # a loaded (resumed) seed and step: read them again at the next draw
        super()._load_from_state_dict(*args, **kwargs)

    def _seed_step(self) -> tuple[int, int]:
        if self._host is None:  # after construction or a load: one read of the buffers
            self._host = (int(self.seed), int(self.step))
        return self._host

    def generator(self, step: int | None = None) -> torch.Generator:
        """The CPU generator of ``step`` (default: the current one): same draws on every device."""
        seed, current = self._seed_step()
        step = current if step is None else step
        mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9) % (2**63 - 1)
        return torch.Generator().manual_seed(mixed)

    def forward(self, pos: Tensor, grid_shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
        """pos (N, A) of a grid -> augmented positions (on ``device``, default pos's); advances ``step``.
        Given CPU positions, nothing is read back from the device."""
        out = self.draw(pos, grid_shape, self.generator())
        with torch.no_grad():
            self.step.add_(1)
        seed, step = self._seed_step()
        self._host = (seed, step + 1)
        if device is None or out.device == torch.device(device):
            return out
        return out.to(device, non_blocking=True)  # (from pageable memory: staged at once, no device sync)

    def draw(self, pos: Tensor, grid_shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        a = self.amounts
        N, A = pos.shape
        # every draw is made whether or not its op is on: the stream never depends on the options
        u_shift = torch.rand(A, generator=gen, dtype=torch.float64) * 2 - 1
        u_jitter = torch.rand(A, generator=gen, dtype=torch.float64) * 2 - 1
        u_rescale = torch.rand(1, generator=gen, dtype=torch.float64) * 2 - 1
        g_perturb = torch.randn(N, A, generator=gen, dtype=torch.float64)
        g_offset = torch.randn(A, generator=gen, dtype=torch.float64)
        p = pos.detach().double().cpu()
        lo, hi = p.min(0).values, p.max(0).values
        sizes = torch.tensor(grid_shape, dtype=torch.float64)
        spacing = torch.where(
            sizes > 1, (hi - lo) / (sizes - 1).clamp_min(1), torch.ones(A, dtype=torch.float64)
        )
        # the frame: the box of the cells (centres +- half a spacing) mapped to [-1, 1], as DINOv3's
        center, half = (lo + hi) / 2, (hi - lo) / 2 + spacing / 2
        u = (p - center) / half
        u = u + a["shift"] * u_shift
        if a["jitter"]:
            u = u * torch.exp(math.log(a["jitter"]) * u_jitter)
        if a["rescale"]:
            u = u * torch.exp(math.log(a["rescale"]) * u_rescale)
        p = center + half * u
        p = p + (g_perturb * a["perturb"] / 2).clamp(-0.5, 0.5) * spacing
        p = p + g_offset * a["offset"] * sizes * spacing
        return p.to(device=pos.device, dtype=pos.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.amounts.items() if v)
