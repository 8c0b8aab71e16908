"""Top-1 / top-5 evaluation over all ranks, the accuracy-against-resolution sweep, and patch shuffling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from liere.models.patches import patchify, unpatchify


def size_name(size: Sequence[int]) -> str:
    """How a size is written in metric names, reports and file names: 16x16, 8x112x112."""
    return "x".join(str(s) for s in size)


def per_axis_sizes(sizes: Sequence[Any], axes: int) -> list[list[int]]:
    """Evaluation sizes one number per axis: ``48`` -> ``[48, 48]`` for a 2D model; lists are checked."""
    out = [[s] * axes if isinstance(s, int) else list(s) for s in sizes]
    for s in out:
        if len(s) != axes:
            raise ValueError(f"size {s} has {len(s)} axes; the model takes {axes}")
    return out


def result_line(name: str, result: dict[str, Any]) -> str:
    """The line printed for one evaluation: top-1, top-5, loss and sample count."""
    return (
        f"eval {name}: top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
        f"loss {result['loss']:.4f}  ({result['count']} samples)"
    )


def _all_ranks_max(n: int, device: torch.device) -> int:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def shuffle_patches(x: torch.Tensor, patch_size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Permute the patches of every input (B, C, *spatial) independently; pixels inside a patch stay.

    A model that ignores position is unchanged by this; the drop in accuracy measures how much a
    model relies on where its patches are. Spatial sizes must be multiples of ``patch_size``.
    """
    tiles = patchify(x, patch_size)  # (B, N, C, *patch), raises unless a whole grid
    b = x.shape[0]
    perm = torch.rand(b, tiles.shape[1], generator=generator).argsort(dim=1).to(x.device)
    tiles = tiles[torch.arange(b, device=x.device)[:, None], perm]
    return unpatchify(tiles, [s // p for s, p in zip(x.shape[2:], patch_size)])


def _gather(t: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t.cpu()
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)


def _batches_on(loader, device: torch.device):
    """iter(loader), its batches finished where the model is (a Loader copies its uint8 batch there first)."""
    if hasattr(loader, "set_device"):
        loader.set_device(device)
    return iter(loader)


@torch.no_grad()
def evaluate(
    model,
    loader,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    predictions: bool = False,
) -> dict[str, Any]:
    """Accuracy and loss over the whole split (ranks hold disjoint parts; sums are all-reduced).

    Every rank runs the same number of forward passes (a rank with fewer batches repeats its last
    one and discards it), so ZeRO-3's parameter gathering never waits on a rank that has finished.
    ``transform`` changes each input batch first (e.g. shuffle_patches); with ``predictions`` the
    result also holds every sample's "index", "label" and "pred" (top-1), gathered from all ranks.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, count
    steps = _all_ranks_max(len(loader), device)
    last = None
    kept: dict[str, list[torch.Tensor]] = {"index": [], "label": [], "pred": []}
    it = _batches_on(loader, device)
    for _ in range(steps):
        batch = next(it, None)
        real = batch is not None
        batch = batch if real else last
        if batch is None:  # this rank got no sample at all: nothing to repeat
            raise RuntimeError("a rank received no evaluation samples; use fewer ranks or a larger split")
        last = batch
        x = batch["input"].to(device, dtype=dtype)
        if transform is not None:
            x = transform(x)
        logits = model(x).float()
        if not real:
            continue
        y = batch["label"].to(device)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        if predictions:
            kept["index"].append(batch["index"].cpu())
            kept["label"].append(y.cpu())
            kept["pred"].append(top5[:, 0].cpu())
        sums[0] += (top5[:, 0] == y).sum()
        sums[1] += (top5 == y[:, None]).any(dim=1).sum()
        sums[2] += F.cross_entropy(logits, y, reduction="sum")
        sums[3] += y.numel()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    result: dict[str, Any] = {
        "top1": sums[0].item() / n,
        "top5": sums[1].item() / n,
        "loss": sums[2].item() / n,
        "count": int(sums[3].item()),
    }
    if predictions:
        for key, parts in kept.items():
            result[key] = _gather(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long))
    return result


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
            print(result_line(size_name(size), result), flush=True)
    return rows


def write_sweep_report(
    rows: list[dict[str, Any]], out_dir: Path, title: str, *, stem: str = "eval_resolution"
) -> tuple[Path, Path]:
    """A markdown table and a plot of accuracy against evaluation resolution: ``stem``.md and .png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"### {title}",
        "",
        "| eval size | top-1 (%) | top-5 (%) | loss | samples |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {size_name(r['size'])} | {100 * r['top1']:.2f} | {100 * r['top5']:.2f} | "
            f"{r['loss']:.4f} | {r['count']} |"
        )
    table = out_dir / f"{stem}.md"
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
    plot = out_dir / f"{stem}.png"
    fig.savefig(plot)
    plt.close(fig)
    return table, plot
