"""TokenCompose fine-tuning (stage 02) with accelerate: fast and faithful paths, checkpoints, logs.

The objective is the authors' ``train_token_compose.py``:
``L = mse(unet(x_t, t, c), target) + token_loss_scale * L_token + pixel_loss_scale * L_pixel`` with
SD's DDPM noise schedule (from the model's ``scheduler`` folder), latents
``vae.encode(x).latent_dist.sample() * scaling_factor``, timesteps uniform in ``[0, T)``, an
``epsilon`` or ``v_prediction`` target per the scheduler config, text encoder and VAE frozen, AdamW,
constant LR, ``clip_grad_norm_(max_grad_norm)`` on sync steps, gradient accumulation through
``accelerator.accumulate``. Multi-GPU/multi-node runs go through ``accelerate launch``.

Two paths compute the same maths:

* **faithful** (``train.faithful``): fp32, batch 1 × accumulation (``batch_size * grad_accum``), the
  VAE encodes every image at every step (the original recipe);
* **fast**: the whole effective batch in one forward (per device), the profile's mixed precision
  (bf16 autocast), fused SDPA everywhere except the trained cross-attention layers
  (:func:`reprolib.attention.install_capture`), optional gradient checkpointing, and VAE posterior
  mean/std cached once so each step still *samples* the posterior (``mean + std * eps`` is what
  ``DiagonalGaussianDistribution.sample`` computes). ``train.cache_latents`` also caches on the
  faithful path.

Deliberate differences from the original, each with the original behaviour kept or explained:

* randomness is a pure function of ``(seed, sample position)``: the data order of epoch ``e`` is a
  permutation seeded by ``(seed, e)`` and each sample's posterior noise, diffusion noise and
  timestep come from a generator seeded by ``(seed, position)``. Runs are reproducible, the two
  paths see identical draws, and a resumed run repeats an uninterrupted one exactly. (The original
  drew from the global RNG without seeding.)
* masks travel as binary masks already resized to each trained layer's resolution with
  :func:`reprolib.losses.resize_masks` (the loss's own resize is then the identity), so a batch
  carries kilobytes instead of ``n × 512²`` floats. Bilinear weights are non-negative, so
  ``resize(m) > 0`` depends only on ``m > 0``: the losses are bit-identical (tested).
* epoch ends: the original's accelerate dataloader forces a sync at the end of each epoch, so with
  4,526 images and 4 micro-batches the last step of each epoch sums 2 samples' gradients, each
  divided by 4 (accelerate always divides by the accumulation count). ``epoch_tail="partial"``
  (default) reproduces this on both paths; ``"drop"`` uses only whole steps per epoch.
* several processes (``accelerate launch -m reprolib.train``): each optimizer step's samples are dealt
  out over the processes by :class:`StepShards`, so a step uses exactly the samples one process would,
  each once, and the logged losses are means over all of them; accelerate's own dataloader sharding
  would instead refill an epoch's short last step with samples from the epoch's start. Two processes
  give one process's losses and weights (``tests/test_distributed.py``).
* a noun that cannot be found in its caption is skipped and counted (the original asserted).
* final export: a diffusers UNet folder (safetensors); with EMA the exported weights are the EMA
  weights, as diffusers' example script does.

Artifacts in the output folder: ``checkpoint-N/`` (accelerate state + ``log.csv`` +
``trainer_state.json``, written to a temporary folder and renamed), ``log.csv`` (one row per
optimizer step: lr, grad norm, denoise/token/pixel losses, per layer group), ``run_summary.json``,
``unet/`` (the export), ``cache/`` (VAE posteriors keyed by the records' fingerprint) and
``logs/`` (TensorBoard, when installed).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .attention import install_capture, uninstall_capture
from .config import Profile, TrainConfig, effective_precision, precision_dtype, resolve_device
from .distributed import process_state
from .io import atomic_save, atomic_write_json, remove_stale_temps
from .losses import GroundingTargets, grounding_losses, resize_masks
from .models import weights_identity

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
LOG_FILE = "log.csv"
SUMMARY_FILE = "run_summary.json"
EPOCH_TAILS = ("partial", "drop")


class TrainError(ValueError):
    """A training setting, dataset item or checkpoint that cannot be used; the message names it."""


# --------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class BatchPlan:
    """How the effective batch is split: per-device batch × accumulation × processes."""
    per_device_batch: int
    grad_accum: int
    num_processes: int
    mixed_precision: str
    cache_latents: bool
    faithful: bool

    @property
    def effective_batch(self) -> int:
        return self.per_device_batch * self.grad_accum * self.num_processes


def plan_batches(cfg: TrainConfig, num_processes: int = 1) -> BatchPlan:
    """Faithful: batch 1 × accumulation, fp32. Fast: the effective batch in one forward per device.

    The effective batch is ``batch_size * grad_accum`` (the authors': 1 × 4) whatever the path, so
    both paths follow the same optimisation trajectory. The fast path always caches the VAE
    posteriors; the faithful one only when ``train.cache_latents`` asks for it.
    """
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise TrainError(f"train.batch_size and train.grad_accum must be >= 1, got {cfg.batch_size}, {cfg.grad_accum}")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise TrainError(f"train.mixed_precision must be no, fp16 or bf16, got {cfg.mixed_precision!r}")
    eff = cfg.batch_size * cfg.grad_accum
    if eff % num_processes:
        raise TrainError(f"effective batch {eff} (train.batch_size × train.grad_accum) is not divisible "
                         f"by {num_processes} processes")
    per_proc = eff // num_processes
    if cfg.faithful:
        return BatchPlan(1, per_proc, num_processes, "no", cfg.cache_latents, True)
    return BatchPlan(per_proc, 1, num_processes, cfg.mixed_precision, True, False)


def layer_resolution(group: str) -> int:
    """``up_64`` → 64 (the latent side length of a layer group)."""
    try:
        return int(group.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise TrainError(f"not a layer group name: {group!r} (expected e.g. up_64)") from None


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python runs, unlike ``hash``)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw_sample_noise(seed: int, position: int, latent_shape: Sequence[int],
                      num_train_timesteps: int) -> dict[str, torch.Tensor]:
    """Posterior noise, diffusion noise and timestep of one sample, a pure function of (seed, position)."""
    g = torch.Generator().manual_seed(mix_seed("sample", seed, position))
    eps = torch.randn(tuple(latent_shape), generator=g)
    noise = torch.randn(tuple(latent_shape), generator=g)
    t = torch.randint(0, num_train_timesteps, (1,), generator=g)
    return {"posterior_eps": eps, "noise": noise, "timestep": t[0]}


# --------------------------------------------------------------------------- data

class EpochSampler(Sampler):
    """Yields ``(position, index)``: a fresh permutation per epoch, seeded by ``(seed, epoch)``.

    ``position = epoch * n + i`` identifies the sample draw; it seeds the sample's noise. With
    ``tail="drop"`` each epoch is cut to a multiple of the effective batch.
    """

    def __init__(self, n: int, seed: int, effective_batch: int = 1, tail: str = "partial"):
        if tail not in EPOCH_TAILS:
            raise TrainError(f"epoch_tail must be one of {EPOCH_TAILS}, got {tail!r}")
        if n < 1:
            raise TrainError("training dataset is empty")
        self.n, self.seed, self.eff, self.tail, self.epoch = n, seed, effective_batch, tail, 0
        if tail == "drop" and n < effective_batch:
            raise TrainError(f"epoch_tail='drop' needs at least {effective_batch} examples, got {n}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n - self.n % self.eff if self.tail == "drop" else self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(mix_seed("epoch", self.seed, self.epoch))
        perm = torch.randperm(self.n, generator=g)[: len(self)].tolist()
        base = self.epoch * self.n
        return iter([(base + i, idx) for i, idx in enumerate(perm)])


class StepShards(Sampler):
    """This process's micro-batches: each optimizer step's samples dealt out over the processes.

    Step ``s`` of an epoch takes the next ``effective_batch`` pairs of an :class:`EpochSampler` (fewer in
    a partial tail); process ``p`` of ``P`` takes the ``p``-th of ``P`` contiguous, near-equal shards of
    them, cut in micro-batches of ``micro_batch``. Every sample of a step is used exactly once, by one
    process, and the step's gradient is the one a single process computes. (accelerate's own
    dataloader sharding would fill the last round of an epoch with samples from its start.) A process
    whose shard of a short tail step is empty gets one weight-0 copy of the step's first sample, so
    that it still takes part in the gradient all-reduce, adding exactly 0.

    Keys are ``(position, index, weight)``; with one process the micro-batches are those of a plain
    ``DataLoader(batch_size=micro_batch)`` over the sampler.
    """

    def __init__(self, order: EpochSampler, micro_batch: int, num_processes: int = 1, process_index: int = 0):
        if micro_batch < 1 or not 0 <= process_index < num_processes:
            raise TrainError(f"micro-batch {micro_batch}, process {process_index} of {num_processes}")
        self.order, self.micro, self.P, self.p = order, micro_batch, num_processes, process_index

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.order) / self.order.eff)

    def _shard(self, n: int) -> range:
        base, extra = divmod(n, self.P)
        start = self.p * base + min(self.p, extra)
        return range(start, start + base + (self.p < extra))

    def _sizes(self, n: int) -> list[int]:
        """Micro-batch sizes of this process for a step of ``n`` samples (0: the weight-0 placeholder)."""
        k = len(self._shard(n))
        return [min(self.micro, k - m) for m in range(0, k, self.micro)] or [0]

    def __len__(self) -> int:
        n, eff = len(self.order), self.order.eff
        return (n // eff) * len(self._sizes(eff)) + (len(self._sizes(n % eff)) if n % eff else 0)

    def __iter__(self) -> Iterator[list[tuple[int, int, float]]]:
        order, eff = list(self.order), self.order.eff
        for s in range(0, len(order), eff):
            step = order[s:s + eff]
            mine = [step[i] for i in self._shard(len(step))]
            if not mine:
                yield [(*step[0], 0.0)]
                continue
            for m in range(0, len(mine), self.micro):
                yield [(*key, 1.0) for key in mine[m:m + self.micro]]


def masks_by_resolution(masks: torch.Tensor, resolutions: Sequence[int],
                        antialias: bool = False) -> dict[int, torch.Tensor]:
    """Binary (bool) masks at each loss resolution, resized exactly as the loss would resize them."""
    if masks.ndim != 3:
        raise TrainError(f"masks must be (n_words, H, W), got shape {tuple(masks.shape)}")
    return {r: resize_masks(masks.float(), r, antialias).bool() for r in resolutions}


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Caption → ``(77,)`` ids, padded to max length and truncated as the original."""
    return tokenizer(text, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids[0]


def check_example(ex: Mapping[str, Any], where: str) -> None:
    """Raise naming the example when a field the trainer needs is missing or inconsistent."""
    for key in ("token_indices", "masks"):
        if key not in ex:
            raise TrainError(f"{where}: missing field {key!r}")
    if "pixel_values" not in ex:
        raise TrainError(f"{where}: missing field 'pixel_values'")
    if "input_ids" not in ex and "text" not in ex:
        raise TrainError(f"{where}: needs input_ids or text")
    m = ex["masks"]
    first = next(iter(m.values()), None) if isinstance(m, Mapping) else m
    n_masks = len(ex["token_indices"]) if first is None else int(first.shape[0])
    if n_masks != len(ex["token_indices"]):
        raise TrainError(f"{where}: {len(ex['token_indices'])} grounded words but {n_masks} masks")


@dataclass
class LatentCache:
    """Everything a step needs per example except the image: posterior mean/std, ids, tokens, masks."""
    mean: torch.Tensor                       # (N, C, h, w) float32
    std: torch.Tensor                        # (N, C, h, w) float32
    input_ids: torch.Tensor                  # (N, 77) int64
    token_indices: list[list[list[int]]]
    masks: list[dict[int, torch.Tensor]]     # per example: res -> (n_words, res, res) bool
    n_skipped: list[int] = field(default_factory=list)   # per example: nouns not found in the caption

    def __len__(self) -> int:
        return self.mean.shape[0]

    def save(self, path: Path, fingerprint: str) -> Path:
        """One safetensors file: latents, ids and masks concatenated per resolution, tokens in metadata."""
        from safetensors.torch import save_file
        tensors = {"mean": self.mean.contiguous(), "std": self.std.contiguous(), "input_ids": self.input_ids}
        counts = torch.tensor([len(t) for t in self.token_indices], dtype=torch.int64)
        tensors["counts"] = counts
        tensors["n_skipped"] = torch.tensor(self.n_skipped or [0] * len(counts), dtype=torch.int64)
        resolutions = sorted(self.masks[0]) if self.masks else []
        for r in resolutions:
            parts = [m[r] for m in self.masks]
            tensors[f"masks_{r}"] = (torch.cat(parts) if sum(p.shape[0] for p in parts)
                                     else torch.zeros(0, r, r, dtype=torch.bool)).to(torch.uint8).contiguous()
        meta = {"fingerprint": fingerprint, "token_indices": json.dumps(self.token_indices),
                "resolutions": json.dumps(resolutions)}
        return atomic_save(path, lambda p: save_file(tensors, str(p), metadata=meta))

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> "LatentCache | None":
        """The cache at `path` if its fingerprint matches, else None (it will be rebuilt)."""
        from safetensors import safe_open
        if not Path(path).is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != fingerprint:
                return None
            t = {k: f.get_tensor(k) for k in f.keys()}
        counts = t["counts"].tolist()
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + c)
        masks = [{r: t[f"masks_{r}"][offsets[i]:offsets[i + 1]].bool() for r in json.loads(meta["resolutions"])}
                 for i in range(len(counts))]
        return cls(t["mean"], t["std"], t["input_ids"], json.loads(meta["token_indices"]), masks,
                   t["n_skipped"].tolist())


