"""Tests that kill mutmut survivors of reprolib.attention (see tests/MUTATION.md).

SD1.4's UNet never uses the processor's optional branches (4-D input, attention mask, group / spatial /
query-key / cross norms, residual, output rescale); here each is run on a small diffusers ``Attention``
and the capture processor must give the stock processor's output.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from _floats import assert_close_scaled
from reprolib.attention import (AttentionStore, CaptureAttnProcessor, attention_layers, install_capture,
                                layer_group, split_spatial, uninstall_capture)


def _run_both(attn: Attention, *args, **kw):
    store = AttentionStore()
    store.begin()
    ours = CaptureAttnProcessor(store, "g")(attn, *args, **kw)
    ref = AttnProcessor2_0()(attn, *args, **kw)
    store.end()
    return ours, ref, store.maps["g"][0]


def test_processor_matches_stock_on_4d_input_with_norms_mask_residual_and_rescale():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=4, norm_num_groups=2, spatial_norm_dim=3, qk_norm="layer_norm",
                     residual_connection=True, rescale_output_factor=2.0).eval()
    x = torch.randn(2, 32, 3, 5)                                          # (b, c, h, w): 15 positions
    temb = torch.randn(2, 3, 3, 5)
    mask = torch.zeros(2, 1, 15)
    mask[0, 0, :4] = -1e4                                                 # sample 0 ignores 4 keys
    with torch.no_grad():
        ours, ref, probs = _run_both(attn, x, attention_mask=mask, temb=temb)
    assert ours.shape == (2, 32, 3, 5)
    assert_close_scaled(ours, ref, rtol=1e-5)
    assert probs.shape == (2, 2, 15, 15)
    assert probs[0, :, :, :4].max() < 1e-6 and probs[1, :, :, :4].min() > 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 15))


def test_processor_matches_stock_on_cross_attention_with_a_cross_norm():
    torch.manual_seed(1)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4, cross_attention_norm="layer_norm").eval()
    x, ctx = torch.randn(2, 7, 8), torch.randn(2, 5, 6)
    mask = torch.zeros(2, 1, 5)
    mask[1, 0, 4] = -1e4
    with torch.no_grad():
        ours, ref, probs = _run_both(attn, x, encoder_hidden_states=ctx, attention_mask=mask)
    assert_close_scaled(ours, ref, rtol=1e-5)
    assert probs.shape == (2, 2, 7, 5) and probs[1, :, :, 4].max() < 1e-6


def test_layer_group_reads_the_first_side_of_a_tuple_sample_size_and_names_bad_layers():
    unet = SimpleNamespace(config=SimpleNamespace(sample_size=(32, 64), block_out_channels=(4, 8, 16)))
    assert layer_group("up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", unet) == "up_8"
    assert layer_group("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", unet) == "down_16"
    with pytest.raises(ValueError, match="^not a UNet block attention: conv_in$"):
        layer_group("conv_in", unet)


def test_store_history_only_when_recorded_on_its_device_and_reset():
    store = AttentionStore(keep_history=True, history_device="meta")
    store.begin()
    store.end()
    assert store.history == []                                            # a forward without capture adds nothing
    store.begin()
    store.record("up_2", torch.ones(1, 2, 4, 3))
    store.end()
    assert len(store.history) == 1 and store.history[0]["up_2"].device.type == "meta"
    store.reset()
    assert store.maps == {} and store.history == []
    store.begin()
    store.record("up_2", torch.ones(1, 2, 4, 3))
    assert len(store.maps["up_2"]) == 1


def test_map_of_averages_the_layers_and_names_a_missing_group():
    store = AttentionStore()
    store.begin()
    store.record("up_2", torch.zeros(1, 2, 4, 3))
    store.record("up_2", torch.full((1, 2, 4, 3), 2.0))
    m = store.map_of("up_2")
    assert m.shape == (1, 2, 4, 3) and (m == 1.0).all()
    with pytest.raises(KeyError, match=r"no attention captured for layer group 'mid_1'; captured: \['up_2'\]"):
        store.map_of("mid_1")


def test_install_capture_defaults_string_group_self_capture_and_error(tiny_unet):
    store = install_capture(tiny_unet)
    assert store.keep_history is False and store.keep_last is True
    x, t, e = torch.randn(1, 4, 32, 32), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        tiny_unet(x, t, e)
    assert set(store.maps) == set(attention_layers(tiny_unet).values())   # "all" by default
    one = install_capture(tiny_unet, "up_32", capture_self=True)
    with torch.no_grad():
        tiny_unet(x, t, e)
    assert set(one.maps) == {"up_32", "self_down_32", "self_down_16", "self_down_8", "self_mid_4",
                             "self_up_8", "self_up_16", "self_up_32"}
    with pytest.raises(ValueError, match="^unknown attention layer group 'up_64'; this UNet has "
                                         "down_32, down_16, down_8, mid_4, up_8, up_16, up_32$"):
        install_capture(tiny_unet, ["up_64"])
    uninstall_capture(tiny_unet, one)
    uninstall_capture(tiny_unet, one)                                     # removing twice is harmless
    install_capture(tiny_unet, ["up_32"], store=one)
    assert len(one._handles) == 2


def test_split_spatial_names_a_non_square_map():
    with pytest.raises(ValueError, match="^attention map of 6 positions is not square$"):
        split_spatial(torch.zeros(6, 3))


def test_processor_runs_in_bfloat16_without_autocast():
    # probabilities are fp32; the value product must cast them back to the values' dtype
    torch.manual_seed(2)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).to(torch.bfloat16).eval()
    x, ctx = torch.randn(1, 5, 8, dtype=torch.bfloat16), torch.randn(1, 3, 6, dtype=torch.bfloat16)
    with torch.no_grad():
        ours, ref, probs = _run_both(attn, x, encoder_hidden_states=ctx)
    assert ours.dtype == torch.bfloat16 and probs.dtype == torch.float32
    assert_close_scaled(ours.float(), ref.float(), rtol=2e-2)
