"""Tests that kill mutmut survivors of reprolib.multigen's scoring and statistics (see tests/MUTATION.md).

The bootstrap statistics are checked against plain-loop re-implementations of what the docstrings
promise (resample prompts with ``default_rng(seed).integers(0, n_prompts)``, percentile interval,
p = (1 + #{|boot − diff| ≥ |diff|}) / (n_boot + 1)); small cases are worked out by hand.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reprolib import multigen as mg

CATS = ["apple", "bear", "cake", "dog", "egg"]


def d(*pairs) -> dict:
    return {"classes": [c for c, _ in pairs], "scores": [s for _, s in pairs]}


def _cells(found: list[list[int]]) -> pd.DataFrame:
    return pd.DataFrame([(p, j, n) for p, row in enumerate(found) for j, n in enumerate(row)],
                        columns=["prompt_id", "image_index", "n_found"])


def _uneven_cells(seed: int, n_prompts: int = 25) -> pd.DataFrame:
    """Prompts with 1–9 images each and random counts: the bootstrap takes many distinct values."""
    rng = np.random.default_rng(seed)
    return _cells([list(rng.integers(0, 6, size=int(rng.integers(1, 10)))) for _ in range(n_prompts)])


def ref_bootstrap(cells: pd.DataFrame, k: int, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile CI of MG_k resampling prompts with replacement, as a loop."""
    prompts = sorted(set(cells["prompt_id"]))
    s = [int((cells[cells["prompt_id"] == p]["n_found"] >= k).sum()) for p in prompts]
    n = [int((cells["prompt_id"] == p).sum()) for p in prompts]
    idx = np.random.default_rng(seed).integers(0, len(prompts), size=(n_boot, len(prompts)))
    vals = 100 * np.asarray(s, float)[idx].sum(1) / np.asarray(n, float)[idx].sum(1)     # one value per resample
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def ref_paired(ca: pd.DataFrame, cb: pd.DataFrame, k: int, n_boot: int, seed: int, level: float) -> dict:
    """Paired bootstrap over prompts of MG_k(A) − MG_k(B), and its two-sided p-value, as loops."""
    a_ok = {(p, j): n >= k for p, j, n in ca.itertuples(index=False)}
    b_ok = {(p, j): n >= k for p, j, n in cb.itertuples(index=False)}
    both = sorted(set(a_ok) & set(b_ok))
    prompts = sorted({p for p, _ in both})
    ds = [sum(a_ok[c] - b_ok[c] for c in both if c[0] == p) for p in prompts]
    dn = [sum(1 for c in both if c[0] == p) for p in prompts]
    diff = 100 * sum(ds) / sum(dn)
    idx = np.random.default_rng(seed).integers(0, len(prompts), size=(n_boot, len(prompts)))
    boot = 100 * np.asarray(ds, float)[idx].sum(1) / np.asarray(dn, float)[idx].sum(1)   # one value per resample
    extreme = int((np.abs(boot - diff) >= abs(diff) - 1e-12).sum())
    q = (1 - level) / 2
    return {"diff": diff, "ci_low": float(np.quantile(boot, q)), "ci_high": float(np.quantile(boot, 1 - q)),
            "p_bootstrap": (1 + extreme) / (n_boot + 1), "n_cells": len(both)}


# --------------------------------------------------------------------------- per-image counts

def test_found_count_default_threshold_is_strictly_above_0_1():
    dets = d(("apple", 0.1), ("bear", 0.5), ("cake", 0.1000001), ("zebra", 0.9))
    assert mg.found_count(dets, CATS) == 2                       # bear, cake; apple at exactly 0.1 is out
    assert mg.found_count(dets, CATS, threshold=0.05) == 3
    assert mg.found_count(d(("apple", 1.0)), CATS) == 1


