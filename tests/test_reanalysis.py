"""Re-analysis of the reported Table 1 from its summary statistics."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reprolib import reanalysis as RA
from reprolib import reported as R


def test_welch_from_np_std_equals_welch_on_the_raw_values():
    """The original's std is np.std (ddof = 0): converted, the test from summaries is the test on the data."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(76, 1.2, 10), rng.normal(73.5, 1.5, 10)
    w = RA.welch(a.mean(), a.std(), b.mean(), b.std())
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(ref.statistic, rel=1e-10) and w.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert w.df == pytest.approx(ref.df, rel=1e-10)
    unconverted = RA.welch(a.mean(), a.std(), b.mean(), b.std(), ddof0=False)
    assert unconverted.p < w.p                    # ddof = 0 stds understate the spread: too small a p
    assert RA.sample_std(1.0, 10) == pytest.approx(np.sqrt(10 / 9))


def test_min_detectable_difference_matches_statsmodels_and_simulation():
    from statsmodels.stats.power import TTestIndPower
    d = TTestIndPower().solve_power(nobs1=10, alpha=0.05, power=0.8, ratio=1.0)
    assert RA.min_detectable_difference(1.0, 1.0, ddof0=False) == pytest.approx(d, rel=1e-6)
    # Unequal stds: simulate Welch tests at the detectable difference; power ≈ 0.8.
    mdd = RA.min_detectable_difference(0.5, 1.5, ddof0=False)
    rng = np.random.default_rng(1)
    x = rng.normal(mdd, 0.5, (20000, 10))
    y = rng.normal(0.0, 1.5, (20000, 10))
    power = np.mean(stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < 0.05)
    assert power == pytest.approx(0.8, abs=0.015)


def test_family_holm_and_the_headline_comparisons():
    res = RA.reanalyse()
    assert len(res) == 6 * 8 and set(res["comparison"]) == {n for n, _, _ in RA.REPORT_PAIRS} | {RA.BEST_OTHER}
    from statsmodels.stats.multitest import multipletests
    assert np.allclose(res["p_holm"], multipletests(res["p"], method="holm")[1])
    assert (res["p_holm"] >= res["p"] - 1e-15).all()
    mg3 = RA.lookup(res, "paper vs retrained", "coco", 3)
    assert mg3["diff"] == pytest.approx(2.69) and mg3["significant"] and mg3["p_holm"] < 0.01
    mg4 = RA.lookup(res, "retrained vs Attend-and-Excite", "coco", 4)
    assert mg4["diff"] == pytest.approx(-0.67) and not mg4["significant"] and mg4["p"] > 0.05
    mg5 = RA.lookup(res, "retrained vs Attend-and-Excite", "coco", 5)
    assert mg5["diff"] == pytest.approx(-2.71) and mg5["significant"]
    best = res[res["comparison"] == RA.BEST_OTHER].set_index(["prompt_set", "k"])
    assert best.loc[("coco", 5), "b"] == "Attend-and-Excite" and best.loc[("ade20k", 2), "b"] == "Layout Guidance"
    with pytest.raises(KeyError, match="no re-analysis row"):
        RA.lookup(res, "paper vs retrained", "coco", 9)


def test_verdict_inputs_are_the_data_not_constants():
    """Change the reported numbers and the re-analysis changes: nothing is hard-coded."""
    t1 = R.load_report_table1()
    t1.loc[(t1["key"] == "retrained") & (t1["prompt_set"] == "coco") & (t1["k"] == 3), "mean"] = 76.0
    res = RA.reanalyse(t1, R.load_authors_table1())
    row = RA.lookup(res, "paper vs retrained", "coco", 3)
    assert row["diff"] == pytest.approx(0.16) and not row["significant"]


def test_display_frame_and_forest_plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = RA.reanalyse()
    shown = RA.display_frame(res)
    assert len(shown) == len(res) and not shown.isna().any().any()
    assert shown["Comparison"].iloc[0].startswith("paper vs retrained: A = TokenCompose (paper's numbers)")
    best = shown[shown["Comparison"].str.startswith(RA.BEST_OTHER)]
    assert best["B (%)"].str.contains("Attend-and-Excite: ").any()
    fig = RA.plot_differences(res)
    assert len([a for a in fig.axes if a.has_data()]) == 6
    plt.close(fig)
