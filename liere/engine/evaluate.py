"""Top-1 / top-5 evaluation over all ranks, and the accuracy-against-resolution sweep."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _all_ranks_max(n: int, device: torch.device) -> int:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


@torch.no_grad()
def evaluate(model, loader, device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Accuracy and loss over the whole split (ranks hold disjoint parts; sums are all-reduced).

    Every rank runs the same number of forward passes (a rank with fewer batches repeats its last
    one and discards it), so ZeRO-3's parameter gathering never waits on a rank that has finished.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, count
    steps = _all_ranks_max(len(loader), device)
    last = None
    it = iter(loader)
    for _ in range(steps):
        batch = next(it, None)
        real = batch is not None
        batch = batch if real else last
        if batch is None:  # this rank got no sample at all: nothing to repeat
            raise RuntimeError("a rank received no evaluation samples; use fewer ranks or a larger split")
        last = batch
        x = batch["input"].to(device, dtype=dtype)
        logits = model(x).float()
        if not real:
            continue
        y = batch["label"].to(device)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums[0] += (top5[:, 0] == y).sum()
        sums[1] += (top5 == y[:, None]).any(dim=1).sum()
        sums[2] += F.cross_entropy(logits, y, reduction="sum")
        sums[3] += y.numel()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    return {
        "top1": sums[0].item() / n,
        "top5": sums[1].item() / n,
        "loss": sums[2].item() / n,
        "count": int(sums[3].item()),
    }


def resolution_sweep(
    model, make_loader: Callable[[list[int]], Any], sizes: list[list[int]], denv, dtype: torch.dtype
) -> list[dict[str, Any]]:
    """Evaluate at every size in ``sizes``; one row per size."""
    device = next(model.parameters()).device
    rows = []
    for size in sizes:
        result = evaluate(model, make_loader(size), device, dtype)
        rows.append({"size": list(size), **result})
        if denv.is_main:
            print(
                f"eval {'x'.join(map(str, size))}: top-1 {100 * result['top1']:.2f}%  "
                f"top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  ({result['count']} samples)",
                flush=True,
            )
    return rows


def write_sweep_report(rows: list[dict[str, Any]], out_dir: Path, title: str) -> tuple[Path, Path]:
    """A markdown table and a plot of accuracy against evaluation resolution."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"### {title}",
        "",
        "| eval size | top-1 (%) | top-5 (%) | loss | samples |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'x'.join(map(str, r['size']))} | {100 * r['top1']:.2f} | {100 * r['top5']:.2f} | "
            f"{r['loss']:.4f} | {r['count']} |"
        )
    table = out_dir / "eval_resolution.md"
    table.write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    x = [r["size"][-1] for r in rows]
    ax.plot(x, [100 * r["top1"] for r in rows], "o-", label="top-1")
    ax.plot(x, [100 * r["top5"] for r in rows], "s--", label="top-5")
    ax.set_xlabel("evaluation size (last axis, px)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plot = out_dir / "eval_resolution.png"
    fig.savefig(plot)
    plt.close(fig)
    return table, plot
