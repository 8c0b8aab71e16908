"""Training-step time, model FLOPs utilisation and peak memory per encoding on one GPU.

    python benchmarks/gpu_step.py                                  # ViT-S/16 and ViT-B/16 at 224, bf16
    python benchmarks/gpu_step.py --models vit_small_patch16 --batch 256 --encodings ape liere8
    python benchmarks/gpu_step.py --cpu-smoke                      # a tiny CPU run of the same code

One step is forward + backward + AdamW under bf16 autocast (fp32 weights, as DeepSpeed's bf16 mode
with fp32 masters costs the same matmuls). MFU = 3 x forward FLOPs (``liere.count_flops``) x batch /
step time / the GPU's dense bf16 peak (``--peak-tflops``, else looked up by name). The attention kernel
is the one PyTorch's scaled_dot_product_attention picks for these shapes (flash, efficient, cudnn or
math). Prints a table and writes ``benchmarks/results/gpu_step.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import liere

ENCODINGS = ("ape", "rope_mixed", "liere8", "liere64", "string")
# dense bf16 peak TFLOP/s (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def attention_kernel(device: torch.device, heads: int, tokens: int, head_dim: int) -> str:
    """The first SDPA backend that accepts these bf16 shapes, in PyTorch's order of preference."""
    if device.type != "cuda":
        return "math (cpu)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, heads, tokens, head_dim, device=device, dtype=torch.bfloat16)
    for backend in (
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q)
            return backend.name.lower()
        except RuntimeError:
            continue
    return "none"


def measure(model_name: str, encoding: str, *, batch: int, size: int, steps: int, device) -> dict:
    torch.manual_seed(0)
    model = liere.create_model(model_name, encoding=encoding, img_size=size, num_classes=1000).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels chosen, allocator settled
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    flops = liere.count_flops(model)["total"]
    block = model.blocks[0].attn
    return {
        "model": model_name,
        "encoding": encoding,
        "batch": batch,
        "img_size": size,
        "step_ms": 1000 * seconds,
        "images_per_s": batch / seconds,
        "train_tflops_per_s": 3 * flops * batch / seconds / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "attention_kernel": attention_kernel(device, block.num_heads, (size // 16) ** 2 + 1, block.head_dim),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16", "vit_base_patch16"])
    parser.add_argument("--encodings", nargs="+", default=list(ENCODINGS))
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 128], help="per model, in order")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--cpu-smoke", action="store_true", help="ViT-nano at 32 px, batch 4, on the CPU")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_step.json"))
    args = parser.parse_args()
    if args.cpu_smoke:
        device, args.models, args.batch, args.size, args.steps = (
            torch.device("cpu"),
            ["vit_nano_patch16"],
            [4],
            32,
            1,
        )
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU node (or --cpu-smoke to check the script)")
    else:
        device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or peak_tflops(name)
    rows = []
    for model_name, batch in zip(args.models, args.batch * len(args.models), strict=False):
        for encoding in args.encodings:
            row = measure(model_name, encoding, batch=batch, size=args.size, steps=args.steps, device=device)
            row["mfu"] = row["train_tflops_per_s"] / peak if peak else None
            rows.append(row)
            mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
            mem = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
            print(
                f"{model_name:18s} {encoding:11s} batch {batch:4d}  {row['step_ms']:8.1f} ms  "
                f"{row['images_per_s']:8.0f} img/s  MFU {mfu:>6s}  peak {mem} GiB  attention {row['attention_kernel']}",
                flush=True,
            )
    result = {"device": name, "torch": torch.__version__, "peak_tflops": peak, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
