"""Can the model tell the two compass marks apart at initialisation? The token cosine of one mark vs the other.

    python benchmarks/mark_contrast.py --config configs/compass2d.yaml
    python benchmarks/mark_contrast.py --config configs/compass3d.yaml
    python benchmarks/mark_contrast.py --config configs/compass2d.yaml --values "255,40,40;128,20,20"  # red vs dim red

The class of a compass sample is the direction from one mark to the other, so the first thing a model
must do is tell the two marks apart. For each validation sample this redraws the "from" mark with the
"to" mark's value (same place, same background) and compares the token of the patch that holds it
after what the first attention layer sees: patch embedding, the encoding's additive part (APE) and
the first block's LayerNorm, the config's model at initialisation. A cosine near 1 means the two marks
give the same token up to scale: a linear patch embedding maps marks that differ only in brightness
to parallel vectors, and LayerNorm removes their length. Inputs are normalised as the loaders do.

Prints median and 10th / 90th percentiles over samples and model seeds; ``--json`` saves them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.engine.config import load_config
from liere.engine.data import model_spec
from liere.models import create_model
from pipelines.sources import source_class
from pipelines.transforms import normalize


def _values(text: str | None, src) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [tuple(int(v) for v in part.split(",")) for part in text.split(";")] if text else src.mark_values
    if len(pairs) != 2 or any(len(p) != src.channels for p in pairs):
        raise SystemExit(f"--values: two marks of {src.channels} channel value(s) each, got {text!r}")
    return torch.tensor(pairs[0], dtype=torch.uint8), torch.tensor(pairs[1], dtype=torch.uint8)


def mark_cosines(cfg, *, samples: int, seeds: int, values: str | None = None) -> list[float]:
    src = source_class(cfg.data.dataset)()
    v_from, v_to = _values(values, src)
    mean, std = torch.tensor(src.mean), torch.tensor(src.std)
    raw = []
    for i in range(samples):
        x = torch.from_numpy(np.ascontiguousarray(src.get(cfg.data.val_split, i).data))
        channels_last = x.dim() == 3 and x.shape[-1] == src.channels  # images are HWC
        raw.append(x.permute(2, 0, 1) if channels_last else x)
    x = torch.stack(raw)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    at_from = (x == v_from.view(shape)).all(1, keepdim=True)
    if not at_from.flatten(1).any(1).all():
        raise SystemExit(f"{src.name}: some samples hold no mark of value {v_from.tolist()} (see --values)")
    swapped = torch.where(at_from, v_to.view(shape), x)
    info = {"channels": src.channels, "num_classes": len(src.classes), "spatial_rank": x.dim() - 2}
    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        spec = model_spec(cfg, info)
        model = create_model(spec["name"], **spec["kwargs"]).eval()
        grid = model.patch_embed.grid(x.shape[2:])
        with torch.no_grad():
            t = [model.blocks[0].norm1(model.encoding.embed(model.patch_embed(normalize(v, mean, std)), grid))
                 for v in (x, swapped)]  # fmt: skip
        k = (t[0] - t[1]).norm(dim=-1).argmax(dim=1)  # the patch that holds the mark
        rows = torch.arange(len(x))
        out += torch.nn.functional.cosine_similarity(t[0][rows, k], t[1][rows, k], dim=-1).tolist()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/compass3d.yaml")
    p.add_argument(
        "--values", help="the two marks' values, channels by commas, marks by \";\" (default: the set's)"
    )
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3, help="model initialisations")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [])
    cos = np.array(mark_cosines(cfg, samples=args.samples, seeds=args.seeds, values=args.values))
    q10, med, q90 = np.percentile(cos, [10, 50, 90]).round(3).tolist()
    summary = {"config": str(args.config), "dataset": cfg.data.dataset, "values": args.values, "samples": args.samples,
               "seeds": args.seeds, "cosine_median": med, "cosine_q10": q10, "cosine_q90": q90}  # fmt: skip
    print(
        f"{cfg.data.dataset}: token cosine of the two marks at initialisation, median {med} (q10 {q10}, q90 {q90})"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
