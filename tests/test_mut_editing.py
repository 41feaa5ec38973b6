"""Tests that kill mutmut survivors of reprolib.editing (see tests/MUTATION.md).

Bookkeeping around the editor (resume, file formats, summaries) is checked with a stand-in editor and
a stand-in detector: the editor's maths has its own tests (tests/test_editing.py).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from reprolib import editing as ed
from reprolib import piebench as pb


@pytest.mark.parametrize("kw, message", [
    (dict(num_inference_steps=0), "num_inference_steps must be >= 1, got 0"),
    (dict(resolution=7), "resolution must be >= 8 pixels, got 7"),
])
def test_bld_options_limits_and_messages(kw, message):
    with pytest.raises(ed.EditingError, match="^" + message + "$"):
        ed.BLDOptions(**kw)


def test_bld_options_accept_their_smallest_values():
    o = ed.BLDOptions(num_inference_steps=1, blending_start=0.0, resolution=8)
    assert (o.num_inference_steps, o.blending_start, o.resolution) == (1, 0.0, 8)


def test_latent_scale_falls_back_only_when_the_config_lacks_it():
    assert ed.latent_scale(SimpleNamespace(config=SimpleNamespace(scaling_factor=0.5))) == 0.5
    assert ed.latent_scale(SimpleNamespace(config=SimpleNamespace())) == ed.LATENT_SCALE
    assert ed.latent_scale(SimpleNamespace(config=SimpleNamespace(scaling_factor=None))) == ed.LATENT_SCALE


def test_official_strip_rejects_unequal_or_non_square_panels():
    sq = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ed.EditingError, match=r"^strip panels must be equal squares, got \(4, 4, 3\) and \(4, 6, 3\)$"):
        ed.official_strip(np.zeros((4, 6, 3), np.uint8)[:, :4], np.zeros((4, 6, 3), np.uint8), "p")
    with pytest.raises(ed.EditingError, match="^strip panels"):
        ed.official_strip(np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6, 3), np.uint8), "p")
    assert ed.official_strip(sq, sq, "p").shape == (4, 16, 3)


def _jpeg(arr: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return np.asarray(Image.open(buf))


def test_default_save_is_the_official_jpeg_strip_with_the_prompt(tmp_path):
    src, edit = np.full((8, 8, 3), 40, np.uint8), np.full((8, 8, 3), 200, np.uint8)
    dest = ed.edited_path(tmp_path, "a/x.jpg")
    assert dest == tmp_path / "a" / "x.jpg"
    ed.save_edit(dest, src, edit, "a red dog")
    with Image.open(dest) as im:
        assert im.format == "JPEG"
        assert (np.asarray(im) == _jpeg(ed.official_strip(src, edit, "a red dog"))).all()
    png = ed.save_edit(ed.edited_path(tmp_path, "a/x.jpg", "png"), src, edit, "p", "png")
    with Image.open(png) as im:
        assert im.format == "PNG" and (np.asarray(im) == edit).all()


def test_latent_mask_messages_and_non_square_sizes():
    with pytest.raises(ed.EditingError, match=r"^mask must be 2-D \(H, W\), got shape \(2, 2, 1\)$"):
        ed.latent_mask(np.zeros((2, 2, 1)), (2, 2))
    m = np.zeros((4, 8))
    m[:, 4:] = 1
    out = ed.latent_mask(m, (2, 4))
    assert out.shape == (1, 1, 2, 4) and out[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]


class _Sched:
    """DDIM-like stand-in: 1000 train steps, 10 inference steps, ᾱ_t = 1 − t/1000, ᾱ_final = 0.9."""
    config = SimpleNamespace(num_train_timesteps=1000)
    num_inference_steps = 10
    alphas_cumprod = torch.tensor([1 - t / 1000 for t in range(1000)], dtype=torch.float64)
    final_alpha_cumprod = torch.tensor(0.9, dtype=torch.float64)

    def add_noise(self, source, noise, t):
        a = self.alphas_cumprod[int(t)]
        return a ** 0.5 * source + (1 - a) ** 0.5 * noise


def test_noised_source_default_and_t_prev_at_the_first_step():
    s = _Sched()
    x, n = torch.ones(1, dtype=torch.float32), torch.zeros(1, dtype=torch.float32)
    assert ed.noised_source(s, x, n, torch.tensor(500)).item() == pytest.approx(0.5 ** 0.5)
    # t = 100 → prev = 0: ᾱ_0 = 1 (not the final ᾱ); t = 50 → prev < 0: final ᾱ = 0.9
    assert ed.noised_source(s, x, n, torch.tensor(100), "t_prev").item() == 1.0
    out = ed.noised_source(s, x, n, torch.tensor(50), "t_prev")
    assert out.dtype == torch.float32 and out.item() == pytest.approx(0.9 ** 0.5)
    with pytest.raises(ed.EditingError, match=r"^blend_noise_at must be one of \('t', 't_prev'\), got 'x'$"):
        ed.noised_source(s, x, n, torch.tensor(50), "x")


def test_run_signature_names_its_inputs(monkeypatch):
    import reprolib.models as models
    monkeypatch.setattr(models, "checkpoint_weights", lambda c, b: {"weights": "h"})
    sig = ed.run_signature(ed.BLDOptions(), "ck", "sd14", "fp32")
    assert sig == {"checkpoint": "ck", "base": "sd14", "precision": "fp32", "weights": "h", **asdict(ed.BLDOptions())}


def _rec(blended: str, editing_prompt: str):
    return SimpleNamespace(blended_words=tuple(blended.split(" ")) if blended else (), editing_prompt=editing_prompt)


def test_target_word_cases():
    assert ed.target_word(_rec("cat dog", "a [dog]")) == "dog"
    assert ed.target_word(_rec("cat dog", "a [big puppy]")) == "dog"          # two blended words win
    assert ed.target_word(_rec("cat", "a [big red] cat")) == "red"              # longest; ties go to the later
    assert ed.target_word(_rec("cat", "a photo")) == "cat"
    assert ed.target_word(_rec("", "a photo")) is None
    assert ed.target_word(_rec("cat", "a [xx yyyy zz] cat")) == "yyyy"


def _pie(root):
    (root / "annotation_images" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), (50, 60, 70)).save(root / "annotation_images" / "a" / "x.jpg")
    rec = dict(image_path="a/x.jpg", original_prompt="a [cat]", editing_prompt="a [dog]", editing_instruction="i",
               editing_type_id="1", blended_word="cat dog", mask=[0, 3])
    (root / "mapping_file.json").write_text(json.dumps({"r1": rec}))
    return pb.load_piebench(root)


def test_edit_records_rows_files_signature_and_format_switch(tmp_path, monkeypatch):
    records = _pie(tmp_path / "pie")
    calls = []

    def fake_bld(components, image, mask, prompt, options, device="cpu"):
        calls.append((prompt, device, mask.shape))
        return SimpleNamespace(image=255 - image)
    monkeypatch.setattr(ed, "blended_latent_diffusion", fake_bld)
    bars = []
    orig = ed.tqdm
    monkeypatch.setattr(ed, "tqdm", lambda *a, **kw: bars.append(kw) or orig(*a, **kw))
    opts = ed.BLDOptions(resolution=8)
    out = tmp_path / "out"
    df = ed.edit_records(records, None, out, opts, device="meta-ish")
    assert list(df.columns) == ["id", "image_path", "editing_type_id", "output", "status", "seconds"]
    assert df.loc[0, ["id", "image_path", "editing_type_id", "output", "status"]].tolist() == [
        "r1", "a/x.jpg", "1", str(out / "a" / "x.jpg"), "edited"]
    assert 0 <= df.loc[0, "seconds"] < 60
    assert calls == [("a dog", "meta-ish", (8, 8))]
    assert bars == [{"desc": "BLD edits", "disable": False}]
    assert json.loads((out / ed.OPTIONS_FILE).read_text()) == asdict(opts)
    image = ed.load_image(records[0].source_path, 8)
    with Image.open(out / "a" / "x.jpg") as im:
        assert (np.asarray(im) == _jpeg(ed.official_strip(image, 255 - image, "a dog"))).all()
    kept = ed.edit_records(records, None, out, opts, progress=False)
    assert kept["status"].tolist() == ["kept"] and len(calls) == 1 and bars[-1]["disable"] is True
    # switching to PNG changes the signature: the strip is deleted, the PNG written; and back again
    png = ed.BLDOptions(resolution=8, save_as="png")
    ed.edit_records(records, None, out, png, progress=False)
    assert (out / "a" / "x.png").is_file() and not (out / "a" / "x.jpg").exists()
    ed.edit_records(records, None, out, opts, progress=False)
    assert (out / "a" / "x.jpg").is_file() and not (out / "a" / "x.png").exists()
    assert empty_frame_columns(ed.edit_records([], None, tmp_path / "none", opts, progress=False))


def empty_frame_columns(df: pd.DataFrame) -> bool:
    return df.empty and list(df.columns) == ["id", "image_path", "editing_type_id", "output", "status", "seconds"]


def test_world_edit_success_and_summary_with_a_stand_in_detector(tmp_path, monkeypatch):
    import reprolib.worlddetector as wd
    root = tmp_path / "pie"
    (root / "annotation_images" / "a").mkdir(parents=True)
    mapping, edits = {}, {}
    for i in range(2):
        Image.new("RGB", (6, 4), (i, 0, 0)).save(root / "annotation_images" / "a" / f"{i}.png")
        mapping[f"r{i}"] = dict(image_path=f"a/{i}.png", original_prompt="a [ring]", editing_prompt="a [moon]",
                                editing_instruction="i", editing_type_id="1", blended_word="ring moon", mask=[0, 1])
    edits = {"r0": {"categories": ["ring", "star", "heart"], "old": "ring", "new": "moon"},
             "r1": {"categories": ["ring"], "old": "ring", "new": "moon"}}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    records = pb.load_piebench(root)
    # the "edited" images: a strip (width 12) whose bottom-right 6×4 panel has red = 10 + i
    (tmp_path / "out" / "ck" / "a").mkdir(parents=True)
    for i in range(2):
        strip = np.zeros((4, 12, 3), np.uint8)
        strip[:, 6:, 0] = 10 + i
        Image.fromarray(strip).save(tmp_path / "out" / "ck" / "a" / f"{i}.png")
    found = {0: {"ring", "star", "heart"}, 1: {"ring"},                        # sources
             10: {"moon", "star"}, 11: {"moon", "ring"}}                       # edits
    seen = []

    def fake_present(det, images, threshold):
        seen.append((images.shape, threshold))
        return [found[int(im[..., 0].max())] for im in images]
    monkeypatch.setattr(wd, "present", fake_present)
    monkeypatch.setattr(ed, "checkpoint_label", lambda c: c, raising=False)
    df = ed.world_edit_success(records, ["ck"], tmp_path / "out", edits, detector=object(), threshold=0.3)
    assert seen == [((2, 4, 6, 3), 0.3)] * 2
    assert df[["checkpoint", "id", "old", "new", "new_found", "old_gone", "success"]].values.tolist() == [
        ["source", "r0", "ring", "moon", False, False, False], ["source", "r1", "ring", "moon", False, False, False],
        ["ck", "r0", "ring", "moon", True, True, True], ["ck", "r1", "ring", "moon", True, False, False]]
    assert df["kept"].iloc[0] == 1.0 and df["kept"].iloc[2] == 0.5 and math.isnan(df["kept"].iloc[1])
    s = ed.world_edit_summary(df)
    assert s.index.tolist() == ["source", "ck"]
    assert list(s.columns) == ["new shape found (%)", "old shape gone (%)", "success (%)", "other shapes kept (%)", "n"]
    assert s.loc["ck"].tolist() == [100.0, 50.0, 50.0, 50.0, 2] and s.loc["source", "success (%)"] == 0.0
    with pytest.raises(KeyError, match="record r1: not in the world edit sidecar"):
        ed.world_edit_success(records, [], tmp_path / "out", {"r0": edits["r0"]}, detector=object())


def test_table2_layout_and_message():
    from reprolib import metrics as mt
    reported = pd.DataFrame({"method": ["BLD (reported)"], **{m: [1.0] for m in ed.TABLE2_METRICS},
                             "source": ["paper"]})
    scores = pd.DataFrame({"checkpoint": ["sd14", "sd14"], "editing_type_id": ["1", "2"],
                           "structure_distance": [0.01, 0.03]})
    summary = mt.summarise(scores, by="checkpoint")
    t = ed.table2(reported, summary)
    assert t.index.tolist() == ["BLD (reported)", ed.method_label("sd14")]
    assert t.loc[ed.method_label("sd14"), "Structure distance ×10³"] == pytest.approx(20.0)
    missing = [c for c in t.columns if c not in ("source", "n", "Structure distance ×10³")]
    assert missing and all(np.isnan(t.loc[ed.method_label("sd14"), c]) for c in missing)
    assert t.loc["BLD (reported)", "source"] == "reported: paper"
    with pytest.raises(ed.EditingError, match=r"^summary must be summarise\(df, by='checkpoint'\)$"):
        ed.table2(reported, mt.summarise(scores))


def test_attention_for_tokens_messages_name_the_group():
    with pytest.raises(ed.EditingError, match="^no attention recorded: pass attention_layers to blended_latent_diffusion$"):
        ed.attention_for_tokens([], "up_16", [1])
    steps = [{"up_2": torch.ones(4, 77)}, {"mid_1": torch.ones(1, 77)}]      # the first step decides
    with pytest.raises(ed.EditingError, match=r"^no attention recorded for layer group 'mid_1'; have \['up_2'\]$"):
        ed.attention_for_tokens(steps, "mid_1", [1])


def test_edit_records_times_each_record_in_milliseconds(tmp_path, monkeypatch):
    records = _pie(tmp_path / "pie")
    monkeypatch.setattr(ed, "blended_latent_diffusion", lambda c, image, *a, **k: SimpleNamespace(image=image))
    clock = iter([10.0])                                  # the start, then 12.34567 for any later reading
    monkeypatch.setattr(ed.time, "perf_counter", lambda: next(clock, 12.34567))
    df = ed.edit_records(records, None, tmp_path / "out", ed.BLDOptions(resolution=8), progress=False)
    assert df["seconds"].tolist() == [2.346]