def test_cell_table_passes_threshold_and_num_ins_and_is_sorted_with_a_fresh_index():
    records = [mg.make_record(0, CATS), mg.make_record(1, CATS)]
    results = {"1_0": d(("dog", 0.3), ("egg", 0.3)), "0_1": d(("apple", 0.9)),
               "0_0": d(("apple", 0.9), ("bear", 0.2), ("egg", 0.9))}
    cells = mg.cell_table(results, records, threshold=0.25)
    assert cells.values.tolist() == [[0, 0, 2], [0, 1, 1], [1, 0, 2]]
    assert cells.index.tolist() == [0, 1, 2]
    three = mg.cell_table(results, [mg.make_record(i, CATS[:3]) for i in range(2)], num_ins=3)
    assert three["n_found"].tolist() == [2, 1, 0]                # dog and egg are not among 3 categories


def test_multigen_original_uses_num_ins_and_default_ten_images_per_prompt():
    # 1 prompt of 3 categories, 10 images: image j finds min(j, 3) categories.
    records = [mg.make_record(0, ["apple", "bear", "cake"])]
    results = {f"0_{j}": d(*[(c, 0.9) for c in ["apple", "bear", "cake"][:j]]) for j in range(10)}
    mean, std = mg.multigen_original(results, records, num_ins=3)
    assert mean == pytest.approx([90, 80, 70])
    # per image index j there is one image: rate 100 or 0; std over j of MG_1: 9 of 10 at 100 → 30.
    assert std == pytest.approx([30, 40, np.sqrt(0.7 * 0.3) * 100])


# --------------------------------------------------------------------------- bootstrap CI

def test_bootstrap_ci_matches_the_loop_reference_with_defaults_and_options():
    cells = _uneven_cells(0)
    for k in (1, 3):
        assert mg.bootstrap_ci(cells, k) == pytest.approx(ref_bootstrap(cells, k, 2000, 0, 0.95), abs=1e-9)
    assert mg.bootstrap_ci(cells, 2, n_boot=300, seed=4, level=0.8) == pytest.approx(
        ref_bootstrap(cells, 2, 300, 4, 0.8), abs=1e-9)
    assert mg.bootstrap_ci(cells, 2, n_boot=300, seed=4) == mg.bootstrap_ci(cells, 2, n_boot=300, seed=4)


def test_bootstrap_ci_hand_cases():
    # Prompt 0 always succeeds, prompt 1 never: a resample is 0, 50 or 100 % and draws both prompts.
    lo, hi = mg.bootstrap_ci(_cells([[5, 5], [0, 0]]), 1, n_boot=400)
    assert (lo, hi) == (0.0, 100.0)
    assert mg.bootstrap_ci(_cells([[2, 2, 2]]), 2, n_boot=20) == (100.0, 100.0)   # n_found == k counts; 1 prompt
    assert mg.bootstrap_ci(_cells([[2, 2, 2]]), 3, n_boot=20) == (0.0, 0.0)
    lo, hi = mg.bootstrap_ci(_cells([]), 1)
    assert np.isnan(lo) and np.isnan(hi)


# --------------------------------------------------------------------------- paired test

def test_paired_test_matches_the_loop_reference():
    a, b = _uneven_cells(1), _uneven_cells(1)
    b["n_found"] = np.random.default_rng(9).integers(0, 5, size=len(b))          # B finds fewer
    b = b[b.index % 7 != 3]                                        # a few cells only A has
    for k, n_boot, seed, level in ((2, 2000, 0, 0.95), (3, 500, 5, 0.9)):
        got = mg.paired_test(a, b, k) if n_boot == 2000 else mg.paired_test(a, b, k, n_boot, seed, level)
        ref = ref_paired(a, b, k, n_boot, seed, level)
        assert abs(ref["diff"]) > 1
        for key in ("diff", "ci_low", "ci_high", "p_bootstrap"):
            assert got[key] == pytest.approx(ref[key], abs=1e-9), key
        assert got["n_cells"] == ref["n_cells"] and got["k"] == k
    assert set(got) == {"k", "diff", "ci_low", "ci_high", "p_bootstrap", "p_mcnemar", "a_only", "b_only", "n_cells"}


