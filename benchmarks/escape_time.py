"""When does each encoding leave the chance plateau? Escape times over seeds (issue: LieRE stalls).

    python benchmarks/escape_time.py                       # the default study, resumable
    python benchmarks/escape_time.py --arms liere8_paper,rope_mixed --seeds 6 --budget 2976
    python benchmarks/escape_time.py --report              # table + plot from what is done
    python benchmarks/escape_time.py --seeds 6 --budget 1984 --after 62 --inputs jpeg420 --study compass2d-jpeg420
    python benchmarks/escape_time.py --arms rope_mixed --vary init --seeds 4 --study s   # then --vary order:
    python benchmarks/escape_time.py --arms rope_mixed --vary order --seeds 4 --study s  # init or data order?
    python benchmarks/escape_time.py --train-samples 16000 --study s optim.warmup_epochs=0.25  # 4x the images

Every (arm, seed) trains the config's model on the config's data from scratch with the engine's own
parts (model factory, parameter groups, AdamW, warmup + cosine schedule, gradient clip, the data
set's normalisation, images as the shards store them: ``--inputs``) in one process without
DeepSpeed or loader workers: one rank in fp32 is what the compass configs run, and leaving
DeepSpeed out makes a 1000-step run a minute on one core.
Validation top-1 on the whole val split every ``--eval-every`` steps; the **escape step** is the
first evaluation at or above ``--threshold`` (50%); a run that never gets there within ``--budget``
steps has not escaped. A run stops ``--after`` steps past its escape (its top-1 then is reported).

Results go to ``benchmarks/results/escape_time/<study>.jsonl``, one line per finished run; a rerun
skips what is there, so the study can be stopped and resumed. ``--report`` writes ``<study>.md`` and
``<study>.png`` (escape-step distribution per arm; never-escaped runs drawn at the budget).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liere.engine.config import load_config
from liere.engine.data import model_spec
from liere.engine.optim import build_optimizer, build_scheduler
from liere.models import create_model

# arm name -> config overrides; every LieRE arm keeps the config's block size unless it names one
ARMS = {
    "liere8_paper": ["model.encoding=liere8", "model.encoding_options.init=paper"],
    "liere8_grid": ["model.encoding=liere8", "model.encoding_options.init=grid"],
    "liere8_small": ["model.encoding=liere8", "model.encoding_options.init=small"],
    "liere64_paper": ["model.encoding=liere64", "model.encoding_options.init=paper"],
    "liere64_grid": ["model.encoding=liere64", "model.encoding_options.init=grid"],
    "liere64_small": ["model.encoding=liere64", "model.encoding_options.init=small"],
    "rope_mixed": ["model.encoding=rope_mixed"],
    "string": ["model.encoding=string"],
    "ape": ["model.encoding=ape"],
}
DEFAULT_ARMS = "liere8_paper,liere8_grid,liere8_small,rope_mixed,string"
RESULTS = Path(__file__).resolve().parent / "results" / "escape_time"


INPUTS = ("stored", "raw", "jpeg420")


def split_arrays(
    cfg, split: str, inputs: str = "stored", train_samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole embedded split as float32 (N, C, *spatial), normalised as the loaders do, and int64 labels.

    ``inputs``: ``stored`` gives each image as the shard writer stores it and a loader decodes it (JPEG
    at prepare()'s quality, with the source's chroma subsampling); ``raw`` the generator's pixels
    unencoded; ``jpeg420`` JPEG with 4:2:0 chroma subsampling, how compass2d was stored before its
    revision 2. Volumes are stored losslessly (npy): the same under every choice.
    ``train_samples``: a generated set's training split drawn this large instead of its default size
    (every sample is drawn from its own index's stream: the first ones are the default split's, and the
    normalisation statistics do not change)."""
    import inspect

    from pipelines.sources import source_class
    from pipelines.transforms import normalize

    if inputs not in INPUTS:
        raise SystemExit(f"--inputs {inputs!r}: expected one of {', '.join(INPUTS)}")
    cls = source_class(cfg.data.dataset)
    if train_samples is not None and "num_train" not in inspect.signature(cls).parameters:
        raise SystemExit(
            f"--train-samples: {cfg.data.dataset!r} is not generated; its training split has a fixed size"
        )
    src = cls(num_train=train_samples) if train_samples is not None else cls()
    samples = [src.get(split, i) for i in range(src.num_samples(split))]
    arrays = [s.data for s in samples]
    if src.kind == "image" and inputs != "raw":
        subsampling = "4:2:0" if inputs == "jpeg420" else src.jpeg_subsampling
        arrays = [as_stored(s, src.channels, subsampling) for s in samples]
    x = torch.from_numpy(np.stack(arrays))
    if x.dim() == 4 and x.shape[-1] == src.channels:  # images are HWC
        x = x.permute(0, 3, 1, 2)
    x = normalize(x, torch.tensor(src.mean), torch.tensor(src.std))  # pixels in [0, 255], stats in [0, 1]
    return x, torch.tensor([s.label for s in samples], dtype=torch.int64)