class TrainExamples(Dataset):
    """Adds to each example what a step needs: ids, per-resolution masks and its noise draws.

    Indexed by the ``(position, index)`` pairs of :class:`EpochSampler`. Reads either the raw
    examples (``pixel_values``, encoded by the VAE in the step) or a :class:`LatentCache`.
    """

    def __init__(self, examples: Dataset | None, cache: LatentCache | None, tokenizer, resolutions: Sequence[int],
                 latent_shape: Sequence[int], seed: int, num_train_timesteps: int, antialias: bool = False):
        if examples is None and cache is None:
            raise TrainError("TrainExamples needs examples or a latent cache")
        self.examples, self.cache, self.tokenizer = examples, cache, tokenizer
        self.resolutions, self.latent_shape = list(resolutions), tuple(latent_shape)
        self.seed, self.T, self.antialias = seed, num_train_timesteps, antialias

    def __len__(self) -> int:
        return len(self.cache) if self.cache is not None else len(self.examples)

    def __getitem__(self, key: tuple[int, int] | tuple[int, int, float]) -> dict[str, Any]:
        position, idx = key[:2]
        item: dict[str, Any] = {"position": position, "index": idx, "weight": key[2] if len(key) > 2 else 1.0}
        if self.cache is not None:
            c = self.cache
            item.update(latent_mean=c.mean[idx], latent_std=c.std[idx], input_ids=c.input_ids[idx],
                        token_indices=c.token_indices[idx], masks=c.masks[idx],
                        n_skipped=c.n_skipped[idx] if c.n_skipped else 0)
        else:
            item.update(prepare_example(self.examples[idx], self.tokenizer, self.resolutions,
                                        self.antialias, f"example {idx}"))
        item.update(draw_sample_noise(self.seed, position, self.latent_shape, self.T))
        return item


