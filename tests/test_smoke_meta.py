"""The paper profile's models at their real sizes, cheaply: real configs on the meta device (no weights, no
memory), the layer groups and captured map shapes reprolib relies on, and the hub-cache builder of the smoke run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from reprolib import smoke
from reprolib.attention import attention_layers, install_capture
from reprolib.config import load_profile

ROOT = Path(__file__).resolve().parents[1]
SD14 = "CompVis/stable-diffusion-v1-4"
PAPER = load_profile("paper")
BUILDS = [(mid, part) for mid, e in smoke.registry().items() for part in e.get("parts", [None])]


def test_every_model_id_of_the_paper_profile_has_a_shipped_architecture():
    ids = smoke.profile_model_ids(PAPER)
    assert {SD14, "mlpc-lab/TokenCompose_SD14_A", "google/owlv2-large-patch14-ensemble", "facebook/dino-vitb8",
            PAPER.data.detector_id, PAPER.data.sam_id, PAPER.data.caption_clip_id, PAPER.editing.clip_id} <= set(ids)
    for mid in ids:
        assert smoke.config_path(mid).is_file(), mid
    assert set(smoke.run_model_ids(PAPER)) <= set(ids)


def test_every_shipped_file_names_its_source_in_the_readme():
    readme = (smoke.ARCHS_DIR / "README.md").read_text()
    files = [p.relative_to(smoke.ARCHS_DIR).as_posix() for p in smoke.ARCHS_DIR.rglob("*.json") if p.name != "models.json"]
    assert files
    for f in files:
        assert f"`{f}`" in readme, f"data/archs/README.md does not say where {f} comes from"


def test_unknown_model_id_fails_with_one_line_naming_it():
    with pytest.raises(smoke.SmokeError, match="no shipped architecture for model id 'someone/else'"):
        smoke.build_random("someone/else", device="meta")
    with pytest.raises(smoke.SmokeError, match="no random-buildable part 'tokenizer'"):
        smoke.build_random(SD14, "tokenizer", device="meta")


@pytest.mark.parametrize("model_id,part", BUILDS, ids=[f"{m}:{p or ''}" for m, p in BUILDS])
def test_real_config_builds_on_the_meta_device(model_id, part):
    model = smoke.build_random(model_id, part, device="meta")
    params = list(model.parameters())
    assert params and all(p.device.type == "meta" for p in params)
    cfg = smoke.arch_config(model_id, part)
    for key in ("hidden_size", "cross_attention_dim", "block_out_channels", "projection_dim"):
        if key in cfg:
            got = model.config.get(key) if isinstance(model.config, dict) else getattr(model.config, key)
            assert list(got) == list(cfg[key]) if isinstance(cfg[key], list) else got == cfg[key], key


def test_sd14_parts_have_their_published_sizes():
    """diffusers/transformers print these parameter counts for SD1.4's UNet, VAE and CLIP ViT-L/14 text tower."""
    counts = {p: sum(t.numel() for t in smoke.build_random(SD14, p, device="meta").parameters())
              for p in ("unet", "vae", "text_encoder")}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_sd14_cross_attention_groups_reprolib_trains_and_shows():
    unet = smoke.build_random(SD14, device="meta")
    groups = attention_layers(unet)
    assert Counter(groups.values()) == {"down_64": 2, "down_32": 2, "down_16": 2, "mid_8": 1,
                                        "up_16": 3, "up_32": 3, "up_64": 3}
    assert set(PAPER.train.train_layers) == {"mid_8", "up_16", "up_32", "up_64"}
    assert set(PAPER.attention.layers) <= set(groups.values())
    width = {"64": 320, "32": 640, "16": 1280, "8": 1280}
    modules = dict(unet.named_modules())
    for name, group in groups.items():
        attn = modules[name.removesuffix(".processor")]
        assert attn.to_k.in_features == 768 and attn.heads == 8
        assert attn.to_q.in_features == width[group.split("_")[1]], name


def test_capture_records_maps_of_the_real_shapes_on_meta_tensors():
    unet = smoke.build_random(SD14, device="meta")
    store = install_capture(unet, PAPER.train.train_layers)
    side = PAPER.model.resolution // 8
    with torch.no_grad():
        out = unet(torch.empty(2, 4, side, side, device="meta"), torch.tensor(10),
                   encoder_hidden_states=torch.empty(2, 77, 768, device="meta")).sample
    assert out.shape == (2, 4, 64, 64)
    shapes = {g: [tuple(m.shape) for m in maps] for g, maps in store.maps.items()}
    assert shapes == {"mid_8": [(2, 8, 64, 77)], "up_16": [(2, 8, 256, 77)] * 3,
                      "up_32": [(2, 8, 1024, 77)] * 3, "up_64": [(2, 8, 4096, 77)] * 3}