def as_stored(sample, channels: int, subsampling: str | None) -> np.ndarray:
    """The image as a loader reads it back from the shards: encoded as the writer does, then decoded."""
    import inspect
    import io

    from PIL import Image

    from pipelines.prepare import prepare
    from pipelines.shards import encode_image

    quality = inspect.signature(prepare).parameters["quality"].default  # what embedded sets are written at
    payload, _ = encode_image(sample, channels, None, quality, subsampling)
    decoded = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB" if channels == 3 else "L"))
    return decoded.reshape(np.shape(sample.data))


@torch.no_grad()
def top1(model, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    hits = sum(
        int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    model.train()
    return 100.0 * hits / len(x)


def train_one(
    cfg,
    data: dict,
    *,
    budget: int,
    eval_every: int,
    threshold: float,
    after: int,
    order_seed: int | None = None,
) -> dict:
    """One run: the validation curve, the escape step (None: never), the top-1 where it stopped.
    ``cfg.train.seed`` seeds the weights (and any dropout draws); ``order_seed`` (default: the same)
    the order of the training samples."""
    torch.manual_seed(cfg.train.seed)
    info = {"channels": data["train"][0].shape[1], "num_classes": int(data["train"][1].max()) + 1,
            "spatial_rank": data["train"][0].dim() - 2}  # fmt: skip
    spec = model_spec(cfg, info)
    model = create_model(spec["name"], **spec["kwargs"])
    opt = build_optimizer(model, cfg.optim)
    x, y = data["train"]
    steps_per_epoch = len(x) // cfg.data.batch_size
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    sched = build_scheduler(opt, cfg.optim, budget, warmup, steps_per_epoch=steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    curve, escape, step, t0 = [], None, 0, time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.train.seed if order_seed is None else order_seed)
    while step < budget and (escape is None or step < escape + after):
        for idx in torch.randperm(len(x), generator=gen)[: steps_per_epoch * cfg.data.batch_size].view(
            steps_per_epoch, -1
        ):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            opt.step()
            sched.step()
            step += 1
            if step % eval_every == 0 or step == budget:
                acc = top1(model, *data["val"])
                curve.append([step, round(acc, 2), round(float(loss.detach()), 4)])
                if escape is None and acc >= threshold:
                    escape = step
            if step >= budget or (escape is not None and step >= escape + after):
                break
    return {"escape_step": escape, "final_top1": curve[-1][1], "steps": step, "curve": curve,
            "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def run_study(args) -> Path:
    out = RESULTS / f"{args.study}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _read(out)
    done = {(r["arm"], r.get("vary", "both"), r["seed"]) for r in rows}
    runs = {(r["arm"], *run_seeds(r.get("vary", "both"), r["seed"], r.get("fixed_seed", 0))): r for r in rows}
    base = load_config(args.config, [f"train.seed={0}"])
    data = {
        s: split_arrays(base, s, args.inputs, args.train_samples)
        for s in (base.data.train_split, base.data.val_split)
    }
    data = {"train": data[base.data.train_split], "val": data[base.data.val_split]}
    for seed in range(args.seeds):  # seed-major: a stopped study has every arm at similar depth
        for arm in args.arms.split(","):
            if (arm, args.vary, seed) in done:
                continue
            init, order = run_seeds(args.vary, seed, args.fixed_seed)
            same = runs.get((arm, init, order))  # the same run under another --vary: reused, not retrained
            if same is not None:
                res = {k: same[k] for k in ("escape_step", "final_top1", "steps", "curve", "wall_s")}
            else:
                cfg = load_config(args.config, [*ARMS[arm], f"train.seed={init}", *args.override])
                res = train_one(cfg, data, budget=args.budget, eval_every=args.eval_every,
                                threshold=args.threshold, after=args.after, order_seed=order)  # fmt: skip
            row = {"arm": arm, "seed": seed, "vary": args.vary, "fixed_seed": args.fixed_seed, "init_seed": init,
                   "order_seed": order, "reused": same is not None, "config": str(args.config),
                   "overrides": [*ARMS[arm], *args.override], "inputs": args.inputs, "budget": args.budget,
                   "train_samples": len(data["train"][1]),
                   "threshold": args.threshold, **res}  # fmt: skip
            runs[(arm, init, order)] = row
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{arm} init seed {init} order seed {order}: escape {res['escape_step']} top-1 {res['final_top1']} "
                f"({res['wall_s']} s{', reused' if same is not None else ''})",
                flush=True,
            )
    return out


VARY = ("both", "init", "order")


def run_seeds(vary: str, seed: int, fixed: int) -> tuple[int, int]:
    """(weights seed, sample-order seed) of a study's run ``seed``: ``both`` varies them together (the
    engine's ``train.seed``), ``init`` and ``order`` vary one and hold the other at ``fixed``."""
    return {"both": (seed, seed), "init": (seed, fixed), "order": (fixed, seed)}[vary]


def _read(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def first_step_at(row: dict, top1: float) -> int | None:
    """The first evaluated step whose validation top-1 reached ``top1`` (None: never)."""
    return next((step for step, acc, _ in row["curve"] if acc >= top1), None)


def summarize(rows: list[dict], leave: float | None = None) -> list[dict]:
    """Per arm: runs, share escaped, escape-step quartiles over the escaped runs; with ``leave``, each
    run's first step at that top-1 too (a lower bar than the escape: where the climb began)."""
    arms: dict[str, list[dict]] = {}
    for r in rows:  # with --vary init/order, one group per arm and factor
        vary = r.get("vary", "both")
        arms.setdefault(r["arm"] if vary == "both" else f"{r['arm']}, {vary} seed varies", []).append(r)
    out = []
    for arm, rs in arms.items():
        esc = sorted(r["escape_step"] for r in rs if r["escape_step"] is not None)
        q = np.percentile(esc, [25, 50, 75]).tolist() if esc else [math.nan] * 3
        out.append({"arm": arm, "runs": len(rs), "escaped": len(esc), "q25": q[0], "median": q[1], "q75": q[2],
                    "max": max(esc) if esc else math.nan, "steps": sorted(r["escape_step"] or -1 for r in rs),
                    "left": sorted(first_step_at(r, leave) or -1 for r in rs) if leave is not None else None})  # fmt: skip
    return out


def write_report(study: str, leave: float | None = None) -> Path:
    rows = _read(RESULTS / f"{study}.jsonl")
    if not rows:
        raise SystemExit(f"no results in {RESULTS / (study + '.jsonl')}")
    summary = summarize(rows, leave)
    budget = max(r["budget"] for r in rows)
    extra = f" first step at {leave:.0f}% |" if leave is not None else ""
    lines = [f"# Escape times: {study}", "",
             f"Step at which validation top-1 first reaches {rows[0]['threshold']:.0f}% (budget {budget} steps; "
             "-1: never within it).", "",
             f"| arm | runs | escaped | escape step q25 / median / q75 | max | every run |{extra}",
             "|---|---|---|---|---|---|" + ("---|" if extra else "")]  # fmt: skip
    for s in summary:
        left = f" {', '.join(map(str, s['left']))} |" if extra else ""
        lines.append(f"| {s['arm']} | {s['runs']} | {s['escaped']}/{s['runs']} | {s['q25']:.0f} / {s['median']:.0f} / "
                     f"{s['q75']:.0f} | {s['max']:.0f} | {', '.join(map(str, s['steps']))} |{left}")  # fmt: skip
    md = RESULTS / f"{study}.md"
    md.write_text("\n".join(lines) + "\n")
    _plot(summary, budget, RESULTS / f"{study}.png", title=f"escape times: {study}")
    print("\n".join(lines))
    return md


def _plot(summary: list[dict], budget: int, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(summary) + 1.5))
    for i, s in enumerate(summary):
        steps = [v if v >= 0 else budget for v in s["steps"]]
        colours = ["tab:blue" if v >= 0 else "tab:red" for v in s["steps"]]
        ax.scatter(steps, [i] * len(steps), c=colours, alpha=0.7)
    ax.set_yticks(range(len(summary)), [s["arm"] for s in summary])
    ax.axvline(budget, color="grey", ls=":", lw=1)
    ax.set_xlabel(
        "optimizer step at which val top-1 first reaches the threshold\n(red: never, drawn at the budget)"
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/compass2d.yaml")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--budget", type=int, default=2976, help="optimizer steps (cosine over this many)")
    p.add_argument("--eval-every", type=int, default=31)
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--after", type=int, default=124, help="steps to keep training past the escape")
    p.add_argument("--study", default="compass2d")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--inputs",
        default="stored",
        choices=INPUTS,
        help="images as the shards store them (default), the generator's raw pixels, or JPEG 4:2:0",
    )
    p.add_argument(
        "--train-samples",
        type=int,
        help="a generated set's training split drawn this large (default: its own size); the schedule's "
        "warmup is in epochs: scale optim.warmup_epochs down to keep its steps",
    )
    p.add_argument(
        "--vary",
        default="both",
        choices=VARY,
        help="what each seed changes: both the weights and the sample order (as train.seed does), "
        "or only one of them, the other held at --fixed-seed (is the spread of escape times from the "
        "initial weights or from the order of the data?)",
    )
    p.add_argument("--fixed-seed", type=int, default=0, help="the seed held fixed under --vary init/order")
    p.add_argument("--report", action="store_true", help="only write the report of what is done")
    p.add_argument("--leave", type=float, help="also report each run's first step at this top-1 (%%)")
    p.add_argument("override", nargs="*", help="extra config overrides for every arm (key=value)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.report:
        run_study(args)
    write_report(args.study, args.leave)
    return 0


if __name__ == "__main__":
    sys.exit(main())
