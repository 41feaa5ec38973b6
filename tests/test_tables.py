"""The book's one table helper: cells, bold, spanners, no index, "–" for missing, display names."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reprolib import tables
from reprolib.config import load_profile


def test_cells():
    assert tables.mean_std(76.16, 1.04) == "76.16 ± 1.04"
    assert tables.mean_std(76.16, float("nan")) == "76.16"
    assert tables.mean_std(None, 1.0) == tables.mean_std(np.nan, 1.0) == "–"
    assert tables.mean_ci(73.47, 70.1, 76.0) == "73.47 [70.10, 76.00]"
    assert tables.mean_ci(1.0, np.nan, 2.0, 1) == "1.0"
    assert tables.mean_ci(-0.00001, -0.0002, 0.0002, 4) == "0.0000 [-0.0002, 0.0002]"     # never "-0.0000"
    assert tables.p_value(0.00002) == "< 0.0001" and tables.p_value(0.0123456) == "0.0123"
    assert tables.p_value(None) == "–"


def test_best_mask_per_column_group_and_direction():
    v = pd.DataFrame({"acc": [1.0, 3.0, 3.0, 2.0, 5.0], "loss": [0.2, 0.1, 0.3, np.nan, 0.4]})
    m = tables.best_mask(v, {"acc": True, "loss": False})
    assert m["acc"].tolist() == [False, False, False, False, True]
    assert m["loss"].tolist() == [False, True, False, False, False]          # lower is better; NaN never best
    g = tables.best_mask(v, True, groups=["a", "a", "a", "b", "b"])
    assert g["acc"].tolist() == [False, True, True, False, True]             # ties marked, per group
    assert not tables.best_mask(pd.DataFrame({"x": [1.0, 1.0]}))["x"].any()  # all equal: nothing bold


def test_table_html_has_no_index_spanners_dashes_and_bold():
    cols = pd.MultiIndex.from_tuples([("", "Method"), ("COCO", "MG2 (%)"), ("COCO", "MG3 (%)")])
    df = pd.DataFrame([["SD1.4", "90.72 ± 1.33", None], ["TokenCompose", "98.08 ± 0.40", "76.16 ± 1.04"]],
                      columns=cols, index=[7, 8])
    bold = pd.DataFrame([[False, False, False], [False, True, False]], columns=cols)
    html = tables.table(df, stub="|Method", bold=bold, title="T").as_raw_html()
    assert ">COCO<" in html and "MG2 (%)" in html and "MG3 (%)" in html
    assert "–" in html and "None" not in html and "nan" not in html.lower().replace("nanum", "")
    assert ">7<" not in html and ">8<" not in html                           # the index is not shown
    assert 'style="font-weight: bold;"' in html and html.count("font-weight: bold;\"") == 1
    named = pd.DataFrame({"value": [1.23456]}, index=pd.Index(["x"], name="field"))
    out = tables.table(named, decimals=3).as_raw_html()
    assert ">field<" in out and "1.235" in out                               # a named index becomes a column


def test_display_names_never_show_a_path(tmp_path):
    tiny, paper = load_profile("tiny"), load_profile("paper")
    assert tables.display_name("sd14") == "SD1.4"
    assert tables.display_name("tokencompose_a") == "TokenCompose (checkpoint A)"
    assert tables.display_name("base", tiny) == "World base (not fine-tuned)"
    assert tables.display_name("base", paper) == "SD1.4"
    assert tables.display_name("runs/tiny/train/unet", tiny) == tables.WORLD_RETRAINED
    assert tables.display_name("runs/paper/train/unet", paper) == tables.RETRAINED
    unet = tmp_path / "my_run" / "unet"
    unet.mkdir(parents=True)
    name = tables.display_name(str(unet), paper)
    assert "/" not in name and "my_run" in name
    assert tables.display_name("someone/some-model") == "someone/some-model"     # a hub id stays


def test_glue_table_glues_html(monkeypatch):
    glued = {}
    import myst_nb
    monkeypatch.setattr(myst_nb, "glue", lambda name, obj, display=True: glued.update({name: obj}))
    tables.glue_table("x_table", pd.DataFrame({"a": [1.5, np.nan]}), display=False)
    html = glued["x_table"].data
    assert "<table" in html and "–" in html and 'id="x_table"' in html
    tables.glue_note("x_note", "needs <the> paper profile", display=False)
    assert glued["x_note"].data == '<p class="repro-note">needs &lt;the&gt; paper profile</p>'
