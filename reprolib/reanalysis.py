"""Re-analysis of the reported MultiGen numbers: Welch tests from summary statistics, Holm, power.

The report compares rows of its Table 1 by eye ("within the error margin", "an obvious gap"). Its
numbers are enough to test those comparisons: each cell is the mean and the standard deviation of
MG-k over the **10 image indices** (image ``j`` of every prompt is one draw; the original
``gen_multigen_scores.py`` takes ``np.std`` of the 10 per-index values, i.e. ``ddof = 0``).

* **Sample std.** ``np.std`` divides by n; a t-test needs the sample std (divides by n − 1):
  ``s = sd · sqrt(n / (n − 1))`` (:func:`sample_std`). With n = 10 this widens every std by 5.4 %.
* **Welch's t-test** (unequal variances, two-sided) from the means, sample stds and n = 10 per row,
  through :func:`scipy.stats.ttest_ind_from_stats` (:func:`welch`).
* **Holm** over the whole family of comparisons (:func:`reanalyse`): the step-down correction of
  :func:`statsmodels.stats.multitest.multipletests`, which controls the family-wise error rate at α
  without assuming independence between tests.
* **Minimum detectable difference** (:func:`min_detectable_difference`): the smallest true difference
  that a two-sided Welch test at α = 0.05 detects with power 0.8 at these stds and n, computed exactly
  from the noncentral t distribution with the Welch–Satterthwaite degrees of freedom. It says how
  small a gap the reported numbers could ever resolve.

**What the std does not contain.** It is the spread over image seeds of *one* checkpoint on the same
1,000 prompts. It carries no training-seed variance (a second fine-tuning run would move all ten
values together) and no prompt-sampling variance. A significant Welch test therefore says "the gap is
larger than image-sampling noise", not "the gap is larger than what retraining with another seed
would give": the report's closing remark that the poorer results "may just be" randomness from
training cannot be settled from Table 1 — it needs several retrained checkpoints (the paper profile,
stage 02 with several seeds). The tests are also conditional on the same prompt set, which the two
rows share; the per-index values are not paired across checkpoints in the original (its runs were
unseeded), so an unpaired test is the right one here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

N_INDICES = 10          # MultiGen draws 10 images per prompt; the std is over these 10 indices
ALPHA = 0.05
POWER = 0.8


def sample_std(sd: float | np.ndarray, n: int = N_INDICES) -> float | np.ndarray:
    """``np.std`` (ddof = 0) of ``n`` values → the sample std (ddof = 1)."""
    if n < 2:
        raise ValueError(f"need n >= 2 to convert a std, got {n}")
    return sd * math.sqrt(n / (n - 1))


def welch_df(s1: float, s2: float, n1: int = N_INDICES, n2: int = N_INDICES) -> float:
    """Welch–Satterthwaite degrees of freedom from sample stds."""
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    if v1 + v2 == 0:
        return float(n1 + n2 - 2)
    return (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))


@dataclass(frozen=True)
class Welch:
    diff: float          # mean_a − mean_b
    se: float
    t: float
    df: float
    p: float


def welch(mean_a: float, sd_a: float, mean_b: float, sd_b: float, n_a: int = N_INDICES, n_b: int = N_INDICES,
          ddof0: bool = True, alternative: str = "two-sided") -> Welch:
    """Welch's t-test from reported summaries; ``ddof0``: the stds are ``np.std`` (converted first)."""
    from scipy.stats import ttest_ind_from_stats
    s_a = sample_std(sd_a, n_a) if ddof0 else sd_a
    s_b = sample_std(sd_b, n_b) if ddof0 else sd_b
    res = ttest_ind_from_stats(mean_a, s_a, n_a, mean_b, s_b, n_b, equal_var=False, alternative=alternative)
    se = math.sqrt(s_a ** 2 / n_a + s_b ** 2 / n_b)
    return Welch(mean_a - mean_b, se, float(res.statistic), welch_df(s_a, s_b, n_a, n_b), float(res.pvalue))


def welch_margin(mean_a: float, sd_a: float, mean_b: float, sd_b: float, margin: float,
                 n_a: int = N_INDICES, n_b: int = N_INDICES, ddof0: bool = True) -> Welch:
    """One-sided Welch test of H0: mean_a − mean_b ≤ margin against H1: it is larger."""
    return welch(mean_a - margin, sd_a, mean_b, sd_b, n_a, n_b, ddof0, alternative="greater")


