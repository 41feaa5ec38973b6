"""PIE-Bench: RLE masks as the official mask_decode, the mapping-file loader, the synthetic set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprolib import piebench as pb


def _loop_decode(encoded: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Independent oracle: set pixel by pixel, stop at the end of the array, then force the frame."""
    h, w = shape
    flat = [0.0] * (h * w)
    for s, n in zip(encoded[0::2], encoded[1::2]):
        for j in range(n):
            if s + j < h * w:
                flat[s + j] = 1.0
    m = np.array(flat).reshape(h, w)
    m[0, :] = m[-1, :] = 1
    m[:, 0] = m[:, -1] = 1
    return m


# --------------------------------------------------------------------------- mask_decode

def test_decode_hand_case_with_forced_border():
    # 5×6: flat 8, 9, 10 are row 1, columns 2..4; the frame is forced to 1.
    expected = np.array([
        [1, 1, 1, 1, 1, 1],
        [1, 0, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 1],
        [1, 0, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1],
    ], dtype=float)
    got = pb.mask_decode([8, 3], shape=(5, 6))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


def test_decode_run_wraps_rows_row_major():
    # flat 10..13: row 1 columns 4, 5 then row 2 columns 0, 1.
    got = pb.mask_decode([10, 4], shape=(5, 6))
    np.testing.assert_array_equal(got[1], [1, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(got[2], [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(got[3], [1, 0, 0, 0, 0, 1])


def test_decode_run_overflowing_the_end_is_truncated():
    # start 20 = row 3, column 2; length 100 runs past the 30-pixel end without error.
    got = pb.mask_decode([20, 100], shape=(5, 6))
    np.testing.assert_array_equal(got[3], [1, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(got[1:3, 1:5], np.zeros((2, 4)))


def test_decode_runs_starting_past_the_end_add_nothing():
    got = pb.mask_decode([30, 5, 1000, 2, 7, 0], shape=(5, 6))
    np.testing.assert_array_equal(got, pb.mask_decode([], shape=(5, 6)))
    assert got[1:-1, 1:-1].sum() == 0 and got.sum() == 2 * 6 + 2 * 3


def test_decode_matches_pixel_loop_on_random_runs():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(3, 12, size=2))
        k = int(rng.integers(0, 6))
        enc = [int(v) for pair in zip(rng.integers(0, h * w + 5, k), rng.integers(0, 2 * w, k)) for v in pair]
        np.testing.assert_array_equal(pb.mask_decode(enc, (h, w)), _loop_decode(enc, (h, w)), err_msg=str(enc))


def test_decode_default_shape_is_512():
    assert pb.mask_decode([]).shape == (512, 512)


@pytest.mark.parametrize("bad, word", [([1, 2, 3], "pairs"), ([-1, 2], "negative"), ([3, -2], "negative")])
def test_decode_rejects_malformed_rle(bad, word):
    with pytest.raises(pb.PieBenchError, match=word):
        pb.mask_decode(bad, (4, 4))


def test_encode_then_decode_round_trips_up_to_the_frame():
    rng = np.random.default_rng(2)
    m = rng.random((7, 9)) > 0.6
    enc = pb.mask_encode(m)
    assert len(enc) % 2 == 0 and all(n > 0 for n in enc[1::2])
    framed = m.astype(float)
    framed[0, :] = framed[-1, :] = framed[:, 0] = framed[:, -1] = 1
    np.testing.assert_array_equal(pb.mask_decode(enc, m.shape), framed)
    assert pb.mask_encode(np.array([[0, 1, 1], [1, 0, 0]])) == [1, 3]


def test_clean_prompt_drops_only_brackets():
    assert pb.clean_prompt("a [rusty]  bike [ ]") == "a rusty  bike  "


# --------------------------------------------------------------------------- synthetic set + loader

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return pb.make_synthetic_piebench(tmp_path_factory.mktemp("pie"), n=12, seed=3, size=32)


def test_synthetic_set_has_the_official_layout(synth):
    data = json.loads((synth / "mapping_file.json").read_text())
    assert len(data) == 12
    for key, item in data.items():
        assert set(item) == {"image_path", "original_prompt", "editing_prompt", "editing_instruction",
                             "editing_type_id", "blended_word", "mask"}
        assert item["image_path"].startswith(pb.TYPE_FOLDERS[item["editing_type_id"]] + "/")
        assert Path(item["image_path"]).stem == key and len(key) == 12
        assert "[" in item["editing_prompt"] + item["original_prompt"]
        with Image.open(synth / "annotation_images" / item["image_path"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    assert sorted({i["editing_type_id"] for i in data.values()}) == [str(t) for t in range(10)]


def test_synthetic_set_is_deterministic(tmp_path, synth):
    again = pb.make_synthetic_piebench(tmp_path, n=12, seed=3, size=32)
    assert (again / "mapping_file.json").read_bytes() == (synth / "mapping_file.json").read_bytes()
    other = pb.make_synthetic_piebench(tmp_path / "o", n=12, seed=4, size=32)
    assert (other / "mapping_file.json").read_bytes() != (synth / "mapping_file.json").read_bytes()


def test_load_records(synth):
    recs = pb.load_piebench(synth)
    assert [r.editing_type_id for r in recs] == [str(i % 10) for i in range(12)]
    r = recs[6]  # change colour: marks on both prompts
    assert r.category == "change color"
    assert "[" not in r.source_prompt and "[" not in r.target_prompt
    assert r.target_prompt == r.editing_prompt.replace("[", "").replace("]", "")
    assert r.source_path == synth / "annotation_images" / r.image_path and r.source_path.is_file()
    assert len(r.blended_words) == 2
    assert recs[9].blended_words == ()
    # style edit: the whole frame; others: a proper region plus the forced frame.
    assert recs[9].mask().shape == (32, 32) and recs[9].mask().min() == 1
    inner = r.mask()[1:-1, 1:-1]
    assert 0 < inner.mean() < 1


def test_load_limit_and_categories(synth):
    assert [r.id for r in pb.load_piebench(synth, limit=3)] == [r.id for r in pb.load_piebench(synth)[:3]]
    got = pb.load_piebench(synth, categories=["9", 1])
    assert [r.editing_type_id for r in got] == ["1", "9", "1"]
    assert len(pb.load_piebench(synth, limit=1, categories=["9"])) == 1


def _write_set(root: Path, mapping) -> Path:
    (root / "annotation_images" / "a").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(root / "annotation_images" / "a" / "x.jpg")
    (root / "mapping_file.json").write_text(mapping if isinstance(mapping, str) else json.dumps(mapping))
    return root


GOOD = dict(image_path="a/x.jpg", original_prompt="a cat", editing_prompt="a [dog]", editing_instruction="dog",
            editing_type_id="1", blended_word="cat dog", mask=[9, 2])


def test_load_minimal_valid_file(tmp_path):
    (rec,) = pb.load_piebench(_write_set(tmp_path, {"111000000000": GOOD}))
    assert rec.id == "111000000000" and rec.mask_rle == (9, 2)
    m = rec.mask()
    assert m.shape == (8, 8) and m[1, 1] == 1 and m[1, 2] == 1 and m[1, 3] == 0


def test_load_accepts_integer_type_id(tmp_path):
    (rec,) = pb.load_piebench(_write_set(tmp_path, {"k": {**GOOD, "editing_type_id": 3}}))
    assert rec.editing_type_id == "3" and rec.category == "delete object"


@pytest.mark.parametrize("mapping, match", [
    ("{not json", "not valid JSON"),
    ([1, 2], "expected an object"),
    ({"k1": "text"}, "record k1: expected an object"),
    ({"k2": {k: v for k, v in GOOD.items() if k != "blended_word"}}, "record k2: missing field 'blended_word'"),
    ({"k3": {**GOOD, "editing_prompt": 5}}, "record k3: field 'editing_prompt' must be text"),
    ({"k4": {**GOOD, "mask": [1, 2, 3]}}, "record k4: field 'mask'"),
    ({"k5": {**GOOD, "mask": [1, -2]}}, "record k5: field 'mask'"),
    ({"k6": {**GOOD, "image_path": "a/missing.jpg"}}, "record k6: image not found"),
    ({"k7": {**GOOD, "editing_type_id": None}}, "record k7: field 'editing_type_id'"),
])
def test_load_malformed_files_name_the_culprit(tmp_path, mapping, match):
    root = _write_set(tmp_path, mapping)
    with pytest.raises(pb.PieBenchError, match=match) as e:
        pb.load_piebench(root)
    assert "\n" not in str(e.value)


def test_load_missing_folder_and_file(tmp_path):
    with pytest.raises(pb.PieBenchError, match="folder not found"):
        pb.load_piebench(tmp_path / "nope")
    with pytest.raises(pb.PieBenchError, match="mapping file not found"):
        pb.load_piebench(tmp_path)


def test_synthetic_rejects_bad_arguments(tmp_path):
    with pytest.raises(pb.PieBenchError, match="n must"):
        pb.make_synthetic_piebench(tmp_path, n=0)
    with pytest.raises(pb.PieBenchError, match="size must"):
        pb.make_synthetic_piebench(tmp_path, size=4)


# --------------------------------------------------------------------------- miniature-world edits

def test_world_edit_set_is_a_valid_change_object_set(tmp_path):
    from reprolib.miniworld import CATEGORIES
    root = pb.make_world_piebench(tmp_path / "w", n=6, seed=1)
    recs = pb.load_piebench(root)
    meta = pb.load_world_edits(root)
    assert len(recs) == 6 and set(meta) == {r.id for r in recs}
    for r in recs:
        m = meta[r.id]
        assert r.editing_type_id == "1" and r.blended_words == (m["old"], m["new"])
        assert m["old"] in m["categories"] and m["new"] not in m["categories"] and m["new"] in CATEGORIES
        assert f"[{m['old']}]" in r.original_prompt and f"[{m['new']}]" in r.editing_prompt
        assert r.target_prompt == r.source_prompt.replace(m["old"], m["new"])
        mask = r.mask()
        assert mask.shape == (64, 64) and 0 < mask.mean() < 0.5
        inner = mask[1:-1, 1:-1]                 # the official decoder also sets the 1-pixel border
        ys, xs = np.nonzero(inner)                                  # a box
        assert inner[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all() and inner.sum() < inner.size / 2
    again = pb.make_world_piebench(tmp_path / "w2", n=6, seed=1)
    assert pb.load_world_edits(again) == meta
    with pytest.raises(pb.PieBenchError, match="world_edits.json"):
        pb.load_world_edits(tmp_path)


def test_world_edit_success_reads_the_detector_on_each_image(tmp_path):
    """Hand-made 'edits': one checkpoint paints the requested shape into the box (success), one returns
    the source unchanged (old shape still there: failure). Scored by the real world detector."""
    from PIL import Image
    from reprolib.editing import world_edit_success, world_edit_summary
    from reprolib.miniworld import render_scene
    root = pb.make_world_piebench(tmp_path / "w", n=4, seed=2)
    recs, meta = pb.load_piebench(root), pb.load_world_edits(root)
    for rec in recs:
        m = meta[rec.id]
        cats = [m["new"] if c == m["old"] else c for c in m["categories"]]
        good = render_scene(cats, np.random.default_rng(0), 64).image   # the edited scene, redrawn
        for ckpt, img in (("good", good), ("same", np.asarray(Image.open(rec.source_path)))):
            dest = tmp_path / "edits" / ckpt / rec.image_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(dest, format="JPEG", quality=95)
    df = world_edit_success(recs, ["good", "same"], tmp_path / "edits", meta)
    summary = world_edit_summary(df)
    assert list(summary.index) == ["source", "good", "same"] and (summary["n"] == 4).all()
    assert summary.loc["good", "success (%)"] >= 75 and summary.loc["same", "success (%)"] == 0
    assert summary.loc["source", "old shape gone (%)"] == 0
    with pytest.raises(FileNotFoundError, match="edited image not found"):
        world_edit_success(recs, ["missing"], tmp_path / "edits", meta)