def test_detector_and_metric_networks_keep_their_real_input_sizes():
    owl = smoke.build_random("google/owlv2-large-patch14-ensemble", device="meta")
    assert (owl.config.vision_config.image_size, owl.config.vision_config.patch_size) == (1008, 14)
    assert owl.config.text_config.hidden_size == 768 and owl.config.projection_dim == 768
    dino = smoke.build_random(PAPER.editing.dino_id, device="meta")
    assert (dino.config.patch_size, dino.config.hidden_size, dino.config.num_hidden_layers) == (8, 768, 12)
    for mid, size in ((PAPER.editing.clip_id, 224), (PAPER.data.caption_clip_id, 336)):
        clip = smoke.build_random(mid, device="meta")
        assert (clip.config.vision_config.image_size, clip.config.vision_config.patch_size) == (size, 14)
    sam = smoke.build_random(PAPER.data.sam_id, device="meta")
    assert sam.config.vision_config.hidden_size == sam.config.mask_decoder_config.vit_dim == 1280


def test_smoke_overrides_are_profile_fields_and_keep_outputs_inside_the_work_folder(tmp_path):
    overrides = smoke.smoke_overrides(tmp_path)
    P = load_profile("paper", overrides)          # an unknown field would raise
    assert P.multigen.n_prompts == 1 and P.train.steps == 1 and P.model.resolution == 512
    for key, value in overrides.items():
        if key.endswith(("output_dir", ".root", "gsam_checkpoints")):
            assert Path(value).is_relative_to(tmp_path), key


def test_check_stage_names_what_is_missing(tmp_path):
    P = load_profile("paper", smoke.smoke_overrides(tmp_path))
    with pytest.raises((smoke.SmokeError, OSError), match="config.json|log.csv"):
        smoke.check_stage("02", P)


# --------------------------------------------------------------------------- the hub-cache builder

@pytest.fixture
def tiny_archs(tmp_path, monkeypatch):
    """A registry with one tiny SD pipeline (reprolib's tiny configs) in place of data/archs."""
    from reprolib.models import TINY_TEXT, TINY_UNET, TINY_VAE
    archs = tmp_path / "archs"
    parts = {"unet": dict(TINY_UNET, _class_name="UNet2DConditionModel"),
             "vae": dict(TINY_VAE, _class_name="AutoencoderKL"),
             "text_encoder": dict(TINY_TEXT, model_type="clip_text_model")}
    for part, cfg in parts.items():
        (archs / "tiny--sd" / part).mkdir(parents=True)
        (archs / "tiny--sd" / part / "config.json").write_text(json.dumps(cfg))
    (archs / "tiny--sd" / "scheduler").mkdir()
    (archs / "tiny--sd" / "scheduler" / "scheduler_config.json").write_text(
        (smoke.ARCHS_DIR / "CompVis--stable-diffusion-v1-4" / "scheduler" / "scheduler_config.json").read_text())
    (archs / "models.json").write_text(json.dumps({"tiny/sd": {"archs": "tiny--sd", "kind": "sd_pipeline",
                                                               "tokenizer": "clip", "parts": list(parts)}}))
    monkeypatch.setattr(smoke, "ARCHS_DIR", archs)
    return archs


def test_hub_cache_loads_back_through_reprolib_offline(tiny_archs, tmp_path):
    cache = tmp_path / "hub"
    written = smoke.write_hub_cache(cache, ["tiny/sd"], seed=3, log=lambda *_: None)
    repo = cache / "models--tiny--sd"
    rev = (repo / "refs" / "main").read_text()
    snap = repo / "snapshots" / rev
    assert Path(written["tiny/sd"]["snapshot"]) == snap and len(rev) == 40
    assert (snap / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (snap / "text_encoder" / "model.safetensors").is_file()
    assert not list(snap.rglob("*.bin")) and not list(snap.rglob("*.pth"))
    again = smoke.write_hub_cache(cache, ["tiny/sd"], seed=3, log=lambda *_: None)   # complete: kept as is
    assert again["tiny/sd"]["bytes"] == written["tiny/sd"]["bytes"]

    expected = smoke.build_random("tiny/sd", "unet", seed=smoke._seed_for("tiny/sd", "unet", 3))
    torch.save(expected.conv_in.weight.detach(), tmp_path / "conv_in.pt")
    code = ("import sys, torch; from reprolib.models import load_components; c = load_components('tiny/sd'); "
            f"w = torch.load(r'{tmp_path / 'conv_in.pt'}', weights_only=True); "
            "assert torch.equal(c.unet.conv_in.weight, w); "
            "assert c.tokenizer('a photo of a cat').input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]; "
            "print(type(c.scheduler).__name__, c.unet.config.block_out_channels)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "PNDMScheduler [32, 32, 64, 64]" in r.stdout