def min_detectable_difference(sd_a: float, sd_b: float, n_a: int = N_INDICES, n_b: int = N_INDICES,
                              alpha: float = ALPHA, power: float = POWER, ddof0: bool = True) -> float:
    """Smallest absolute difference a two-sided Welch test at ``alpha`` detects with probability ``power``.

    Exact for the test's own approximation: with ``se`` and Welch df fixed by the stds, find the
    noncentrality δ with P(T > t_crit) + P(T < −t_crit) = power for T ~ noncentral t(df, δ); the
    difference is δ · se.
    """
    from scipy.optimize import brentq
    from scipy.stats import nct, t
    s_a = sample_std(sd_a, n_a) if ddof0 else sd_a
    s_b = sample_std(sd_b, n_b) if ddof0 else sd_b
    se = math.sqrt(s_a ** 2 / n_a + s_b ** 2 / n_b)
    df = welch_df(s_a, s_b, n_a, n_b)
    crit = t.ppf(1 - alpha / 2, df)

    def achieved(delta: float) -> float:
        lower = nct.cdf(-crit, df, delta)            # NaN far in the tail, where it is 0
        return nct.sf(crit, df, delta) + float(np.nan_to_num(lower, nan=0.0)) - power

    delta = brentq(achieved, 0.0, 10.0)     # power 0.8 needs δ ≈ 3 at df ≥ 9
    return float(delta * se)


# --------------------------------------------------------------------------- the family of comparisons

#: Comparisons between rows of the report's Table 1 (keys of ``reprolib.reported.REPORT_ROWS``).
REPORT_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("paper vs retrained", "paper", "retrained"),
    ("checkpoint A vs checkpoint B", "A", "B"),
    ("paper vs checkpoint A", "paper", "A"),
    ("paper vs checkpoint B", "paper", "B"),
    ("retrained vs Attend-and-Excite", "retrained", "attend_and_excite"),
)
BEST_OTHER = "TokenCompose vs best other method"
TOKENCOMPOSE = "TokenCompose"          # its row in the authors' README table


def _cells(df: pd.DataFrame) -> list[tuple[str, int]]:
    return list(dict.fromkeys(zip(df["prompt_set"], df["k"].astype(int))))


def comparison_rows(report: pd.DataFrame, authors: pd.DataFrame,
                    pairs: Sequence[tuple[str, str, str]] = REPORT_PAIRS) -> pd.DataFrame:
    """The family: every pair in ``pairs`` at every (prompt set, k) of the report, then, per column of the
    authors' README table, TokenCompose against the best other method of that column.

    Columns: comparison, prompt_set, k, a, b, source, mean_a, sd_a, mean_b, sd_b.
    """
    from .reported import AUTHORS_NAMES, REPORT_NAMES, value
    rows = []
    for name, a, b in pairs:
        for ps, k in _cells(report):
            rows.append(dict(comparison=name, prompt_set=ps, k=k, a=REPORT_NAMES[a], b=REPORT_NAMES[b],
                             source="report Table 1",
                             mean_a=value(report, a, ps, k), sd_a=value(report, a, ps, k, "std"),
                             mean_b=value(report, b, ps, k), sd_b=value(report, b, ps, k, "std")))
    for ps, k in _cells(authors):
        col = authors[(authors["prompt_set"] == ps) & (authors["k"] == k)]
        others = col[col["key"] != TOKENCOMPOSE]
        if others.empty or not (col["key"] == TOKENCOMPOSE).any():
            continue
        best = others.loc[others["mean"].idxmax()]
        rows.append(dict(comparison=BEST_OTHER, prompt_set=ps, k=k, a=AUTHORS_NAMES.get(TOKENCOMPOSE, TOKENCOMPOSE),
                         b=AUTHORS_NAMES.get(best["key"], best["key"]), source="authors' README",
                         mean_a=value(authors, TOKENCOMPOSE, ps, k), sd_a=value(authors, TOKENCOMPOSE, ps, k, "std"),
                         mean_b=float(best["mean"]), sd_b=float(best["std"])))
    return pd.DataFrame(rows)


def reanalyse(report: pd.DataFrame | None = None, authors: pd.DataFrame | None = None, n: int = N_INDICES,
              alpha: float = ALPHA, power: float = POWER) -> pd.DataFrame:
    """Welch test, Holm-adjusted p and minimum detectable difference for every comparison of the family.

    Adds: diff (a − b, points), se, t, df, p, p_holm, significant (p_holm < alpha), mdd, and the
    stds as converted (s_a, s_b). Holm runs over all rows together (one family).
    """
    from statsmodels.stats.multitest import multipletests

    from .reported import load_authors_table1, load_report_table1
    report = load_report_table1() if report is None else report
    authors = load_authors_table1() if authors is None else authors
    df = comparison_rows(report, authors)
    out = []
    for _, r in df.iterrows():
        w = welch(r.mean_a, r.sd_a, r.mean_b, r.sd_b, n, n)
        out.append(dict(s_a=sample_std(r.sd_a, n), s_b=sample_std(r.sd_b, n), diff=w.diff, se=w.se, t=w.t,
                        df=w.df, p=w.p, mdd=min_detectable_difference(r.sd_a, r.sd_b, n, n, alpha, power)))
    df = pd.concat([df, pd.DataFrame(out)], axis=1)
    reject, p_holm, _, _ = multipletests(df["p"].to_numpy(), alpha=alpha, method="holm")
    df["p_holm"] = p_holm
    df["significant"] = reject
    return df


