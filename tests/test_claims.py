"""The claims ledger: claims file validation, verdicts computed from the numbers, paper-profile fill-in."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reprolib import claims as C
from reprolib import reported as R
from reprolib.config import load_profile


@pytest.fixture(scope="module")
def ledger():
    return C.evaluate(C.load_claims(), C.default_evidence()).set_index("id")


def test_ledger_covers_the_report_with_verdicts_from_the_vocabulary(ledger):
    assert len(ledger) >= 12 and set(ledger["verdict"]) <= set(C.VERDICTS)
    sections = " ".join(ledger["section"])
    for s in ("§2.2", "§3.3", "§3.4.1", "§3.4.2", "Table 1", "Table 2", "caption"):
        assert s in sections
    assert (ledger["numbers"].str.len() > 0).all()


def test_verdicts_on_the_reported_numbers(ledger):
    v = ledger["verdict"]
    assert v["T1-paper-row"] == C.SUPPORTED
    assert v["MG-retrained-below-MG3"] == C.SUPPORTED and ledger.loc["MG-retrained-below-MG3", "p"] < 0.01
    assert v["MG-gap-over-2.5"] == C.NOT_SIGNIFICANT
    assert v["MG-AE-beats-retrained-MG4"] == C.NOT_SIGNIFICANT
    assert v["MG-retrained-not-SOTA"] == C.SUPPORTED and "COCO MG5" in ledger.loc["MG-retrained-not-SOTA", "numbers"]
    assert v["MG-gap-within-variance"] == C.CONTRADICTED
    assert v["MG-gap-training-noise"] == C.NEEDS_PAPER
    # The four inconsistencies of the report's tables, each with its evidence.
    assert v["T1-AE-stds"] == C.TABLE_ERROR
    assert "COCO MG3 std 1.04 (README 1.24)" in ledger.loc["T1-AE-stds", "numbers"]
    assert "each equals TokenCompose (paper's numbers)'s value" in ledger.loc["T1-AE-stds", "numbers"]
    assert v["T1-text-27.34"] == C.TABLE_ERROR and "TokenCompose (retrained)" in ledger.loc["T1-text-27.34", "numbers"]
    assert v["T2-DI-quote"] == C.TABLE_ERROR and "report 18.02, paper 25.02" in ledger.loc["T2-DI-quote", "numbers"]
    assert v["T2-CLIP-whole-jump"] == C.NEEDS_PAPER and "+40.3 %" in ledger.loc["T2-CLIP-whole-jump", "numbers"]
    assert v["T2-directions"] == C.SUPPORTED


def test_verdicts_follow_the_numbers(ledger):
    """Edit the reported tables and the verdicts change: they are computed, never typed."""
    ev = C.default_evidence()
    t1 = ev.report1.copy()
    t1.loc[(t1["key"] == "attend_and_excite") & (t1["prompt_set"] == "coco") & (t1["k"] == 4), "mean"] = 30.0
    t1.loc[(t1["key"] == "attend_and_excite") & (t1["prompt_set"] == "coco") & (t1["k"] == 3), "std"] = 1.24
    from reprolib.reanalysis import reanalyse
    ev2 = C.Evidence(t1, ev.authors1, ev.report2, ev.piebench, reanalyse(t1, ev.authors1), ev.alpha)
    out = C.evaluate(C.load_claims(), ev2).set_index("id")["verdict"]
    assert out["MG-AE-beats-retrained-MG4"] == C.SUPPORTED                  # 27.34 vs 30.00 is significant
    assert out["T1-AE-stds"] == C.TABLE_ERROR                               # COCO MG4 mean and std still differ
    t2 = ev.report2.copy()
    t2.loc[t2["key"] == "direct_inversion_p2p", "clip_similarity_target_image"] = 25.02
    ev3 = C.Evidence(ev.report1, ev.authors1, t2, ev.piebench, ev.results, ev.alpha)
    assert C.evaluate(C.load_claims(), ev3).set_index("id").loc["T2-DI-quote", "verdict"] == C.SUPPORTED


def test_claims_file_errors_name_file_and_claim(tmp_path):
    f = tmp_path / "claims.yaml"
    f.write_text("claims:\n  - {id: a, section: x, claim: y, evidence: z, test: nope}\n")
    with pytest.raises(C.ClaimsError, match=r"claims.yaml: claim a: unknown test 'nope'"):
        C.load_claims(f)
    f.write_text("claims:\n  - {id: a, section: x, claim: y, test: welch}\n")
    with pytest.raises(C.ClaimsError, match=r"claim a: missing field 'evidence'"):
        C.load_claims(f)
    f.write_text("claims:\n" + "  - {id: a, section: x, claim: y, evidence: z, test: needs_measurement}\n" * 2)
    with pytest.raises(C.ClaimsError, match="claim a: duplicate id"):
        C.load_claims(f)
    with pytest.raises(C.ClaimsError, match="claims file not found"):
        C.load_claims(tmp_path / "none.yaml")
    with pytest.raises(ValueError, match="is not one of"):
        C.Outcome("probably", None, "")


def test_tiny_profile_measurements_never_enter_a_verdict():
    assert C.load_measured(load_profile("tiny")) is None


def test_paper_profile_fills_in_from_our_measurements(tmp_path):
    """Synthetic paper-profile artifacts of stages 03, 04 and 05: the ledger's last column and the
    measurement-only claims get verdicts from them."""
    P = load_profile("paper", {"multigen.output_dir": str(tmp_path / "mg"), "editing.output_dir": str(tmp_path / "ed"),
                               "attention.output_dir": str(tmp_path / "at"), "train.output_dir": str(tmp_path / "tr")})
    (tmp_path / "mg").mkdir(), (tmp_path / "ed").mkdir(), (tmp_path / "at").mkdir()
    (tmp_path / "tr" / "unet").mkdir(parents=True)
    (tmp_path / "tr" / "unet" / "config.json").write_text("{}")
    retrained = str(tmp_path / "tr" / "unet")
    scores = pd.DataFrame([dict(prompt_set="coco", checkpoint=retrained, k=3, mean=73.0, std=1.0, ci_low=72.0,
                                ci_high=74.0)])
    scores.to_csv(tmp_path / "mg" / "multigen_scores.csv", index=False)
    pd.DataFrame([dict(prompt_set="coco", checkpoint_a="attend_and_excite", checkpoint_b=retrained, k=4, diff=1.5,
                       ci_low=0.5, ci_high=2.5, p_bootstrap=0.004)]).to_csv(tmp_path / "mg" / "multigen_paired.csv",
                                                                           index=False)
    rng = np.random.default_rng(0)
    n = 50
    base = {m: rng.uniform(0.1, 0.9, n) for m in R.TABLE2_HEADERS}
    rows = []
    for ck, shift in (("sd14", 0.0), ("tokencompose_a", 1.0)):
        for i in range(n):
            r = {"id": i, "checkpoint": ck, **{m: base[m][i] for m in R.TABLE2_HEADERS}}
            r["clip_similarity_target_image_edit_part"] += shift + rng.normal(0, 0.01)
            r["clip_similarity_target_image"] += rng.normal(0, 0.01)
            rows.append(r)
    pd.DataFrame(rows).to_csv(tmp_path / "ed" / "scores.csv", index=False)
    pd.DataFrame([dict(layer="up_64", step=s, diff=0.05, lo=0.01, hi=0.09, n=12,
                       comparison="tokencompose_a − sd14") for s in range(4)]).to_csv(tmp_path / "at" / "mass_diff.csv",
                                                                                     index=False)
    m = C.load_measured(P)
    assert m is not None and m.tokencompose == "tokencompose_a" and m.checkpoints["retrained"].endswith("unet")
    out = C.evaluate(C.load_claims(), C.default_evidence(m)).set_index("id")
    assert out.loc["T2-CLIP-edit", "verdict"] == C.SUPPORTED
    assert out.loc["T2-CLIP-whole-jump", "verdict"] == C.NOT_SIGNIFICANT
    assert out.loc["ATT-generation-grounding", "verdict"] == C.SUPPORTED
    assert out.loc["MG-retrained-below-MG3", "ours"].startswith(C.SUPPORTED + ": ours 73.00 [72.00, 74.00]")
    assert out.loc["MG-AE-beats-retrained-MG4", "ours"].startswith(C.SUPPORTED + ": Δ -1.50")
    assert out.loc["MG-retrained-below-MG3", "verdict"] == C.SUPPORTED          # reported verdicts unchanged
    shown = C.display_frame(out.reset_index(), "paper")
    assert shown.columns[-1] == "Our measurements (paper profile)"
    assert list(C.display_frame(out.reset_index(), None).columns)[-1] == "The numbers"
