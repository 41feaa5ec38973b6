"""Model loading: SD pipelines from the hub or a folder, plug-in UNets, and the tiny random models.

Real weights (`paper` profile) come from a hub id or a local diffusers folder. The `tiny` profile
builds small random-initialised models from configs in code, with SD1.4's exact CLIP tokenizer
built offline from the BPE vocabulary that ships inside ``open_clip_torch``.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .io import REPO_ROOT, atomic_write_text, sha256_file

SD14 = "CompVis/stable-diffusion-v1-4"
#: ``model.pretrained`` alias of the miniature world's shipped base model (the tiny profile's default).
WORLD = "miniworld"
WORLD_BASE_DIR = REPO_ROOT / "data" / "miniworld" / "base"
#: Checkpoint alias of the pretrained model's own UNet, whatever the base (SD1.4, the world base, tiny).
BASE = "base"

#: Checkpoint aliases understood everywhere a checkpoint is named.
CHECKPOINTS: dict[str, str] = {
    "sd14": SD14,
    "tokencompose_a": "mlpc-lab/TokenCompose_SD14_A",
    "tokencompose_b": "mlpc-lab/TokenCompose_SD14_B",
}

#: SD1.4's tokenizer_config.json, reproduced (the vocabulary itself comes from open_clip).
SD14_TOKENIZER_CONFIG = dict(
    bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
    pad_token="<|endoftext|>", model_max_length=77, do_lower_case=True,
)

#: SD1.4's scheduler/scheduler_config.json (PNDM is the pipeline default; training uses DDPM with the same betas).
SD14_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, clip_sample=False,
    prediction_type="epsilon", trained_betas=None,
)


class ModelLoadError(OSError):
    """A model id or path that cannot be loaded; the message names it on one line."""


# --------------------------------------------------------------------------- tokenizer

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-unicode table (reversible mapping of bytes to printable characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _openclip_bpe_path() -> Path:
    try:
        import open_clip  # noqa: F401  (the package ships the vocabulary file)
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise ModelLoadError("open_clip_torch is not installed: it provides the CLIP BPE vocabulary") from e
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelLoadError(f"CLIP BPE vocabulary not found: {path}")
    return path


def _tokenizer_cache_dir() -> Path:
    root = Path(os.environ.get("REPROLIB_CACHE", Path.home() / ".cache" / "reprolib"))
    return root / "clip_tokenizer_sd14"


def write_clip_tokenizer_files(out_dir: Path, bpe_path: Path | None = None) -> Path:
    """Write vocab.json/merges.txt/tokenizer_config.json of SD1.4's tokenizer from the open_clip BPE file.

    The vocabulary is rebuilt the way OpenAI's ``simple_tokenizer`` does: 256 byte tokens, their
    ``</w>`` variants, one token per merge (48,894 merges), then the two special tokens: 49,408 ids.
    """
    bpe_path = bpe_path or _openclip_bpe_path()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1: 49152 - 256 - 2 + 1]
    byte_tokens = list(_bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    atomic_write_text(out_dir / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(
        dict(SD14_TOKENIZER_CONFIG, tokenizer_class="CLIPTokenizer")))
    atomic_write_text(out_dir / "special_tokens_map.json", json.dumps(
        {k: SD14_TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}))
    return out_dir


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """SD1.4's exact CLIP tokenizer, built offline (``"a photo of a cat"`` → 49406 320 1125 539 320 2368 49407)."""
    from transformers import CLIPTokenizer

    cache = _tokenizer_cache_dir()
    if not (cache / "vocab.json").is_file() or not (cache / "merges.txt").is_file():
        write_clip_tokenizer_files(cache)
    return CLIPTokenizer.from_pretrained(str(cache))


# --------------------------------------------------------------------------- tiny models

#: The tiny UNet mirrors SD1.4's block layout (3 cross-attention down blocks, a cross-attention mid
#: block, 3 cross-attention up blocks) at toy width. Images are 64², the tiny VAE downsamples by 2,
#: so latents are 32² and the layer groups are down_32/16/8, mid_4, up_8/16/32 (SD1.4 at 512²:
#: down_64/32/16, mid_8, up_16/32/64). A 64² latent would make each self-attention 16x dearer on CPU.
TINY_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1, norm_num_groups=8, sample_size=64,
)
TINY_TEXT = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=49407, projection_dim=32,
)


