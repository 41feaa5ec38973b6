"""Grounded-SAM (reprolib.gsam): the original's prompt/matching logic, resumable runs, tiny models, QA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _require import need
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


def test_annotate_resumes_after_a_crash_without_redoing_work(tiny_set, tmp_path):
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


_KILLED_ANNOTATION = """
import torch
torch.set_num_threads({threads})
import _kill
_kill.hang_in_write({pattern!r}, 1, {marker!r})        # SIGKILLed while writing the third image's first file
import test_gsam as tg
from reprolib import data, gsam
root = {root!r}
gsam.annotate(data.read_metadata(root + "/metadata.jsonl"), root, {out!r}, tg.tiny_gsam(), batch_size=1,
              progress=False)
"""


def tiny_gsam():
    """The tiny random Grounded-SAM (same weights in every process), thresholds 0 so that it finds boxes."""
    from reprolib.miniworld import CATEGORIES
    return gsam.GroundedSAM(*gsam.tiny_grounding_dino(CATEGORIES, seed=0), *gsam.tiny_sam("sam"),
                            box_threshold=0.0, text_threshold=0.0)


def test_annotation_sigkilled_mid_write_resumes_to_the_uninterrupted_result(tiny_set, tmp_path):
    """Grounded-SAM SIGKILLed while writing the third image's masks, then resumed: the two finished images
    are not redone, no half-written file is left, and records and masks equal an uninterrupted run's."""
    import _kill
    root, rows = tiny_set
    rows = rows[:4]
    ref = gsam.annotate(rows, root, tmp_path / "full", tiny_gsam(), batch_size=1, progress=False)
    (tmp_path / "in").mkdir()
    data.write_metadata(tmp_path / "in" / "metadata.jsonl", rows)
    for r in rows:
        (tmp_path / "in" / r["file_name"]).write_bytes((root / r["file_name"]).read_bytes())
    out, marker = tmp_path / "killed", tmp_path / "marker"
    third = f"*/{data.SEG_DIR}/{data.image_id(rows[2]['file_name'])}/*"
    _kill.run_killed(_KILLED_ANNOTATION.format(threads=torch.get_num_threads(), pattern=third, marker=str(marker),
                                               root=str(tmp_path / "in"), out=str(out)), marker.exists)
    assert len(_kill.leftovers(out)) == 1 and not (out / "metadata.jsonl").exists()
    res = gsam.annotate(rows, tmp_path / "in", out, tiny_gsam(), batch_size=1, progress=False)
    assert (res.processed, res.skipped) == (2, 2) and res.rows == ref.rows
    assert _kill.leftovers(out) == []
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(tmp_path / "full") for p in (tmp_path / "full").rglob("*") if p.is_file())
    for rel in made:
        if rel.suffix == ".png":
            assert (out / rel).read_bytes() == (tmp_path / "full" / rel).read_bytes(), rel
    assert sum(len([p for _, p in r["attn_list"] if p]) for r in ref.rows) > 0         # masks were made


def test_annotate_redoes_images_made_by_another_model(tiny_set, tmp_path):
    root, rows = tiny_set
    first = FakeGSAM()
    first.identity = {"backend": "transformers", "detector": "a"}
    gsam.annotate(rows[:3], root, tmp_path, first, progress=False)
    same = FakeGSAM()
    same.identity = {"backend": "transformers", "detector": "a", "packages": {"torch": "other"}}
    assert gsam.annotate(rows[:3], root, tmp_path, same, progress=False).processed == 0    # versions do not count
    other = FakeGSAM()
    other.identity = {"backend": "official", "detector": {"sha256": "x"}}
    res = gsam.annotate(rows[:3], root, tmp_path, other, progress=False)
    assert res.processed == 3 and other.images == 3
    assert gsam.signature(other)["identity"]["backend"] == "official"


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


# --------------------------------------------------------------------------- box bound (both backends)

def test_transformers_backend_bounds_boxes_per_call_without_changing_masks(tiny_set, tiny_detector):
    root, rows = tiny_set
    images = [data.open_image(root / rows[0]["file_name"]).convert("RGB")]
    boxes = [torch.tensor([[2.0, 3, 40, 50], [10, 10, 60, 30], [0, 0, 64, 64], [20, 5, 30, 60], [5, 40, 50, 63]])]
    whole = gsam.GroundedSAM(*tiny_detector, *gsam.tiny_sam("sam_hq"), max_boxes=64)
    bounded = gsam.GroundedSAM(*tiny_detector, *gsam.tiny_sam("sam_hq"), max_boxes=2)
    a, b = whole.segment(images, boxes)[0], bounded.segment(images, boxes)[0]
    assert (whole.calls["sam_calls"], bounded.calls["sam_calls"]) == (1, 3)
    assert a.shape == b.shape == (5, 64, 64) and (a != b).mean() < 1e-3       # logits equal to float rounding
    with pytest.raises(ValueError, match="sam_max_boxes"):
        gsam.GroundedSAM(*tiny_detector, *gsam.tiny_sam("sam"), max_boxes=0)


