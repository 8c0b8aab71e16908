"""Where a CPU training step goes: the model alone against the same step inside DeepSpeed's engine.

    python benchmarks/step_parts.py --config configs/compass2d.yaml
    python benchmarks/step_parts.py --config configs/compass3d.yaml --stages 0 2 --steps 60

Each mode trains the config's model (its encoding, batch size and training size; fp32, one rank) on
one synthetic batch for ``--warmup`` + ``--steps`` optimizer steps and reports the median step:

- ``torch``: forward, cross-entropy, backward, gradient clip and the engine's AdamW, nothing else;
- ``deepspeed zero-S``: the same model and optimizer under ``deepspeed.initialize`` with the engine's
  own DeepSpeed config (``liere.engine.trainer.deepspeed_config``) at ZeRO stage S, one gloo rank.

No loader runs, so the difference between these numbers and a run's logged step time
(``launch/train.py``) is the data pipeline's share. Ratios are to ``torch``, measured in one run;
``benchmarks/results/step_parts_<config>.json`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.engine import distributed
from liere.engine.config import load_config
from liere.engine.data import model_spec
from liere.engine.optim import build_optimizer
from liere.engine.trainer import deepspeed_config
from liere.models import create_model
from pipelines.sources import source_class

RESULTS = Path(__file__).resolve().parent / "results"


def _model(cfg, info: dict) -> torch.nn.Module:
    torch.manual_seed(cfg.train.seed)
    spec = model_spec(cfg, info)
    return create_model(spec["name"], **spec["kwargs"])


def _info(cfg) -> dict:
    """Channels and classes: the config's, else the embedded data set's (no data is read or prepared)."""
    m = cfg.model
    if m.in_chans and m.num_classes:
        channels, classes = int(m.in_chans), int(m.num_classes)
    else:
        src = source_class(cfg.data.dataset)
        if getattr(src, "needs_src", True):
            raise SystemExit(
                f"{cfg.data.dataset}: set model.in_chans and model.num_classes (not an embedded set)"
            )
        made = src()
        channels, classes = made.channels, len(made.classes)
    return {"channels": channels, "num_classes": classes, "spatial_rank": len(m.img_size)}


def _time(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(cfg, *, stages: list[int], warmup: int, steps: int) -> dict[str, float]:
    info = _info(cfg)
    x = torch.randn(cfg.data.batch_size, info["channels"], *cfg.model.img_size)
    y = torch.randint(0, info["num_classes"], (cfg.data.batch_size,))
    out = {}

    model = _model(cfg, info)
    opt = build_optimizer(model, cfg.optim)
    params = [p for p in model.parameters() if p.requires_grad]

    def torch_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()

    out["torch"] = _time(torch_step, warmup, steps)

    import deepspeed

    distributed.init(cfg.train.dist_timeout_s)  # one gloo rank, as a single-process run starts
    for stage in stages:
        cfg.train.zero_stage = stage
        cfg.train.precision = "fp32"
        model = _model(cfg, info)
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=build_optimizer(model, cfg.optim), config=deepspeed_config(cfg, 1, "cpu")
        )

        def ds_step(engine=engine):
            loss = torch.nn.functional.cross_entropy(engine(x), y)
            engine.backward(loss)
            engine.step()

        out[f"deepspeed zero-{stage}"] = _time(ds_step, warmup, steps)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/compass2d.yaml")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 2])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("override", nargs="*", help="config overrides (key=value), e.g. model.encoding=ape")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.override)
    times = measure(cfg, stages=args.stages, warmup=args.warmup, steps=args.steps)
    base = times["torch"]
    print(f"{cfg.model.name} + {cfg.model.encoding}, batch {cfg.data.batch_size} at {list(cfg.model.img_size)}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps")  # fmt: skip
    print("| mode | step (ms) | vs torch |\n|---|---|---|")
    for mode, ms in times.items():
        print(f"| {mode} | {ms:.1f} | {ms / base:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"step_parts_{Path(args.config).stem}_{cfg.model.encoding}.json"
    out.write_text(json.dumps({"config": args.config, "overrides": args.override, "encoding": cfg.model.encoding,
                               "threads": torch.get_num_threads(), "steps": args.steps, "step_ms": times}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
