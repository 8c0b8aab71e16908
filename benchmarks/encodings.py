"""Cost of each position encoding in a training step, as a ratio to ``ape`` measured in one run.

For ViT-S/16 at 224 px (2D) and a ViT-S with 2 x 16 x 16 tubelets at 16 x 112 x 112 (3D), at each
batch size and precision (default: the one `train.precision: auto` picks here): the median time of a training step (forward, backward, AdamW step),
the encodings interleaved step by step so that machine noise hits them alike; the peak memory of a
fresh process doing the same steps; and the rotation computation alone (forward, forward +
backward), with the paper's initialisation and the small one. Prints markdown tables and writes
``benchmarks/results/encodings.json``. On a GPU it also reports model FLOP utilisation.

    python benchmarks/encodings.py                          # everything (long on 2 CPU cores)
    python benchmarks/encodings.py --models 2d --batches 8,32 --precisions fp32 --inits paper
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import liere

ENCODINGS = ["ape", "rope_axial", "rope_mixed", "liere8", "liere64", "string"]
MODELS = {  # name: (preset, img_size, patch_size, in_chans)
    "2d": ("vit_small_patch16", (224, 224), (16, 16), 3),
    "3d": ("vit_small_patch16", (16, 112, 112), (2, 16, 16), 3),
}
# dense peak FLOP/s by GPU name fragment and precision, for model FLOP utilisation
PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
}


def build(encoding: str, model: str, init: str, device: torch.device) -> torch.nn.Module:
    preset, img, patch, chans = MODELS[model]
    options = {"init": init} if encoding.startswith("liere") else {}
    return liere.create_model(
        preset,
        encoding=encoding,
        img_size=img,
        patch_size=patch,
        in_chans=chans,
        num_classes=1000,
        encoding_options=options,
    ).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model: torch.nn.Module, model_kind: str, batch: int, precision: str, device: torch.device):
    """One training step (forward, backward, AdamW) on fixed random data."""
    _, img, _, chans = MODELS[model_kind]
    x = torch.randn(batch, chans, *img, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    return step


def time_steps(
    model_kind: str,
    batch: int,
    precision: str,
    init: str,
    encodings: list[str],
    reps: int,
    device: torch.device,
) -> dict[str, float]:
    """Median step time per encoding, interleaved: rep 1 of every encoding, then rep 2, ..."""
    steps = {}
    for enc in encodings:
        torch.manual_seed(0)
        steps[enc] = make_step(build(enc, model_kind, init, device), model_kind, batch, precision, device)
        steps[enc]()  # warm-up: allocator, autograd graph, lazy initialisation
    times: dict[str, list[float]] = {enc: [] for enc in encodings}
    for _ in range(reps):
        for enc in encodings:
            times[enc].append(steps[enc]())
    return {enc: statistics.median(t) for enc, t in times.items()}


def peak_memory(model_kind: str, batch: int, precision: str, init: str, enc: str) -> float:
    """Peak memory (bytes) of two training steps in a fresh process (CPU: max RSS; GPU: allocator peak)."""
    cmd = [sys.executable, __file__, "--peak-of", enc, model_kind, str(batch), precision, init]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _peak_of(enc: str, model_kind: str, batch: str, precision: str, init: str) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    status = Path("/proc/self/status")
    if status.exists():  # Linux keeps the parent's peak RSS across fork and exec: reset it
        Path("/proc/self/clear_refs").write_text("5")
    step = make_step(build(enc, model_kind, init, device), model_kind, int(batch), precision, device)
    step(), step()
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated())
    elif status.exists():
        hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM"))
        print(int(hwm.split()[1]) * 1024)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def rotation_cost(model_kind: str, init: str, enc: str, reps: int, device: torch.device) -> dict[str, float]:
    """Seconds to compute one forward pass's rotations for all layers and heads, and with backward."""
    model = build(enc, model_kind, init, device)
    encoding, grid = model.encoding, model.grid_shape
    if not encoding.is_rotary:
        return {"forward": 0.0, "forward_backward": 0.0}

    def fwd() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            encoding.prepare(grid, 1)
        _sync(device)
        return time.perf_counter() - t0

    def fwd_bwd() -> float:
        _sync(device)
        t0 = time.perf_counter()
        state = encoding.prepare(grid, 1)
        tensors = [t for t in vars(state).values() if isinstance(t, torch.Tensor) and t.requires_grad]
        torch.autograd.backward([t.sum() for t in tensors])
        _sync(device)
        return time.perf_counter() - t0

    fwd(), fwd_bwd()
    return {
        "forward": statistics.median(fwd() for _ in range(reps)),
        "forward_backward": statistics.median(fwd_bwd() for _ in range(reps)),
    }