def _seed_of(name: str, base: int) -> int:
    """Stable per-name seed so each tiny checkpoint alias gets its own (reproducible) weights."""
    return (base * 1_000_003 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)) % (2**31)


def tiny_unet(seed: int = 0):
    """Random-initialised UNet2DConditionModel with SD1.4's layout at toy width."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET)


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE)


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TINY_TEXT))


def sd14_scheduler(kind: str = "pndm"):
    """SD1.4's noise schedule as a ``pndm`` (pipeline default), ``ddpm`` (training) or ``ddim`` scheduler."""
    from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler
    cls = {"pndm": PNDMScheduler, "ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind]
    import inspect
    params = inspect.signature(cls.__init__).parameters
    cfg = {k: v for k, v in SD14_SCHEDULER.items() if k in params}
    return cls(**cfg)


# --------------------------------------------------------------------------- loading

@dataclass
class Components:
    """The parts of an SD pipeline that the stages use."""
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    source: str

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Components":
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device=device, dtype=dtype)
        return self

    def pipeline(self, safety_checker: bool = False):
        """A diffusers StableDiffusionPipeline over these parts (no safety checker unless asked and loaded)."""
        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or os.sep in s.strip("/").split("/", 1)[-1] or Path(s).exists()


def check_source(source: str) -> str:
    """Validate a hub id or local folder; raise one line naming it when it cannot be what it claims."""
    if not isinstance(source, str) or not source:
        raise ModelLoadError(f"model id or path is empty: {source!r}")
    source = resolve_pretrained(source)
    p = Path(source).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"model path is not a folder: {source}")
        return str(p)
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return source
    raise ModelLoadError(f"model path not found: {source}")


def _from_pretrained(cls, source: str, subfolder: str | None = None, **kw):
    """``cls.from_pretrained`` with the hub's long errors folded into one line naming the source."""
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        where = f"{source}/{subfolder}" if subfolder else source
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load {cls.__name__} from {where}: {first}") from None


def _local_or_hub_tokenizer(source: str):
    """The folder's tokenizer; a local folder without ``tokenizer/`` uses SD1.4's (rebuilt offline).

    Our own small models (e.g. the miniature world's base) are trained with SD1.4's exact tokenizer, so
    their folders need not carry a 3.5 MB copy of its vocabulary.
    """
    from transformers import CLIPTokenizer
    if Path(source).is_dir() and not (Path(source) / "tokenizer").is_dir():
        return clip_tokenizer()
    return _from_pretrained(CLIPTokenizer, source, "tokenizer")


def resolve_pretrained(pretrained: str) -> str:
    """``miniworld`` → the shipped world base folder; anything else unchanged."""
    return str(WORLD_BASE_DIR) if pretrained == WORLD else pretrained