def prepare_example(ex: Mapping[str, Any], tokenizer, resolutions: Sequence[int], antialias: bool,
                    where: str) -> dict[str, Any]:
    """A raw example (pixel_values, text or input_ids, token_indices, masks) → step inputs."""
    check_example(ex, where)
    ids = ex["input_ids"] if "input_ids" in ex else tokenize(tokenizer, ex["text"])
    masks = ex["masks"]
    if not isinstance(masks, Mapping):
        masks = masks_by_resolution(torch.as_tensor(masks), resolutions, antialias)
    return {"pixel_values": ex["pixel_values"], "input_ids": torch.as_tensor(ids, dtype=torch.long),
            "token_indices": [list(map(int, w)) for w in ex["token_indices"]], "masks": masks,
            "n_skipped": int(ex.get("n_skipped", 0))}


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep per-sample token lists and mask dicts as lists (their sizes vary)."""
    out: dict[str, Any] = {
        "positions": torch.tensor([it["position"] for it in items], dtype=torch.long),
        "weights": torch.tensor([float(it.get("weight", 1.0)) for it in items]),
        "input_ids": torch.stack([it["input_ids"] for it in items]),
        "posterior_eps": torch.stack([it["posterior_eps"] for it in items]),
        "noise": torch.stack([it["noise"] for it in items]),
        "timesteps": torch.stack([it["timestep"] for it in items]).long(),
        "token_indices": [it["token_indices"] for it in items],
        "masks": [it["masks"] for it in items],
        "indices": [int(it["index"]) for it in items],
        "n_skipped": [int(it.get("n_skipped", 0)) for it in items],
    }
    if "latent_mean" in items[0]:
        out["latent_mean"] = torch.stack([it["latent_mean"] for it in items])
        out["latent_std"] = torch.stack([it["latent_std"] for it in items])
    else:
        out["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
    return out


class _Prepared(Dataset):
    """Raw examples mapped through :func:`prepare_example` (for the one pass that builds the cache)."""

    def __init__(self, examples: Dataset, tokenizer, resolutions: Sequence[int], antialias: bool):
        self.examples, self.tokenizer, self.resolutions, self.antialias = examples, tokenizer, resolutions, antialias

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return prepare_example(self.examples[i], self.tokenizer, self.resolutions, self.antialias, f"example {i}")


@torch.no_grad()
def build_latent_cache(examples: Dataset, vae, tokenizer, resolutions: Sequence[int], device: str | torch.device,
                       antialias: bool = False, batch_size: int = 8, num_workers: int = 0) -> LatentCache:
    """Encode every (deterministically cropped) image once; keep posterior mean and std in fp32."""
    loader = DataLoader(_Prepared(examples, tokenizer, resolutions, antialias), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=list)
    means, stds, ids, toks, masks, skipped = [], [], [], [], [], []
    for batch in tqdm(loader, desc="caching VAE latents", leave=False):
        px = torch.stack([ex["pixel_values"] for ex in batch]).to(device=device, dtype=vae.dtype)
        dist = vae.encode(px).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
        for ex in batch:
            ids.append(ex["input_ids"])
            toks.append(ex["token_indices"])
            masks.append(ex["masks"])
            skipped.append(ex["n_skipped"])
    return LatentCache(torch.cat(means), torch.cat(stds), torch.stack(ids), toks, masks, skipped)


# --------------------------------------------------------------------------- one step

def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``noise`` for epsilon models, the velocity for v-prediction ones (as the original)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise TrainError(f"unknown prediction type {kind!r} in the scheduler config")


def grounding_terms(maps: Mapping[str, Sequence[torch.Tensor]], token_indices: list[list[list[int]]],
                    masks: Sequence[Mapping[int, torch.Tensor]], train_layers: Sequence[str],
                    antialias: bool = False) -> dict[str, torch.Tensor]:
    """Token/pixel losses per group and summed, from masks already at each group's resolution."""
    out: dict[str, torch.Tensor] = {}
    for g in train_layers:
        res = layer_resolution(g)
        targets = GroundingTargets(token_indices, [m[res] for m in masks])
        d = grounding_losses({g: maps[g]} if g in maps else {}, targets, [g], antialias)
        out[f"token/{g}"], out[f"pixel/{g}"] = d[f"token/{g}"], d[f"pixel/{g}"]
    out["token"] = torch.stack([out[f"token/{g}"] for g in train_layers]).sum()
    out["pixel"] = torch.stack([out[f"pixel/{g}"] for g in train_layers]).sum()
    return out