def test_paired_test_counts_n_found_equal_to_k_as_success():
    a = _cells([[2, 2], [2, 1]])
    b = _cells([[1, 2], [2, 2]])
    r = mg.paired_test(a, b, 2, n_boot=50)
    # cells (0,0): A only; (1,1): B only; the others both: diff 0, one discordant each way.
    assert (r["diff"], r["a_only"], r["b_only"], r["p_mcnemar"]) == (0.0, 1, 1, 1.0)
    r = mg.paired_test(a, _cells([[1, 1], [1, 1]]), 2, n_boot=50)
    assert r["diff"] == 75.0 and r["a_only"] == 3 and r["b_only"] == 0


def test_paired_test_error_message():
    a = _cells([[1]])
    with pytest.raises(mg.MultiGenError, match=r"^paired test: the two runs share no \(prompt, index\) cell$"):
        mg.paired_test(a, a.assign(prompt_id=5), 1)


# --------------------------------------------------------------------------- one run's scores

def test_score_run_hand_built_case():
    """2 prompts × 2 images (as test_scorer_hand_built_case): counts 2, 0 and 5, 2."""
    records = [mg.make_record(0, CATS), mg.make_record(1, CATS)]
    results = {
        "0_0": d(("apple", .9), ("bear", .5), ("zebra", .9), ("cake", .05)),
        "0_1": d(),
        "1_0": d(*[(c, .8) for c in CATS]),
        "1_1": d(("apple", .9), ("apple", .7), ("bear", .2)),
    }
    s = mg.score_run(results, records, img_per_prompt=2, n_boot=400)
    assert list(s.columns) == ["k", "mean", "std", "ci_low", "ci_high", "n_images", "n_prompts"]
    assert s["k"].tolist() == [1, 2, 3, 4, 5]
    assert s["mean"].tolist() == pytest.approx([75, 75, 25, 25, 25])
    assert s["std"].tolist() == pytest.approx([25] * 5)
    # resampling 2 prompts: MG1/2 of a resample is 50, 75 or 100 %; MG3..5 is 0, 25 or 50 %.
    assert s["ci_low"].tolist() == [50, 50, 0, 0, 0] and s["ci_high"].tolist() == [100, 100, 50, 50, 50]
    assert s["n_images"].tolist() == [4] * 5 and s["n_prompts"].tolist() == [2] * 5
    # the threshold reaches both the original's mean and the cells of the interval
    t = mg.score_run(results, records, threshold=0.6, img_per_prompt=2, n_boot=400)
    assert t["mean"].tolist() == pytest.approx([100 * 3 / 4, 25, 25, 25, 25])
    assert t.loc[1, ["ci_low", "ci_high"]].tolist() == [0, 50]
    # the default image count per prompt (10) and the bootstrap's options reach their functions
    ten = mg.score_run(results, records, n_boot=30, seed=3)
    assert ten["std"].tolist() == pytest.approx(list(mg.multigen_original(results, records)[1]))
    cells = mg.cell_table(results, records)
    assert (ten.loc[0, "ci_low"], ten.loc[0, "ci_high"]) == mg.bootstrap_ci(cells, 1, 30, 3)
    assert mg.score_run(results, records, img_per_prompt=2)["ci_low"].tolist() == [
        mg.bootstrap_ci(cells, k)[0] for k in range(1, 6)]
    three = mg.score_run(results, [mg.make_record(i, CATS[:3]) for i in range(2)], img_per_prompt=2, num_ins=3)
    assert three["k"].tolist() == [1, 2, 3] and three["mean"].tolist() == pytest.approx([75, 75, 25])
    with pytest.raises(mg.MultiGenError, match="^no detections to score$"):
        mg.score_run({}, records)


# --------------------------------------------------------------------------- token positions

