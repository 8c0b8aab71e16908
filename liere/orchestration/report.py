"""The comparison report of a sweep (``sweep``, launch/compare.py): statistics, tables and the resolution plot.

Uncertainty has two sources and the report keeps them apart: the spread over seeds (training
noise: mean and standard deviation of the runs' top-1), and the finite test set (a percentile
bootstrap over test samples, Efron & Tibshirani 1993, of the seed-averaged accuracy; for the
difference to the reference arm the same resampled samples are used for both arms: a paired
bootstrap). Whether two arms differ over seeds is tested on their per-seed top-1 (``seed_tests``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liere.engine.evaluate import size_name
from liere.engine.tracking import git_commit
from liere.orchestration.evaluation import row_name
from liere.orchestration.seed_tests import p_text, pairwise
from liere.orchestration.seed_tests import render as render_seed_tests

if TYPE_CHECKING:
    from liere.orchestration.sweep import Run


def correct_matrix(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray] | None:
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


def summarize(runs: list[Run], resamples: int) -> dict[str, Any]:
    """Per arm: accuracies per evaluation (mean, std, per seed), bootstrap intervals, cost."""
    arms: dict[str, list[Run]] = {}
    for run in runs:
        arms.setdefault(run.label, []).append(run)
    done = {label: [r for r in rs if r.eval] for label, rs in arms.items()}
    train_key = next((size_name(rs[0].eval["train_size"]) for rs in done.values() if rs), None)
    reference = next((label for label, rs in done.items() if rs), None)
    ref_correct = correct_matrix(done[reference], train_key) if reference else None
    out = []
    for label, rs in arms.items():
        ok = done[label]
        arm: dict[str, Any] = {"label": label, "runs": len(rs), "finished": len(ok), "top1_mean": None}
        if ok:
            arm["evals"] = _accuracies(ok)
            arm["top1_mean"] = arm["evals"][train_key]["mean"]
            arm["top1_std"] = arm["evals"][train_key]["std"]
            correct = correct_matrix(ok, train_key)
            if correct is not None:
                against = ref_correct if label != reference else None
                arm.update(_intervals(correct, against, resamples))
            arm.update(_cost(ok))
        out.append(arm)
    seeds = {a["label"]: a["evals"][train_key]["seeds"] for a in out if a["top1_mean"] is not None}
    tests = pairwise(seeds)  # the reference is the first arm of seeds: every other one is its pair's b
    against_reference = {t["b"]: t["welch_p"] for t in tests if t["a"] == reference}
    for arm in out:
        if arm["label"] in against_reference:
            arm["seeds_welch_p_vs_reference"] = against_reference[arm["label"]]
    return {
        "reference": reference, "train_size": train_key, "resamples": resamples, "arms": out, "seed_tests": tests,
    }  # fmt: skip


def _accuracies(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Top-1 per evaluation (size, shuffled or not): mean and std over the runs, and each run's."""
    evals: dict[str, list[float]] = {}
    for r in runs:
        for row in r.eval["rows"]:
            evals.setdefault(row_name(row), []).append(row["top1"])
    return {
        k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "seeds": v}
        for k, v in evals.items()
    }


def _intervals(correct: tuple[np.ndarray, np.ndarray], reference: tuple | None, resamples: int) -> dict:
    """Bootstrap interval of the seed-averaged top-1, and of the paired difference to ``reference``."""
    per_sample = correct[0].mean(axis=0)  # seed-averaged correctness of each test sample
    out: dict[str, Any] = {"top1_ci95": _ci(bootstrap(per_sample, resamples))}
    if reference is not None and np.array_equal(correct[1], reference[1]):
        diff = per_sample - reference[0].mean(axis=0)
        out["delta_vs_reference"] = float(diff.mean())
        out["delta_ci95"] = _ci(bootstrap(diff, resamples))
    return out


