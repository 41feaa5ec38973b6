"""Training records (reprolib.data): layout round trip, the original's transforms, bad inputs, nouns, downloads."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reprolib import data
from reprolib.data import DataError, Noun, Record
from reprolib.io import ChecksumError, sha256_file


# --------------------------------------------------------------------------- helpers

def _scene(h: int = 48, w: int = 64):
    """An image with two flat objects and their exact masks (hand-made, no miniworld)."""
    img = np.full((h, w, 3), 220, np.uint8)
    a = np.zeros((h, w), bool)
    a[5:20, 5:25] = True
    b = np.zeros((h, w), bool)
    b[25:40, 30:60] = True
    img[a] = (200, 30, 30)
    img[b] = (30, 30, 200)
    return img, "a photo of a star and a teddy bear.", {"star": a, "teddy bear": b}


@pytest.fixture()
def written(tmp_path):
    items = [_scene(), _scene(40, 40)]
    items[1] = (items[1][0], "a circle", {"circle": np.zeros((40, 40), bool)})   # empty mask → null
    rows = data.write_records(tmp_path, items, progress=False)
    return tmp_path, items, rows


# --------------------------------------------------------------------------- layout

def test_mask_paths_match_every_original_record(metadata_records):
    """The authors' 13,634 mask paths all follow seg/<id>/mask_<id>_<noun with _>.png."""
    n = 0
    for row in metadata_records:
        iid = data.image_id(row["file_name"])
        for noun, path in row["attn_list"]:
            if path is not None:
                assert path == data.mask_relpath(iid, noun)
                n += 1
    assert n > 10000


def test_read_metadata_reads_the_original_file(shared_dir):
    rows = data.read_metadata(shared_dir / "metadata.jsonl")
    assert len(rows) == 4526
    assert rows[0]["file_name"] == "000000000142.jpg"
    assert ["chocolate spread", "seg/000000000142/mask_000000000142_chocolate_spread.png"] in rows[0]["attn_list"]


def test_mask_relpath_rules():
    assert data.mask_relpath("0042", "teddy bear") == "seg/0042/mask_0042_teddy_bear.png"
    assert data.mask_relpath("0042", "AC/DC") == "seg/0042/mask_0042_AC_DC.png"
    assert data.image_id("dir/000000000142.jpg") == "000000000142"


def test_round_trip(written):
    root, items, rows = written
    recs = data.load_records(root, check_files=True)
    assert [r.file_name for r in recs] == ["000000000000.png", "000000000001.png"]
    assert [data.record_to_row(r, root) for r in recs] == rows == data.read_metadata(root / "metadata.jsonl")
    assert recs[0].nouns[1] == Noun("teddy bear", root / "seg/000000000000/mask_000000000000_teddy_bear.png")
    assert recs[1].nouns == (Noun("circle", None),) and recs[1].grounded == []
    for noun in recs[0].nouns:
        np.testing.assert_array_equal(data.read_mask(noun.mask), items[0][2][noun.phrase])
    np.testing.assert_array_equal(np.asarray(Image.open(recs[0].image)), items[0][0])
    assert Image.open(recs[0].nouns[0].mask).mode == "RGBA"          # the authors' plt.imsave format


def test_original_seg_fallback(tmp_path):
    """The original loader looked for masks in <root>/../coco_gsam_seg/<id>/ too."""
    root = tmp_path / "coco_gsam_img"
    img, cap, masks = _scene()
    data.write_records(root, [(img, cap, masks)], progress=False)
    (tmp_path / "coco_gsam_seg").mkdir()
    os.rename(root / "seg" / "000000000000", tmp_path / "coco_gsam_seg" / "000000000000")
    rec = data.load_records(root, check_files=True)[0]
    assert rec.nouns[0].mask.resolve().parent == (tmp_path / "coco_gsam_seg" / "000000000000").resolve()


# --------------------------------------------------------------------------- load_example

