"""Stage 04: attention recording during generation, per-word maps, mass inside masks, statistics, figures."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from reprolib import viz
from _floats import assert_close_scaled
from reprolib.tokens import word_token_indices

STEPS = 2          # DDIM: one UNet forward per step
PX = 32            # 32² images, 16² latents: 4x cheaper than the tiny models' native 64²


@pytest.fixture(scope="module")
def comps():
    """Tiny models with DDIM (conftest runs the tests on one intra-op thread)."""
    from reprolib.models import load_components
    return load_components("tiny", seed=0, scheduler="ddim")


def _softmax_maps(steps=3, side=4, seed=0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, side, side, 77, generator=g).softmax(-1).numpy()


def _record(ckpt="sd14", prompt="a photo of a star, a ring.", steps=3, side=4, seed=0) -> viz.AttentionRecord:
    img = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return viz.AttentionRecord(prompt, 0, img, list(range(900, 900 - 100 * steps, -100)),
                               {"up_32": _softmax_maps(steps, side, seed)}, checkpoint=ckpt)


# --------------------------------------------------------------------------- words and tokens

def test_prompt_words_combine_split_words_and_drop_punctuation(tokenizer):
    # a=1 photo=2 of=3 a=4 mini=5 bike=6 ,=7 a=8 clock=9 .=10 (SD1.4's BPE splits "minibike")
    words = viz.prompt_words(tokenizer, "a photo of a minibike, a clock.", nouns=["minibike", "clock"])
    assert [w.text for w in words] == ["a", "photo", "of", "a", "minibike", "a", "clock"]
    assert words[4].tokens == (5, 6) and words[4].is_noun
    assert words[6].tokens == (9,) and words[6].is_noun
    assert not words[0].is_noun
    # a noun phrase marks each of its words
    phrase = viz.prompt_words(tokenizer, "A cat and a wine glass", nouns=["wine glass"])
    assert [w.text for w in phrase if w.is_noun] == ["wine", "glass"]


def test_prompt_words_rejects_prompts_longer_than_the_context(tokenizer):
    with pytest.raises(ValueError, match="more than 77"):
        viz.prompt_words(tokenizer, "cat " * 80)


def test_word_map_is_the_sum_of_its_tokens_maps():
    rec = _record()
    maps = rec.maps["up_32"]
    out = rec.token_maps([(5, 6), (9,)], "up_32", steps=[0, -1])
    assert out.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(out[1, 0], maps[2, :, :, 5] + maps[2, :, :, 6], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], maps[0, :, :, 9], rtol=1e-6)
    with pytest.raises(IndexError, match="step 3"):
        rec.token_maps([(5,)], "up_32", steps=[3])
    with pytest.raises(KeyError, match="up_64"):
        rec.token_maps([(5,)], "up_64")


def test_shipped_prompts_resolve(tokenizer):
    from reprolib.miniworld import CATEGORIES
    paper, tiny = viz.load_prompts("paper"), viz.load_prompts("tiny")
    assert paper["fig3_4"][0].prompt == "A tiger wearing an astronaut suit and drinking a cup of coffee"
    assert {"fig1", "fig2", "fig3_4"} <= set(paper) and {"fig1", "fig2", "fig3_4"} <= set(tiny)
    for specs in list(paper.values()) + list(tiny.values()):
        for sp in specs:
            assert sp.source, sp.prompt
            for noun in sp.nouns:
                word_token_indices(tokenizer, sp.prompt, noun)       # raises if a noun is not in its prompt
    assert all(n in CATEGORIES for specs in tiny.values() for sp in specs for n in sp.nouns)


# --------------------------------------------------------------------------- recording during generation

def test_generation_records_conditional_maps_that_sum_to_one(comps):
    from diffusers.models.attention_processor import AttnProcessor2_0
    prompts = ["a photo of a star.", "a photo of a moon and a cross."]
    recs = viz.generate_with_attention(comps, prompts, seeds=[3, 3], layers=["up_32", "mid_4"],
                                       num_inference_steps=STEPS, guidance_scale=7.5, height=PX, width=PX,
                                       batch_size=2, checkpoint="x")
    assert len(recs) == 2 and recs[1].prompt == prompts[1] and recs[0].checkpoint == "x"
    r = recs[0]
    assert r.image.dtype == np.uint8 and r.image.shape == (PX, PX, 3)
    assert r.n_steps == STEPS and r.timesteps == [501, 1]              # DDIM, 2 of 1000 steps, offset 1
    assert r.maps["up_32"].shape == (STEPS, 16, 16, 77) and r.maps["mid_4"].shape == (STEPS, 2, 2, 77)
    for m in r.maps.values():
        assert isinstance(m, np.ndarray) and m.dtype == np.float32       # host memory, off any accelerator
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)            # a softmax row before any selection
    # same seed, same start latents: the unconditional halves would be identical, the conditional ones differ
    assert not np.allclose(recs[0].maps["up_32"][0], recs[1].maps["up_32"][0])
    # processors are restored: nothing keeps recording after the call
    assert all(type(p) is AttnProcessor2_0 for p in comps.unet.attn_processors.values())
    # recording does not change the image, and a batch gives what single runs give
    plain = viz.generate_images(comps, [prompts[1]], seeds=3, num_inference_steps=STEPS, guidance_scale=7.5,
                                height=PX, width=PX)
    assert np.abs(plain[0].astype(int) - recs[1].image.astype(int)).max() <= 1
    alone = viz.generate_with_attention(comps, prompts[1], 3, ["up_32"], STEPS, 7.5, PX, PX)[0]
    assert_close_scaled(alone.maps["up_32"], recs[1].maps["up_32"], rtol=1e-4)      # batch 2 vs 1: rounding


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_history_stays_off_the_gpu(comps):
    comps.to("cuda")
    try:
        rec = viz.generate_with_attention(comps, "a photo of a star.", 0, ["up_32"], STEPS, 7.5)[0]
    finally:
        comps.to("cpu")
    assert isinstance(rec.maps["up_32"], np.ndarray)


def test_bad_arguments_name_the_culprit(comps):
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        viz.generate_with_attention(comps, ["a star"], [1, 2], ["up_32"], STEPS)
    with pytest.raises(ValueError, match="strength"):
        viz.generate_with_attention(comps, ["a star"], 0, ["up_32"], STEPS, init_images=[np.zeros((64, 64, 3))],
                                    strength=0.0)
    with pytest.raises(ValueError, match="up_64"):
        viz.generate_with_attention(comps, ["a star"], 0, ["up_64"], STEPS)


# --------------------------------------------------------------------------- mass inside the mask

def test_mass_inside_hand_computed():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :4] = True                                   # top-left quarter
    small = viz.resize_mask(mask, (4, 4), "area")
    np.testing.assert_array_equal(small, np.pad(np.ones((2, 2)), ((0, 2), (0, 2))))
    inside = np.zeros((4, 4)); inside[:2, :2] = 1.0
    uniform = np.ones((4, 4))
    half = np.zeros((4, 4)); half[0, 0] = 1.0; half[3, 3] = 1.0
    got = viz.mass_inside(np.stack([inside, uniform, half]), small)
    np.testing.assert_allclose(got, [1.0, 0.25, 0.5])
    one_px = np.zeros((8, 8), dtype=bool); one_px[0, 0] = True  # covers a quarter of cell (0, 0)
    np.testing.assert_allclose(viz.resize_mask(one_px, (4, 4), "area")[0, 0], 0.25)
    # "original" = the token loss's resize (bilinear, > 0): the one-pixel mask dilates to a full cell
    np.testing.assert_array_equal(viz.resize_mask(one_px, (4, 4), "original")[0, 0], 1.0)
    with pytest.raises(ValueError, match="mask mode"):
        viz.resize_mask(mask, (4, 4), "nearest")


def test_mass_table_rows_match_a_direct_computation(tokenizer):
    rec = _record(prompt="a photo of a star, a ring.")
    mask = np.zeros((8, 8), dtype=bool); mask[4:, :] = True
    df = viz.mass_table([rec], [{"star": mask, "ring": np.zeros((8, 8), bool)}], tokenizer)
    assert list(df["noun"].unique()) == ["star"]                       # empty mask skipped
    assert len(df) == rec.n_steps and list(df["timestep"]) == rec.timesteps
    star = word_token_indices(tokenizer, rec.prompt, "star")
    m = rec.maps["up_32"][1][..., star].sum(-1)
    assert df.loc[df.step == 1, "mass"].item() == pytest.approx(m[2:].sum() / m.sum(), rel=1e-5)
    assert df["chance"].unique().tolist() == [0.5]


def test_sdedit_protocol_scores_scenes_on_their_exact_masks(comps):
    from reprolib.miniworld import sample_scenes
    scenes = sample_scenes(2, seed=5, size=PX)
    df, recs = viz.sdedit_mass(comps, scenes, seeds=0, layers=["up_32"], num_inference_steps=4,
                               guidance_scale=7.5, strength=0.5, checkpoint="sd14", batch_size=2)
    # DDIM, 4 steps (751, 501, 251, 1); strength 0.5 skips the first 4 - int(4 * 0.5) = 2 of them
    assert all(r.n_steps == 2 and r.timesteps == [251, 1] and r.meta["protocol"] == "sdedit" for r in recs)
    assert len(df) == sum(len(s.categories) for s in scenes) * 2
    assert df["mass"].between(0, 1).all() and (df["checkpoint"] == "sd14").all()
    for (pid, noun), chance in df.groupby(["prompt_id", "noun"])["chance"].first().items():
        assert chance == pytest.approx(scenes[pid].masks[noun].mean(), rel=1e-5)


def test_generated_protocol_scores_found_nouns_and_lists_missing(comps):
    spec = viz.PromptSpec("a photo of a moon and a cross.", ("moon", "cross"))
    half = np.zeros((PX, PX), bool)
    half[: PX // 2] = True

    def segment(image, nouns):                 # stands in for Grounded-SAM: finds the moon only
        assert image.shape == (PX, PX, 3) and list(nouns) == ["moon", "cross"]
        return {"moon": half}
    df, recs, missing = viz.generated_mass(comps, [spec], [7], segment, ["up_32"], STEPS, 7.5, checkpoint="sd14",
                                           height=PX, width=PX)
    assert missing == [(0, 7, "cross")] and recs[0].meta["protocol"] == "generated"
    assert set(df["noun"]) == {"moon"} and len(df) == STEPS and (df["chance"] == 0.5).all()


def test_gsam_segmenter_adapts_stage01_interface():
    class FakeGSAM:
        def masks_for(self, images, noun_lists):
            return [{n: np.ones((im.height, im.width), bool) for n in nouns} for im, nouns in zip(images, noun_lists)]
    out = viz.gsam_segmenter(FakeGSAM())(np.zeros((6, 5, 3), np.uint8), ["cat", "wine glass"])
    assert set(out) == {"cat", "wine glass"} and out["cat"].shape == (6, 5)
    assert viz.file_label("runs/tiny/train/unet") == "runs_tiny_train_unet"


# --------------------------------------------------------------------------- statistics

def test_bootstrap_ci_edge_cases_and_coverage():
    assert viz.bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)
    mean, lo, hi = viz.bootstrap_ci([0.5])
    assert mean == 0.5 and np.isnan(lo) and np.isnan(hi)
    x = np.random.default_rng(0).normal(0.4, 0.1, 200)
    mean, lo, hi = viz.bootstrap_ci(x, n_boot=500)
    assert lo < mean < hi and hi - lo < 0.06 and lo < 0.4 < hi


def _table() -> pd.DataFrame:
    rows = []
    for ckpt, shift in (("sd14", 0.0), ("tc", 0.1)):
        for pid, nouns in ((0, {"star": 0.2, "ring": 0.4}), (1, {"moon": 0.5})):
            for noun, v in nouns.items():
                for step in (0, 1):
                    rows.append(dict(checkpoint=ckpt, prompt_id=pid, seed=0, noun=noun, layer="up_32", step=step,
                                     timestep=900 - step, mass=v + shift, chance=0.1))
    return pd.DataFrame(rows)


def test_summaries_average_within_prompts_then_across():
    s = viz.summarize_mass(_table(), n_boot=200)
    row = s[(s.checkpoint == "sd14") & (s.step == 0)].iloc[0]
    assert row["mass"] == pytest.approx((0.3 + 0.5) / 2) and row["n"] == 2 and row["chance"] == pytest.approx(0.1)
    assert row["lo"] <= row["mass"] <= row["hi"]
    d = viz.paired_difference(_table(), "sd14", "tc", n_boot=200)
    assert np.allclose(d["diff"], 0.1) and np.allclose(d["lo"], 0.1) and (d["n"] == 2).all()
    with pytest.raises(KeyError, match="nope"):
        viz.paired_difference(_table(), "sd14", "nope")


# --------------------------------------------------------------------------- figures

def test_sample_grid_axes_and_titles():
    img = np.zeros((8, 8, 3), np.uint8)
    images = {c: [[img, img] for _ in range(3)] for c in ("sd14", "tokencompose_a")}
    fig = viz.sample_grid(images, ["p1", "p2", "p3"], seeds=[0, 1])
    assert len(fig.axes) == 3 * 2 * 2
    assert [a.get_title() for a in fig.axes[:4]] == ["sd14\nseed 0", "sd14\nseed 1",
                                                      "tokencompose_a\nseed 0", "tokencompose_a\nseed 1"]
    assert fig.axes[4].get_ylabel() == "p2"
    plt.close(fig)
    with pytest.raises(ValueError, match="tokencompose_a"):
        viz.sample_grid({"sd14": images["sd14"], "tokencompose_a": images["sd14"][:2]}, ["a", "b", "c"], [0, 1])


def test_attention_over_time_axes_titles_and_nouns(tokenizer):
    """Maps per word and step, each checkpoint's final image in its own column (top row), one colour bar
    per row in a perceptually uniform colormap; nouns in bold."""
    words = viz.prompt_words(tokenizer, "one star, a ring.", ["star", "ring"])
    recs = {"sd14": _record("sd14", "one star, a ring."), "tc": _record("tc", "one star, a ring.", seed=1)}
    for norm, overlay in (("max", True), ("row", False)):
        fig = viz.attention_over_time(recs, words, "up_32", steps=[0, -1], overlay=overlay, norm=norm)
        bars = [a for a in fig.axes if a.get_label().startswith("colour bar")]
        assert len(bars) == len(words)                                    # one colour scale per row
        assert len(fig.axes) == len(words) * 2 * 2 + 2 + len(words)       # maps, final images, colour bars
        top = [a.get_title() for a in fig.axes[:6]]
        assert top == ["sd14\nstep 0 (t=900)", "\nstep 2 (t=700)", "final image",
                       "tc\nstep 0 (t=900)", "\nstep 2 (t=700)", "final image"]
        labels = {a.get_ylabel(): a.yaxis.label.get_fontweight() for a in fig.axes if a.get_ylabel()
                  and a not in bars}
        assert labels == {"one": "normal", "star": "bold", "a": "normal", "ring": "bold"}
        maps = [im for a in fig.axes if a not in bars for im in a.get_images() if im.get_cmap().name == viz.CMAP]
        assert maps and viz.CMAP in ("viridis", "magma", "inferno", "plasma", "cividis")
        import hashlib
        import io

        def png() -> str:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
            return hashlib.sha256(buf.getvalue()).hexdigest()
        assert png() == png()                  # glue's PNG and the displayed one are the same pixels
        if norm == "row":                      # a row's maps share their scale: 0 to the word's maximum
            row0 = {(im.norm.vmin, im.norm.vmax) for im in maps[:4]}
            assert len(row0) == 1 and next(iter(row0))[0] == 0
        plt.close(fig)


def test_mass_figure_one_axes_per_facet():
    s = viz.summarize_mass(_table(), by=("checkpoint", "noun", "step"), n_boot=50)
    fig = viz.mass_figure(s, facet="noun")
    assert [a.get_title() for a in fig.axes] == ["moon", "ring", "star"]
    assert len(fig.axes[0].lines) == 3                       # two checkpoints and the chance line
    lo, hi = fig.axes[0].get_ylim()                          # scaled to the data, not pinned to [0, 1]
    shown = pd.concat([s["mass"], s["lo"], s["hi"], s["chance"]]).dropna()
    assert lo <= shown.min() and hi >= shown.max() and hi - lo < 1.5 * (shown.max() - shown.min()) + 1e-9
    plt.close(fig)
    fig = viz.mass_figure(viz.summarize_mass(_table(), n_boot=50))
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "all nouns"
    plt.close(fig)


def test_capture_overhead_reports_both_timings(comps):
    from diffusers.models.attention_processor import AttnProcessor2_0
    out = viz.capture_overhead(comps, "a photo of a star.", ["up_32"], num_inference_steps=1, repeats=2,
                               height=PX, width=PX, warmup=False)
    assert len(out["plain_all"]) == len(out["capture_all"]) == 2
    assert out["plain_s"] == pytest.approx(np.median(out["plain_all"])) and out["capture_s"] > 0
    assert out["overhead"] == pytest.approx(out["capture_s"] / out["plain_s"] - 1)
    assert isinstance(out["within_budget"], bool)
    assert all(type(p) is AttnProcessor2_0 for p in comps.unet.attn_processors.values())


def test_mass_protocols_go_through_in_bounded_chunks(comps, monkeypatch):
    """Memory does not grow with the number of prompts or scenes: at most `batch_size` (attention.batch_size)
    images are generated and held with their maps at a time, and the records returned carry no maps."""
    from reprolib.miniworld import sample_scenes
    calls = []
    real = viz.generate_with_attention

    def spy(components, prompts, *a, **kw):
        calls.append(len(prompts))
        return real(components, prompts, *a, **kw)
    monkeypatch.setattr(viz, "generate_with_attention", spy)
    scenes = sample_scenes(5, seed=5, size=PX)
    df, recs = viz.sdedit_mass(comps, scenes, seeds=0, layers=["up_32"], num_inference_steps=2,
                               guidance_scale=7.5, strength=0.5, batch_size=2)
    assert calls == [2, 2, 1] and len(recs) == 5 and all(r.maps == {} for r in recs)
    assert sorted(df["prompt_id"].unique()) == list(range(5))
    calls.clear()
    spec = viz.PromptSpec("a photo of a moon and a cross.", ("moon", "cross"))
    df, recs, missing = viz.generated_mass(comps, [spec] * 2, [1, 2], lambda im, nouns: {"moon": np.ones(im.shape[:2], bool)},
                                           ["up_32"], 2, 7.5, batch_size=3, height=PX, width=PX)
    assert calls == [3, 1] and len(recs) == 4 and all(r.maps == {} for r in recs)
    assert len(missing) == 4 and sorted(df["prompt_id"].unique()) == [0, 1]
