"""Several fine-tune seeds per arm in the miniature replication: pooling, between-seed spread, the plan."""
from __future__ import annotations

import pandas as pd
import pytest

from reprolib import miniexp
from reprolib.config import load_profile


def test_seeds_reach_the_size_and_the_trainer_and_default_to_the_profiles():
    P = load_profile("tiny", {"train.seed": 7, "seed": 3})
    assert miniexp.fine_tune_seeds(P, miniexp.experiment_size("tiny")) == [7]
    Q = miniexp.seed_profile(P, 2)                     # what reprolib.train seeds data order, noise, timesteps from
    assert Q.train.seed == 2 and Q.seed == 3, "the scenes and the evaluation stay on the profile's seed"
    assert miniexp.seed_profile(P, 7) is P
    arm = miniexp.arm_profile(Q, miniexp.experiment_size("toy"), "finetune", miniexp.BASE_DIR, "/tmp/x")
    assert arm.train.seed == 2
    size = miniexp.experiment_size("tiny", seeds=[0, 1, 2])
    assert size.seeds == (0, 1, 2) and miniexp.fine_tune_seeds(P, size) == [0, 1, 2]
    assert miniexp.experiment_size("long").seeds == (0, 1, 2), "the committed multi-seed preset"
    assert miniexp.split_key(miniexp.model_key("finetune", 2)) == ("finetune", 2)
    assert miniexp.split_key("base") == ("base", None)
    assert miniexp.arm_label("tokencompose@1") == miniexp.ARM_LABELS["tokencompose"] + " (seed 1)"


def _det(found: bool) -> dict:
    return {"classes": ["star"], "scores": [0.9 if found else 0.0]}


def test_pool_seeds_makes_seeds_replicates_within_a_prompt_and_repeats_the_base():
    results = {"base": {"0_0": _det(True), "0_1": _det(False)},
               "finetune@3": {"0_0": _det(False), "0_1": _det(False)},
               "finetune@5": {"0_0": _det(True), "0_1": _det(True)}}
    pooled = miniexp.pool_seeds(results, [3, 5], images_per_prompt=2)
    assert set(pooled) == {"base", "finetune"}
    assert sorted(pooled["finetune"]) == ["0_0", "0_1", "0_2", "0_3"]
    assert [pooled["finetune"][f"0_{j}"]["scores"][0] > 0 for j in range(4)] == [False, False, True, True]
    assert [pooled["base"][f"0_{j}"]["scores"][0] > 0 for j in range(4)] == [True, False, True, False]


def test_seed_effects_are_per_seed_differences_with_their_sample_sd():
    rows = [("tokencompose", 0, 50.0), ("tokencompose", 1, 60.0), ("tokencompose", 2, 40.0),
            ("finetune", 0, 45.0), ("finetune", 1, 50.0), ("finetune", 2, 45.0), ("base", None, 30.0)]
    scores = pd.DataFrame([{"checkpoint": c, "train_seed": s, "k": 3, "mean": m} for c, s, m in rows])
    e = miniexp.seed_effects(scores, [("tokencompose", "finetune"), ("finetune", "base")]).set_index(["a", "b"])
    tf = e.loc[("tokencompose", "finetune")]
    assert tf["per_seed"] == "+5.0, +10.0, -5.0" and tf["n_seeds"] == 3
    assert tf["seed_mean"] == pytest.approx(10 / 3) and tf["seed_sd"] == pytest.approx(pd.Series([5, 10, -5]).std())
    fb = e.loc[("finetune", "base")]
    assert fb["per_seed"] == "+15.0, +20.0, +15.0", "the base's one score stands for every seed"
    one = miniexp.seed_effects(scores[scores["train_seed"].isin([0]) | scores["train_seed"].isna()])
    assert one["n_seeds"].item() == 1 and pd.isna(one["seed_sd"].item())


def test_the_planned_verdict_counts_only_the_primary_metrics_after_holm():
    paired = pd.DataFrame([{"a": "tokencompose", "b": "finetune", "k": k, "diff": d, "p_bootstrap": p}
                           for k, d, p in [(2, 9.0, 0.001), (3, 4.0, 0.03), (4, 3.0, 0.04), (5, 1.0, 0.5)]])
    plan = miniexp.PLAN
    assert plan["primary"] == (3, 4) and plan["alpha"] == 0.05 and plan["correction"] == "holm"
    raw = miniexp.verdict(paired, ks=plan["primary"])
    assert raw.startswith(miniexp.arm_label("tokencompose") + " beats") and "MG3, MG4" in raw
    held = miniexp.verdict(paired, ks=plan["primary"], holm=True)          # Holm: 0.06 and 0.06
    assert "does not beat" in held and "MG3/MG4" in held and "Holm-adjusted" in held and "p = 0.06" in held
    assert "MG2" in miniexp.verdict(paired), "without the plan every k counts"