def test_load_example_shapes_and_tokens(written, tokenizer):
    root, items, _ = written
    ex = data.load_example(data.load_records(root)[0], 32, tokenizer)
    assert ex["pixel_values"].shape == (3, 32, 32) and ex["input_ids"].shape == (77,)
    assert ex["pixel_values"].min() >= -1 and ex["pixel_values"].max() <= 1
    # "a photo of a star and a teddy bear." → <sot> a photo of a star and a teddy bear . → star=5, teddy bear=8,9
    assert ex["nouns"] == ["star", "teddy bear"] and ex["token_indices"] == [[5], [8, 9]]
    assert ex["masks"].shape == (2, 32, 32) and ex["masks"].max() == 1 and ex["n_skipped"] == 0
    assert ex["input_ids"][0] == 49406 and ex["input_ids"][-1] == 49407


def test_image_transform_resizes_short_side_then_center_crops(tmp_path, tokenizer):
    """A 2R×R image, left half black, right half white: the centre crop is black | white at the middle."""
    R = 16
    img = np.zeros((R, 2 * R, 3), np.uint8)
    img[:, R:] = 255
    Image.fromarray(img).save(tmp_path / "x.png")
    rec = Record("x.png", tmp_path / "x.png", "a cat", ())
    pv = data.load_example(rec, R, tokenizer)["pixel_values"]
    assert torch.all(pv[:, :, : R // 2 - 1] == -1) and torch.all(pv[:, :, R // 2 + 1:] == 1)


def test_uniform_colour_normalised_exactly(tmp_path, tokenizer):
    Image.fromarray(np.full((20, 30, 3), (255, 0, 51), np.uint8)).save(tmp_path / "c.png")
    pv = data.load_example(Record("c.png", tmp_path / "c.png", "x", ()), 8, tokenizer)["pixel_values"]
    torch.testing.assert_close(pv[:, 0, 0], torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]))


