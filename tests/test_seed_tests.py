"""Tests over seeds: Welch (not Student), Holm's step-down adjustment, and the command that tests
arms across sweep reports."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from seed_tests import main as seed_tests_main

from liere.orchestration.seed_tests import compare, holm, pairwise, render


def test_welch_p_uses_each_arms_own_variance():
    a, b = [0.2, 0.21, 0.19, 0.22], [0.3, 0.9, 0.5, 0.95, 0.6]
    x, y = np.array(a), np.array(b)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    t = (y.mean() - x.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))  # Welch-Satterthwaite
    row = compare(a, b)
    assert row["welch_p"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert row["welch_p"] != pytest.approx(stats.ttest_ind(y, x).pvalue, rel=1e-3)  # Student's pooled test
    assert row["gap"] == pytest.approx(y.mean() - x.mean()) and row["n"] == [4, 5]
    assert row["mannwhitney_p"] == pytest.approx(2 / math.comb(9, 4))  # every b above every a, no ties: exact


def test_one_seed_or_no_spread_gives_no_p_and_a_large_gap_needs_few_seeds():
    assert compare([0.5], [0.6, 0.7])["welch_p"] is None
    flat = compare([0.5, 0.5], [0.5, 0.5])
    assert flat["welch_p"] is None and flat["seeds_for_power"] is None
    wide = compare([0.2, 0.9, 0.5], [0.3, 0.95, 0.6])  # 5 points apart, spreads of 35
    narrow = compare([0.2, 0.21, 0.19], [0.9, 0.91, 0.89])
    assert narrow["seeds_for_power"] == 2 and wide["seeds_for_power"] > 100


def test_holm_steps_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_pairs_are_adjusted_together_and_only_those_below_the_threshold_are_listed():
    seeds = {"a": [0.2, 0.21, 0.19], "b": [0.9, 0.91, 0.89], "c": [0.2, 0.8, 0.5]}
    rows = pairwise(seeds)
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [r["welch_p_holm"] for r in rows] == pytest.approx(holm([r["welch_p"] for r in rows]))
    text = "\n".join(render(rows))
    assert "3 pairs of arms tested" in text and "| b | a | 70.0 | 3 vs 3 |" in text  # the higher arm first
    assert "| c |" not in text and "| b | c |" not in text
    assert "no two arms are told apart" in "\n".join(render(pairwise({"a": [0.2, 0.8], "b": [0.3, 0.7]})))


def _report(folder: Path, arms: dict[str, list[float]]) -> Path:
    folder.mkdir()
    body = {
        "train_size": "16x16",
        "arms": [
            {
                "label": k,
                "top1_mean": float(np.mean(v)),
                "evals": {"16x16": {"seeds": v}, "32x32": {"seeds": v}},
            }
            for k, v in arms.items()
        ]
        + [{"label": "failed", "top1_mean": None}],
    }
    (folder / "report.json").write_text(json.dumps(body))
    return folder


def test_the_command_tests_arms_across_reports(tmp_path, capsys):
    one = _report(tmp_path / "sweep", {"ape": [0.2, 0.21, 0.19], "rope": [0.5, 0.9, 0.7]})
    two = _report(tmp_path / "probe", {"rope": [0.95, 0.97, 0.99, 0.96]})
    out = tmp_path / "tests.json"
    assert seed_tests_main([str(one), str(two / "report.json"), "--all", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert list(saved["seeds"]) == ["ape", "rope", "rope@probe"] and len(saved["pairs"]) == 3
    assert "rope@probe (4 seeds)" in capsys.readouterr().out
    assert seed_tests_main([str(one), str(two)]) == 0  # without --all the first report's arm is kept
    assert "rope@probe" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="arm ape has no evaluation '48x48'"):
        seed_tests_main([str(one), "--eval", "48x48"])
    with pytest.raises(SystemExit, match=r"no report\.json"):
        seed_tests_main([str(tmp_path / "missing")])
