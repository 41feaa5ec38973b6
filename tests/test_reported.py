"""Reported data: the report's tables shipped as printed, with their source; the publication tables."""
from __future__ import annotations

import pandas as pd
import pytest

from _require import SHARED_REPORT, need_shared
from reprolib import reported as R

SOURCE_PARTS = ("Martinez", "TokenCompose: Text-to-Image Diffusion with Token-level Supervision",
                "Télécom Paris", "2025-01-13")


@pytest.mark.parametrize("name,table", [("table1_multigen.csv", "Table 1"), ("table2_piebench.csv", "Table 2")])
def test_shipped_copies_are_the_hand_checked_tables_with_their_source(name, table):
    ours = pd.read_csv(R.DATA / "report" / name)
    assert all(all(p in s for p in SOURCE_PARTS) and s.endswith(table) for s in ours["source"])
    need_shared(SHARED_REPORT / name)
    shared = pd.read_csv(SHARED_REPORT / name)
    pd.testing.assert_frame_equal(ours.drop(columns="source"), shared)


def test_loaders_key_rows_and_name_a_bad_file(tmp_path):
    t1 = R.load_report_table1()
    assert set(t1["key"]) == {"paper", "A", "B", "attend_and_excite", "retrained"} and len(t1) == 40
    assert R.value(t1, "retrained", "coco", 3) == 73.47 and R.value(t1, "paper", "coco", 3, "std") == 1.04
    t2 = R.load_report_table2()
    assert t2.set_index("key").loc["bld_tokencompose", "clip_similarity_target_image"] == 26.02
    assert R.load_piebench_paper().iloc[0]["clip_similarity_target_image"] == 25.02
    bad = tmp_path / "t1.csv"
    pd.read_csv(R.REPORT_TABLE1).drop(columns="std").to_csv(bad, index=False)
    with pytest.raises(R.ReportedDataError, match=r"t1.csv: missing column 'std'"):
        R.load_report_table1(bad)
    pd.read_csv(R.REPORT_TABLE1).assign(source="").to_csv(bad, index=False)
    with pytest.raises(R.ReportedDataError, match="every row needs a source"):
        R.load_report_table1(bad)
    with pytest.raises(R.ReportedDataError, match="reported data not found"):
        R.load_report_table1(tmp_path / "nope.csv")
    with pytest.raises(R.ReportedDataError, match="no reported value for 'A' at coco MG9"):
        R.value(t1, "A", "coco", 9)


def test_multigen_readme_no_longer_misattributes_the_report():
    text = (R.DATA / "multigen" / "README.md").read_text()
    assert "Bernas" not in text and "Corlay" not in text and "Martinez" in text


def test_reported_table_1_layout_and_bold():
    cells, means = R.table1_frames()
    groups = cells[("", "group")].unique().tolist()
    assert len(groups) == 2 and "authors' README" in groups[0] and "Martinez (2025), Table 1" in groups[1]
    report = cells[cells[("", "group")] == groups[1]].set_index(("", "Method"))
    assert report.loc["TokenCompose (retrained)", ("COCO", "MG3 (%)")] == "73.47 ± 1.40"
    assert report.loc["TokenCompose (paper's numbers)", ("COCO", "MG3 (%)")] == "76.16 ± 1.04"
    html = R.table1().as_raw_html()
    assert ">COCO<" in html and ">ADE20K<" in html and "nan" not in html.lower().replace("nanum", "")
    # Best of the report's rows at COCO MG5 is Attend-and-Excite (6.01); in bold.
    assert '<td style="font-weight: bold;" headers="' in html and "6.01 ± 0.61" in html


def test_reported_table_2_layout_and_direction_aware_bold():
    cells, nums = R.table2_frames()
    assert cells[("", "Method")].tolist() == ["Direct Inversion + P2P", "Direct Inversion + P2P (as quoted)",
                                              "BLD + SD1.4", "BLD + TokenCompose"]
    html = R.table2().as_raw_html()
    for v in ("18.02", "25.02", "26.02", "Distance ×10³ ↓", "PSNR (dB) ↑"):
        assert v in html
    from reprolib.tables import best_mask
    value_cols = [c for c in nums.columns if c[0] != ""]
    hib = {c: R.TABLE2_HEADERS[m][2] for c, m in zip(value_cols, R.TABLE2_HEADERS)}
    b = best_mask(nums[value_cols], hib, groups=nums[("", "group")].tolist())
    lpips = ("Background preservation", "LPIPS ×10³ ↓")
    assert b[lpips].tolist() == [False, False, True, False]         # 38.64, the lowest of the report's rows


def test_measured_table_2_leaves_out_non_finite_values():
    scores = pd.DataFrame({"checkpoint": ["a", "a", "b"], "structure_distance": [0.01, 0.03, 0.02],
                           "psnr_unedit_part": [20.0, float("inf"), 30.0]})
    html = R.table2_measured(scores, {"a": "BLD + A", "b": "BLD + B"}, title="ours").as_raw_html()
    assert "20.00 ± 14.14" in html and "20.00" in html and "inf" not in html.lower()
    assert "BLD + A" in html and "30.00" in html


def test_table2_side_by_side_verdicts_per_cell():
    import numpy as np
    rng = np.random.default_rng(0)
    n = 40
    rows = []
    for ck, clip in (("sd14", 18.55), ("tokencompose_a", 20.0), ("runs/x/unet", 25.0)):
        for i in range(n):
            rows.append({"id": i, "checkpoint": ck, "clip_similarity_target_image": clip + rng.normal(0, 0.5),
                         "psnr_unedit_part": 28.44 + rng.normal(0, 0.1)})
    v = R.table2_verdicts(pd.DataFrame(rows))
    assert set(v["checkpoint"]) == {"sd14", "tokencompose_a"}             # no counterpart: no verdict
    cell = v.set_index(["checkpoint", "metric"])["verdict"]
    assert cell[("sd14", "clip_similarity_target_image")] == "consistent"
    assert cell[("tokencompose_a", "clip_similarity_target_image")] == "ours lower"   # report: 26.02
    assert cell[("sd14", "psnr_unedit_part")] == "consistent"
    html = R.table2_side_by_side(v, {"sd14": "BLD + SD1.4", "tokencompose_a": "BLD + TokenCompose (A)"},
                                 "paper").as_raw_html()
    assert "reported: BLD + TokenCompose" in html and "ours lower" in html and "26.02" in html
