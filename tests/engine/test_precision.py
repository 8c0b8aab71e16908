"""train.precision: auto picks what the device runs natively; an explicit precision is kept.

The CPU and CUDA capabilities are injected (probes), so every branch runs on any machine: no GPU
is needed or used here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from liere.engine import precision
from liere.engine.config import ConfigError, load_config
from liere.engine.trainer import deepspeed_config

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU


def cpu(native: bool):
    return lambda: (native, "AMX" if native else "torch's CPU capability is AVX2, without AVX512-BF16 or AMX")


def cuda(native: bool):
    return lambda device: (
        native,
        "A100, compute capability 8.0" if native else "V100, compute capability 7.0",
    )


@pytest.mark.parametrize(
    ("device", "cpu_native", "cuda_native", "expected"),
    [
        (CPU, True, False, "bf16"),  # AVX512-BF16 / AMX
        (CPU, False, True, "fp32"),  # AVX2 only: emulated bf16 is 2-8x slower
        (CUDA, False, True, "bf16"),  # Ampere and later
        (CUDA, True, False, "fp16"),  # V100, T4: fp16 with loss scaling
    ],
)
def test_auto_picks_the_native_precision(device, cpu_native, cuda_native, expected):
    chosen = precision.resolve("auto", device, cpu_probe=cpu(cpu_native), cuda_probe=cuda(cuda_native))
    assert chosen.name == expected and chosen.requested == "auto"
    assert chosen.reason.startswith("auto: ")
    assert chosen.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[expected]


def test_auto_says_why():
    slow_cpu = precision.resolve("auto", CPU, cpu_probe=cpu(False))
    assert "AVX2" in slow_cpu.reason and "2-8x slower" in slow_cpu.reason
    old_gpu = precision.resolve("auto", CUDA, cuda_probe=cuda(False))
    assert "V100" in old_gpu.reason and "loss scaling" in old_gpu.reason


@pytest.mark.parametrize("explicit", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("device", [CPU, CUDA])
@pytest.mark.parametrize("native", [True, False])
def test_an_explicit_precision_is_never_overridden(explicit, device, native):
    chosen = precision.resolve(explicit, device, cpu_probe=cpu(native), cuda_probe=cuda(native))
    assert (chosen.name, chosen.requested, chosen.reason) == (explicit, explicit, "set in the config")


def test_the_real_probes_answer_on_this_machine():
    native, what = precision.cpu_has_native_bf16()
    assert isinstance(native, bool) and what
    assert precision.resolve("auto", CPU).name == ("bf16" if native else "fp32")


@pytest.mark.parametrize(
    ("name", "bf16", "fp16"), [("bf16", True, False), ("fp16", False, True), ("fp32", False, False)]
)
def test_the_choice_reaches_deepspeeds_config(tmp_path, name, bf16, fp16):
    cfg = load_config(DEMO)
    assert cfg.train.precision == "auto"  # the default, resolved at the start of a run
    cfg.train.precision = precision.resolve(name, CPU).name
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["bf16"]["enabled"] is bf16 and ds["fp16"]["enabled"] is fp16
    if fp16:
        assert ds["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_config_refuses_an_unknown_precision():
    with pytest.raises(ConfigError, match=r"train\.precision='fp8'"):
        load_config(DEMO, ["train.precision=fp8"])
    assert OmegaConf.select(load_config(DEMO, ["train.precision=bf16"]), "train.precision") == "bf16"


def test_on_gpus_zero_overlaps_its_reduction_and_bf16_reduces_in_fp32():
    cfg = load_config(DEMO, ["train.precision=bf16", "train.zero_stage=2"])
    ds = deepspeed_config(cfg, world_size=1, device_type="cuda")  # (parsed below: one process)
    zero = ds["zero_optimization"]
    assert zero["overlap_comm"] and zero["contiguous_gradients"] and zero["reduce_bucket_size"] == 5 * 10**8
    assert ds["communication_data_type"] == "fp32" and ds["data_types"]["grad_accum_dtype"] == "fp32"
    from deepspeed.runtime.config import DeepSpeedConfig  # DeepSpeed itself accepts every field

    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_config.overlap_comm and str(parsed.communication_data_type) == "torch.float32"
    cpu_ds = deepspeed_config(cfg, world_size=2, device_type="cpu")  # gloo: DeepSpeed's defaults
    assert cpu_ds["zero_optimization"] == {"stage": 2} and "communication_data_type" not in cpu_ds
