"""Tests that kill mutmut survivors of reprolib.losses (see tests/MUTATION.md)."""
import pytest
import torch

from reprolib.losses import (GroundingTargets, grounding_losses, group_losses, pixel_loss_sample, resize_masks,
                             token_loss_sample)


def _corner_mask() -> torch.Tensor:
    """8x8 mask with one pixel at (0, 1): resized to 2x2 it vanishes without antialias, not with it."""
    m = torch.zeros(1, 8, 8, dtype=torch.float64)
    m[0, 0, 1] = 1.0
    return m


def _maps(b: int = 1, layers: int = 1, heads: int = 2, hw: int = 4, tokens: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, hw, tokens, generator=g, dtype=torch.float64).softmax(-1) for _ in range(layers)]


def test_bad_targets_messages_give_both_counts():
    with pytest.raises(ValueError, match="^2 token lists but 1 mask stacks$"):
        GroundingTargets([[[1]], [[2]]], [torch.zeros(1, 8, 8)])
    t = GroundingTargets([[[1]]], [torch.ones(1, 8, 8)])
    with pytest.raises(ValueError, match="^attention batch 2 but 1 target samples$"):
        group_losses(_maps(b=2), t, 2)


def test_empty_mask_stack_resizes_to_an_empty_stack():
    assert resize_masks(torch.zeros(0, 8, 8), 4).shape == (0, 4, 4)


def test_antialias_is_off_by_default_and_reaches_the_resize():
    m = _corner_mask()
    assert resize_masks(m, 2).tolist() == [[[0.0, 0.0], [0.0, 0.0]]]             # torchvision < 0.17
    assert resize_masks(m, 2, antialias=True).tolist() == [[[1.0, 0.0], [0.0, 0.0]]]
    maps = _maps()
    targets = GroundingTargets([[[1]]], [m])
    for aa in (False, True):
        bin_ = resize_masks(m, 2, antialias=aa)
        want = (token_loss_sample([maps[0][0]], [[1]], bin_), pixel_loss_sample([maps[0][0]], [[1]], bin_))
        got = group_losses(maps, targets, 2, antialias=aa)
        full = grounding_losses({"up_2": maps}, targets, ["up_2"], antialias=aa)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        torch.testing.assert_close(full["token"], want[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(full["pixel"], want[1], rtol=1e-12, atol=0)
    default = grounding_losses({"up_2": maps}, targets, ["up_2"])
    off = grounding_losses({"up_2": maps}, targets, ["up_2"], antialias=False)
    on = grounding_losses({"up_2": maps}, targets, ["up_2"], antialias=True)
    assert default["token"].item() == off["token"].item() != on["token"].item()
    assert group_losses(maps, targets, 2)[0].item() == off["token"].item()


def test_an_empty_sample_before_a_grounded_one_still_counts_the_later_one():
    maps = _maps(b=2)
    masks = [torch.zeros(0, 2, 2, dtype=torch.float64), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)]
    tok, pix = group_losses(maps, GroundingTargets([[], [[1]]], masks), 2)
    one = [maps[0][1]]
    assert tok.item() == pytest.approx(token_loss_sample(one, [[1]], masks[1]).item() / 2, rel=1e-12)
    assert pix.item() == pytest.approx(pixel_loss_sample(one, [[1]], masks[1]).item() / 2, rel=1e-12)
    assert tok.item() > 0


def test_pixel_total_is_the_sum_over_groups():
    masks = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)]
    maps = {"mid_2": _maps(seed=1), "up_2": _maps(seed=2), "down_2": _maps(seed=3)}
    out = grounding_losses(maps, GroundingTargets([[[2]]], masks), ["mid_2", "up_2", "down_2"])
    parts = [out[f"pixel/{g}"].item() for g in ("mid_2", "up_2", "down_2")]
    assert min(parts) > 0.01
    assert out["pixel"].item() == pytest.approx(sum(parts), rel=1e-12)


def test_rounding_outside_0_1_is_clamped_before_bce():
    # word = tokens 1 and 2; pixel 0 sums to 1.2 (clamped to 1, mask 1), pixel 1 to -1e-9 (clamped to 0, mask 0):
    # both terms are then -log(1) = 0. Without either clamp, BCE refuses the input.
    maps = torch.zeros(1, 2, 3, dtype=torch.float64)
    maps[0, 0, 1], maps[0, 0, 2] = 0.6, 0.6
    maps[0, 1, 1] = -1e-9
    mask = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64).reshape(1, 1, 2)
    assert pixel_loss_sample([maps], [[1, 2]], mask).item() == 0.0


def test_every_tensor_follows_the_maps_device():
    # The meta device stands in for a GPU: a helper tensor left on the CPU would be a device mismatch.
    maps = [torch.rand(1, 2, 4, 3, device="meta")]
    targets = GroundingTargets([[[1], [2]]], [torch.ones(2, 4, 4)])
    tok, pix = group_losses(maps, targets, 2)
    assert tok.device.type == "meta" and pix.device.type == "meta"
    t = token_loss_sample([maps[0][0]], [[1, 2]], torch.ones(1, 2, 2, device="meta"))
    assert t.device.type == "meta"
