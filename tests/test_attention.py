import pytest
import torch

from _floats import assert_close_scaled
from reprolib.attention import (AttentionStore, attention_layers, install_capture, split_spatial,
                                uninstall_capture)

LAYERS = ["mid_4", "up_8", "up_16", "up_32"]


def _inputs(b=2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 4, 32, 32, generator=g), torch.tensor([10, 700])[:b],
            torch.randn(b, 77, 32, generator=g))


def test_groups_named_like_the_original(tiny_unet):
    groups = sorted(set(attention_layers(tiny_unet).values()))
    assert groups == sorted(["down_32", "down_16", "down_8", "mid_4", "up_8", "up_16", "up_32"])


def test_output_equals_stock_processors(tiny_unet):
    x, t, e = _inputs()
    with torch.no_grad():
        ref = tiny_unet(x, t, e).sample
        store = install_capture(tiny_unet, LAYERS)
        out = tiny_unet(x, t, e).sample
    assert_close_scaled(out, ref, rtol=1e-5)          # explicit softmax vs fused SDPA: rounding only
    assert set(store.maps) == set(LAYERS)


def test_maps_are_probabilities_with_gradients(tiny_unet):
    x, t, e = _inputs()
    store = install_capture(tiny_unet, ["up_32", "mid_4"])
    tiny_unet(x, t, e)
    m = store.maps["up_32"]
    assert len(m) == 2 and m[0].shape == (2, tiny_unet.config.attention_head_dim, 32 * 32, 77)
    torch.testing.assert_close(m[0].sum(-1), torch.ones(m[0].shape[:-1]))
    assert m[0].requires_grad
    m[0][..., 3].mean().backward()
    attn2 = dict(tiny_unet.named_modules())["up_blocks.3.attentions.0.transformer_blocks.0.attn2"]
    assert attn2.to_k.weight.grad is not None and attn2.to_k.weight.grad.abs().sum() > 0


def test_only_selected_layers_use_capture(tiny_unet):
    from diffusers.models.attention_processor import AttnProcessor2_0
    from reprolib.attention import CaptureAttnProcessor
    install_capture(tiny_unet, ["up_32"])
    kinds = {name: type(p) for name, p in tiny_unet.attn_processors.items()}
    groups = attention_layers(tiny_unet)
    for name, kind in kinds.items():
        expect = CaptureAttnProcessor if groups.get(name) == "up_32" else AttnProcessor2_0
        assert kind is expect, name
    uninstall_capture(tiny_unet)
    assert all(type(p) is AttnProcessor2_0 for p in tiny_unet.attn_processors.values())


def test_history_is_head_averaged_and_off_device(tiny_unet):
    x, t, e = _inputs(1)
    store = install_capture(tiny_unet, ["up_32", "up_16"], keep_history=True, keep_last=False)
    with torch.no_grad():
        for _ in range(3):
            tiny_unet(x, t, e)
    assert len(store.history) == 3 and store.maps == {}
    h = store.history[0]["up_32"]
    assert h.shape == (1, 32 * 32, 77) and h.device.type == "cpu" and not h.requires_grad
    torch.testing.assert_close(h.sum(-1), torch.ones(1, 32 * 32))
    assert split_spatial(h).shape == (1, 32, 32, 77)


def test_last_forward_replaces_maps_and_recompute_is_ignored(tiny_unet):
    x, t, e = _inputs(1)
    store = install_capture(tiny_unet, ["mid_4"])
    tiny_unet(x, t, e)
    tiny_unet(x, t, e)
    assert len(store.maps["mid_4"]) == 1       # one layer, from the last forward only
    store.record("mid_4", torch.zeros(1))      # outside a forward (e.g. checkpoint recompute)
    assert len(store.maps["mid_4"]) == 1


def test_gradient_checkpointing_keeps_maps_and_grads(tiny_unet):
    x, t, e = _inputs(1)
    tiny_unet.enable_gradient_checkpointing()
    tiny_unet.train()
    store = install_capture(tiny_unet, ["up_32"])
    tiny_unet(x, t, e).sample.mean().backward()
    assert len(store.maps["up_32"]) == 2


def test_unknown_group_names_it(tiny_unet):
    with pytest.raises(ValueError, match="unknown attention layer group 'up_64'; this UNet has"):
        install_capture(tiny_unet, ["up_64"])


def test_reference_style_capture_of_all_layers(tiny_unet):
    x, t, e = _inputs(1)
    store = install_capture(tiny_unet, "all", capture_self=True)
    with torch.no_grad():
        tiny_unet(x, t, e)
    n = sum(len(v) for v in store.maps.values())
    assert n == len(tiny_unet.attn_processors)  # every attention of the UNet, self and cross


def test_probabilities_stay_fp32_under_bf16_autocast(tiny_unet):
    x, t, e = _inputs(1)
    store = install_capture(tiny_unet, ["mid_4"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tiny_unet(x, t, e)
    assert store.maps["mid_4"][0].dtype == torch.float32
