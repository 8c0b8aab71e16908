"""What bf16 costs on this CPU: one training step in fp32, under bf16 autocast and with bf16 weights
(DeepSpeed's bf16 mode), as ratios to fp32 measured in one run (docs/training.md, "CPU timings").

    python benchmarks/precision_step.py            # vit_micro_patch4 + liere8, batch 32 at 16 px, 1 thread

Prints a table and writes ``benchmarks/results/precision_step.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import liere
from liere.engine.precision import cpu_has_native_bf16

MODES = ("fp32", "bf16 autocast", "bf16 weights")


def make_step(mode: str, model_name: str, batch: int):
    """A closure running forward, backward and AdamW once in ``mode``."""
    torch.manual_seed(0)
    model = liere.create_model(model_name, encoding="liere8", img_size=16, num_classes=10, in_chans=1)
    x, y = torch.randn(batch, 1, 16, 16), torch.randint(0, 10, (batch,))
    if mode == "bf16 weights":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16 autocast"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_micro_patch4")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    steps = {mode: make_step(mode, args.model, args.batch) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(3):  # warm-up
        for step in steps.values():
            step()
    for _ in range(args.reps):  # interleaved, so machine noise hits every mode alike
        for mode, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - t0)
    median = {mode: sorted(ts)[len(ts) // 2] for mode, ts in times.items()}
    native, what = cpu_has_native_bf16()
    print(f"CPU: {what}; native bf16: {native}\n\n| mode | step (ms) | vs fp32 |\n|---|---|---|")
    for mode in MODES:
        print(f"| {mode} | {1000 * median[mode]:.0f} | {median[mode] / median['fp32']:.2f}x |")
    out = Path(__file__).resolve().parent / "results" / "precision_step.json"
    out.parent.mkdir(exist_ok=True)
    result = {"cpu": what, "native_bf16": native, **vars(args), "step_s": median}
    result["ratio_to_fp32"] = {m: median[m] / median["fp32"] for m in MODES}
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