def lookup(results: pd.DataFrame, comparison: str, prompt_set: str, k: int) -> pd.Series:
    """One row of :func:`reanalyse`; raises naming the comparison when absent."""
    r = results[(results["comparison"] == comparison) & (results["prompt_set"] == prompt_set)
                & (results["k"] == int(k))]
    if r.empty:
        raise KeyError(f"no re-analysis row for {comparison!r} at {prompt_set} MG{k}")
    return r.iloc[0]


def confidence_interval(row: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """The Welch interval of ``diff`` (a − b) for one re-analysis row."""
    from scipy.stats import t
    h = t.ppf(0.5 + level / 2, row["df"]) * row["se"]
    return float(row["diff"] - h), float(row["diff"] + h)


def plot_differences(results: pd.DataFrame, level: float = 0.95):
    """Forest plot of the re-analysis: per comparison (panel) and column (row), a − b with its Welch
    interval; filled markers are significant after Holm. The grey band is ± the smallest difference
    detectable at α = 0.05 with power 0.8: a gap inside it could not have been resolved."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .reported import PROMPT_SETS
    comps = list(dict.fromkeys(results["comparison"]))
    n_cols = 3
    n_rows = -(-len(comps) // n_cols)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.0 * n_rows), squeeze=False)
        for ax, comp in zip(axes.flat, comps):
            d = results[results["comparison"] == comp].reset_index(drop=True)
            y = np.arange(len(d))[::-1]
            for yi, (_, r) in zip(y, d.iterrows()):
                lo, hi = confidence_interval(r, level)
                ax.fill_betweenx([yi - 0.35, yi + 0.35], -r["mdd"], r["mdd"], color="0.85", lw=0)
                ax.plot([lo, hi], [yi, yi], color="#1f4e79", lw=1.5)
                ax.plot(r["diff"], yi, "o", ms=6, color="#1f4e79",
                        markerfacecolor="#1f4e79" if r["significant"] else "white")
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(y, [f"{PROMPT_SETS.get(ps, ps)} MG{k}" for ps, k in zip(d["prompt_set"], d["k"])],
                          fontsize=8)
            a, b = d["a"].iloc[0], d["b"].iloc[0] if d["b"].nunique() == 1 else "best other"
            ax.set_title(f"{comp}\n({a} − {b})", fontsize=8)
            ax.set_xlabel("difference (points of MG-k)", fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
        for ax in list(axes.flat)[len(comps):]:
            ax.remove()
        handles = [plt.Line2D([], [], marker="o", ls="-", color="#1f4e79", label=f"Δ with its {level:.0%} Welch interval (unadjusted); "
                                                                                  "filled: significant after Holm"),
                   plt.Line2D([], [], marker="o", ls="-", color="#1f4e79", markerfacecolor="white",
                              label="not significant after Holm"),
                   plt.Rectangle((0, 0), 1, 1, color="0.85", label="± smallest detectable Δ (α 0.05, power 0.8)")]
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def display_frame(results: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
    """The re-analysis as the book shows it: one row per test, grouped by comparison (the group names
    A and B; B's name is in its cells when it changes from column to column). ``compact``: the
    comparison's name only, no t statistic (a few rows in a chapter)."""
    from .reported import PROMPT_SETS
    from .tables import mean_std, p_value
    groups, b_cells = [], []
    for comp, g in results.groupby("comparison", sort=False):
        one_b = g["b"].nunique() == 1
        label = comp if compact else (
            f"{comp}: A = {g['a'].iloc[0]}, B = {g['b'].iloc[0] if one_b else 'the best other method'}")
        groups += [label] * len(g)
        b_cells += [mean_std(r.mean_b, r.sd_b) if one_b else f"{r.b}: {mean_std(r.mean_b, r.sd_b)}"
                    for r in g.itertuples()]
    order = pd.Index(results.groupby("comparison", sort=False).indices).tolist()
    res = pd.concat([results[results["comparison"] == c] for c in order], ignore_index=True)
    out = pd.DataFrame({
        "Comparison": groups,
        "Column": [f"{PROMPT_SETS.get(ps, ps)} MG{k}" for ps, k in zip(res["prompt_set"], res["k"])],
        "A (%)": [mean_std(m, s) for m, s in zip(res["mean_a"], res["sd_a"])],
        "B (%)": b_cells,
        "A − B (points)": res["diff"].round(2),
        "Welch t (df)": [f"{t:.2f} ({d:.1f})" for t, d in zip(res["t"], res["df"])],
        "p": [p_value(p) for p in res["p"]],
        "p (Holm)": [p_value(p) for p in res["p_holm"]],
        "Detectable Δ (points)": res["mdd"].round(2),
        "Significant (Holm, 5 %)": ["yes" if s else "no" for s in res["significant"]],
    })
    return out.drop(columns="Welch t (df)") if compact else out