# --------------------------------------------------------------------------- official backend (groundingdino-py, SAM-HQ)

def _need_official():
    """The official packages are part of the `gsam` extra that CI installs: missing there is a failure
    (``CI`` or ``REPROLIB_REQUIRE_GSAM=1``)."""
    import os
    try:
        from reprolib.gsam_official import require_packages
        require_packages()
    except ImportError as e:
        if os.environ.get("CI"):
            raise
        need(False, str(e), "gsam")


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    _need_official()
    from reprolib import gsam_official as go
    folder = tmp_path_factory.mktemp("gsam_ck")
    go.write_random_checkpoints(folder, "small", ("sam_hq", "sam"), seed=3)
    return folder


def test_random_checkpoints_have_the_official_layout(official_dir):
    from reprolib import gsam_official as go
    man = go.read_manifest(official_dir)
    assert man["random"] and {man["groundingdino"]["file"], man["sam_hq"]["file"], man["sam"]["file"]} == {
        "groundingdino_swint_ogc.pth", "sam_hq_vit_h.pth", "sam_vit_h_4b8939.pth"}
    ck = torch.load(official_dir / "groundingdino_swint_ogc.pth", weights_only=True)
    assert set(ck) == {"model"} and "backbone.0.patch_embed.proj.weight" in ck["model"]
    assert ck["model"]["backbone.0.patch_embed.proj.weight"].shape == (96, 3, 4, 4)       # Swin-T, as the OGC file
    sam = torch.load(official_dir / "sam_hq_vit_h.pth", weights_only=True)
    assert "mask_decoder.hf_token.weight" in sam and "mask_decoder.hf_token.weight" not in torch.load(
        official_dir / "sam_vit_h_4b8939.pth", weights_only=True)
    tok = __import__("transformers").AutoTokenizer.from_pretrained(official_dir / "bert")
    assert tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [101, 102, 1012, 1029]    # bert-base-uncased's


@pytest.mark.parametrize("segmenter", ["sam_hq", "sam"])
def test_official_backend_end_to_end_on_two_images(official_dir, tiny_set, tmp_path, tokenizer, segmenter):
    from reprolib import gsam_official as go
    root, rows = tiny_set
    model = go.load_official(official_dir, segmenter, box_threshold=0.0, text_threshold=0.0, max_boxes=7,
                             resize=(128, 128))
    assert model.identity["random_weights"] and model.identity["packages"]["groundingdino-py"]
    assert model.identity["segmenter"]["sha256"] == go.read_manifest(official_dir)[segmenter]["sha256"]
    images = [data.open_image(root / r["file_name"]).convert("RGB") for r in rows[:2]]
    nouns = [[n for n, _ in r["attn_list"]] for r in rows[:2]]
    dets = model.detect(images, [gsam.grounding_prompt(n) for n in nouns])
    for d, im in zip(dets, images):
        assert d.boxes.shape == (20, 4)                                    # threshold 0: all 20 queries
        assert (d.boxes[:, 2:] >= d.boxes[:, :2]).all() and d.boxes.abs().max() < 4 * max(im.size)
    segs = model.segment(images, [d.boxes for d in dets])
    assert [s.shape for s in segs] == [(20, 64, 64)] * 2 and segs[0].dtype == bool
    assert model.calls["sam_calls"] == 6                                   # 20 boxes in chunks of 7, per image
    assert model.segment(images[:1], [torch.zeros(0, 4)])[0].shape == (0, 64, 64)
    res = gsam.annotate(rows[:2], root, tmp_path, model, batch_size=2, progress=False)
    assert res.processed == 2 and model.calls["detect_images"] == 4
    recs = data.load_records(tmp_path, image_dir=root, check_files=True)
    assert sum(len(r.grounded) for r in recs) > 0
    for rec in recs:
        ex = data.load_example(rec, 64, tokenizer)
        assert ex["masks"].shape[0] == len(rec.grounded) and ex["n_skipped"] == 0
    again = gsam.annotate(rows[:2], root, tmp_path, model, batch_size=2, progress=False)
    assert (again.processed, again.skipped) == (0, 2) and again.rows == res.rows