def test_category_token_indices_repeats_and_a_category_ending_the_prompt(tokenizer):
    # "a photo of a cat, a dog, and a cat." → tokens: 1 a, 2 photo, 3 of, 4 a, 5 cat, 6 ',', 7 a, 8 dog,
    # 9 ',', 10 and, 11 a, 12 cat, 13 '.'
    assert mg.category_token_indices(tokenizer, "a photo of a cat, a dog, and a cat.", ["cat", "dog", "cat"]) == [5, 8, 12]
    assert mg.category_token_indices(tokenizer, "a photo of a cat, and a cat.", ["cat", "cat"]) == [5, 9]
    assert mg.category_token_indices(tokenizer, "a photo of a dog", ["dog"]) == [5]


# --------------------------------------------------------------------------- prompts and records

def test_prompt_text_and_record_format():
    assert mg.prompt_text(["cat", "dog"]) == "a photo of a cat, and a dog."
    with pytest.raises(mg.MultiGenError, match=r"^a MultiGen prompt needs at least 2 categories, got \['cat'\]$"):
        mg.prompt_text(["cat"])
    assert mg.make_record(4, ["cat", "dog"]) == {
        "unique_id": 4, "num_objects": 2, "obj_1_attributes": ["cat"], "obj_2_attributes": ["dog"],
        "text": "a photo of a cat, and a dog."}


@pytest.mark.parametrize("records, message", [
    ([], "x: expected a non-empty JSON list of prompt records"),
    ({"0": {}}, "x: expected a non-empty JSON list of prompt records"),
    (["a photo"], "x: record 0 has no 'text'"),
    ([{"unique_id": 0}], "x: record 0 has no 'text'"),
    ([{"unique_id": 0, "text": "t", "obj_1_attributes": []}], "x: record 0 lacks obj_1_attributes"),
    ([{"unique_id": 0, "text": "t", "obj_1_attributes": "apple"}], "x: record 0 lacks obj_1_attributes"),
    ([{"unique_id": 0, "text": "t", "obj_1_attributes": ["a"], "obj_2_attributes": [3]}],
     "x: record 0 lacks obj_2_attributes"),
])
def test_validate_records_names_the_problem(records, message):
    with pytest.raises(mg.MultiGenError, match="^" + message.replace("(", r"\(") + "$"):
        mg.validate_records(records, "x", num_ins=2)


def test_sample_prompts_defaults_and_distinct_categories():
    cats = ["a", "b", "c", "d", "e"]
    assert mg.sample_prompts(cats, 4) == mg.sample_prompts(cats, 4, seed=0)
    for r in mg.sample_prompts(cats, 20):                             # k = 5 of 5: each a permutation
        assert sorted(mg.prompt_categories(r)) == cats
    with pytest.raises(mg.MultiGenError, match="^number of prompts must be positive, got 0$"):
        mg.sample_prompts(cats, 0)


def test_image_seed_fixed_values():
    """sha256 of "multigen/<base>/<prompt>/<index>", first 8 bytes little-endian, top bit cleared."""
    assert mg.image_seed(0, 0) == 1663259037877018254
    assert mg.image_seed(3, 7) == 2775117037694797827                # odd, and its raw top bit was set
    assert mg.image_seed(3, 7, 2) == 3988689571117163702
    assert mg.image_seed(3, 7, base_seed=0) == mg.image_seed(3, 7)


def test_blacked_out_images_are_counted(tmp_path):
    from PIL import Image
    Image.new("RGB", (4, 4)).save(tmp_path / "0_0.png")
    Image.new("RGB", (4, 4), (1, 0, 0)).save(tmp_path / "0_1.png")     # one dark-red pixel value: not black
    Image.new("L", (4, 4), 0).save(tmp_path / "1_0.png")
    assert mg.is_blacked_out(tmp_path / "0_0.png") and not mg.is_blacked_out(tmp_path / "0_1.png")
    assert mg.count_blacked_out(tmp_path) == 2


# --------------------------------------------------------------------------- McNemar and verdicts

