"""The training precision: ``train.precision: auto`` picks what the device runs natively.

- CUDA with native bf16 (Ampere and later): ``bf16``, no loss scaling needed;
- CUDA without it (V100, T4): ``fp16`` with DeepSpeed's dynamic loss scaling;
- a CPU with AVX512-BF16 or AMX: ``bf16``;
- any other CPU: ``fp32``; bf16 there is emulated: measured 2.2x slower than fp32 on an AVX-512 CPU
  without BF16, 7-8x on an AVX2 one (docs/training.md).

An explicit ``bf16``, ``fp16`` or ``fp32`` is used as given. The probes are arguments so that every
branch is testable on any machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISIONS = ("auto", *DTYPES)


@dataclass(frozen=True)
class Precision:
    """The precision a run trains in, and why it was chosen."""

    name: str  # bf16, fp16 or fp32
    reason: str
    requested: str = "auto"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]


def cpu_has_native_bf16() -> tuple[bool, str]:
    """(native bf16 matmuls on this CPU, what torch reports about it)."""
    avx512_bf16 = torch.cpu._is_avx512_bf16_supported()
    amx = torch.cpu._is_amx_tile_supported()
    found = [name for name, ok in (("AVX512-BF16", avx512_bf16), ("AMX", amx)) if ok]
    isa = torch.backends.cpu.get_cpu_capability()
    return bool(found), ", ".join(
        found
    ) if found else f"torch's CPU capability is {isa}, without AVX512-BF16 or AMX"


def cuda_has_native_bf16(device: torch.device) -> tuple[bool, str]:
    """(native bf16 on this CUDA device, its name and compute capability)."""
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    return torch.cuda.is_bf16_supported(
        including_emulation=False
    ), f"{name}, compute capability {major}.{minor}"


def resolve(
    requested: str,
    device: torch.device,
    cpu_probe: Callable[[], tuple[bool, str]] = cpu_has_native_bf16,
    cuda_probe: Callable[[torch.device], tuple[bool, str]] = cuda_has_native_bf16,
) -> Precision:
    """The precision for ``requested`` (auto, bf16, fp16, fp32) on ``device``."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"train.precision={requested!r}: expected one of {PRECISIONS}")
        return Precision(requested, "set in the config", requested)
    if device.type == "cuda":
        native, what = cuda_probe(device)
        if native:
            return Precision("bf16", f"auto: {what} runs bf16 natively")
        return Precision("fp16", f"auto: {what} has no native bf16; fp16 with dynamic loss scaling")
    native, what = cpu_probe()
    if native:
        return Precision("bf16", f"auto: this CPU runs bf16 natively ({what})")
    return Precision("fp32", f"auto: {what}; emulated bf16 would be 2-8x slower than fp32")
