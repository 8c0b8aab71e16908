"""What each rotation optimisation buys, each pair timed interleaved in one run (ViT-S shapes).

1. matrix exponential: ``torch.linalg.matrix_exp`` vs ``liere.encodings.expm.skew_expm``
   (forward, forward + backward) on the exponents of liere8 and liere64 at 224 px, paper init;
   and skew_expm's path without host reads (what accelerators and torch.compile run) vs its grouped one;
2. block application: an ``einsum`` vs the batch folded into (g x g) @ (g x batch) products;
3. angle application (RoPE, STRING): real arithmetic vs one complex multiply;
4. attention input layout: q, k contiguous in (B, H, T, d) vs token-major (B, T, H, d) seen
   through a transpose (what SDPA's CPU flash kernel reads without a copy).

    python benchmarks/rotation_parts.py [--reps 5] [--batch 8] [--threads N]
Prints a table of medians and ratios; writes benchmarks/results/rotation_parts.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere import encodings
from liere.encodings.base import AngleRotation, BlockRotation
from liere.encodings.expm import skew_expm

L, H, GRID, D_HEAD = 12, 6, (14, 14), 64


def exponents(block_size: int, tokens: int | None = None) -> torch.Tensor:
    enc = encodings.build(
        "liere", head_dim=D_HEAD, num_heads=H, depth=L, num_axes=2, grid_shape=GRID, block_size=block_size
    )
    pos = enc.positions(GRID)
    X = enc.skew(torch.einsum("na,alhkm->lnhkm", pos, enc.upper.detach())).reshape(-1, block_size, block_size)
    return X[:tokens].contiguous() if tokens else X.contiguous()


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def forward_backward(f, *inputs):
    def run():
        xs = [t.detach().requires_grad_() for t in inputs]
        out = f(*xs)
        out.backward(torch.ones_like(out))

    return run


def compare(name: str, variants: dict[str, Callable[[], object]], reps: int, rows: list[dict]) -> None:
    """Interleave the variants rep by rep; the first is the baseline of the ratio."""
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            times[k].append(timed(fn))
    base = statistics.median(times[next(iter(variants))])
    for k, t in times.items():
        med = statistics.median(t)
        rows.append({"part": name, "variant": k, "seconds": med, "vs_first": med / base})
        print(f"| {name} | {k} | {med:.4f} | {med / base:.2f}x |", flush=True)


def einsum_blocks(R: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # R (T, H, K, g, g), x (..., T, H, d)
    g = R.shape[-1]
    return torch.einsum("thkij,...thkj->...thki", R, x.unflatten(-1, (-1, g))).flatten(-2)


def real_angles(cos: torch.Tensor, sin: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    print(f"# rotation parts, ViT-S shapes, batch {args.batch}, {torch.get_num_threads()} threads\n")
    print("| part | variant | seconds | vs first |\n|---|---|---|---|")

    X8 = exponents(8)  # all 112,896 exponents of one step
    compare(
        "exp liere8 forward",
        {"torch.linalg.matrix_exp": lambda: torch.linalg.matrix_exp(X8), "skew_expm": lambda: skew_expm(X8)},
        args.reps,
        rows,
    )
    compare(
        "exp liere8 fwd+bwd",
        {
            "torch.linalg.matrix_exp": forward_backward(torch.linalg.matrix_exp, X8),
            "skew_expm": forward_backward(skew_expm, X8),
            "skew_expm, no host reads": forward_backward(lambda X: skew_expm(X, host_reads=False), X8),
        },
        args.reps,
        rows,
    )
    X64 = exponents(64, tokens=H * 196)  # one layer's 1,176 dense exponents (x12 for a step)
    compare(
        "exp liere64 (1 layer) fwd+bwd",
        {
            "torch.linalg.matrix_exp": forward_backward(torch.linalg.matrix_exp, X64),
            "skew_expm": forward_backward(skew_expm, X64),
            "skew_expm, no host reads": forward_backward(lambda X: skew_expm(X, host_reads=False), X64),
        },
        args.reps,
        rows,
    )

    T = 197
    x = torch.randn(2, args.batch, T, H, D_HEAD)  # q and k of one layer, token-major
    R = torch.linalg.matrix_exp(exponents(8)[: T * H * 8].reshape(T, H, 8, 8, 8))
    compare(
        "apply liere8 (1 layer) fwd+bwd",
        {
            "einsum": forward_backward(einsum_blocks, R, x),
            "folded products": forward_backward(lambda r, v: BlockRotation(r.unsqueeze(0)).apply(v, 0), R, x),
        },
        args.reps,
        rows,
    )
    theta = torch.rand(T, H, D_HEAD // 2) * 6
    cos, sin = theta.cos(), theta.sin()
    compare(
        "apply rope (1 layer) fwd+bwd",
        {
            "real arithmetic": forward_backward(real_angles, cos, sin, x),
            "complex multiply": forward_backward(
                lambda c, s, v: AngleRotation(c.unsqueeze(0), s.unsqueeze(0)).apply(v, 0), cos, sin, x
            ),
        },
        args.reps,
        rows,
    )

    qkv = torch.randn(args.batch, T, 3, H, D_HEAD)

    def sdpa(layout: str):
        def run():
            t = qkv.detach().requires_grad_()
            q, k, v = t.permute(2, 0, 1, 3, 4).unbind(0)  # (B, T, H, d) views
            q, k = q * 1.0, k * 1.0  # rotated q, k are new tensors
            if layout == "BHTd":
                q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
            else:
                q, k = q.transpose(1, 2), k.transpose(1, 2)
            F.scaled_dot_product_attention(q, k, v.transpose(1, 2)).sum().backward()

        return run

    compare(
        "attention (1 layer) fwd+bwd",
        {"q, k in (B, H, T, d)": sdpa("BHTd"), "q, k token-major": sdpa("BTHd")},
        args.reps,
        rows,
    )
    out = Path(__file__).parent / "results" / "rotation_parts.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
