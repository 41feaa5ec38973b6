"""Cross-attention capture through diffusers' attention-processor API.

Selected cross-attention layers get :class:`CaptureAttnProcessor`, which computes the softmax
probabilities explicitly (they are what the TokenCompose losses and the figures need) and hands them
to an :class:`AttentionStore` with gradients intact. Every other attention keeps diffusers' fused
SDPA processor. Layers are grouped like the original code: ``{place}_{res}`` with place in
down/mid/up and res the latent side length at the model's native ``sample_size`` (``up_64`` …).

The store keeps (a) the maps of the last UNet forward, for the training loss, and optionally
(b) a per-forward history averaged over heads and over the layers of each group, detached and
moved off the accelerator, for visualisation.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

_BLOCK = re.compile(r"^(down_blocks|mid_block|up_blocks)(?:\.(\d+))?\.")


def layer_group(name: str, unet) -> str:
    """``up_blocks.3.attentions.0...attn2.processor`` → ``up_64`` for SD1.4 (latent side at native size)."""
    m = _BLOCK.match(name)
    if not m:
        raise ValueError(f"not a UNet block attention: {name}")
    kind, idx = m.group(1), m.group(2)
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    n = len(unet.config.block_out_channels)
    if kind == "down_blocks":
        level, place = int(idx), "down"
    elif kind == "mid_block":
        level, place = n - 1, "mid"
    else:
        level, place = n - 1 - int(idx), "up"
    return f"{place}_{size // 2 ** level}"


def attention_layers(unet, cross: bool = True) -> dict[str, str]:
    """Processor name → group for every cross- (or self-) attention layer of the UNet."""
    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention == cross:
            out[f"{name}.processor"] = layer_group(name, unet)
    return out


@dataclass
class AttentionStore:
    """Where capture processors put their probabilities.

    ``maps[group]`` is a list over the layers of that group (in forward order) of tensors shaped
    ``(batch, heads, H*W, tokens)`` from the last forward, still attached to the graph.
    ``history`` holds one dict per forward: group → ``(batch, H*W, tokens)`` mean over heads and
    layers, on ``history_device``.
    """
    keep_last: bool = True
    keep_history: bool = False
    history_device: str = "cpu"
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    history: list[dict[str, torch.Tensor]] = field(default_factory=list)
    active: bool = False
    _handles: list = field(default_factory=list, repr=False)
    _step: dict[str, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def record(self, group: str, probs: torch.Tensor) -> None:
        """Called by the processors; ignored outside a UNet forward (e.g. checkpoint recomputation)."""
        if not self.active:
            return
        if self.keep_last:
            self.maps.setdefault(group, []).append(probs)
        if self.keep_history:
            self._step.setdefault(group, []).append(probs.detach().mean(1))

    def begin(self) -> None:
        self.maps = {}
        self._step = {}
        self.active = True

    def end(self) -> None:
        self.active = False
        if self.keep_history and self._step:
            self.history.append({g: torch.stack(v).mean(0).float().to(self.history_device)
                                 for g, v in self._step.items()})
        self._step = {}

    def reset(self) -> None:
        """Forget the last maps and the history (a new prompt or image)."""
        self.maps, self.history, self._step = {}, [], {}

    def map_of(self, group: str) -> torch.Tensor:
        """The last forward's maps of a group averaged over its layers: ``(batch, heads, H*W, tokens)``."""
        if group not in self.maps:
            raise KeyError(f"no attention captured for layer group {group!r}; captured: {sorted(self.maps)}")
        return torch.stack(self.maps[group]).mean(0)


class CaptureAttnProcessor:
    """The stock attention maths, with the softmax probabilities handed to a store.

    Scores and softmax are computed in float32 whatever the input dtype, so losses on the maps do
    not suffer from bf16/fp16 rounding; the value product runs in the input dtype.
    """

    def __init__(self, store: AttentionStore, group: str):
        self.store = store
        self.group = group

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        # autocast would recast to bf16; the meta device (shape checks) has no autocast to turn off
        off = contextlib.nullcontext() if q.device.type == "meta" else torch.autocast(q.device.type, enabled=False)
        with off:
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            probs = scores.softmax(dim=-1)                   # (batch, heads, H*W, tokens), fp32
        self.store.record(self.group, probs)
        out = torch.matmul(probs.to(v.dtype), v)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_capture(unet, layers: Iterable[str] | str = "all", store: AttentionStore | None = None,
                    keep_history: bool = False, keep_last: bool = True,
                    capture_self: bool = False) -> AttentionStore:
    """Give the selected cross-attention groups a capture processor; everything else fused SDPA.

    ``layers`` is a list of groups (``["mid_8", "up_64"]``) or ``"all"`` (every cross-attention).
    ``capture_self=True`` also captures self-attention (the reference-style capture of the original
    code, which materialises all 32 layers; used by benchmarks only). Returns the store; UNet forward
    hooks open and close its recording window.
    """
    store = store or AttentionStore(keep_last=keep_last, keep_history=keep_history)
    cross = attention_layers(unet, cross=True)
    selected_self = attention_layers(unet, cross=False) if capture_self else {}
    available = sorted(set(cross.values()), key=_group_order)
    wanted = set(available) if layers == "all" else set([layers] if isinstance(layers, str) else layers)
    unknown = wanted - set(available)
    if unknown:
        raise ValueError(f"unknown attention layer group {sorted(unknown)[0]!r}; this UNet has {', '.join(available)}")
    procs = {}
    for name in unet.attn_processors:
        if name in cross and cross[name] in wanted:
            procs[name] = CaptureAttnProcessor(store, cross[name])
        elif name in selected_self:
            procs[name] = CaptureAttnProcessor(store, "self_" + selected_self[name])
        else:
            procs[name] = AttnProcessor2_0()
    unet.set_attn_processor(procs)
    remove_hooks(store)
    store._handles = [
        unet.register_forward_pre_hook(lambda *_: store.begin()),
        unet.register_forward_hook(lambda *_: store.end()),
    ]
    return store


def remove_hooks(store: AttentionStore) -> None:
    for h in store._handles:
        h.remove()
    store._handles = []


def uninstall_capture(unet, store: AttentionStore | None = None) -> None:
    """Back to fused SDPA everywhere, hooks removed."""
    unet.set_attn_processor(AttnProcessor2_0())
    if store is not None:
        remove_hooks(store)


def _group_order(group: str) -> tuple[int, int]:
    place, res = group.split("_")[-2:]
    return ({"down": 0, "mid": 1, "up": 2}[place], -int(res) if place == "down" else int(res))


def split_spatial(maps: torch.Tensor) -> torch.Tensor:
    """(…, H*W, tokens) → (…, H, W, tokens) for square maps (as the original reshapes them)."""
    hw = maps.shape[-2]
    side = math.isqrt(hw)
    if side * side != hw:
        raise ValueError(f"attention map of {hw} positions is not square")
    return maps.reshape(*maps.shape[:-2], side, side, maps.shape[-1])