def load_components(pretrained: str = "tiny", seed: int = 0, dtype: torch.dtype | None = None,
                    scheduler: str = "pndm") -> Components:
    """Load an SD pipeline's parts from a hub id or diffusers folder (``miniworld``: the world base),
    or build the tiny random ones."""
    pretrained = resolve_pretrained(pretrained)
    if pretrained == "tiny":
        comps = Components(tiny_unet(seed), tiny_vae(seed), tiny_text_encoder(seed), clip_tokenizer(),
                           sd14_scheduler(scheduler), "tiny")
        return comps if dtype is None else comps.to("cpu", dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = check_source(pretrained)
    kw = {"torch_dtype": dtype} if dtype is not None else {}
    sched_cls = {"pndm": PNDMScheduler, "ddpm": DDPMScheduler, "ddim": DDIMScheduler}[scheduler]
    return Components(
        unet=_from_pretrained(UNet2DConditionModel, source, "unet", **kw),
        vae=_from_pretrained(AutoencoderKL, source, "vae", **kw),
        text_encoder=_from_pretrained(CLIPTextModel, source, "text_encoder", **kw),
        tokenizer=_local_or_hub_tokenizer(source),
        scheduler=_from_pretrained(sched_cls, source, "scheduler"),
        source=source,
    )


def resolve_checkpoint(name: str) -> str:
    """Alias (``sd14``, ``tokencompose_a``, ``tokencompose_b``), hub id or local folder → hub id or path;
    ``base`` (the pretrained model's own UNet) stays ``base``."""
    if name == BASE:
        return BASE
    if name in CHECKPOINTS:
        return CHECKPOINTS[name]
    try:
        return check_source(name)
    except ModelLoadError:
        raise ModelLoadError(
            f"unknown checkpoint {name!r}: not an alias ({', '.join([BASE, *CHECKPOINTS])}), hub id or existing folder") from None


def weights_identity(pretrained: str, limit_bytes: int = 256 * 2**20) -> dict[str, str]:
    """What a local model folder's weights are, so a resumed fine-tune cannot silently continue from
    another model saved at the same path: sha256 of each ``*.safetensors`` file up to ``limit_bytes``
    (larger ones: their size). Hub ids and ``tiny`` are identified by name (and revision) elsewhere."""
    root = Path(resolve_pretrained(pretrained)).expanduser()
    if not root.is_dir():
        return {}
    out = {}
    for f in sorted(root.rglob("*.safetensors")):
        size = f.stat().st_size
        out[str(f.relative_to(root))] = f"size:{size}" if size > limit_bytes else sha256_file(f)
    return out


def checkpoint_weights(checkpoint: str, base: str) -> dict[str, dict[str, str]]:
    """:func:`weights_identity` of a checkpoint's UNet (``base``: the base's own) and of its base: what
    images made with them depend on, beyond their names."""
    source = base if checkpoint == BASE else resolve_checkpoint(checkpoint)
    return {"weights": weights_identity(source), "base_weights": weights_identity(base)}


def checkpoint_label(name: str) -> str:
    """A folder-safe name of a checkpoint: aliases as they are, local folders ``local-<folder name>``
    (relative paths from the repo root), hub ids with ``--`` for ``/``."""
    from .io import repo_path
    if name == BASE or name in CHECKPOINTS:
        return name
    p = repo_path(name)
    if p.exists():
        return "local-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in p.resolve().name)
    return name.replace("/", "--")


def _unet_subfolder(path: Path) -> str | None:
    """A local checkpoint is either a UNet folder (config.json) or a pipeline folder (unet/config.json)."""
    if (path / "config.json").is_file():
        return None
    if (path / "unet" / "config.json").is_file():
        return "unet"
    raise ModelLoadError(f"no UNet in {path}: expected config.json or unet/config.json")


def load_unet(checkpoint: str, base: str = "tiny", seed: int = 0, dtype: torch.dtype | None = None):
    """Load the UNet of `checkpoint`, to plug into a base pipeline (how the authors ship TokenCompose).

    On the tiny profile (``base == "tiny"``) an alias gives a tiny random UNet with its own seed and
    a local folder is loaded as usual (e.g. one exported by stage 02).
    """
    from diffusers import UNet2DConditionModel

    base = resolve_pretrained(base)
    if checkpoint == BASE:
        checkpoint = "sd14" if base == "tiny" else base
    if base == "tiny" and (checkpoint in CHECKPOINTS):
        unet = tiny_unet(seed if checkpoint == "sd14" else _seed_of(checkpoint, seed))
        return unet if dtype is None else unet.to(dtype=dtype)
    source = resolve_checkpoint(checkpoint)
    kw = {"torch_dtype": dtype} if dtype is not None else {}
    p = Path(source).expanduser()
    if p.is_dir():
        return _from_pretrained(UNet2DConditionModel, str(p), _unet_subfolder(p), **kw)
    return _from_pretrained(UNet2DConditionModel, source, "unet", **kw)


def swap_unet(components: Components, unet) -> Components:
    """Same pipeline parts with another UNet (text encoder, VAE, tokenizer, scheduler untouched)."""
    return Components(unet, components.vae, components.text_encoder, components.tokenizer,
                      components.scheduler, components.source)


def load_checkpoint_components(checkpoint: str, base: str = "tiny", seed: int = 0,
                               dtype: torch.dtype | None = None, scheduler: str = "pndm") -> Components:
    """Base pipeline parts with the UNet of `checkpoint` plugged in."""
    comps = load_components(base, seed=seed, dtype=dtype, scheduler=scheduler)
    if checkpoint == BASE or (checkpoint == "sd14" and base in ("tiny", SD14)):
        return comps
    return swap_unet(comps, load_unet(checkpoint, base=base, seed=seed, dtype=dtype))
