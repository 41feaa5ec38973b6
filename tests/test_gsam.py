"""Grounded-SAM (reprolib.gsam): the original's prompt/matching logic, resumable runs, tiny models, QA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reprolib import data, gsam
from reprolib.data import DataError, Noun, Record


# --------------------------------------------------------------------------- the original's text logic

def test_grounding_prompt():
    assert gsam.grounding_prompt(["Plate", "chocolate spread", "Silk"]) == "plate . chocolate spread . silk."
    assert gsam.grounding_prompt(["cat."]) == "cat."


@pytest.mark.parametrize("phrase, words, expected", [
    ("horse", ["horse", "field"], "horse"),                                    # exact
    ("tv", ["TV", "man"], "TV"),                                              # upper-cased
    ("plate", ["Plate", "bread"], "Plate"),                                    # found by the word scan
    ("t - shirt", ["T-shirt", "t-shirt"], "t-shirt"),                          # BERT's split hyphen
    ("horse", ["top horse", "man"], "top horse"),                              # phrase is a word of the noun
    ("tank birthday", ["tank birthday cake"], "tank birthday cake"),           # substring
    ("a red dump truck", ["a red and blue dump truck", "ardula", "a city street"], "a red and blue dump truck"),
    ("", ["dog", "cat"], "dog"),                                               # quirk: empty phrase → first noun
    ("zebra", ["dog", "cat"], None),
])
def test_match_phrase_follows_the_original(phrase, words, expected):
    assert gsam.match_phrase(phrase, words) == expected


def test_match_phrase_substring_scan_overrides_word_scan():
    # word scan: "cats" is a word of "cats toy"; the substring scan then finds "cat" in "cats" and wins
    assert gsam.match_phrase("cats", ["cat", "cats toy"]) == "cat"
    assert gsam.match_phrase("top horse", ["horse", "top"]) == "horse"      # both scans: first noun in list


def test_aggregate_and_assign_masks():
    a = np.zeros((4, 4), bool); a[0] = True
    b = np.zeros((4, 4), bool); b[1] = True
    c = np.zeros((4, 4), bool); c[2] = True
    agg = gsam.aggregate_masks([a, b, c], ["cat", "dog", "cat"])
    assert list(agg) == ["cat", "dog"]
    np.testing.assert_array_equal(agg["cat"], a | c)
    out = gsam.assign_masks({"cat": a, "kitty cat": b, "zebra": c}, ["cat", "dog"])
    assert list(out) == ["cat"]
    np.testing.assert_array_equal(out["cat"], b)                 # the later phrase overwrote the file


# --------------------------------------------------------------------------- resumable run (fake models)

class _Killed(Exception):
    pass


class FakeGSAM:
    """Deterministic stand-in: the mask of noun k is row k; nouns containing 'o' are 'not detected'."""

    def __init__(self, die_after: int | None = None):
        self.images = 0
        self.die_after = die_after

    def masks_for(self, images, noun_lists):
        if self.die_after is not None and self.images >= self.die_after:
            raise _Killed()
        self.images += len(images)
        out = []
        for im, nouns in zip(images, noun_lists):
            d = {}
            for k, n in enumerate(nouns):
                if "o" not in n:
                    m = np.zeros((im.height, im.width), bool)
                    m[k] = True
                    d[n] = m
            out.append(d)
        return out


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data.make_tiny_dataset(root, 7, seed=5, progress=False)
    return root, data.read_metadata(root / "metadata.jsonl")


def test_annotate_writes_layout_and_nulls(tiny_set, tmp_path):
    root, rows = tiny_set
    res = gsam.annotate(rows, root, tmp_path, FakeGSAM(), batch_size=3, progress=False)
    assert res.processed == 7 and res.skipped == 0
    assert data.read_metadata(tmp_path / "metadata.jsonl") == res.rows
    for row, out in zip(rows, res.rows):
        assert [n for n, _ in out["attn_list"]] == [n for n, _ in row["attn_list"]]
        for k, (noun, path) in enumerate(out["attn_list"]):
            if "o" in noun:
                assert path is None
            else:
                assert path == data.mask_relpath(data.image_id(row["file_name"]), noun)
                m = data.read_mask(tmp_path / path)
                assert m[k].all() and m.sum() == m.shape[1]
    recs = data.load_records(tmp_path, image_dir=root, check_files=True)
    assert len(recs) == 7


def test_annotate_resumes_after_a_kill_without_redoing_work(tiny_set, tmp_path):
    root, rows = tiny_set
    ref = gsam.annotate(rows, root, tmp_path / "ref", FakeGSAM(), batch_size=2, progress=False).rows
    killed = FakeGSAM(die_after=4)                     # dies when asked for the 3rd batch
    with pytest.raises(_Killed):
        gsam.annotate(rows, root, tmp_path / "run", killed, batch_size=2, progress=False)
    assert killed.images == 4 and not (tmp_path / "run" / "metadata.jsonl").exists()
    again = FakeGSAM()
    res = gsam.annotate(rows, root, tmp_path / "run", again, batch_size=2, progress=False)
    assert (res.processed, res.skipped, again.images) == (3, 4, 3)
    assert res.rows == ref
    third = FakeGSAM()
    assert gsam.annotate(rows, root, tmp_path / "run", third, progress=False).processed == 0 and third.images == 0


def test_annotate_limit_and_bad_inputs(tiny_set, tmp_path):
    root, rows = tiny_set
    res = gsam.annotate(rows, root, tmp_path / "a", FakeGSAM(), limit=2, progress=False)
    assert len(res.rows) == 2 and len(data.read_metadata(tmp_path / "a" / "metadata.jsonl")) == 2
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        gsam.annotate(rows, root, tmp_path / "b", FakeGSAM(), batch_size=0)
    with pytest.raises(DataError, match=r"000000000000\.png: image not found"):
        gsam.annotate(rows, tmp_path / "nowhere", tmp_path / "c", FakeGSAM(), progress=False)


# --------------------------------------------------------------------------- tiny models end to end

@pytest.fixture(scope="module")
def tiny_detector():
    from reprolib.miniworld import CATEGORIES
    return gsam.tiny_grounding_dino(CATEGORIES, seed=0)


@pytest.mark.parametrize("segmenter", ["sam", "sam_hq"])
def test_tiny_grounded_sam_end_to_end(tiny_set, tiny_detector, tmp_path, tokenizer, segmenter):
    root, rows = tiny_set
    model = gsam.GroundedSAM(*tiny_detector, *gsam.tiny_sam(segmenter), box_threshold=0.0, text_threshold=0.0)
    images = [data.open_image(root / r["file_name"]).convert("RGB") for r in rows[:2]]
    nouns = [[n for n, _ in r["attn_list"]] for r in rows[:2]]
    dets = model.detect(images, [gsam.grounding_prompt(n) for n in nouns])
    vocab = {w for ns in nouns for w in ns} | {"[SEP]"}
    for d in dets:
        assert d.boxes.shape == (20, 4) and d.scores.shape == (20,)           # threshold 0: every query
        assert all(set(p.replace(".", " ").split()) <= vocab for p in d.phrases)   # tokens of the prompt only
        assert (d.boxes[:, 2:] >= d.boxes[:, :2]).all()
    segs = model.segment(images, [d.boxes[:3] for d in dets])
    assert [s.shape for s in segs] == [(3, 64, 64), (3, 64, 64)] and segs[0].dtype == bool
    assert model.segment(images[:1], [torch.zeros(0, 4)])[0].shape == (0, 64, 64)

    res = gsam.annotate(rows[:2], root, tmp_path, model, batch_size=2, progress=False)
    assert res.processed == 2 and model.calls["detect_images"] == 4
    recs = data.load_records(tmp_path, image_dir=root, check_files=True)
    for rec in recs:
        ex = data.load_example(rec, 64, tokenizer)
        assert ex["masks"].shape[0] == len(rec.grounded) and ex["n_skipped"] == 0


def test_load_grounded_sam_rejects_unknown_segmenter():
    with pytest.raises(ValueError, match="segmenter must be 'sam' or 'sam_hq', got 'sam2'"):
        gsam.load_grounded_sam("tiny", "sam2", "tiny")


def test_tiny_models_are_seeded():
    a, _ = gsam.tiny_sam("sam", seed=1)
    b, _ = gsam.tiny_sam("sam", seed=1)
    c, _ = gsam.tiny_sam("sam", seed=2)
    pa, pb, pc = (next(m.mask_decoder.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# --------------------------------------------------------------------------- QA

def _records(tmp_path, spec):
    """spec: {file_name: {noun: mask or None}} → records with masks saved under tmp_path."""
    recs = []
    for fn, nouns in spec.items():
        ns = []
        for noun, m in nouns.items():
            path = None
            if m is not None:
                path = tmp_path / data.mask_relpath(data.image_id(fn), noun)
                data.save_mask(path, m)
            ns.append(Noun(noun, path))
        recs.append(Record(fn, tmp_path / fn, "x", tuple(ns)))
    return recs


def test_coverage_table_counts(tmp_path):
    m = np.ones((4, 4), bool)
    recs = _records(tmp_path, {"1.png": {"Cat": m, "dog": None}, "2.png": {"cat": None, "dog": m}, "3.png": {"cat": m}})
    t = gsam.coverage_table(recs)
    assert list(t.noun) == ["cat", "dog", "(all nouns)"]
    assert list(t["count"]) == [3, 2, 5] and list(t.with_mask) == [2, 1, 3]
    assert t.coverage.tolist() == pytest.approx([2 / 3, 1 / 2, 3 / 5])
    assert list(gsam.coverage_table(recs, top=1).noun) == ["cat", "(all nouns)"]


def test_mask_iou_by_hand():
    a = np.zeros((4, 4), bool); a[:2] = True           # 8 pixels
    b = np.zeros((4, 4), bool); b[1:3] = True          # 8 pixels, 4 shared
    assert gsam.mask_iou(a, b) == pytest.approx(4 / 12)
    assert gsam.mask_iou(a, a) == 1.0
    assert math.isnan(gsam.mask_iou(np.zeros((2, 2)), np.zeros((2, 2))))
    with pytest.raises(DataError, match="shapes differ"):
        gsam.mask_iou(a, np.zeros((2, 2)))


def test_mask_iou_table_and_summary(tmp_path):
    a = np.zeros((4, 4), bool); a[:2] = True
    b = np.zeros((4, 4), bool); b[1:3] = True
    regen = _records(tmp_path / "r", {"1.png": {"cat": a, "dog": None, "cup": a}, "9.png": {"cat": a}})
    ref = _records(tmp_path / "o", {"1.png": {"cat": b, "dog": b, "cup": None}})
    t = gsam.mask_iou_table(regen, ref)
    assert list(t.noun) == ["cat", "dog", "cup"]                                  # 9.png has no reference
    assert t.iou[0] == pytest.approx(1 / 3) and t.iou[1:].isna().all()
    s = gsam.iou_summary(t).iloc[0]
    assert (s.nouns, s.both_masked, s.only_regenerated, s.only_reference, s.neither) == (3, 1, 1, 1, 0)
    assert s.mean_iou == pytest.approx(1 / 3)
    ref[0].nouns[0].mask.unlink()                                               # flags need no files
    flags = gsam.mask_iou_table(regen, ref, iou=False)
    assert flags[["regenerated", "reference"]].equals(t[["regenerated", "reference"]]) and flags.iou.isna().all()


def test_summary_table(tmp_path):
    m = np.ones((4, 4), bool)
    recs = _records(tmp_path, {"1.png": {"cat": m, "dog": None}, "2.png": {"cat": m}})
    s = gsam.summary_table({"a": recs, "none": []})
    assert s.iloc[0][["records", "nouns", "with_mask"]].tolist() == [2, 3, 2]
    assert s.coverage[0] == pytest.approx(2 / 3) and s.nouns_per_record[0] == 1.5
    assert s.records[1] == 0 and math.isnan(s.coverage[1])


def test_qa_figure(tiny_set):
    import matplotlib.pyplot as plt
    root, _ = tiny_set
    recs = data.load_records(root)
    fig = gsam.qa_figure(recs, n=5, ncols=3)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 5 and len(fig.axes) == 6
    assert [t.get_text() for t in images[0].get_legend().get_texts()] == [n.phrase for n in recs[0].nouns]
    plt.close(fig)
    with pytest.raises(DataError, match="no records"):
        gsam.qa_figure([])
