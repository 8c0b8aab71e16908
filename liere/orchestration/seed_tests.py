"""Do two arms differ over seeds? Tests on the per-seed top-1 of a sweep's arms.

The report's bootstrap intervals (``report``) resample the test set: they say how well a finished
model's accuracy is measured, not how much another seed would change it. When every arm's runs
wait on a plateau for a random time, the spread over seeds can be many times the test-set noise,
and only a test over seeds can say whether two arms differ. For each pair of arms with two or more
finished seeds:

- Welch's t-test (unequal variances; Welch 1947) and the Mann-Whitney U test (ranks: no normality
  assumed, exact for small samples) on the per-seed top-1, both two-sided. With n and m seeds the
  smallest two-sided Mann-Whitney p is 2 / C(n + m, n): 0.1 for 3 against 3, 0.036 for 5 against 3,
  0.008 for 5 against 5; three seeds per arm cannot pass 0.05 without the normality Welch assumes;
- the Holm-adjusted Welch p over all pairs tested (Holm 1979): with k arms there are k(k-1)/2
  pairs, and some will pass p < 0.05 by chance alone;
- the seeds per arm that would detect the observed gap with 80% power at alpha 0.05 (the normal
  approximation n = 2 (z_0.975 + z_0.8)^2 s^2 / gap^2, s^2 the mean of the two variances): an
  estimate of how many seeds a ranking needs, not a test.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

ALPHA = 0.05
POWER = 0.8


def compare(a: list[float], b: list[float]) -> dict[str, Any]:
    """Welch and Mann-Whitney p of ``b`` against ``a`` (per-seed top-1 lists), the gap and the seeds
    per arm for 80% power; p is None where a test is undefined (one seed, or no variance at all)."""
    from scipy import stats  # the train extra; imported here, not with the report

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    gap = float(y.mean() - x.mean())
    out: dict[str, Any] = {"n": [len(x), len(y)], "gap": gap, "welch_p": None, "mannwhitney_p": None}
    if len(x) < 2 or len(y) < 2:
        return out | {"seeds_for_power": None}
    var = float((x.var(ddof=1) + y.var(ddof=1)) / 2)
    if var > 0:
        out["welch_p"] = _finite(stats.ttest_ind(y, x, equal_var=False).pvalue)
    out["mannwhitney_p"] = _finite(stats.mannwhitneyu(y, x, alternative="two-sided").pvalue)
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
    out["seeds_for_power"] = max(2, math.ceil(2 * z * z * var / gap**2)) if gap and var > 0 else None
    return out


def _finite(p: float) -> float | None:
    return float(p) if math.isfinite(p) else None


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of ``pvalues`` (None stays None and is not counted)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def pairwise(seeds: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Every pair (a, b) of the arms in ``seeds`` (label -> per-seed top-1, in order), b against a,
    with the Holm-adjusted Welch p over the pairs that have one."""
    rows = [{"a": a, "b": b, **compare(seeds[a], seeds[b])} for a, b in itertools.combinations(seeds, 2)]
    for row, adjusted in zip(rows, holm([r["welch_p"] for r in rows]), strict=True):
        row["welch_p_holm"] = adjusted
    return rows


def p_text(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def render(
    rows: list[dict[str, Any]], *, shown: float = ALPHA, evaluation: str = "the training size"
) -> list[str]:
    """Markdown, without a heading: how many pairs were tested, and those with a Welch or Mann-Whitney p
    below ``shown`` (uncorrected), most significant first, with their Holm-adjusted p and the seeds a
    ranking needs; no lines if no pair could be tested."""
    tested = [r for r in rows if r["welch_p"] is not None or r["mannwhitney_p"] is not None]
    if not tested:
        return []

    def low(r: dict[str, Any]) -> float:
        return min(p for p in (r["welch_p"], r["mannwhitney_p"], 1.0) if p is not None)

    kept = sorted((r for r in tested if low(r) < shown), key=low)
    pairs = f"{len(tested)} pair" + ("s" if len(tested) > 1 else "")
    lines = [
        f"{pairs} of arms tested on their per-seed top-1 at {evaluation} (Welch's t-test "
        f"and Mann-Whitney U, two-sided; Holm: the Welch p adjusted over the {pairs}; seeds for "
        "80% power: per arm, to detect the observed gap at the observed spread, normal approximation). "
        + (
            f"{len(kept)} with p < {shown} before adjustment:"
            if kept
            else f"None has p < {shown}, even before adjustment: over seeds, no two arms are told apart."
        ),
    ]
    if kept:
        lines += [
            "",
            "| higher | lower | gap (pp) | seeds | Welch p | Mann-Whitney p | Holm p | seeds for 80% power |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in kept:
            (hi, lo), (n_hi, n_lo) = (
                ((r["b"], r["a"]), r["n"][::-1]) if r["gap"] >= 0 else ((r["a"], r["b"]), r["n"])
            )
            lines.append(
                f"| {hi} | {lo} | {100 * abs(r['gap']):.1f} | {n_hi} vs {n_lo} | "
                f"{p_text(r['welch_p'])} | {p_text(r['mannwhitney_p'])} | {p_text(r['welch_p_holm'])} | "
                f"{r['seeds_for_power'] or '-'} |"
            )
    return lines