def step_losses(unet, vae, text_encoder, noise_scheduler, batch: Mapping[str, Any], store,
                train_layers: Sequence[str], token_scale: float, pixel_scale: float,
                antialias: bool = False) -> dict[str, torch.Tensor]:
    """Forward one (micro-)batch; returns ``loss`` (to backpropagate) and its logged parts.

    ``store`` is the :class:`reprolib.attention.AttentionStore` of the trained layers, or None for
    plain fine-tuning (λ = 0), where no attention is captured.
    """
    with torch.no_grad():
        if "latent_mean" in batch:
            mean, std = batch["latent_mean"], batch["latent_std"]
        else:
            dist = vae.encode(batch["pixel_values"].to(vae.dtype)).latent_dist
            mean, std = dist.mean, dist.std
        eps = batch["posterior_eps"].to(device=mean.device, dtype=mean.dtype)
        latents = ((mean + std * eps) * vae.config.scaling_factor).float()
        encoder_hidden_states = text_encoder(batch["input_ids"])[0]
    noise = batch["noise"].to(latents.device).float()
    timesteps = batch["timesteps"].to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states).sample
    out = {"denoise": F.mse_loss(pred.float(), target.float(), reduction="mean")}
    loss = out["denoise"]
    if store is not None:
        out.update(grounding_terms(store.maps, batch["token_indices"], batch["masks"], train_layers, antialias))
        loss = loss + token_scale * out["token"] + pixel_scale * out["pixel"]
        store.maps = {}                       # drop the references: the graph keeps what backward needs
    out["loss"] = loss
    return out


# --------------------------------------------------------------------------- checkpoints and export

def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``checkpoint-N`` holding a trainer state) sorted by step."""
    found = []
    for p in Path(out_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = p.name[len(CHECKPOINT_PREFIX):]
        if p.is_dir() and suffix.isdigit() and (p / STATE_FILE).is_file():
            found.append((int(suffix), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1][1] if ckpts else None


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete the oldest checkpoints so that at most `keep` remain; returns what was deleted."""
    ckpts = list_checkpoints(out_dir)
    doomed = [p for _, p in ckpts[: max(0, len(ckpts) - keep)]] if keep and keep > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _replace_dir(tmp: Path, dest: Path) -> Path:
    """Move a finished folder into place (the old one, if any, is removed only after)."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def export_unet(unet, dest: str | Path) -> Path:
    """Save a UNet as a diffusers folder (config.json + safetensors), atomically, with stock processors."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    unet.set_attn_processor(AttnProcessor2_0())
    unet.save_pretrained(str(tmp), safe_serialization=True)
    return _replace_dir(tmp, dest)


# --------------------------------------------------------------------------- logs

def log_frame(rows: Sequence[Mapping[str, Any]]):
    import pandas as pd
    return pd.DataFrame(list(rows))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    import pandas as pd
    p = Path(path)
    if not p.is_file():
        return []
    return pd.read_csv(p).to_dict("records")