def _fake_run(d, seeds=(0, 1)):
    """The files of a finished stage-06 run, small and hand-made."""
    import json
    d.mkdir(parents=True)
    rows = [("base", None)] + [(a, s) for s in seeds for a in ("tokencompose", "finetune")]
    pd.DataFrame([{"checkpoint": c, "train_seed": s, "layer": lay, "mass": 0.1 if c == "tokencompose" else 0.05,
                   "chance": 0.05, "prompt_id": 0, "step": 0} for c, s in rows for lay in miniexp.BASE_TRAIN_LAYERS]
                 ).to_csv(d / "world_mass.csv", index=False)
    pd.DataFrame([{"checkpoint": c, "train_seed": s, "layer": "up_16", "role": r, "share": 0.25, "step": 0}
                  for c, s in rows for r in ("BOS", "nouns", "other words", "EOS and padding")]
                 ).to_csv(d / "world_flow.csv", index=False)
    pd.DataFrame([{"checkpoint": c, "k": k, "mean": m, "ci_low": m - 5, "ci_high": m + 5} for c in ("base", "tokencompose", "finetune")
                  for k, m in ((3, 55.0), (4, 20.0))]).to_csv(d / "world_scores.csv", index=False)
    pd.DataFrame([{"a": a, "b": b, "k": k, "diff": 1.0, "ci_low": -2.0, "ci_high": 4.0, "p_bootstrap": 0.4,
                   "p_mcnemar": 0.5, "a_only": 3, "b_only": 2, "n_cells": 40}
                  for a, b in (("tokencompose", "finetune"), ("finetune", "base")) for k in (3, 4)]
                 ).to_csv(d / "world_paired.csv", index=False)
    pd.DataFrame([{"a": "tokencompose", "b": "finetune", "k": k, "seed_mean": 1.0, "seed_sd": 2.0, "n_seeds": 2,
                   "per_seed": "-1.0, +3.0"} for k in (3, 4)]).to_csv(d / "world_effects.csv", index=False)
    pd.DataFrame([{"checkpoint": "base", "train_seed": None, "k": 3, "mean": 55.0}]).to_csv(d / "world_seed_scores.csv",
                                                                                           index=False)
    (d / "world_summary.json").write_text(json.dumps({"base": str(miniexp.BASE_DIR), "fine_tune_seeds": list(seeds)}))
    (d / "provenance.json").write_text(json.dumps({"profile": "tiny", "git": {"sha": "0123456789ab", "dirty": False},
                                                   "device": {"cpu_count": 2}, "started": "2026-12-02T16:33:39",
                                                   "duration_s": 812.4}))


def test_export_and_load_a_committed_run(tmp_path):
    _fake_run(tmp_path / "run")
    edits = pd.DataFrame({"checkpoint": ["base", "base"], "success": [True, False]})
    out = miniexp.export_run(tmp_path / "run", tmp_path / "committed", edits, command="make it")
    c = miniexp.load_committed(out)
    assert {"scores", "paired", "effects", "gates", "mass_by_layer", "flow_by_layer"} <= set(c)
    g = c["gates"].set_index("gate")["Passes"]
    assert g["mg3"] == "yes" and g["mg4"] == "yes" and g["control"] == "yes" and g["grounding"] == "no"
    assert g["bld"] == "yes" and c["gates"].set_index("gate").loc["bld", "Measured"].startswith("50 % of 2")
    by = c["mass_by_layer"]
    assert len(by) == 5 * len(miniexp.BASE_TRAIN_LAYERS), "one row per (model, seed, layer)"
    shown = miniexp.mass_arms_display(by).set_index("Model")
    assert shown.loc[miniexp.arm_label("tokencompose"), "up_16 (× chance)"] == pytest.approx(2.0)
    line = miniexp.committed_line(c)
    assert "commit 01234567" in line and "812 s" in line and "fine-tune seeds 0, 1" in line and "make it" in line
    assert miniexp.load_committed(tmp_path / "nothing") is None and c["base"] is None   # the shipped base: no copy
    (tmp_path / "run" / "world_effects.csv").unlink()
    with pytest.raises(miniexp.ExperimentError, match="world_effects.csv missing"):
        miniexp.export_run(tmp_path / "run", tmp_path / "other")


def test_a_run_on_another_base_keeps_that_base_record(tmp_path):
    """A run of stage 06 on a second base is exported with that base's record (its gates read it), and the
    provenance line names the committed folder, not the multi-seed one."""
    import json
    _fake_run(tmp_path / "run")
    other = tmp_path / "second" / "base"
    other.parent.mkdir()
    other.with_name("base.json").write_text(json.dumps({"sample_check": {"single_object_found": 0.5,
                                                                         "images_single": 10}}))
    summary = tmp_path / "run" / "world_summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "base": str(other)}))
    c = miniexp.load_committed(miniexp.export_run(tmp_path / "run", tmp_path / "cand"))
    assert c["base"]["sample_check"]["single_object_found"] == 0.5
    assert c["gates"].set_index("gate").loc["single", "Passes"] == "no"
    assert "Committed run (cand)" in miniexp.committed_line(c)