def _cost(runs: list[Run]) -> dict[str, Any]:
    """Parameters, GFLOPs, the median step time and, where learned, the sparsity of the generators."""
    s0 = runs[0].summary
    times = [r.summary.get("step_time_s") for r in runs if r.summary.get("step_time_s")]
    out = {
        "params": s0.get("params"),
        "gflops": s0.get("gflops"),
        "step_time_s": float(np.median(times)) if times else None,
    }
    sp = [r.summary["sparsity"] for r in runs if r.summary.get("sparsity")]
    if sp:
        off = [s["off_diagonal_active"] for s in sp if s["off_diagonal_active"] is not None]
        out["sparsity_off_diagonal_active"] = float(np.mean(off)) if off else None  # None: one tile a block
        out["sparsity_diagonal_active"] = float(np.mean([s["diagonal_active"] for s in sp]))
        out["sparsity_tile"] = sp[0]["tile"]
    return out


def _pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _num(v: float | None, scale: float, spec: str) -> str:
    return "-" if v is None else format(v * scale, spec)


def _ci_text(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _signed_ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _eval_keys(arms: list[dict[str, Any]], protocol: str = "zoom") -> list[str]:
    """The evaluation columns of one protocol, by size: ``48x48`` (zoom) or ``48x48 extent``."""
    keys: list[str] = []
    for arm in arms:
        for k in arm.get("evals", {}):
            if k in keys or k.endswith("shuffled") or k.endswith(" extent") != (protocol == "extent"):
                continue
            keys.append(k)
    return sorted(keys, key=lambda k: [int(v) for v in k.split()[0].split("x")])


def render(stats: dict[str, Any], runs: list[Run], cfg, plot: Path | None) -> str:
    """report.md: the setup, the main table, accuracy against resolution, sparsity, every run."""
    keys = _eval_keys(stats["arms"])
    lines = [
        *_header(stats, cfg),
        *_main_table(stats),
        *_seed_tests_section(stats["seed_tests"]),
        *_resolution_table(stats, keys, plot),
        *_extent_table(stats, _eval_keys(stats["arms"], "extent")),
        *_sparsity_table(stats["arms"]),
        *_runs_table(runs, keys, stats["train_size"]),
    ]
    return "\n".join(lines) + "\n"


def _seeds_per_arm(arms: list[dict[str, Any]]) -> str:
    """The seeds per arm, as "5 seed(s) per arm", naming each arm with fewer finished runs and its count."""
    most = max(a["runs"] for a in arms)
    fewer = [f"{a['label']} {a['finished']}" for a in arms if a["finished"] < most]
    return f"{most} seed(s) per arm" + (f" (finished fewer: {', '.join(fewer)})" if fewer else "")


def _header(stats: dict[str, Any], cfg) -> list[str]:
    arms, ref, train = stats["arms"], stats["reference"], stats["train_size"]
    return [
        f"# {Path(cfg.config_path).stem}: {', '.join(a['label'] for a in arms)}",
        "",
        f"`{stats['command']}`",
        "",
        f"- config `{os.path.relpath(cfg.config_path)}`: `{cfg.model.name}` on `{cfg.data.dataset}` at {train}, "
        f"{cfg.train.epochs} epochs, {cfg.train.precision}; {_seeds_per_arm(arms)}",
        f"- machine: {platform.node()}, {os.cpu_count()} CPU cores, {_accelerator()}; git {_git()}; "
        f"this command's wall time {stats['wall_s'] / 60:.1f} min; training "
        + (f"{stats['train_s'] / 60:.0f} min" if stats.get("train_s") else "not recorded")
        + " (each run's steps x its median step time, summed over runs, kept ones included)",
        f"- top-1 on the full `{cfg.data.val_split}` split at the training size {train}: mean ± std over seeds; "
        f"95% CI: bootstrap over test samples ({stats['resamples']} resamples) of the seed-averaged accuracy; "
        f"Δ: paired difference to `{ref}` (the same bootstrap); p over seeds: Welch's t-test of the per-seed top-1 "
        f"against `{ref}`",
        "",
    ]


def _main_table(stats: dict[str, Any]) -> list[str]:
    arms, ref, train = stats["arms"], stats["reference"], stats["train_size"]
    ref_time = next((a["step_time_s"] for a in arms if a["label"] == ref and a.get("step_time_s")), None)
    lines = [
        f"| encoding | top-1 (%) | 95% CI | Δ vs {ref} (pp) | Δ 95% CI | p over seeds | shuffled patches (%) | params (M) | GFLOPs | step (ms) | step vs {ref} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in arms:
        if a["top1_mean"] is None:
            lines.append(f"| {a['label']} | no finished run | | | | | | | | | |")
            continue
        shuffled = a["evals"].get(f"{train} shuffled", {}).get("mean")
        delta = a.get("delta_vs_reference")
        step = a.get("step_time_s")
        lines.append(
            f"| {a['label']} | {_spread(a['evals'][train])} | {_ci_text(a.get('top1_ci95'))} | "
            f"{'-' if delta is None else f'{100 * delta:+.1f}'} | {_signed_ci(a.get('delta_ci95'))} | "
            f"{p_text(a.get('seeds_welch_p_vs_reference'))} | {_pct(shuffled)} | "
            f"{_num(a.get('params'), 1e-6, '.3f')} | {_num(a.get('gflops'), 1, '.4f')} | "
            f"{_ms(step)} | "
            f"{'-' if not (step and ref_time) else f'{step / ref_time:.2f}x'} |"
        )
    return lines


def _seed_tests_section(tests: list[dict[str, Any]]) -> list[str]:
    body = render_seed_tests(tests)
    return ["", "## Differences over seeds", "", *body] if body else []


def _resolution_table(stats: dict[str, Any], keys: list[str], plot: Path | None) -> list[str]:
    lines = [
        "",
        "## Accuracy against evaluation resolution (zoom)",
        "",
        "Top-1 (%) mean ± std over seeds; the model was trained at " + stats["train_size"] + ". *Zoom*: the "
        "validation inputs resized to each size (the same content at more pixels).",
        "",
        *_seed_table(stats, keys),
    ]
    if plot is not None:
        lines += ["", f"![accuracy against evaluation resolution]({plot.name})"]
    return lines


def _extent_table(stats: dict[str, Any], keys: list[str]) -> list[str]:
    """The extent protocol: the data set's own larger canvases at the training scale."""
    if not keys:
        return []
    train = stats["train_size"]
    lines = [
        "",
        "## Accuracy on larger canvases at the training scale (extent)",
        "",
        f"Top-1 (%) mean ± std over seeds. *Extent*: the same validation samples drawn on a larger canvas "
        f"(marks and distances keep their pixel sizes; more tokens around them); {train} is the validation split itself.",
        "",
        *_seed_table(stats, keys),
    ]
    return lines


def _seed_table(stats: dict[str, Any], keys: list[str]) -> list[str]:
    """Header and one row per arm: top-1 mean ± std over seeds at each evaluation of ``keys`` (named
    by their size)."""
    lines = ["| encoding | " + " | ".join(k.split()[0] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for a in stats["arms"]:
        if a["top1_mean"] is None:
            continue
        cells = [_spread(a["evals"][k]) if k in a["evals"] else "-" for k in keys]
        lines.append(f"| {a['label']} | " + " | ".join(cells) + " |")
    return lines


def _spread(accuracy: dict[str, Any]) -> str:
    """Mean ± std over seeds; with one seed its value, marked so (there is no spread to show)."""
    if len(accuracy["seeds"]) > 1:
        return f"{_pct(accuracy['mean'])} ± {_pct(accuracy['std'])}"
    return f"{_pct(accuracy['mean'])} (1 seed)"


def _sparsity_table(arms: list[dict[str, Any]]) -> list[str]:
    sparse = [a for a in arms if "sparsity_off_diagonal_active" in a]
    if not sparse:
        return []
    lines = [
        "",
        "## Learned sparsity of the LieRE generators",
        "",
        "Share of coupling groups (tile pairs) still active at the end (per-layer tables in each run's "
        "sparsity.md), next to accuracy. With one tile a block (tile = block size) there is no "
        "off-diagonal group ('-'), and the diagonal share is that of the blocks still turning.",
        "",
        "| encoding | tile | off-diagonal active (%) | diagonal active (%) | top-1 (%) |",
        "|---|---|---|---|---|",
    ]
    for a in sparse:
        lines.append(
            f"| {a['label']} | {a['sparsity_tile']} | {_pct(a['sparsity_off_diagonal_active'])} | "
            f"{_pct(a['sparsity_diagonal_active'])} | {_pct(a['top1_mean'])} |"
        )
    return lines


def _runs_table(runs: list[Run], keys: list[str], train: str) -> list[str]:
    lines = [
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
        by = {row_name(x): x["top1"] for x in r.eval["rows"]}
        lines.append(
            f"| {r.name} | "
            + " | ".join(_pct(by.get(k)) for k in keys)
            + f" | {_pct(by.get(train + ' shuffled'))} | "
            f"{_ms(r.summary.get('step_time_s'))} | {r.summary.get('mlflow_run_id') or '-'} | ok |"
        )
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def plot_resolution(stats: dict[str, Any], path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, extent = _eval_keys(stats["arms"]), _eval_keys(stats["arms"], "extent")
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for a in stats["arms"]:
        if a["top1_mean"] is None:
            continue
        colour = None
        for ks, style, suffix in ((keys, "o-", ""), (extent, "s--", " (extent)")):
            present = [k for k in ks if k in a["evals"]]
            if not present:
                continue
            seeds = np.array([a["evals"][k]["seeds"] for k in present]).T * 100  # (seeds, sizes)
            xs = [int(k.split()[0].split("x")[-1]) for k in present]
            line = ax.plot(xs, seeds.mean(axis=0), style, color=colour, label=a["label"] + suffix)[0]
            colour = line.get_color()
            if not suffix:
                ax.fill_between(xs, seeds.min(axis=0), seeds.max(axis=0), color=colour, alpha=0.15)
    ax.axvline(int(stats["train_size"].split("x")[-1]), color="gray", ls=":", lw=1)
    ax.set_xlabel("evaluation size (last axis; dotted: training size; dashed: extent, solid: zoom)")
    ax.set_ylabel("top-1 (%)  (mean; band: min-max over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_seconds(runs: list[Run]) -> float:
    """The training time of the finished runs, resumed or kept ones included: each run's steps times its
    median step time (evaluation and start-up left out)."""
    return sum(
        r.summary["step"] * r.summary["step_time_s"]
        for r in runs
        if not r.error and r.summary.get("step") and r.summary.get("step_time_s")
    )


def write_report(
    runs: list[Run], out: Path, cfg, *, command: str, resamples: int, wall_s: float
) -> tuple[dict[str, Any], list[Path]]:
    """report.json, report.md and accuracy_vs_resolution.png in ``out``; returns (stats, files)."""
    stats = summarize(runs, resamples)
    stats["command"] = command
    stats["wall_s"] = wall_s
    stats["train_s"] = training_seconds(runs)
    stats["runs"] = [
        {"name": r.name, "label": r.label, "seed": r.seed, "out_dir": str(r.out_dir), "error": r.error,
         "summary": r.summary, "eval_rows": r.eval.get("rows")}
        for r in runs
    ]  # fmt: skip
    plot = plot_resolution(
        stats, out / "accuracy_vs_resolution.png", f"{Path(cfg.config_path).stem}: top-1 vs resolution"
    )
    (out / "report.json").write_text(json.dumps(stats, indent=1))
    (out / "report.md").write_text(render(stats, runs, cfg, plot))
    files = [out / "report.md", out / "report.json"] + ([plot] if plot else [])
    return stats, files


def _git() -> str:
    commit = git_commit()
    return commit if commit == "unknown" else commit[:7]


def _accelerator() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
