"""Expected H100 GPU hours of the cluster recipes under configs/: analytic FLOPs, not measurements.

    python benchmarks/recipe_cost.py [--mfu 0.35] [CONFIG ...]      # default: every recipe

Per config (docs/recipes.md explains the model and its assumptions):
- training: 3 x forward FLOPs per sample (liere.count_flops at the training size) x samples x epochs,
  at `--peak` bf16 FLOP/s times `--mfu`;
- evaluation: forward FLOPs x validation samples at every periodic validation, plus the final sweep
  over eval.sizes, at the same rate;
- LieRE's matrix exponentials: computed once per micro step on every rank, in fp32, independent of
  the batch, so their share grows as the per-GPU batch shrinks. Each exponential of a g x g block takes
  6 + s products of 2 g^3 FLOPs forward (s squarings, counted at the paper's initialisation) and about
  twice that backward (liere/encodings/expm.py). Batched small products are memory bound: they are
  costed at `--rot-efficiency` of min(fp32 peak, HBM bandwidth x g / 6 FLOP/B).
Prints a markdown table and writes benchmarks/results/recipe_cost.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liere  # noqa: E402
from liere.encodings.expm import squarings  # noqa: E402
from liere.encodings.liere import LieRE  # noqa: E402
from liere.engine.config import load_config  # noqa: E402

# (training samples, validation samples) of the split each recipe uses
SAMPLES = {
    "imagenet": (1_281_167, 50_000),  # ILSVRC-2012 train / val
    "cifar100": (50_000, 10_000),  # train / the official test set (the engine's val)
    "ucf101": (9_537, 3_783),  # official split 1: trainlist01 / testlist01
    "medmnist3d": (972, 161),  # OrganMNIST3D train / val (MedMNIST medmnist/info.py)
    "organmnist3d_64": (972, 161),  # the same volumes at 64^3
}
# GPUs each recipe's comment assumes (global batch = data.batch_size x GPUs x train.grad_accum)
GPUS = {
    "imagenet/paper_": 8,
    "imagenet/deit3_": 8,
    "cifar100/paper_": 2,
    "video/ucf101_paper_": 1,
    "video/ucf101_deit3_": 16,
    "volume/medmnist3d": 1,
    "imagenet_vit_b_liere8": 32,
    "video_ucf101_liere8": 16,
    "volume_medmnist3d_liere8": 8,
}
RECIPE_DIRS = ("imagenet", "cifar100", "video", "volume")
LEGACY = ("imagenet_vit_b_liere8.yaml", "video_ucf101_liere8.yaml", "volume_medmnist3d_liere8.yaml")
ENCODINGS = ("ape", "rope_axial", "rope_mixed", "liere8", "liere64", "string")
# the recipes costed with every encoding (model.encoding=...; docs/recipes.md); a file
# <recipe>_<encoding>.yaml, where there is one (deit3_vit_b_liere64.yaml), takes the override's place
SWEPT = (
    "imagenet/paper_vit_b",
    "imagenet/paper_vit_s",
    "imagenet/deit3_vit_b",
    "imagenet/deit3_vit_s",
    "cifar100/paper_vit_b",
    "video/ucf101_paper_vit_b",
    "volume/medmnist3d_vit_s",
)


def build(cfg):
    """The config's model on the meta device (no memory), as launch/train.py would build it."""
    m = cfg.model
    kwargs = dict(
        encoding=m.encoding,
        encoding_options=dict(m.encoding_options),
        img_size=list(m.img_size),
        in_chans=m.in_chans,
        num_classes=m.num_classes,
        global_pool=m.global_pool,
    )
    if m.patch_size is not None:
        kwargs["patch_size"] = list(m.patch_size)
    with torch.device("meta"):
        return liere.create_model(m.name, **kwargs)


def rotation_flops(cfg, model) -> tuple[float, int]:
    """(FLOPs of one micro step's LieRE exponentials, forward + backward; block size g), or (0, 0)."""
    enc = model.encoding
    if not isinstance(enc, LieRE) or enc.block_size == 2:  # g = 2 is closed form (angles)
        return 0.0, 0
    grid = model.patch_embed.grid(model.img_size)
    n_axes = len(grid)
    # squarings at the far corner of the grid (every position p_i = 1): the largest 1-norm under the
    # paper's U[0, 2 pi) init, whose entries are all >= 0; an upper bound for the other positions
    torch.manual_seed(0)  # the init's norms, hence s, vary slightly with the draw
    real = liere.encodings.build(
        cfg.model.encoding,
        head_dim=enc.head_dim,
        num_heads=enc.num_heads,
        depth=enc.depth,
        num_axes=n_axes,
        grid_shape=grid,
        **dict(cfg.model.encoding_options),
    )
    gens = real.generator_matrices().detach()  # (axes, L, H, d/g, g, g)
    s = squarings(gens.sum(0).flatten(0, -3)).float().mean().item()
    L, H = gens.shape[1], gens.shape[2]
    g = enc.block_size
    count = L * H * math.prod(grid) * enc.num_blocks
    return 3.0 * count * (6 + s) * 2 * g**3, g