def test_candidate_line_compares_the_two_bases(tmp_path):
    _fake_run(tmp_path / "run")
    a = miniexp.load_committed(miniexp.export_run(tmp_path / "run", tmp_path / "a"))
    b = miniexp.load_committed(miniexp.export_run(tmp_path / "run", tmp_path / "b"))
    b["mass_by_layer"] = b["mass_by_layer"].assign(mass=b["mass_by_layer"]["mass"] * 2)
    by = miniexp.mass_by_layer(a["mass_by_layer"])
    r = by[(by["checkpoint"] == "base") & by["layer"].isin(miniexp.BASE_TRAIN_LAYERS)]["ratio"].max()
    line = miniexp.candidate_line(a, b)
    assert f"is {2 * r:.2f} ×" in line and f"against {r:.2f} ×" in line
    assert f"fails {len(miniexp.failed_gates(b['gates']))} of {len(b['gates'])} gates" in line


def test_committed_second_base_is_what_the_chapter_says():
    """The chapter's reading of the committed second base (book/miniworld.md, "A second base, tried"): its
    nouns ground no better than the shipped base's, it composes more often, and EOS+padding still take
    most of the attention. If a new committed run changes this, the chapter's text must change with it."""
    ship, cand = miniexp.load_committed(), miniexp.load_committed(miniexp.CANDIDATE_DIR)
    if ship is None or cand is None:
        pytest.skip("no committed runs")

    def best(c):
        by = miniexp.mass_by_layer(c["mass_by_layer"])
        return by[(by["checkpoint"] == "base") & by["layer"].isin(miniexp.BASE_TRAIN_LAYERS)]["ratio"].max()

    def mg3(c):
        s = c["scores"]
        return float(s[(s["checkpoint"] == "base") & (s["k"] == 3)]["mean"].iloc[0])

    assert best(cand) <= best(ship) and mg3(cand) > mg3(ship)
    f = miniexp.flow_by_layer(cand["flow_by_layer"])
    eos = f[(f["checkpoint"] == "base") & (f["role"] == "EOS and padding")]["share"]
    assert (eos > 0.5).all()
    assert "grounding" in miniexp.failed_gates(cand["gates"])


def test_scale_table_reads_each_runs_scales_effects_and_mass(tmp_path):
    """One row per loss scale, sorted by it; the effect, CI and Holm p of the primary metrics; each arm's
    mass ÷ chance; the sentence counts the scales where (a) beats (b)."""
    import json
    for name, scale, p in (("x10", 1e-2, 0.001), ("x1", 1e-3, 0.4)):
        _fake_run(tmp_path / "runs" / name)
        summ = tmp_path / "runs" / name / "world_summary.json"
        summ.write_text(json.dumps({**json.loads(summ.read_text()), "token_loss_scale": scale,
                                    "pixel_loss_scale": scale / 20}))
        pr = pd.read_csv(tmp_path / "runs" / name / "world_paired.csv").assign(p_bootstrap=p)
        pr.to_csv(tmp_path / "runs" / name / "world_paired.csv", index=False)
        miniexp.export_run(tmp_path / "runs" / name, tmp_path / "sens" / name)
    runs = miniexp.load_sensitivity(tmp_path / "sens")
    t = miniexp.scale_table(runs)
    assert t["× paper"].tolist() == ["1", "10"] and t["λ token"].tolist() == ["1e-03", "1e-02"]
    assert t.loc[0, "MG3 (a) − (b), points [95 % CI]"] == "+1.0 [-2.0, 4.0]"
    assert t.loc[1, "MG3 p (Holm)"] == "< 0.01" and t.loc[0, "MG4 p (Holm)"] == "0.80"   # Holm over two p of 0.4
    assert t.loc[0, "(a) mass ÷ chance, up_4/up_16"] == "2.00 / 2.00"
    assert t.loc[0, "(b) mass ÷ chance, up_4/up_16"] == "1.00 / 1.00"
    line = miniexp.scale_line(runs)
    assert "×1: 2.00, ×10: 2.00" in line and "in 1 of 2 scales and is worse in 0." in line
    assert miniexp.load_sensitivity(tmp_path / "none") == [] and "no loss-scale" in miniexp.scale_line([])
    runs[1]["paired"] = runs[1]["paired"].assign(diff=-1.0)
    assert "in 0 of 2 scales and is worse in 1 (×10)." in miniexp.scale_line(runs)


def test_committed_sensitivity_is_what_the_chapter_says():
    """The chapter's reading of data/miniworld/sensitivity: (a)'s grounding rises with the loss scale at up_4,
    and no scale makes (a) compose better than (b) at the primary metrics (several make it worse)."""
    runs = miniexp.load_sensitivity()
    if len(runs) < 2:
        pytest.skip("no committed sensitivity runs")
    ratios = [miniexp.mass_by_layer(r["mass_by_layer"]).set_index(["checkpoint", "layer"])["ratio"]
              [("tokencompose", "up_4")] for r in runs]
    assert ratios == sorted(ratios) and ratios[-1] > 1.5 * ratios[0]
    verdicts = [miniexp.verdict(r["paired"], ks=miniexp.PLAN["primary"], holm=True) for r in runs]
    assert not any(" beats " in v and "does not beat" not in v for v in verdicts)
    assert any(" is worse than " in v for v in verdicts)