def test_mcnemar_hand_cases_and_truthy_inputs():
    # (3, 1) discordant: two-sided exact p = 2 * P(X <= 1 | n=4) = 2 * 5/16
    assert mg.mcnemar_exact([1, 1, 1, 0, 1], [0, 0, 0, 1, 1]) == (3, 1, pytest.approx(0.625))
    assert mg.mcnemar_exact(np.array([2, 3, 0, 1]), np.array([0, 0, 2, 2])) == (2, 1, pytest.approx(1.0))


def _scores(rows):
    return pd.DataFrame([{"checkpoint": c, "prompt_set": "coco", "k": k, "mean": m, "ci_low": lo, "ci_high": hi}
                         for c, k, m, lo, hi in rows])


def _reported(rows):
    return pd.DataFrame([{"study": "report", "key": key, "name": f"Report {key}", "prompt_set": "coco", "k": k,
                          "mean": m, "std": 1.5, "source": "t"} for key, k, m in rows])


def test_verdicts_hand_cases():
    scores = _scores([("other", 2, 50.0, 40.0, 60.0),        # not paired: skipped, later rows still seen
                      ("a", 3, 50.0, 40.0, 60.0),            # no reported row for k=3: skipped
                      ("a", 2, 50.0, 40.0, 60.0), ("a", 4, 30.0, 20.0, 30.0), ("a", 5, 10.0, 5.0, 8.0),
                      ("b", 2, 70.0, 65.0, 75.0), ("a", 1, 90.0, 85.0, 95.0)])
    rep = _reported([("A", 2, 40.0), ("A", 4, 30.0), ("A", 5, 9.0), ("B", 2, 60.0), ("A", 1, 90.0)])
    v = mg.verdicts(scores, rep, {"a": ("report", "A"), "b": ("report", "B")})
    assert list(v.columns) == ["checkpoint", "reported as", "prompt_set", "k", "ours", "ci_low", "ci_high",
                               "reported", "reported_std", "ours − reported", "verdict"]
    assert v[["checkpoint", "k", "verdict"]].values.tolist() == [
        ["a", 2, "consistent"], ["a", 4, "consistent"], ["a", 5, "ours lower"], ["b", 2, "ours higher"]]
    assert v["ours"].tolist() == [50.0, 30.0, 10.0, 70.0] and v["ci_low"].tolist() == [40.0, 20.0, 5.0, 65.0]
    assert v["ci_high"].tolist() == [60.0, 30.0, 8.0, 75.0] and v["reported_std"].tolist() == [1.5] * 4
    assert v["ours − reported"].tolist() == [10.0, 0.0, 1.0, 10.0] and v["reported as"].iloc[0] == "Report A"
    empty = mg.verdicts(scores, rep, {})
    assert empty.empty and list(empty.columns) == list(v.columns)


def test_score_run_interval_uses_its_bootstrap_options_on_spread_data():
    """Many prompts with uneven image counts: the interval moves with n_boot and the seed."""
    rng = np.random.default_rng(5)
    records = [mg.make_record(i, CATS) for i in range(25)]
    results = {mg.image_id(p, j): d(*[(c, 0.9) for c in CATS[:int(rng.integers(0, 6))]])
               for p in range(25) for j in range(int(rng.integers(1, 10)))}
    cells = mg.cell_table(results, records)
    default = mg.score_run(results, records)
    assert [(r.ci_low, r.ci_high) for r in default.itertuples()] == [mg.bootstrap_ci(cells, k) for k in range(1, 6)]
    seeded = mg.score_run(results, records, n_boot=300, seed=3)
    assert [(r.ci_low, r.ci_high) for r in seeded.itertuples()] == [mg.bootstrap_ci(cells, k, 300, 3)
                                                                     for k in range(1, 6)]
    assert [(r.ci_low, r.ci_high) for r in seeded.itertuples()] != [mg.bootstrap_ci(cells, k, 300, 0)
                                                                     for k in range(1, 6)]