def test_official_box_conversion_matches_the_original_order_of_operations():
    from reprolib.gsam_official import cxcywh_to_xyxy_pixels
    b = torch.tensor([[0.5, 0.25, 0.2, 0.5], [0.1, 0.9, 0.3, 0.1]])
    out = cxcywh_to_xyxy_pixels(b, 200, 100)
    torch.testing.assert_close(out, torch.tensor([[80.0, 0.0, 120.0, 50.0], [-10.0, 85.0, 50.0, 95.0]]))
    ref = b.clone()
    for i in range(len(ref)):                     # gen_mask.py's loop, verbatim maths
        ref[i] = ref[i] * torch.Tensor([200, 100, 200, 100])
        ref[i][:2] -= ref[i][2:] / 2
        ref[i][2:] += ref[i][:2]
    assert torch.equal(out, ref)


def test_official_checkpoints_are_checked(official_dir, tmp_path):
    import shutil
    from reprolib import gsam_official as go
    from reprolib.io import ChecksumError
    bad = tmp_path / "bad"
    shutil.copytree(official_dir, bad)
    with open(bad / "sam_hq_vit_h.pth", "ab") as f:
        f.write(b"x")
    with pytest.raises(ChecksumError, match="sam_hq_vit_h.pth"):
        go.fetch_checkpoints(bad, "sam_hq")
    # the shipped manifest: URLs and published sha256 for the authors' files; nothing is downloaded when absent
    man = go.read_manifest(None)
    assert man["groundingdino"]["sha256"].startswith("3b3ca256") and man["sam_hq"]["sha256"].startswith("a7ac14a0")
    assert all(u.startswith("https://") for k in ("groundingdino", "sam_hq", "sam") for u in man[k]["urls"])
    # a file that is not a state dict of the model is refused, naming the keys
    other = tmp_path / "other.pth"
    torch.save({"model": {"not.a.key": torch.zeros(1)}}, other)
    with pytest.raises(go.CheckpointError, match=r"other\.pth: does not fit .*missing .*unexpected not\.a\.key"):
        go.load_weights(go.build_sam(True, go.SMALL_SAM), other, key="model")
    torch.save({"model": {"x": object()}}, other)                     # needs unpickling: weights_only refuses
    with pytest.raises(go.CheckpointError, match="weights-only"):
        go.load_weights(go.build_sam(True, go.SMALL_SAM), other, key="model")


def test_bert_shim_matches_transformers_bert(official_dir):
    _need_official()
    from transformers import BertModel
    from reprolib.gsam_official import _BertForGroundingDINO
    bert = BertModel.from_pretrained(official_dir / "bert").eval()
    ids = torch.tensor([[101, 1030, 1012, 1031, 1012, 102]])
    mask2 = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask2).last_hidden_state
        ours = _BertForGroundingDINO(bert)(ids, attention_mask=mask2[:, None, :].expand(1, 6, 6))["last_hidden_state"]
    torch.testing.assert_close(ours[:, :4], ref[:, :4], atol=1e-5 * ref.abs().max().item(), rtol=0)


def test_backends_agree_on_the_same_weights(official_dir, tiny_set):
    """The official checkpoints converted into transformers' models (gsam_official.transformers_twin).

    GroundingDINO: same pixels in → same logits and boxes (to float rounding). SAM: same boxes in → masks
    agree on all but a few boundary pixels (the two resize the image with different code). SAM-HQ:
    transformers' port (5.x) upsamples the mask decoder's *input* image embedding instead of the two-way
    transformer's output, so its masks differ from the authors' code — measured, not hidden.
    """
    from reprolib import gsam_official as go
    root, rows = tiny_set
    image = data.open_image(root / rows[0]["file_name"]).convert("RGB")
    prompt = gsam.grounding_prompt([n for n, _ in rows[0]["attn_list"]])
    out = {}
    for seg in ("sam", "sam_hq"):
        off = go.load_official(official_dir, seg, box_threshold=0.0, text_threshold=0.0, resize=(128, 128))
        twin = go.transformers_twin(official_dir, seg, box_threshold=0.0, text_threshold=0.0, resize=(128, 128))
        lo, bo, _ = off.detect_logits(image, prompt)
        pixels, _ = off._transform()(image, None)
        enc = twin.detector_processor.tokenizer([prompt.lower()], return_tensors="pt")
        with torch.no_grad():
            hf = twin.detector(pixel_values=pixels[None], **enc)
        n = enc["input_ids"].shape[1]
        torch.testing.assert_close(hf.logits.sigmoid()[0, :, :n], lo[:, :n], atol=1e-4, rtol=0)
        torch.testing.assert_close(hf.pred_boxes[0], bo, atol=1e-4, rtol=0)
        boxes = off.detect([image], [prompt])[0].boxes[:8]
        out[seg] = (off.segment([image], [boxes])[0] != twin.segment([image], [boxes])[0]).mean()
    assert out["sam"] < 0.01                      # pixels that flip at the logit-0 boundary only
    assert out["sam_hq"] > 10 * max(out["sam"], 1e-4)   # the port's SAM-HQ decoder difference