def write_log(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    df = log_frame(rows)
    return atomic_save(Path(path), lambda p: df.to_csv(p, index=False))


def plot_losses(log, window: int = 10):
    """Denoise, token and pixel losses against the optimizer step (raw and a rolling mean)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    cols = [c for c in ("denoise", "token", "pixel") if c in log.columns and log[c].notna().any()]
    if not cols:
        raise TrainError("the training log has no loss columns to plot")
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.2), squeeze=False)
    w = max(1, min(window, len(log) // 4 or 1))
    for ax, c in zip(axes[0], cols):
        sns.lineplot(x=log["step"], y=log[c], ax=ax, alpha=0.3, color="C0", label="per step")
        sns.lineplot(x=log["step"], y=log[c].rolling(w, min_periods=1).mean(), ax=ax, color="C0",
                     label=f"rolling mean ({w})")
        ax.set(title=f"{c} loss", xlabel="optimizer step", ylabel=None)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def summary_table(summary: Mapping[str, Any]):
    """The run summary as a two-column table for the book."""
    import pandas as pd
    plan = summary.get("plan", {})
    hw = summary.get("hardware", {})
    git = summary.get("git", {})
    rows = [
        ("optimizer steps", f"{summary.get('steps')} of {summary.get('target_steps')}"),
        ("path", "faithful (fp32, batch 1 × accumulation)" if plan.get("faithful") else
         f"fast ({plan.get('mixed_precision')} autocast, cached latents)"),
        ("batch", f"{plan.get('per_device_batch')} per device × {plan.get('grad_accum')} accumulation × "
                  f"{plan.get('num_processes')} processes"),
        ("grounding losses", "on" if summary.get("grounding_losses") else "off (λ = 0, plain fine-tune)"),
        ("images / s (this call)", summary.get("images_per_s")),
        ("wall time (s, this call)", summary.get("wall_time_s")),
        ("latent cache (s)", summary.get("latent_cache_s")),
        ("peak GPU memory (GiB)", summary.get("peak_gpu_memory_gib")),
        ("resumed from", summary.get("resumed_from") or "—"),
        ("nouns skipped (not in caption)", f"{summary.get('skipped_nouns')} in "
                                           f"{summary.get('examples_checked_for_skips')} examples"),
        ("hardware", ", ".join(hw.get("gpus", [])) or f"CPU × {hw.get('cpu_count')}"),
        ("git commit", f"{(git.get('sha') or 'unknown')[:10]}{' (dirty)' if git.get('dirty') else ''}"),
    ]
    return pd.DataFrame([(k, str(v)) for k, v in rows], columns=["field", "value"]).set_index("field")


def loss_change_table(log, window: int = 5):
    """Mean of each loss over the first and the last `window` steps (how the run moved them)."""
    import pandas as pd
    cols = [c for c in log.columns if c in ("loss", "denoise", "token", "pixel") or c.startswith(("token/", "pixel/"))]
    w = max(1, min(window, len(log) // 2 or 1))
    first, last = log[cols].head(w).mean(), log[cols].tail(w).mean()
    return pd.DataFrame({f"first {w} steps": first, f"last {w} steps": last, "change": last - first})


# --------------------------------------------------------------------------- the trainer

@dataclass
class TrainResult:
    """Where a run put its artifacts, its per-step log and its summary."""
    out_dir: Path
    unet_dir: Path | None
    log: Any                       # pandas DataFrame
    summary: dict[str, Any]
    completed: bool


def run_fingerprint(P: Profile, plan: BatchPlan, n_examples: int, dataset_id: str, epoch_tail: str) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (``steps`` may grow)."""
    c = P.train
    return {
        "pretrained": P.model.pretrained, "pretrained_weights": weights_identity(P.model.pretrained),
        "unet": P.model.unet, "model_seed": P.model.seed,
        "resolution": P.model.resolution, "seed": c.seed, "lr": c.lr, "lr_scheduler": c.lr_scheduler,
        "lr_warmup_steps": c.lr_warmup_steps, "effective_batch": plan.effective_batch,
        "adam": [c.adam_beta1, c.adam_beta2, c.adam_weight_decay, c.adam_epsilon],
        "max_grad_norm": c.max_grad_norm, "token_loss_scale": c.token_loss_scale,
        "pixel_loss_scale": c.pixel_loss_scale, "train_layers": list(c.train_layers),
        "mask_antialias": c.mask_antialias, "use_ema": c.use_ema, "epoch_tail": epoch_tail,
        "n_examples": n_examples, "dataset": dataset_id,
    }


def _check_resume(state: Mapping[str, Any], fingerprint: Mapping[str, Any], ckpt: Path) -> None:
    old = state.get("fingerprint", {})
    for k, v in fingerprint.items():
        if k in old and old[k] != v:
            if k == "pretrained_weights":
                raise TrainError(f"{ckpt}: was trained from other weights at {fingerprint['pretrained']!r} "
                                 f"(the model there changed); use another output_dir or resume=False")
            raise TrainError(f"{ckpt}: was trained with {k}={old[k]!r}, this run has {k}={v!r}; "
                             f"use another output_dir or resume=False")


def _fresh_accelerator_state() -> None:
    """Let one process run several trainings with different settings (tests, notebooks).

    accelerate keeps its state in process-wide singletons; in a single-process run they are reset
    the way accelerate's own test utilities do. Under ``accelerate launch`` nothing is touched.
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState
    if PartialState._shared_state and PartialState().num_processes > 1:
        return
    AcceleratorState._reset_state()
    GradientState._reset_state()


def load_training_components(P: Profile):
    """The base model's parts with a DDPM scheduler (the training noise schedule), per the profile."""
    from .models import check_source, load_checkpoint_components, load_components
    if P.model.pretrained != "tiny":
        check_source(P.model.pretrained)            # a missing path fails here, before any work
    if P.model.unet:
        return load_checkpoint_components(P.model.unet, base=P.model.pretrained, seed=P.model.seed, scheduler="ddpm")
    return load_components(P.model.pretrained, seed=P.model.seed, scheduler="ddpm")


def default_dataset(P: Profile, tokenizer) -> Dataset:
    """Stage 01's records under ``data.root`` (every image and mask checked up front; the tiny
    profile's synthetic set is written first if stage 01 has not run)."""
    from .data import RecordDataset, training_records
    records = training_records(P)
    ds = RecordDataset(records, P.model.resolution, tokenizer)
    ds.fingerprint = records_fingerprint(records, P.model.resolution)
    return ds


def records_fingerprint(records: Sequence[Any], resolution: int) -> str:
    """Identity of a record set for the latent cache: captions, nouns, files and their size/mtime."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(resolution).encode())
    for r in records:
        h.update(f"{r.file_name}\0{r.text}\0".encode())
        files = [r.image] + [n.mask for n in r.nouns if n.mask is not None]
        for f in files:
            st = Path(f).stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        h.update(json.dumps([n.phrase for n in r.nouns]).encode())
    return h.hexdigest()


@dataclass
class _Run:
    """The prepared pieces of one training call (internal)."""
    accelerator: Any
    plan: BatchPlan
    unet: Any
    raw_unet: Any
    vae: Any
    text_encoder: Any
    noise_scheduler: Any
    store: Any
    ema: Any
    sampler: StepShards
    loader: Any
    optimizer: Any
    lr_scheduler: Any
    cache: LatentCache | None
    cache_s: float
    fingerprint: dict[str, Any]
    has_tb: bool


def _prepare(P: Profile, comps, dataset: Dataset, out: Path, epoch_tail: str) -> _Run:
    """Accelerator, frozen/trainable models, capture processors, (cached) data, optimizer: all prepared."""
    from accelerate import Accelerator
    from accelerate.data_loader import prepare_data_loader
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    cfg = P.train
    _fresh_accelerator_state()
    on_cpu = resolve_device(P) == "cpu"
    plan = plan_batches(cfg, process_state(resolve_device(P)).num_processes)
    mp = effective_precision(plan.mixed_precision, "cpu" if on_cpu else "cuda", "train.mixed_precision")
    plan = replace(plan, mixed_precision="no" if mp == "fp32" else mp)   # the one policy: fp32 on CPU
    has_tb = importlib.util.find_spec("tensorboard") is not None
    accelerator = Accelerator(
        gradient_accumulation_steps=plan.grad_accum, mixed_precision=plan.mixed_precision,
        cpu=on_cpu,
        log_with="tensorboard" if has_tb else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    set_seed(cfg.seed)
    device = accelerator.device
    weight_dtype = precision_dtype(plan.mixed_precision, device, "train.mixed_precision")

    unet, vae, text_encoder = comps.unet, comps.vae, comps.text_encoder
    vae.requires_grad_(False).eval().to(device, dtype=torch.float32)   # fp32: every step, or once for the cache
    text_encoder.requires_grad_(False).eval().to(device, dtype=weight_dtype)
    unet.train()
    grounding = bool(cfg.token_loss_scale or cfg.pixel_loss_scale)
    store = install_capture(unet, list(cfg.train_layers)) if grounding else None
    if not grounding:
        uninstall_capture(unet)                                      # λ = 0: plain fine-tuning, SDPA everywhere
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema = None
    if cfg.use_ema:
        from diffusers import UNet2DConditionModel
        from diffusers.training_utils import EMAModel
        ema = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)

    n = len(dataset)
    resolutions = sorted({layer_resolution(g) for g in cfg.train_layers})
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (vae.config.latent_channels, P.model.resolution // f, P.model.resolution // f)
    dataset_id = str(getattr(dataset, "fingerprint", "") or f"{type(dataset).__name__}:{n}")
    fingerprint = run_fingerprint(P, plan, n, dataset_id, epoch_tail)

    cache, t0 = None, time.time()
    if plan.cache_latents:
        keyed = ("pretrained", "pretrained_weights", "model_seed", "resolution", "train_layers", "mask_antialias",
                 "dataset", "n_examples")
        key = mix_seed(json.dumps({k: fingerprint[k] for k in keyed}, sort_keys=True))
        cache_path = out / "cache" / f"latents-{key:016x}.safetensors"
        with accelerator.main_process_first():
            cache = LatentCache.load(cache_path, str(key))
            if cache is None:
                cache = build_latent_cache(dataset, vae, comps.tokenizer, resolutions, device,
                                           cfg.mask_antialias, num_workers=cfg.num_workers)
                if getattr(dataset, "fingerprint", None) and accelerator.is_main_process:
                    cache.save(cache_path, str(key))
        vae.to("cpu")                                                # not needed on the accelerator any more
    cache_s = time.time() - t0

    examples = TrainExamples(None if cache is not None else dataset, cache, comps.tokenizer, resolutions,
                             latent_shape, cfg.seed, comps.scheduler.config.num_train_timesteps,
                             cfg.mask_antialias)
    sampler = StepShards(EpochSampler(n, cfg.seed, plan.effective_batch, epoch_tail), plan.per_device_batch,
                         accelerator.num_processes, accelerator.process_index)
    loader = DataLoader(examples, batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=cfg.num_workers > 0)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.steps * accelerator.num_processes)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    # already this process's share (StepShards): accelerate only moves batches and marks the epoch's end
    loader = prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True)
    return _Run(accelerator, plan, unet, accelerator.unwrap_model(unet), vae, text_encoder, comps.scheduler,
                store, ema, sampler, loader, optimizer, lr_scheduler, cache, cache_s, fingerprint, has_tb)


def _save_checkpoint(run: _Run, out: Path, step: int, rows: Sequence[Mapping[str, Any]], keep: int) -> Path:
    """accelerate ``save_state`` into a temporary folder, plus log and trainer state, then renamed."""
    acc = run.accelerator
    final, tmp = out / f"{CHECKPOINT_PREFIX}{step}", out / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    if acc.is_main_process:
        write_log(tmp / LOG_FILE, rows)
        atomic_write_json(tmp / STATE_FILE, {"step": step, "fingerprint": run.fingerprint, "plan": asdict(run.plan)})
        _replace_dir(tmp, final)
        prune_checkpoints(out, keep)
    acc.wait_for_everyone()
    return final


def clean_interrupted(out_dir: str | Path) -> list[str]:
    """Make an output folder consistent after a kill (SIGKILL runs no cleanup): a folder moved aside
    (``.checkpoint-N.old``, ``.unet.old``) whose replacement never arrived is put back, unfinished folders
    (``.checkpoint-N.tmp``, ``.unet.tmp``) and dead writers' temporary files are deleted. Returns what it did."""
    out, done = Path(out_dir), []
    for old in sorted(out.glob(".*.old")):
        dest = out / old.name[1:-len(".old")]
        if old.is_dir() and not dest.exists():
            os.replace(old, dest)
            done.append(f"restored {dest.name}")
        elif old.is_dir():
            shutil.rmtree(old)
            done.append(f"removed {old.name}")
    for tmp in sorted(out.glob(".*.tmp")):
        if tmp.is_dir():
            shutil.rmtree(tmp)
            done.append(f"removed {tmp.name}")
    n = remove_stale_temps(out)
    return done + ([f"removed {n} temporary files"] if n else [])


def _resume(run: _Run, out: Path, resume: bool) -> tuple[int, list[dict[str, Any]], str | None]:
    """Load the latest checkpoint (or delete them all when not resuming): step, log rows, its path."""
    acc = run.accelerator
    if acc.is_main_process:
        clean_interrupted(out)
    if not resume and acc.is_main_process:
        for _, p in list_checkpoints(out):
            shutil.rmtree(p)
    acc.wait_for_everyone()
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is None:
        return 0, [], None
    state = json.loads((ckpt / STATE_FILE).read_text())
    _check_resume(state, run.fingerprint, ckpt)
    acc.load_state(str(ckpt))
    step = int(state["step"])
    return step, [r for r in read_log(ckpt / LOG_FILE) if r["step"] <= step], str(ckpt)


def train(P: Profile, dataset: Dataset | None = None, out_dir: str | Path | None = None, *,
          components=None, resume: bool = True, stop_at: int | None = None, epoch_tail: str = "partial",
          grad_hook: Callable[[int, Any], None] | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune the UNet per ``P.train``; resumable; returns the log and summary.

    ``dataset`` yields dicts ``{pixel_values (3,R,R) in [-1,1], input_ids (77,) or text,
    token_indices [[int]] per word, masks (n_words,R,R) in [0,1]}`` (default: stage 01's records
    under ``data.root`` via :mod:`reprolib.data`). ``components`` overrides the profile's models
    (tests). ``stop_at`` stops after that optimizer step without exporting, as a kill would.
    ``grad_hook(step, unet)`` sees the clipped gradients of each optimizer step before the update.
    With ``resume`` the latest ``checkpoint-N`` in the output folder is loaded; without it existing
    checkpoints there are deleted first.
    """
    cfg = P.train
    out = Path(out_dir or cfg.output_dir)
    if epoch_tail not in EPOCH_TAILS:
        raise TrainError(f"epoch_tail must be one of {EPOCH_TAILS}, got {epoch_tail!r}")
    comps = components or load_training_components(P)
    if dataset is None:
        with process_state(resolve_device(P)).main_process_first():   # one process writes the tiny set
            dataset = default_dataset(P, comps.tokenizer)
    if len(dataset) == 0:
        raise TrainError(f"no training examples (data.root = {P.data.root})")
    out.mkdir(parents=True, exist_ok=True)
    run = _prepare(P, comps, dataset, out, epoch_tail)
    acc, plan = run.accelerator, run.plan
    step, rows, resumed_from = _resume(run, out, resume)
    steps_per_epoch = run.sampler.steps_per_epoch
    if run.has_tb:
        acc.init_trackers("tokencompose")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not (progress and acc.is_local_main_process))
    t0, images, start_step = time.time(), 0, step
    micro: list[tuple[dict[str, torch.Tensor], int]] = []
    seen_skips: dict[int, int] = {}
    while step < cfg.steps and (stop_at is None or step < stop_at):
        epoch = step // steps_per_epoch
        run.sampler.set_epoch(epoch)
        run.loader.set_epoch(epoch)
        skip = (step % steps_per_epoch) * plan.grad_accum
        for batch in (acc.skip_first_batches(run.loader, skip) if skip else run.loader):
            bsz = float(batch["weights"].sum())         # samples of the step in it (0: a placeholder)
            seen_skips.update(zip(batch["indices"], batch["n_skipped"]))
            with acc.accumulate(run.unet):
                parts = step_losses(run.unet, run.vae, run.text_encoder, run.noise_scheduler, batch, run.store,
                                    cfg.train_layers, cfg.token_loss_scale, cfg.pixel_loss_scale,
                                    cfg.mask_antialias)
                # a short last batch of an epoch weighs as in batch-1 accumulation (epoch_tail="partial")
                acc.backward(parts["loss"] * (bsz / plan.per_device_batch))
                micro.append(({k: v.detach() for k, v in parts.items()}, bsz))
                grad_norm = None
                if acc.sync_gradients:
                    grad_norm = acc.clip_grad_norm_(run.unet.parameters(), cfg.max_grad_norm)
                    if grad_hook is not None:
                        grad_hook(step + 1, run.raw_unet)
                run.optimizer.step()
                run.lr_scheduler.step()
                run.optimizer.zero_grad()
            if not acc.sync_gradients:
                continue
            if run.ema is not None:
                run.ema.step(run.raw_unet.parameters())
            step += 1
            rows.append(_log_row(micro, step, epoch, run.lr_scheduler.get_last_lr()[0], grad_norm, acc))
            images += rows[-1]["samples"]
            micro = []
            if run.has_tb:
                acc.log({k: v for k, v in rows[-1].items() if isinstance(v, float)}, step=step)
            bar.update(1)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
            if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
                _save_checkpoint(run, out, step, rows, cfg.checkpoints_total_limit)
            if step >= cfg.steps or (stop_at is not None and step >= stop_at):
                break
    bar.close()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.time() - t0

    completed = step >= cfg.steps
    if completed and not any(s == step for s, _ in list_checkpoints(out)):
        _save_checkpoint(run, out, step, rows, cfg.checkpoints_total_limit)   # lets a finished run be extended
    unet_dir = None
    if acc.is_main_process:
        write_log(out / LOG_FILE, rows)
        if completed:
            if run.ema is not None:
                run.ema.copy_to(run.raw_unet.parameters())
            unet_dir = export_unet(run.raw_unet, out / "unet")
    skipped = (sum(run.cache.n_skipped), len(run.cache)) if run.cache is not None else \
        (sum(seen_skips.values()), len(seen_skips))
    summary = run_summary(P, plan, rows, step, start_step, images, wall, run.cache_s, resumed_from, completed,
                          run.fingerprint, skipped, run.store is not None, epoch_tail)
    if acc.is_main_process:
        atomic_write_json(out / SUMMARY_FILE, summary)
    if run.has_tb:
        acc.end_training()
    if run.store is not None:
        uninstall_capture(run.raw_unet, run.store)
    acc.wait_for_everyone()
    return TrainResult(out, unet_dir, log_frame(rows), summary, completed)


def _log_row(acc: Sequence[tuple[dict[str, torch.Tensor], float]], step: int, epoch: int, lr: float,
             grad_norm, accelerator) -> dict[str, Any]:
    """Sample-weighted mean of the step's micro-batch losses over all processes (one sync per step).

    Sums and sample counts are all-reduced *before* dividing: processes may hold different numbers
    of the step's samples (a short tail step), so a mean of per-process means would be wrong.
    """
    keys = list(acc[0][0])
    sums = torch.stack([torch.stack([p[k].float() for k in keys]) * b for p, b in acc]).sum(0)
    sums = torch.cat([sums, sums.new_tensor([sum(b for _, b in acc)])])
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, "sum")
    vals, total = sums[:-1] / sums[-1], sums[-1]
    row: dict[str, Any] = {"step": step, "epoch": epoch, "samples": int(round(float(total))), "lr": lr}
    row.update({k: float(v) for k, v in zip(keys, vals.tolist())})
    row["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
    return row


def run_summary(P: Profile, plan: BatchPlan, rows: Sequence[Mapping[str, Any]], step: int, start_step: int,
                images: int, wall: float, cache_s: float, resumed_from: str | None, completed: bool,
                fingerprint: Mapping[str, Any], skipped: tuple[int, int], grounding: bool,
                epoch_tail: str) -> dict[str, Any]:
    """Steps, throughput, peak memory, wall time, hardware and git state of one training call."""
    from .report import device_info, git_state
    last = rows[-1] if rows else {}
    return {
        "profile": P.name, "steps": step, "target_steps": P.train.steps, "completed": completed,
        "steps_this_call": step - start_step, "images_this_call": images,
        "images_per_s": round(images / wall, 3) if wall > 0 and images else None,
        "wall_time_s": round(wall, 2), "latent_cache_s": round(cache_s, 2),
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 3)
                                if torch.cuda.is_available() else None),
        "plan": asdict(plan), "grounding_losses": grounding, "epoch_tail": epoch_tail,
        "resumed_from": resumed_from, "skipped_nouns": skipped[0], "examples_checked_for_skips": skipped[1],
        "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "hardware": device_info(), "git": git_state(), "settings": dict(fingerprint),
    }


def trained_unet(P: Profile) -> Path | None:
    """Stage 02's exported UNet folder for this profile, if a run has finished (Table 1's 'ours, retrained')."""
    unet = Path(P.train.output_dir) / "unet"
    return unet if (unet / "config.json").is_file() else None


def with_trained(checkpoints: list[str], P: Profile) -> list[str]:
    """``checkpoints`` plus stage 02's exported UNet when it exists and is not listed yet."""
    unet = trained_unet(P)
    return list(checkpoints) + ([str(unet)] if unet is not None and str(unet) not in checkpoints else [])


# --------------------------------------------------------------------------- command line

def main(argv: Sequence[str] | None = None) -> None:
    """``[accelerate launch [--multi_gpu --num_processes N] -m] python -m reprolib.train --profile paper [k=v ...]``.

    Stage 02's training alone, on any number of launched processes (the effective batch stays
    ``train.batch_size × train.grad_accum``, split over them); resumes from the latest checkpoint in
    the output folder, where stage 02's notebook then finds the finished run.
    """
    import argparse

    from .config import apply_runtime, load_profile

    ap = argparse.ArgumentParser(prog="reprolib.train", description=main.__doc__)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--out", default=None, help="output folder (default: train.output_dir)")
    ap.add_argument("--no-resume", action="store_true", help="delete existing checkpoints and start over")
    ap.add_argument("overrides", nargs="*", help="profile overrides as key=value (e.g. train.steps=100)")
    args = ap.parse_args(argv)
    bad = [kv for kv in args.overrides if "=" not in kv]
    if bad:
        ap.error(f"override {bad[0]!r} is not key=value")
    P = load_profile(args.profile, dict(kv.split("=", 1) for kv in args.overrides))
    apply_runtime(P)
    result = train(P, out_dir=args.out, resume=not args.no_resume)
    if process_state(resolve_device(P)).is_main_process:
        s = result.summary
        print(f"{s['steps']} of {s['target_steps']} steps on {s['plan']['num_processes']} process(es), "
              f"{s['images_this_call']} images in {s['wall_time_s']} s; UNet: {result.unet_dir}")


if __name__ == "__main__":
    main()
