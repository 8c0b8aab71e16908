"""Analytic forward FLOPs per sample of each encoding at ViT-S/16 and ViT-B/16 (224 px), as a
markdown table with the overhead over ``ape``. Usage: python benchmarks/flops.py [MODEL ...]"""

import json
import sys
from pathlib import Path

from liere.models.flops import overhead_table

ENCODINGS = ["ape", "rope_axial", "rope_mixed", "liere8", "liere64", "string"]


def main(names: list[str]) -> None:
    rows = []
    print("| model | encoding | encoding params | GFLOPs / sample | over ape |\n|---|---|---|---|---|")
    for name in names:
        for enc, params, flops, pct in overhead_table(name, ENCODINGS):
            print(f"| {name} | {enc} | {params:,} | {flops / 1e9:.3f} | +{pct:.2f}% |")
            rows.append(
                {"model": name, "encoding": enc, "params": params, "flops": flops, "overhead_pct": pct}
            )
    out = Path(__file__).parent / "results" / "flops.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:] or ["vit_small_patch16", "vit_base_patch16"])
