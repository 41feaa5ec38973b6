import json

import pytest
import torch

from reprolib import models
from reprolib.models import ModelLoadError


def test_sd14_tokenizer_exact_ids(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407  # SD1.4 pads with <|endoftext|>


def test_tokenizer_is_built_without_network_from_open_clip(tmp_path):
    out = models.write_clip_tokenizer_files(tmp_path)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["<|startoftext|>"] == 49406 and vocab["cat</w>"] == 2368
    assert models.clip_tokenizer() is models.clip_tokenizer()  # built once per process


def test_tiny_components_have_sd14_layout():
    c = models.load_components("tiny")
    assert c.unet.config.cross_attention_dim == c.text_encoder.config.hidden_size
    assert list(c.unet.config.down_block_types[:3]) == ["CrossAttnDownBlock2D"] * 3
    assert c.vae.config.latent_channels == 4 and c.source == "tiny"
    assert c.scheduler.config.beta_schedule == "scaled_linear"


def test_tiny_checkpoint_aliases_differ_but_are_reproducible():
    a1 = models.load_unet("tokencompose_a", base="tiny")
    a2 = models.load_unet("tokencompose_a", base="tiny")
    sd = models.load_unet("sd14", base="tiny")
    w = lambda u: u.conv_in.weight
    assert torch.equal(w(a1), w(a2)) and not torch.equal(w(a1), w(sd))


def test_unet_roundtrip_through_a_local_folder_and_swap(tmp_path):
    unet = models.load_unet("tokencompose_b", base="tiny")
    unet.save_pretrained(tmp_path / "ckpt" / "unet")           # pipeline-style folder
    unet.save_pretrained(tmp_path / "flat")                    # UNet-only folder
    assert (tmp_path / "flat" / "diffusion_pytorch_model.safetensors").is_file()
    for folder in (tmp_path / "ckpt", tmp_path / "flat"):
        loaded = models.load_unet(str(folder), base="tiny")
        assert torch.equal(loaded.conv_in.weight, unet.conv_in.weight)
    comps = models.load_components("tiny")
    swapped = models.swap_unet(comps, unet)
    assert swapped.unet is unet and swapped.vae is comps.vae and swapped.text_encoder is comps.text_encoder


@pytest.mark.parametrize("bad,msg", [
    ("./no/such/folder", "model path not found: ./no/such/folder"),
    ("not a hub id", "model path not found: not a hub id"),
])
def test_missing_model_path_one_line(bad, msg):
    with pytest.raises(ModelLoadError, match=msg) as e:
        models.load_components(bad)
    assert "\n" not in str(e.value)


def test_unknown_checkpoint_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown checkpoint 'tokencompose_c'"):
        models.load_unet("tokencompose_c", base="tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no UNet in .*empty"):
        models.load_unet(str(tmp_path / "empty"), base="tiny")


def test_unreachable_hub_id_fails_with_one_line(monkeypatch):
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)   # read at import time: patch it too
    with pytest.raises(ModelLoadError) as e:
        models.load_unet("someone/does-not-exist-here", base="CompVis/stable-diffusion-v1-4")
    assert "someone/does-not-exist-here" in str(e.value) and "\n" not in str(e.value)


def test_tiny_pipeline_generates_an_image():
    c = models.load_components("tiny")
    pipe = c.pipeline()
    img = pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images[0]
    assert img.shape == (64, 64, 3) and 0 <= img.min() and img.max() <= 1


def test_local_pipeline_folder_without_tokenizer_uses_sd14_tokenizer(tmp_path):
    c = models.load_components("tiny")
    for name in ("unet", "vae", "text_encoder", "scheduler"):
        getattr(c, name).save_pretrained(tmp_path / name)
    loaded = models.load_components(str(tmp_path))
    assert loaded.tokenizer is models.clip_tokenizer()
    assert torch.equal(loaded.unet.conv_in.weight, c.unet.conv_in.weight)


def test_miniworld_alias_and_base_checkpoint():
    """``model.pretrained: miniworld`` is the shipped world base; checkpoint ``base`` is its own UNet."""
    assert models.check_source("miniworld") == str(models.WORLD_BASE_DIR)
    comps = models.load_components("miniworld")
    assert comps.source == str(models.WORLD_BASE_DIR) and comps.unet.config.sample_size == 16
    same = models.load_checkpoint_components("base", base="miniworld")
    unet = models.load_unet("base", base="miniworld")
    for k, v in comps.unet.state_dict().items():
        assert torch.equal(v, same.unet.state_dict()[k]) and torch.equal(v, unet.state_dict()[k]), k
    assert models.checkpoint_label("base") == "base" and models.resolve_checkpoint("base") == "base"
    # on the random tiny base, "base" is the same UNet as "sd14"
    a, b = models.load_unet("base", base="tiny"), models.load_unet("sd14", base="tiny")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