def test_mask_channel_and_max_normalisation(tmp_path):
    g = np.zeros((10, 10), np.uint8)
    g[2:8, 2:8] = 128                                        # 8-bit grey mask with max 128 → divided to 1
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    m = data.load_mask(tmp_path / "l.png", 10)
    assert m.shape == (1, 10, 10) and m.max() == 1 and m[0, 0, 0] == 0 and m[0, 4, 4] == 1
    rgba = np.dstack([g, np.zeros_like(g), np.zeros_like(g), np.full_like(g, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")   # channel 0 only, not the alpha
    torch.testing.assert_close(data.load_mask(tmp_path / "rgba.png", 10), m)
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(tmp_path / "z.png")
    assert data.load_mask(tmp_path / "z.png", 10).abs().sum() == 0


def test_noun_absent_from_caption_is_skipped_and_counted(written, tokenizer):
    root, _, rows = written
    rows[0]["attn_list"][0][0] = "zebra"                     # mask exists, word is not in the caption
    data.write_metadata(root / "metadata.jsonl", rows)
    ex = data.load_example(data.load_records(root)[0], 16, tokenizer)
    assert ex["nouns"] == ["teddy bear"] and ex["skipped"] == ["zebra"] and ex["n_skipped"] == 1
    assert ex["masks"].shape == (1, 16, 16)


def test_dataset_and_collate(written, tokenizer):
    root, _, _ = written
    ds = data.RecordDataset(data.load_records(root), 16, tokenizer)
    batch = data.collate_examples([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["input_ids"].shape == (2, 77)
    assert [m.shape[0] for m in batch["masks"]] == [2, 0] and batch["n_skipped"] == [0, 0]


# --------------------------------------------------------------------------- bad inputs

def test_missing_image(written, tokenizer):
    root, _, _ = written
    rec = data.load_records(root)[0]
    rec.image.unlink()
    with pytest.raises(DataError, match=r"000000000000\.png: image not found"):
        data.load_example(rec, 16, tokenizer)
    with pytest.raises(DataError, match="image not found"):
        data.load_records(root, check_files=True)


def test_unreadable_png(written, tokenizer):
    root, _, _ = written
    rec = data.load_records(root)[0]
    rec.nouns[0].mask.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"mask_000000000000_star\.png: unreadable mask"):
        data.load_example(rec, 16, tokenizer)


def test_truncated_png(written, tokenizer):
    root, _, _ = written
    rec = data.load_records(root)[0]
    raw = rec.image.read_bytes()
    rec.image.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"000000000000\.png: unreadable image"):
        data.load_example(rec, 16, tokenizer)


def test_mask_of_wrong_size(written, tokenizer):
    root, _, _ = written
    rec = data.load_records(root)[0]
    data.save_mask(rec.nouns[1].mask, np.ones((10, 10), bool))
    with pytest.raises(DataError, match=r"teddy_bear\.png: mask is 10x10 but its image is 64x48"):
        data.load_example(rec, 16, tokenizer)


def test_missing_mask(written, tokenizer):
    root, _, _ = written
    rec = data.load_records(root)[0]
    rec.nouns[0].mask.unlink()
    with pytest.raises(DataError, match=r"mask_000000000000_star\.png: mask not found"):
        data.load_example(rec, 16, tokenizer)
    with pytest.raises(DataError, match=r"mask not found \(noun 'star' of 000000000000\.png\)"):
        data.load_records(root, check_files=True)


@pytest.mark.parametrize("line, msg", [
    ("{not json", r"metadata\.jsonl:2: not JSON"),
    ('{"file_name": "a.png", "text": "x"}', r"metadata\.jsonl:2: field 'attn_list' missing"),
    ('{"file_name": "a.png", "text": "x", "attn_list": [["cat"]]}', r"metadata\.jsonl:2: attn_list item \['cat'\]"),
])
def test_bad_metadata_lines(tmp_path, line, msg):
    good = json.dumps({"file_name": "b.png", "text": "y", "attn_list": []})
    (tmp_path / "metadata.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=msg):
        data.load_records(tmp_path)


def test_bad_items_for_write_records(tmp_path):
    img, cap, masks = _scene()
    with pytest.raises(DataError, match="item 0: mask of 'star' is"):
        data.write_records(tmp_path, [(img, cap, {"star": np.zeros((3, 3), bool)})], progress=False)
    with pytest.raises(DataError, match="item 0: image must be uint8"):
        data.write_records(tmp_path, [(img.astype(np.float32), cap, masks)], progress=False)


# --------------------------------------------------------------------------- tiny dataset

def test_tiny_dataset_is_exact_and_resumable(tmp_path, tokenizer):
    from reprolib import miniworld
    recs = data.make_tiny_dataset(tmp_path, 6, seed=3, progress=False)
    scenes = miniworld.sample_scenes(6, 3, n_objects=[1, 1, 1, 1, 0])
    assert len(recs) == 6
    for rec, sc in zip(recs, scenes):
        assert rec.text == sc.caption and [n.phrase for n in rec.nouns] == sc.categories
        assert 1 <= len(rec.nouns) <= 4
        for n in rec.nouns:
            np.testing.assert_array_equal(data.read_mask(n.mask), sc.masks[n.phrase])
        ex = data.load_example(rec, 64, tokenizer)
        assert ex["n_skipped"] == 0 and len(ex["nouns"]) == len(rec.nouns)
    stamp = (tmp_path / "metadata.jsonl").stat().st_mtime_ns
    again = data.make_tiny_dataset(tmp_path, 6, seed=3, progress=False)
    assert again == recs and (tmp_path / "metadata.jsonl").stat().st_mtime_ns == stamp
    other = data.make_tiny_dataset(tmp_path, 4, seed=4, progress=False)       # other arguments: rewritten
    assert len(other) == 4 and len(data.read_metadata(tmp_path / "metadata.jsonl")) == 4
    assert [r.text for r in other] == [s.caption for s in miniworld.sample_scenes(4, 4, n_objects=[1, 1, 1, 1, 0])]


# --------------------------------------------------------------------------- downloads

def test_coco_sources_match_the_shared_checksums(shared_dir):
    src = data.coco_sources()
    sums = dict(reversed(line.split()) for line in (shared_dir / "SHA256SUMS").read_text().splitlines() if line)
    assert src["metadata"]["sha256"] == sums["metadata.jsonl"] == sha256_file(shared_dir / "metadata.jsonl")
    assert src["metadata"]["url"].endswith("/train/data/coco_gsam_img/train/metadata.jsonl")
    assert "{file_name}" in src["images"]["url_pattern"]


def test_fetch_metadata_verifies(shared_dir, tmp_path):
    url = (shared_dir / "metadata.jsonl").resolve().as_uri()
    dest = data.fetch_metadata(tmp_path / "original_metadata.jsonl", url=url)
    assert len(data.read_metadata(dest)) == 4526
    with pytest.raises(ChecksumError):
        data.fetch_metadata(tmp_path / "other.jsonl", url=url, sha256="0" * 64)
    assert not (tmp_path / "other.jsonl").exists()


def test_download_images_resumes_and_rejects_corrupt(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(src / f"{k}.jpg")
    (src / "bad.jpg").write_bytes(b"not an image")
    pattern = src.as_uri() + "/{file_name}"
    out = tmp_path / "images"
    assert data.download_images(["0.jpg", "1.jpg"], out, pattern, workers=2, progress=False) == \
        {"downloaded": 2, "present": 0}
    assert data.download_images(["0.jpg", "1.jpg", "2.jpg"], out, pattern, progress=False) == \
        {"downloaded": 1, "present": 2}
    with pytest.raises(DataError, match=r"1 of 2 images failed; first: bad\.jpg: .*bad\.jpg: unreadable image"):
        data.download_images(["0.jpg", "bad.jpg"], out, pattern, progress=False)
    assert not (out / "bad.jpg").exists()
    with pytest.raises(DataError, match="missing.jpg"):
        data.download_images(["missing.jpg"], out, pattern, progress=False)


# --------------------------------------------------------------------------- nouns

@pytest.mark.parametrize("tagged, expected", [
    ([("A", "DT"), ("teddy", "NN"), ("bear", "NN"), ("on", "IN"), ("a", "DT"), ("bed", "NN")], ["teddy bear", "bed"]),
    ([("surf", "NN"), ("##board", "NN"), ("##s", "NNS")], ["surfboards"]),          # word pieces glued
    ([("surf@@", "NN"), ("board", "NN")], ["surfboard"]),                          # BPE continuation
    ([("Silk", "NNP"), ("cats", "NNS"), ("run", "VBP"), ("dogs", "NNS")], ["Silk cats", "dogs"]),
    ([("big", "JJ"), ("##gest", "NN")], ["##gest"]),                               # a piece after a non-noun: kept raw
    ([("run", "VB")], []),
])
def test_merge_nouns_as_the_original(tagged, expected):
    assert data.merge_nouns(tagged) == expected


def test_extract_nouns_dedupes_in_order():
    fake = lambda text: [(w, "NN" if w in {"cat", "dog"} else "X") for w in text.split()]  # noqa: E731
    assert data.extract_nouns("cat and dog and cat", fake) == ["cat", "dog"]


def test_lexicon_tagger_finds_every_miniworld_noun():
    from reprolib import miniworld
    tagger = data.make_tagger("lexicon")
    for sc in miniworld.sample_scenes(20, 1):
        assert data.extract_nouns(sc.caption, tagger) == sc.categories


def test_hf_tagger_output_feeds_the_merge():
    """A tiny token-classification model forced to say NN: word pieces arrive as ##piece and are glued."""
    from transformers import BertConfig, BertForTokenClassification, BertTokenizer
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "surf", "##board", "on", "sea"]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, id2label={0: "DT", 1: "NN", 2: "IN"}, label2id={"DT": 0, "NN": 1, "IN": 2})
    model = BertForTokenClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    tagged = data.hf_tagger(model, tok)("surfboard sea")
    assert tagged == [("surf", "NN"), ("##board", "NN"), ("sea", "NN")]
    assert data.merge_nouns(tagged) == ["surfboard sea"]


def test_flair_tagger_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "flair", None)          # as if flair were not installed
    with pytest.raises(ImportError) as e:
        data.make_tagger("flair/pos-english")
    msg = str(e.value)
    assert "\n" not in msg and "data.pos_tagger 'flair/pos-english'" in msg and "pip install flair" in msg
    assert "-p data.pos_tagger none" in msg                                  # the explicit opt-out
    assert data.make_tagger("none") is None


def test_stage01_fails_without_the_papers_tagger_instead_of_skipping(monkeypatch):
    """Stage 01 on the paper profile without flair stops with that one-line error (it used to print
    "noun check skipped" and go on); with ``data.pos_tagger none`` it runs without the check."""
    import ast

    import nbformat

    from reprolib.config import load_profile
    monkeypatch.setitem(__import__("sys").modules, "flair", None)
    nb = nbformat.read(str(Path(__file__).resolve().parents[1] / "notebooks" / "01_preprocess.ipynb"), as_version=4)
    stmts = [s for c in nb.cells if c.cell_type == "code" for s in ast.parse(c.source).body
             if any(getattr(n, "attr", None) == "make_tagger" for n in ast.walk(s))]
    assert stmts, "stage 01 builds no noun tagger"
    code = compile(ast.Module(body=stmts, type_ignores=[]), "01_preprocess", "exec")
    with pytest.raises(ImportError, match="pip install flair"):
        exec(code, {"data": data, "P": load_profile("paper"), "print": print})
    ns = {"data": data, "P": load_profile("paper", {"data.pos_tagger": "none"}), "print": print}
    exec(code, ns)
    assert ns["tagger"] is None


def test_best_caption():
    scorer = lambda img, caps: np.array([len(c) for c in caps], float)  # noqa: E731
    assert data.best_caption(None, ["a cat", "a big cat", "a fat cat"], scorer) == "a big cat"   # first of ties
    assert data.best_caption(None, "only one", scorer) == "only one"
    with pytest.raises(DataError, match="scorer returned 1 scores for 2"):
        data.best_caption(None, ["a", "b"], lambda i, c: np.zeros(1))


def test_tiny_clip_scorer_and_records_from_captions(written):
    root, _, _ = written
    scorer = data.clip_scorer("tiny")
    scores = scorer(Image.open(root / "000000000000.png"), ["a star", "a teddy bear", "a circle"])
    assert scores.shape == (3,) and np.isfinite(scores).all()
    caps = ["a photo of a star", "a teddy bear"]
    rows = data.records_from_captions([(root / "000000000000.png", caps), (root / "000000000001.png", "a circle")],
                                      data.lexicon_tagger(["star", "teddy", "bear", "circle"]), scorer, progress=False)
    assert rows[0]["text"] == caps[int(np.argmax(scorer(Image.open(root / "000000000000.png"), caps)))]
    assert rows[1] == {"file_name": "000000000001.png", "text": "a circle", "attn_list": [["circle", None]]}
    with pytest.raises(DataError, match="several captions need a scorer"):
        data.records_from_captions([(root / "x.png", caps)], data.lexicon_tagger([]), None, progress=False)


def test_noun_agreement():
    rows = [{"file_name": "1.png", "text": "a cat and a dog", "attn_list": [["cat", None], ["dog", "x.png"]]},
            {"file_name": "2.png", "text": "a cat on a mat", "attn_list": [["cat", None]]}]
    t = data.noun_agreement(rows, data.lexicon_tagger(["cat", "dog", "mat"]), progress=False)
    assert t.exact.tolist() == [True, False] and t.extracted[1] == ["cat", "mat"]
    s = data.noun_agreement_summary(t).iloc[0]
    assert (s.records, s.same_nouns, s.recall, s.precision) == (2, 0.5, 1.0, 3 / 4)


def test_training_records(tmp_path):
    from reprolib.config import load_profile
    P = load_profile("tiny", {"data.n_images": 3})
    recs = data.training_records(P, tmp_path / "tiny")
    assert len(recs) == 3 and data.training_records(P, tmp_path / "tiny") == recs
    with pytest.raises(DataError, match=r"metadata\.jsonl: no training records; run stage 01"):
        data.training_records(load_profile("paper"), tmp_path / "paper")
