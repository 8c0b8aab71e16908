"""The comparison report of a sweep (launch/compare.py): statistics, tables and the resolution plot.

Uncertainty has two sources and the report keeps them apart: the spread over seeds (training
noise: mean and standard deviation of the runs' top-1), and the finite test set (a percentile
bootstrap over test samples, Efron & Tibshirani 1993, of the seed-averaged accuracy; for the
difference to the reference arm the same resampled samples are used for both arms: a paired
bootstrap).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np


def _size_name(size: list[int]) -> str:
    return "x".join(map(str, size))


def correct_matrix(runs: list[Any], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(seeds, samples) 0/1 correctness of the arm's runs under predictions ``key``, samples sorted
    by their data-set index so that every run and every arm line up; None if any run lacks it."""
    rows, index = [], None
    for run in runs:
        path = Path(run.eval.get("predictions", ""))
        if not path.is_file():
            return None
        with np.load(path) as preds:
            if key not in preds:
                return None
            idx, label, pred = preds[key]
        order = np.argsort(idx, kind="stable")
        if index is None:
            index = idx[order]
        elif not np.array_equal(index, idx[order]):
            raise ValueError(f"{run.name}: evaluated on other samples than {runs[0].name}")
        rows.append((label[order] == pred[order]).astype(np.float64))
    return (np.stack(rows), index) if rows else None


def bootstrap(per_sample: np.ndarray, resamples: int, seed: int = 0, chunk: int = 100) -> np.ndarray:
    """Means of ``per_sample`` (n,) over ``resamples`` resamples of its n entries with replacement."""
    rng = np.random.default_rng(seed)
    n = per_sample.shape[0]
    out = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        out.append(per_sample[idx].mean(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def _ci(samples: np.ndarray) -> list[float] | None:
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))] if samples.size else None


def summarize(runs: list[Any], resamples: int) -> dict[str, Any]:
    """Per arm: accuracies per evaluation (mean, std, per seed), bootstrap intervals, cost."""
    arms: dict[str, list[Any]] = {}
    for run in runs:
        arms.setdefault(run.label, []).append(run)
    done = {label: [r for r in rs if r.eval] for label, rs in arms.items()}
    train_key = None
    for rs in done.values():
        if rs:
            train_key = _size_name(rs[0].eval["train_size"])
            break
    reference = next((label for label, rs in done.items() if rs), None)
    ref_correct = correct_matrix(done[reference], train_key) if reference else None
    out = []
    for label, rs in arms.items():
        ok = done[label]
        arm: dict[str, Any] = {"label": label, "runs": len(rs), "finished": len(ok), "top1_mean": None}
        if ok:
            evals: dict[str, list[float]] = {}
            for r in ok:
                for row in r.eval["rows"]:
                    key = _size_name(row["size"]) + (" shuffled" if row["shuffled"] else "")
                    evals.setdefault(key, []).append(row["top1"])
            arm["evals"] = {
                k: {
                    "mean": float(np.mean(v)),
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                    "seeds": v,
                }
                for k, v in evals.items()
            }
            arm["top1_mean"] = arm["evals"][train_key]["mean"]
            arm["top1_std"] = arm["evals"][train_key]["std"]
            correct = correct_matrix(ok, train_key)
            if correct is not None:
                per_sample = correct[0].mean(axis=0)  # seed-averaged correctness of each test sample
                arm["top1_ci95"] = _ci(bootstrap(per_sample, resamples))
                if (
                    ref_correct is not None
                    and label != reference
                    and np.array_equal(correct[1], ref_correct[1])
                ):
                    diff = per_sample - ref_correct[0].mean(axis=0)
                    arm["delta_vs_reference"] = float(diff.mean())
                    arm["delta_ci95"] = _ci(bootstrap(diff, resamples))
            s0 = ok[0].summary
            arm["params"] = s0.get("params")
            arm["gflops"] = s0.get("gflops")
            times = [r.summary.get("step_time_s") for r in ok if r.summary.get("step_time_s")]
            arm["step_time_s"] = float(np.median(times)) if times else None
            sp = [r.summary["sparsity"] for r in ok if r.summary.get("sparsity")]
            if sp:
                arm["sparsity_off_diagonal_active"] = float(np.mean([s["off_diagonal_active"] for s in sp]))
                arm["sparsity_diagonal_active"] = float(np.mean([s["diagonal_active"] for s in sp]))
                arm["sparsity_tile"] = sp[0]["tile"]
        out.append(arm)
    return {"reference": reference, "train_size": train_key, "resamples": resamples, "arms": out}


