"""TokenCompose losses: hand-computed cases, equality with a transcription of the original, batching, gradients."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reprolib.losses import (GroundingTargets, grounding_losses, group_losses, pixel_loss_sample,
                             resize_masks, token_loss_sample)


def original_layer_loss(gt_masks, word_token_idx_ls, res, attn_maps):
    """The original get_grounding_loss_by_layer (batch 1), transcribed loop for loop as an oracle.

    gt_masks: list of (1, 1, S, S) tensors; attn_maps: list over layers of (heads, res*res, T).
    """
    segs = []
    for m in gt_masks:
        r = F.interpolate(m, size=(res, res), mode="bilinear", align_corners=False, antialias=False)
        segs.append((r.squeeze(0) > 0.0).to(attn_maps[0].dtype))  # float() in the fp32 original
    maps = [a.reshape(-1, res, res, a.shape[-1]) for a in attn_maps]
    token_loss = 0.0
    for attn_map in maps:
        b, H, W, j = attn_map.shape
        for i in range(len(word_token_idx_ls)):
            obj_loss = 0.0
            mask = segs[i]
            for pos in word_token_idx_ls[i]:
                ca = attn_map[:, :, :, pos].reshape(b, H, W)
                act = (ca * mask).reshape(b, -1).sum(dim=-1) / ca.reshape(b, -1).sum(dim=-1)
                obj_loss += (1.0 - torch.mean(act)) ** 2
            token_loss += obj_loss / len(word_token_idx_ls[i])
    token_loss = token_loss / len(word_token_idx_ls)
    avg = torch.stack([m.mean(0) for m in maps], 0)
    avg = (avg.sum(0) / avg.shape[0]).unsqueeze(0)
    bce = nn.BCELoss()
    pixel_loss = 0.0
    for i in range(len(word_token_idx_ls)):
        w = torch.stack([avg[..., t] for t in word_token_idx_ls[i]], 0).sum(0)
        pixel_loss += bce(w, segs[i])
    return token_loss, pixel_loss / len(word_token_idx_ls)


def _random_maps(layers, b, heads, res, tokens=77, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        m = torch.randn(b, heads, res * res, tokens, generator=g, dtype=torch.float64).softmax(-1)
        out.append(m.requires_grad_(requires_grad))
    return out


def _random_masks(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, size, size, generator=g) > 0.6).double()


def test_hand_computed_token_and_pixel_loss():
    # one layer, 2 heads, 2x2 map, one word with one token (index 1) whose mask is the top-left pixel
    maps = torch.zeros(2, 4, 3, dtype=torch.float64)
    maps[0, :, 1] = torch.tensor([0.4, 0.2, 0.2, 0.2])
    maps[1, :, 1] = torch.tensor([0.1, 0.1, 0.1, 0.1])
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    tok = token_loss_sample([maps], [[1]], mask)
    assert tok.item() == pytest.approx((1 - (0.4 + 0.25) / 2) ** 2)            # 0.455625
    pix = pixel_loss_sample([maps], [[1]], mask)
    assert pix.item() == pytest.approx(-(math.log(0.25) + 3 * math.log(0.85)) / 4)


def test_multi_token_word_is_averaged_then_words_averaged_and_layers_summed():
    # two layers identical; word A = tokens [1, 2] with inside fractions 1.0 and 0.5; word B = token 3 with 0
    m = torch.zeros(1, 4, 4, dtype=torch.float64)
    m[0, :, 1] = torch.tensor([1.0, 0, 0, 0])
    m[0, :, 2] = torch.tensor([0.5, 0.5, 0, 0])
    m[0, :, 3] = torch.tensor([0, 0, 0, 1.0])
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    one = token_loss_sample([m], [[1, 2], [3]], masks)
    assert one.item() == pytest.approx(((0 + 0.25) / 2 + 1.0) / 2)             # 0.5625
    two = token_loss_sample([m, m], [[1, 2], [3]], masks)
    assert two.item() == pytest.approx(2 * one.item())                           # summed over layers


def _maps_2x2(layers) -> list[torch.Tensor]:
    """Per layer ``(heads, 4, 5)`` maps of a 2×2 image over 5 tokens from ``[[{token: 4 pixel values}]]``."""
    out = []
    for heads in layers:
        m = torch.zeros(len(heads), 4, 5, dtype=torch.float64)
        for h, tokens in enumerate(heads):
            for t, values in tokens.items():
                m[h, :, t] = torch.tensor(values, dtype=torch.float64)
        out.append(m)
    return out


def _bce(pred, mask) -> float:
    """nn.BCELoss by hand: mean over the pixels of −log p (mask 1) or −log(1 − p) (mask 0)."""
    return -sum(math.log(p if y else 1 - p) for p, y in zip(pred, mask)) / len(pred)


TOP_LEFT, TOP_ROW = [1, 0, 0, 0], [1, 1, 0, 0]


@pytest.mark.parametrize("layers, words, masks, expected", [
    # a word's tokens are summed: [.3,.1,0,0] + [.2,.1,.1,0] = [.5,.2,.1,0]
    ([[{1: [.3, .1, 0, 0], 2: [.2, .1, .1, 0]}]], [[1, 2]], [TOP_LEFT], _bce([.5, .2, .1, 0], TOP_LEFT)),
    # three tokens summed, a two-pixel mask: [.4,.3,.1,.3]
    ([[{1: [.1, .2, 0, .1], 2: [.1, 0, .1, .1], 3: [.2, .1, 0, .1]}]], [[1, 2, 3]], [TOP_ROW],
     _bce([.4, .3, .1, .3], TOP_ROW)),
    # two words, one of two tokens: each word's BCE, averaged over words
    ([[{1: [.6, .1, .1, .1], 3: [0, .3, .1, 0], 4: [0, .2, .1, .1]}]], [[1], [3, 4]], [TOP_LEFT, [0, 1, 0, 0]],
     (_bce([.6, .1, .1, .1], TOP_LEFT) + _bce([0, .5, .2, .1], [0, 1, 0, 0])) / 2),
])
def test_pixel_loss_sums_a_words_tokens(layers, words, masks, expected):
    m = torch.tensor(masks, dtype=torch.float64).reshape(-1, 2, 2)
    assert pixel_loss_sample(_maps_2x2(layers), words, m).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("layers, words, masks, expected", [
    # two layers, one head: ([.6,.2,.2,0] + [.2,.2,.2,.4]) / 2 = [.4,.2,.2,.2]
    ([[{1: [.6, .2, .2, 0]}], [{1: [.2, .2, .2, .4]}]], [[1]], [TOP_LEFT], _bce([.4, .2, .2, .2], TOP_LEFT)),
    # three layers of two heads: heads averaged, then layers: ([.8,.1,.05,.05] + [.5,.2,.2,.1] + [.2,.3,.25,.25]) / 3
    ([[{1: [.9, .1, 0, 0]}, {1: [.7, .1, .1, .1]}], [{1: [.5, .2, .2, .1]}] * 2, [{1: [.2, .3, .25, .25]}] * 2],
     [[1]], [TOP_LEFT], _bce([.5, .2, 1 / 6, 2 / 15], TOP_LEFT)),
    # average over layers, then the word's two tokens summed: token 2 [.2,.1,0,0] | [0,.1,.2,0] -> [.1,.1,.1,0];
    # token 3 [.3,0,0,.1] | [.1,.2,0,.1] -> [.2,.1,0,.1]; sum [.3,.2,.1,.1]
    ([[{2: [.2, .1, 0, 0], 3: [.3, 0, 0, .1]}], [{2: [0, .1, .2, 0], 3: [.1, .2, 0, .1]}]], [[2, 3]], [TOP_ROW],
     _bce([.3, .2, .1, .1], TOP_ROW)),
    # one layer of three heads: ([.3,.3,.3,.1] + [.6,0,.3,.1] + [0,.3,0,.7]) / 3 = [.3,.2,.2,.3]
    ([[{1: [.3, .3, .3, .1]}, {1: [.6, 0, .3, .1]}, {1: [0, .3, 0, .7]}]], [[1]], [TOP_ROW],
     _bce([.3, .2, .2, .3], TOP_ROW)),
    # two words over two layers, averaged over words: [.4,.1,.1,.1] and [0,0,.3,.3]
    ([[{1: [.5, .1, .1, .1], 2: [0, 0, .4, .2]}], [{1: [.3, .1, .1, .1], 2: [0, 0, .2, .4]}]], [[1], [2]],
     [TOP_LEFT, [0, 0, 1, 1]], (_bce([.4, .1, .1, .1], TOP_LEFT) + _bce([0, 0, .3, .3], [0, 0, 1, 1])) / 2),
])
def test_pixel_loss_averages_heads_and_layers_of_the_group(layers, words, masks, expected):
    m = torch.tensor(masks, dtype=torch.float64).reshape(-1, 2, 2)
    assert pixel_loss_sample(_maps_2x2(layers), words, m).item() == pytest.approx(expected, rel=1e-12)


def test_mask_resize_matches_original_quirks():
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0
    small = resize_masks(mask, 2)                     # bilinear, no antialias, then > 0
    assert small.tolist() == [[[1.0, 0.0], [0.0, 0.0]]]
    big = resize_masks(torch.full((1, 8, 8), 0.01), 4)
    assert big.min() == 1.0                           # any positive value becomes foreground


@pytest.mark.parametrize("layers,heads,res,words", [(1, 8, 8, [[5]]), (3, 4, 16, [[2, 3], [7], [9, 10, 11]])])
def test_equals_transcribed_original(layers, heads, res, words):
    maps = _random_maps(layers, 1, heads, res, seed=layers)
    masks = _random_masks(len(words), 32, seed=res)
    ref_tok, ref_pix = original_layer_loss([m[None, None] for m in masks], words, res, [m[0] for m in maps])
    tok, pix = group_losses(maps, GroundingTargets([words], [masks]), res)
    torch.testing.assert_close(tok, ref_tok)
    torch.testing.assert_close(pix, ref_pix)


def test_batched_loss_is_mean_of_per_sample_losses_and_empty_samples_count_zero():
    words = [[[2, 3], [7]], [[4]], []]
    masks = [_random_masks(2, 32, 1), _random_masks(1, 32, 2), torch.zeros(0, 32, 32, dtype=torch.float64)]
    maps = {"up_16": _random_maps(2, 3, 4, 16, seed=3), "mid_8": _random_maps(1, 3, 4, 8, seed=4)}
    batched = grounding_losses(maps, GroundingTargets(words, masks), ["mid_8", "up_16"])
    per_sample = []
    for b in range(3):
        one = {g: [m[b:b + 1] for m in v] for g, v in maps.items()}
        per_sample.append(grounding_losses(one, GroundingTargets([words[b]], [masks[b]]), ["mid_8", "up_16"]))
    for key in ("token", "pixel", "token/up_16", "pixel/mid_8"):
        torch.testing.assert_close(batched[key], sum(p[key] for p in per_sample) / 3)
    torch.testing.assert_close(batched["token"], batched["token/mid_8"] + batched["token/up_16"])


def test_gradients_match_finite_differences():
    words = [[1, 2], [5]]
    masks = resize_masks(_random_masks(2, 16, 5), 4).double()
    logits = torch.randn(2, 3, 16, 8, dtype=torch.float64, requires_grad=True)

    def f(x):
        maps = [x.softmax(-1)[0:1].squeeze(0), x.softmax(-1)[1:2].squeeze(0)]
        return token_loss_sample(maps, words, masks) + pixel_loss_sample(maps, words, masks)

    assert torch.autograd.gradcheck(f, (logits,))


def test_bad_targets_name_the_problem():
    with pytest.raises(ValueError, match="sample 0: masks of shape"):
        GroundingTargets([[[1], [2]]], [torch.zeros(1, 8, 8)])
    maps = {"up_16": _random_maps(1, 1, 2, 16)}
    with pytest.raises(KeyError, match="layer group 'up_64' was not captured"):
        grounding_losses(maps, GroundingTargets([[[1]]], [torch.ones(1, 8, 8)]), ["up_64"])
