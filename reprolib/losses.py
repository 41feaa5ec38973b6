"""TokenCompose's grounding losses (Eq. 1 token loss, Eq. 2 pixel loss), batched.

Matches ``get_grounding_loss_by_layer`` of the original ``loss_utils.py`` for one sample:

* masks are resized to the layer group's resolution (bilinear; the original's torchvision<0.17
  resized tensors *without* antialiasing, our default; ``antialias=True`` is the newer behaviour)
  and binarised with ``> 0``;
* token loss: for every layer of the group and every token of a word, the fraction of the token's
  attention inside the mask is averaged over heads, then ``(1 - x)²``; averaged over the word's
  tokens, **summed over the layers of the group**, averaged over words;
* pixel loss: the maps are averaged over heads and layers, a word's tokens are summed, BCE against
  the mask (mean over pixels, log clamped at -100 as ``nn.BCELoss``), averaged over words.

Per-group losses are summed over the trained groups. The original asserted batch 1; here the
batch loss is the mean of the per-sample losses (a sample without grounded nouns contributes 0),
which equals batch 1 with gradient accumulation over the same samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


@dataclass
class GroundingTargets:
    """Per sample: token positions of each grounded word, and the words' masks ``(n_words, S, S)`` in [0, 1]."""
    token_indices: list[list[list[int]]]
    masks: list[torch.Tensor]

    def __post_init__(self) -> None:
        if len(self.token_indices) != len(self.masks):
            raise ValueError(f"{len(self.token_indices)} token lists but {len(self.masks)} mask stacks")
        for b, (idx, m) in enumerate(zip(self.token_indices, self.masks)):
            if m.ndim != 3 or m.shape[0] != len(idx):
                raise ValueError(f"sample {b}: masks of shape {tuple(m.shape)} for {len(idx)} words")


def resize_masks(masks: torch.Tensor, res: int, antialias: bool = False) -> torch.Tensor:
    """(n, S, S) masks → (n, res, res) binary float masks, as the original resizes then thresholds > 0."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, res, res))
    r = F.interpolate(masks[:, None].float(), size=(res, res), mode="bilinear",
                      align_corners=False, antialias=antialias)[:, 0]
    return (r > 0.0).float()


def _token_layout(indices: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Flatten word→tokens into a token list and the word each token belongs to."""
    toks, owner = [], []
    for w, idx in enumerate(indices):
        toks += list(idx)
        owner += [w] * len(idx)
    return toks, owner


def token_loss_sample(layer_maps: Sequence[torch.Tensor], indices: Sequence[Sequence[int]],
                      masks_bin: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for one sample and one layer group.

    ``layer_maps``: per layer ``(heads, H*W, T)``; ``masks_bin``: ``(n_words, H, W)`` binary.
    """
    toks, owner = _token_layout(indices)
    dev = layer_maps[0].device
    owner_t = torch.tensor(owner, device=dev)
    maps = torch.stack(list(layer_maps))[..., toks]                        # (L, heads, HW, K)
    m = masks_bin.reshape(masks_bin.shape[0], -1)[owner_t].T.to(maps.dtype)  # (HW, K)
    inside = (maps * m).sum(-2) / maps.sum(-2)                             # (L, heads, K)
    per_token = (1.0 - inside.mean(1)) ** 2                                # (L, K)
    n_words = len(indices)
    per_word = torch.zeros(per_token.shape[0], n_words, device=dev, dtype=per_token.dtype)
    per_word.index_add_(1, owner_t, per_token)
    sizes = torch.tensor([len(i) for i in indices], device=dev, dtype=per_token.dtype)
    return (per_word / sizes).sum() / n_words


def pixel_loss_sample(layer_maps: Sequence[torch.Tensor], indices: Sequence[Sequence[int]],
                      masks_bin: torch.Tensor) -> torch.Tensor:
    """Eq. 2 for one sample and one layer group (same arguments as :func:`token_loss_sample`)."""
    avg = torch.stack([m.mean(0) for m in layer_maps]).mean(0)             # (HW, T)
    total = avg.new_zeros(())
    for w, idx in enumerate(indices):
        pred = avg[:, list(idx)].sum(-1)
        total = total + F.binary_cross_entropy(pred.clamp(0, 1), masks_bin[w].reshape(-1).to(pred.dtype))
    return total / len(indices)


def group_losses(layer_maps: Sequence[torch.Tensor], targets: GroundingTargets, res: int,
                 antialias: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-mean token and pixel loss of one group; ``layer_maps`` per layer ``(B, heads, H*W, T)``."""
    bsz = layer_maps[0].shape[0]
    if bsz != len(targets.token_indices):
        raise ValueError(f"attention batch {bsz} but {len(targets.token_indices)} target samples")
    tok = layer_maps[0].new_zeros(())
    pix = layer_maps[0].new_zeros(())
    for b in range(bsz):
        idx = targets.token_indices[b]
        if not idx:
            continue
        masks = resize_masks(targets.masks[b].to(layer_maps[0].device), res, antialias)
        maps_b = [m[b] for m in layer_maps]
        tok = tok + token_loss_sample(maps_b, idx, masks)
        pix = pix + pixel_loss_sample(maps_b, idx, masks)
    return tok / bsz, pix / bsz


def grounding_losses(maps: Mapping[str, Sequence[torch.Tensor]], targets: GroundingTargets,
                     train_layers: Sequence[str], antialias: bool = False) -> dict[str, torch.Tensor]:
    """Token and pixel losses per trained group (``token/up_64`` …) and their sums (``token``, ``pixel``)."""
    out: dict[str, torch.Tensor] = {}
    tok_sum, pix_sum = None, None
    for group in train_layers:
        if group not in maps:
            raise KeyError(f"layer group {group!r} was not captured; captured: {sorted(maps)}")
        res = int(group.split("_")[-1])
        tok, pix = group_losses(maps[group], targets, res, antialias)
        out[f"token/{group}"], out[f"pixel/{group}"] = tok, pix
        tok_sum = tok if tok_sum is None else tok_sum + tok
        pix_sum = pix if pix_sum is None else pix_sum + pix
    out["token"], out["pixel"] = tok_sum, pix_sum
    return out