def _precisions(text: str, device: torch.device) -> list[str]:
    """The precisions to time; ``auto`` is what ``train.precision: auto`` picks on this device."""
    from liere.engine.precision import resolve

    return list(dict.fromkeys(resolve(name, device).name for name in text.split(",") if name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="2d,3d")
    p.add_argument("--batches", default="8,32")
    p.add_argument(
        "--precisions",
        default="auto",
        help="comma list of fp32, bf16, auto (the training default's choice here)",
    )
    p.add_argument("--inits", default="paper,small")
    p.add_argument("--encodings", default=",".join(ENCODINGS))
    p.add_argument("--reps", type=int, default=3, help="timed steps per encoding (median)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "encodings.json"))
    p.add_argument("--peak-of", nargs=5, help=argparse.SUPPRESS)  # internal: one fresh-process measurement
    args = p.parse_args()
    if args.peak_of:
        return _peak_of(*args.peak_of)
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    encodings = split(args.encodings)
    if "ape" not in encodings:
        encodings.insert(0, "ape")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    env = {
        "device": gpu or platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    print(f"# encodings benchmark on {env['device']} ({env['threads']} threads), torch {env['torch']}\n")
    results = {"env": env, "steps": [], "rotations": []}

    for model_kind in split(args.models):
        for init in split(args.inits):
            print(f"## rotations alone: {model_kind}, {init} init (seconds per forward pass)\n")
            print("| encoding | forward | forward + backward |\n|---|---|---|")
            for enc in encodings:
                r = rotation_cost(model_kind, init, enc, args.reps, device)
                results["rotations"].append({"model": model_kind, "init": init, "encoding": enc, **r})
                print(f"| {enc} | {r['forward']:.4f} | {r['forward_backward']:.4f} |", flush=True)
            print()
            for precision in _precisions(args.precisions, device):
                for batch in (int(b) for b in split(args.batches)):
                    times = time_steps(model_kind, batch, precision, init, encodings, args.reps, device)
                    mem = (
                        {}
                        if args.no_memory
                        else {enc: peak_memory(model_kind, batch, precision, init, enc) for enc in encodings}
                    )
                    print(f"## training step: {model_kind}, batch {batch}, {precision}, {init} init\n")
                    print(
                        "| encoding | step (s) | vs ape | peak memory (GB) | vs ape |\n|---|---|---|---|---|"
                    )
                    for enc in encodings:
                        row = {
                            "model": model_kind,
                            "batch": batch,
                            "precision": precision,
                            "init": init,
                            "encoding": enc,
                            "step_s": times[enc],
                            "step_ratio": times[enc] / times["ape"],
                        }
                        if mem:
                            row.update(peak_bytes=mem[enc], memory_ratio=mem[enc] / mem["ape"])
                        if gpu:
                            peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
                            model_flops = (
                                3 * batch * liere.count_flops(build(enc, model_kind, init, device))["total"]
                            )
                            if peak:
                                row["mfu"] = model_flops / times[enc] / peak[precision]
                        results["steps"].append(row)
                        memtxt = (
                            f"{row['peak_bytes'] / 1e9:.2f} | {row['memory_ratio']:.2f}x" if mem else "- | -"
                        )
                        print(
                            f"| {enc} | {row['step_s']:.3f} | {row['step_ratio']:.2f}x | {memtxt} |"
                            + (f" MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""),
                            flush=True,
                        )
                    print()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