def gpus_for(rel: str) -> int:
    return next((n for prefix, n in GPUS.items() if rel.startswith(prefix)), 1)


def cost(path: Path, args, encoding: str | None = None) -> dict:
    cfg = load_config(path, [f"model.encoding={encoding}"] if encoding else [])
    rel = str(path.relative_to(ROOT / "configs"))
    n_train, n_val = SAMPLES[cfg.data.dataset]
    model = build(cfg)
    fwd = liere.count_flops(model)["total"]
    epochs = cfg.train.epochs
    rate = args.peak * args.mfu
    train = 3.0 * fwd * n_train * epochs
    # periodic validations at epoch ends (not after the last epoch), then the final sweep
    n_evals = (epochs - 1) // cfg.train.eval_every if cfg.train.eval_every else 0
    sizes = [list(s) if not isinstance(s, int) else [s] * len(cfg.model.img_size) for s in cfg.eval.sizes]
    sweep = sum(liere.count_flops(model, s)["total"] for s in sizes or [list(cfg.model.img_size)])
    evaluation = fwd * n_val * n_evals + sweep * n_val
    rot_step, g = rotation_flops(cfg, model)
    micro_steps = n_train * epochs / cfg.data.batch_size  # over all ranks: each computes its own
    rot = rot_step * micro_steps
    rot_rate = args.rot_efficiency * min(args.fp32_peak, args.hbm * g / 6) if g else 1.0
    seconds = (train + evaluation) / rate + rot / rot_rate
    gpus = gpus_for(rel)
    return {
        "config": rel,
        "model": cfg.model.name,
        "encoding": cfg.model.encoding,
        "dataset": cfg.data.dataset,
        "epochs": epochs,
        "global_batch": cfg.data.batch_size * gpus * cfg.train.grad_accum,
        "gpus": gpus,
        "gflops_per_sample": fwd / 1e9,
        "train_eflop": train / 1e18,
        "eval_share": evaluation / rate / seconds,
        "rotation_share": rot / rot_rate / seconds,
        "gpu_hours": seconds / 3600,
        "wall_hours": seconds / 3600 / gpus,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", type=Path, help="default: every recipe under configs/")
    p.add_argument("--peak", type=float, default=989e12, help="dense bf16 FLOP/s (H100 SXM: 989e12)")
    p.add_argument("--mfu", type=float, default=0.35, help="model FLOP utilisation assumed for the ViT")
    p.add_argument(
        "--fp32-peak", type=float, default=67e12, help="fp32 FLOP/s without tensor cores (H100 SXM)"
    )
    p.add_argument("--hbm", type=float, default=3.35e12, help="memory bandwidth, B/s (H100 SXM)")
    p.add_argument("--rot-efficiency", type=float, default=0.5, help="fraction of the exponentials' roofline")
    args = p.parse_args()
    paths = [c.resolve() for c in args.configs] or [
        *sorted(q for d in RECIPE_DIRS for q in (ROOT / "configs" / d).glob("*.yaml")),
        *(ROOT / "configs" / name for name in LEGACY),
    ]
    rows = [cost(path, args) for path in paths]
    # GPU hours per recipe (rows) and encoding (columns)
    table: dict[str, dict[str, dict]] = {}
    if not args.configs:
        for recipe in SWEPT:
            for enc in ENCODINGS:
                own = next((r for r in rows if r["config"] == f"{recipe}_{enc}.yaml"), None)  # costed above
                table.setdefault(recipe, {})[enc] = own or cost(
                    ROOT / "configs" / f"{recipe}.yaml", args, enc
                )
    print(
        "| config | encoding | epochs | global batch | GFLOPs/sample | train EFLOP | eval | rotations "
        "| GPU-h | wall h on GPUs |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| `{r['config']}` | {r['encoding']} | {r['epochs']} | {r['global_batch']} "
            f"| {r['gflops_per_sample']:.1f} | {r['train_eflop']:.3g} | {100 * r['eval_share']:.1f}% "
            f"| {100 * r['rotation_share']:.1f}% | {r['gpu_hours']:.3g} | {r['wall_hours']:.3g} on {r['gpus']} |"
        )
    if table:
        print(f"\n| recipe (GPUs) | {' | '.join(ENCODINGS)} |\n|---|{'---|' * len(ENCODINGS)}")
        for recipe, cells in table.items():
            gpus = next(iter(cells.values()))["gpus"]
            hours = " | ".join(f"{cells[e]['gpu_hours']:.3g}" if e in cells else "-" for e in ENCODINGS)
            print(f"| `{recipe}` ({gpus}) | {hours} |")
    out = ROOT / "benchmarks" / "results" / "recipe_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"assumptions": vars(args) | {"configs": None}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