def _pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _num(v: float | None, scale: float, spec: str) -> str:
    return "-" if v is None else format(v * scale, spec)


def _ci_text(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _signed_ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _eval_keys(arms: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for arm in arms:
        for k in arm.get("evals", {}):
            if k not in keys and not k.endswith("shuffled"):
                keys.append(k)
    return sorted(keys, key=lambda k: [int(v) for v in k.split("x")])


def render(
    stats: dict[str, Any], runs: list[Any], cfg, command: str, wall_s: float, plot: Path | None
) -> str:
    arms, ref, train = stats["arms"], stats["reference"], stats["train_size"]
    ref_time = next((a["step_time_s"] for a in arms if a["label"] == ref and a.get("step_time_s")), None)
    lines = [
        f"# {Path(cfg.config_path).stem}: {', '.join(a['label'] for a in arms)}",
        "",
        f"`{command}`",
        "",
        f"- config `{os.path.relpath(cfg.config_path)}`: `{cfg.model.name}` on `{cfg.data.dataset}` at {train}, "
        f"{cfg.train.epochs} epochs, {cfg.train.precision}; "
        f"{max(a['runs'] for a in arms)} seed(s) per arm",
        f"- machine: {platform.node()}, {os.cpu_count()} CPU cores, {_accelerator()}; git {_git()}; "
        f"sweep wall time {wall_s / 60:.1f} min",
        f"- top-1 on the full `{cfg.data.val_split}` split at the training size {train}: mean ± std over seeds; "
        f"95% CI: bootstrap over test samples ({stats['resamples']} resamples) of the seed-averaged accuracy; "
        f"Δ: paired difference to `{ref}`",
        "",
        f"| encoding | top-1 (%) | 95% CI | Δ vs {ref} (pp) | Δ 95% CI | shuffled patches (%) | params (M) | GFLOPs | step (ms) | step vs {ref} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in arms:
        if a["top1_mean"] is None:
            lines.append(f"| {a['label']} | no finished run | | | | | | | | |")
            continue
        shuffled = a["evals"].get(f"{train} shuffled", {}).get("mean")
        delta = a.get("delta_vs_reference")
        step = a.get("step_time_s")
        lines.append(
            f"| {a['label']} | {_pct(a['top1_mean'])} ± {_pct(a['top1_std'])} | {_ci_text(a.get('top1_ci95'))} | "
            f"{'-' if delta is None else f'{100 * delta:+.1f}'} | {_signed_ci(a.get('delta_ci95'))} | {_pct(shuffled)} | "
            f"{_num(a.get('params'), 1e-6, '.3f')} | {_num(a.get('gflops'), 1, '.4f')} | "
            f"{'-' if step is None else f'{1000 * step:.0f}'} | "
            f"{'-' if not (step and ref_time) else f'{step / ref_time:.2f}x'} |"
        )
    keys = _eval_keys(arms)
    lines += [
        "",
        "## Accuracy against evaluation resolution",
        "",
        "Top-1 (%) mean ± std over seeds; the model was trained at " + train + ".",
        "",
        "| encoding | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for a in arms:
        if a["top1_mean"] is None:
            continue
        cells = [
            f"{_pct(a['evals'][k]['mean'])} ± {_pct(a['evals'][k]['std'])}" if k in a["evals"] else "-"
            for k in keys
        ]
        lines.append(f"| {a['label']} | " + " | ".join(cells) + " |")
    if plot is not None:
        lines += ["", f"![accuracy against evaluation resolution]({plot.name})"]
    sparse = [a for a in arms if "sparsity_off_diagonal_active" in a]
    if sparse:
        lines += [
            "",
            "## Learned sparsity of the LieRE generators",
            "",
            "Share of coupling groups (tile pairs) still active at the end (per-layer tables in each run's "
            "sparsity.md), next to accuracy.",
            "",
            "| encoding | tile | off-diagonal active (%) | diagonal active (%) | top-1 (%) |",
            "|---|---|---|---|---|",
        ]
        for a in sparse:
            lines.append(
                f"| {a['label']} | {a['sparsity_tile']} | {_pct(a['sparsity_off_diagonal_active'])} | "
                f"{_pct(a['sparsity_diagonal_active'])} | {_pct(a['top1_mean'])} |"
            )
    lines += [
        "",
        "## Runs",
        "",
        "| run | " + " | ".join(keys) + f" | {train} shuffled | step (ms) | MLflow run | status |",
        "|---|" + "---|" * (len(keys) + 4),
    ]
    for r in runs:
        if not r.eval:
            lines.append(
                f"| {r.name} | " + " | ".join("-" for _ in keys) + f" | - | - | - | {r.error or 'not run'} |"
            )
            continue
        by = {
            _size_name(x["size"]) + (" shuffled" if x["shuffled"] else ""): x["top1"] for x in r.eval["rows"]
        }
        step = r.summary.get("step_time_s")
        lines.append(
            f"| {r.name} | "
            + " | ".join(_pct(by.get(k)) for k in keys)
            + f" | {_pct(by.get(train + ' shuffled'))} | "
            f"{'-' if step is None else f'{1000 * step:.0f}'} | {r.summary.get('mlflow_run_id') or '-'} | ok |"
        )
    return "\n".join(lines) + "\n"


def plot_resolution(stats: dict[str, Any], path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _eval_keys(stats["arms"])
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    x = [int(k.split("x")[-1]) for k in keys]
    for a in stats["arms"]:
        if a["top1_mean"] is None:
            continue
        seeds = np.array([a["evals"][k]["seeds"] for k in keys if k in a["evals"]]).T * 100  # (seeds, sizes)
        xs = [xv for xv, k in zip(x, keys) if k in a["evals"]]
        line = ax.plot(xs, seeds.mean(axis=0), "o-", label=a["label"])[0]
        ax.fill_between(xs, seeds.min(axis=0), seeds.max(axis=0), color=line.get_color(), alpha=0.15)
    ax.axvline(int(stats["train_size"].split("x")[-1]), color="gray", ls=":", lw=1)
    ax.set_xlabel("evaluation size (last axis; dotted: training size)")
    ax.set_ylabel("top-1 (%)  (mean; band: min-max over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(runs: list[Any], out: Path, cfg, command: str, resamples: int, wall_s: float):
    """report.json, report.md and accuracy_vs_resolution.png in ``out``; returns (stats, files)."""
    stats = summarize(runs, resamples)
    stats["command"] = command
    stats["wall_s"] = wall_s
    stats["runs"] = [
        {"name": r.name, "label": r.label, "seed": r.seed, "out_dir": str(r.out_dir), "error": r.error,
         "summary": r.summary, "eval_rows": r.eval.get("rows")}
        for r in runs
    ]  # fmt: skip
    plot = plot_resolution(
        stats, out / "accuracy_vs_resolution.png", f"{Path(cfg.config_path).stem}: top-1 vs resolution"
    )
    (out / "report.json").write_text(json.dumps(stats, indent=1))
    (out / "report.md").write_text(render(stats, runs, cfg, command, wall_s, plot))
    files = [out / "report.md", out / "report.json"] + ([plot] if plot else [])
    return stats, files


def _git() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _accelerator() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
