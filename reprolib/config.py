"""Profiles: every knob of every stage, in one typed object loaded from ``data/profiles/<name>.yaml``.

A profile is the only global state the project has. Stage notebooks take a profile name, the
runner's overrides and their own papermill parameters, merge them with :func:`stage_profile`
(profile < overrides < parameters that are set) and hand the resulting :class:`Profile` to reprolib.
Overrides use dotted keys (``"train.lr"``), top-level names (``"seed"``) or, where unambiguous, bare
field names (``"lr"``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

PROFILE_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"
DEFAULT_PROFILE = "tiny"


@dataclass
class ModelConfig:
    """Which diffusion model to load and at what size."""
    pretrained: str = "tiny"              # hub id, local diffusers folder, or "tiny" (random, built in code)
    unet: str | None = None               # checkpoint whose UNet replaces the base one (alias, hub id or folder)
    resolution: int = 64                  # image side in pixels
    seed: int = 0                         # seed of the tiny random weights
    revision: str | None = None


@dataclass
class TrainConfig:
    """TokenCompose fine-tuning (stage 02). Defaults of `paper` are the authors' train.sh."""
    steps: int = 24
    lr: float = 5e-6
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    batch_size: int = 1
    grad_accum: int = 4
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    token_loss_scale: float = 1e-3
    pixel_loss_scale: float = 5e-5
    train_layers: list[str] = field(default_factory=lambda: ["mid_8", "up_16", "up_32", "up_64"])
    mask_antialias: bool = False          # torchvision<0.17 resized tensors without antialiasing
    mixed_precision: str = "no"           # "no", "fp16" or "bf16"
    faithful: bool = True                 # True: fp32, batch 1 x accumulation (the original recipe)
    gradient_checkpointing: bool = False
    use_ema: bool = False
    cache_latents: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    num_workers: int = 0
    seed: int = 0
    output_dir: str = "runs/train"


@dataclass
class DataConfig:
    """Training records (stage 01)."""
    source: str = "synthetic"             # "coco" (the authors' 4,526 records) or "synthetic"
    root: str = "runs/data"
    n_images: int = 48
    limit: int | None = None
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    segmenter: str = "sam"                # "sam" or "sam_hq"
    detector_id: str = "IDEA-Research/grounding-dino-base"
    sam_id: str = "facebook/sam-vit-huge"
    gsam_limit: int | None = None         # images sent through Grounded-SAM (None: all)
    gsam_batch_size: int = 4              # images per detector/segmenter batch (1: the original, unbatched)
    pos_tagger: str = "flair/pos-english"  # noun tagger: flair model id, "hf:<id>", "lexicon" or "none" (skip the check)
    caption_clip_id: str = "openai/clip-vit-large-patch14-336"  # picks the best of several captions
    original_masks: str | None = None     # folder with the authors' seg/ masks, for the IoU check (None: skip)
    gsam_backend: str = "transformers"    # "official" (groundingdino-py + segment-anything-hq, the authors' code) or "transformers"
    gsam_checkpoints: str = "runs/checkpoints/gsam"  # official: folder of the .pth files (downloaded there, sha256-checked) or "tiny"
    sam_max_boxes: int = 64               # boxes per SAM call, both backends (bounds memory; the masks do not change)


@dataclass
class MultiGenConfig:
    """MultiGen generation, detection and scoring (stage 03). Defaults of `paper` are the authors'."""
    checkpoints: list[str] = field(default_factory=lambda: ["sd14", "tokencompose_a"])
    prompt_sets: list[str] = field(default_factory=lambda: ["coco", "ade20k"])
    n_prompts: int | None = None          # None: the whole set
    images_per_prompt: int = 10
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 8
    precision: str = "fp16"               # "fp32" restores the original; "fp16" / "bf16" fast path
    faithful: bool = False                # True: fp32, batch 1
    safety_checker: bool = True
    detector_id: str = "google/owlv2-large-patch14-ensemble"
    detection_threshold: float = 0.1
    save_threshold: float = 0.01
    n_bootstrap: int = 2000
    prompt_mirror: str | None = None      # folder or base URL holding the official prompt files (None: GitHub)
    use_trained: bool = True              # add stage 02's exported UNet (Table 1's "ours, retrained") when it exists
    output_dir: str = "runs/multigen"


@dataclass
class AttentionConfig:
    """Attention-map figures (stage 04)."""
    checkpoints: list[str] = field(default_factory=lambda: ["sd14", "tokencompose_a"])
    layers: list[str] = field(default_factory=lambda: ["up_64"])
    timesteps: list[int] = field(default_factory=lambda: [0, 10, 20, 30, 40, 49])
    seeds: list[int] = field(default_factory=lambda: [0])
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    mass_protocol: str = "sdedit"         # "sdedit" (miniworld scenes, exact masks) or "generated" (Grounded-SAM)
    mass_prompts: int = 8                 # scenes (sdedit) or prompts of attention_prompts.yaml (generated)
    sdedit_strength: float = 0.6          # noise level the SDEdit protocol starts from
    mask_mode: str = "area"               # "area" (coverage-weighted) or "original" (token loss's resize, > 0)
    n_bootstrap: int = 2000
    batch_size: int = 8
    prompt_file: str | None = None        # YAML of figure prompts (None: data/attention_prompts.yaml)
    overhead_repeats: int | None = None   # timed runs of the capture-overhead check (None: 1 on tiny, 3 otherwise)
    use_trained: bool = True              # also show stage 02's fine-tuned UNet when its export exists
    output_dir: str = "runs/attention"


@dataclass
class EditingConfig:
    """Blended Latent Diffusion on PIE-Bench (stage 05)."""
    piebench_root: str | None = None
    checkpoints: list[str] = field(default_factory=lambda: ["sd14", "tokencompose_a"])
    limit: int | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    blending_start: float = 0.25
    start_from: str = "noise"             # "noise" (official) or "noised_source"
    blend_noise_at: str = "t"             # "t" (official) or "t_prev"
    seed: int = 1234                      # PnPInversion's setup_seed(1234) before every image
    precision: str = "fp16"               # "fp16" (official BLD script), "fp32" or "bf16"
    categories: list[str] | None = None   # editing_type_id values to run (None: all ten)
    resolution: int | None = None         # edit size in pixels (None: model.resolution; official 512)
    save_as: str = "strip"                # "strip": the official JPEG strip evaluate.py crops; "png": the edit alone, lossless
    dino_id: str = "facebook/dino-vitb8"
    clip_id: str = "openai/clip-vit-large-patch14"
    use_trained: bool = True              # add stage 02's exported UNet when it exists
    output_dir: str = "runs/editing"


@dataclass
class ReportConfig:
    """The report checked (stage 07): re-analysis of the reported tables and the claims ledger."""
    alpha: float = 0.05                   # significance level of every test
    power: float = 0.8                    # power of the smallest-detectable-difference computation
    claims_file: str = "data/report/claims.yaml"
    output_dir: str = "runs/report"


@dataclass
class Profile:
    """Everything a run needs. `tiny` runs on CPU in minutes; `paper` is the original study."""
    name: str = DEFAULT_PROFILE
    device: str = "auto"                  # "auto", "cpu", "cuda", "cuda:1", ...
    cpu_threads: int | None = None        # torch intra-op threads on CPU (tiny: 1, toy kernels oversubscribe)
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    multigen: MultiGenConfig = field(default_factory=MultiGenConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    editing: EditingConfig = field(default_factory=EditingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def is_tiny(self) -> bool:
        """True when numbers come from small models built or trained here (random ``tiny`` or the
        ``miniworld`` base): pipeline checks and toy-world numbers, not results about SD1.4."""
        return self.model.pretrained in ("tiny", "miniworld")

    @property
    def is_world(self) -> bool:
        """True when the model is the miniature world's base (the tiny profile's default)."""
        return self.model.pretrained == "miniworld"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """An unknown profile, field, or a value of the wrong type."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` against a dataclass field type; name the key when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaf_index() -> dict[str, list[str]]:
    """Bare field name -> dotted paths that end in it (to resolve papermill-style flat overrides)."""
    index: dict[str, list[str]] = {}
    for sec, sec_tp in _field_types(Profile).items():
        if dataclasses.is_dataclass(sec_tp):
            for leaf in _field_types(sec_tp):
                index.setdefault(leaf, []).append(f"{sec}.{leaf}")
        else:
            index.setdefault(sec, []).append(sec)
    return index


def resolve_key(key: str) -> str:
    """Map a bare or dotted override key to its dotted path; raise naming the key if unknown or ambiguous."""
    if "." in key:
        sec, _, leaf = key.partition(".")
        types_ = _field_types(Profile)
        if sec not in types_ or not dataclasses.is_dataclass(types_[sec]) or leaf not in _field_types(types_[sec]):
            raise ConfigError(f"unknown profile field: {key}")
        return key
    if key in _field_types(Profile) and not dataclasses.is_dataclass(_field_types(Profile)[key]):
        return key                                       # a top-level field (seed, device, ...) is its own path
    paths = _leaf_index().get(key)
    if not paths:
        raise ConfigError(f"unknown profile field: {key}")
    if len(paths) > 1:
        raise ConfigError(f"ambiguous profile field {key!r}: use one of {', '.join(paths)}")
    return paths[0]


def apply_overrides(profile: Profile, overrides: Mapping[str, Any] | None) -> Profile:
    """Return a copy of `profile` with `overrides` applied; a value of None means 'keep the profile's'."""
    data = profile.to_dict()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        path = resolve_key(key)
        if "." in path:
            sec, leaf = path.split(".")
            data[sec][leaf] = value
        else:
            data[path] = value
    return from_dict(data)


def from_dict(data: Mapping[str, Any], name: str | None = None) -> Profile:
    """Build a typed :class:`Profile` from nested dicts (as read from YAML), checking every field."""
    kwargs: dict[str, Any] = {}
    for sec, sec_tp in _field_types(Profile).items():
        if sec not in data:
            continue
        val = data[sec]
        if dataclasses.is_dataclass(sec_tp):
            if not isinstance(val, Mapping):
                raise ConfigError(f"{sec}: expected a mapping, got {val!r}")
            hints = _field_types(sec_tp)
            unknown = set(val) - set(hints)
            if unknown:
                raise ConfigError(f"unknown profile field: {sec}.{sorted(unknown)[0]}")
            kwargs[sec] = sec_tp(**{k: _coerce(v, hints[k], f"{sec}.{k}") for k, v in val.items()})
        else:
            kwargs[sec] = _coerce(val, sec_tp, sec)
    unknown = set(data) - set(_field_types(Profile))
    if unknown:
        raise ConfigError(f"unknown profile field: {sorted(unknown)[0]}")
    if name is not None:
        kwargs["name"] = name
    return Profile(**kwargs)


def available_profiles(profile_dir: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in profile_dir.glob("*.yaml"))


def load_profile(name: str | None = None, overrides: Mapping[str, Any] | None = None,
                 profile_dir: Path = PROFILE_DIR, **kw: Any) -> Profile:
    """Load `data/profiles/<name>.yaml` (default ``tiny``) or a YAML path, then apply overrides.

    >>> load_profile("paper", {"train.steps": 10}).train.steps
    10
    """
    name = name or DEFAULT_PROFILE
    path = Path(name) if name.endswith((".yaml", ".yml")) else profile_dir / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r} (no {path}); available: {', '.join(available_profiles(profile_dir))}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    profile = from_dict(raw, name=raw.get("name", path.stem))
    merged = dict(overrides or {})
    merged.update(kw)
    return apply_overrides(profile, merged)


def stage_profile(profile: str | None, overrides: Mapping[str, Any] | None, section: str,
                  params: Mapping[str, Any] | None = None) -> Profile:
    """The profile a stage notebook runs with; every stage builds its ``P`` with this one call.

    Precedence, lowest first: the profile's YAML, then ``overrides`` (what ``python -m reprolib run -p
    section.field value`` passes to every stage), then the notebook's own papermill parameters
    (``params``) that are set. A parameter left at None means "not given": it never hides an
    override, so the runner's values reach every stage. Keys of ``params`` are field names of
    ``section`` (``n_prompts`` → ``multigen.n_prompts``; ``seed`` → ``editing.seed`` for ``editing``),
    dotted paths, or top-level fields the section lacks (``cpu_threads``).

    >>> stage_profile("paper", {"multigen.n_prompts": 10}, "multigen", {"n_prompts": None}).multigen.n_prompts
    10
    """
    own = set(_field_types(_field_types(Profile)[section]))
    given = {(f"{section}.{k}" if k in own or "." not in k and k not in _field_types(Profile) else k): v
             for k, v in (params or {}).items() if v is not None}
    return load_profile(profile, {**(overrides or {}), **given})


def apply_runtime(profile: Profile) -> None:
    """Apply the profile's process-wide runtime settings (CPU thread count)."""
    if profile.cpu_threads:
        import torch
        torch.set_num_threads(profile.cpu_threads)


PRECISIONS = ("fp32", "fp16", "bf16")


def effective_precision(precision: str, device: Any, key: str) -> str:
    """The one precision policy of every stage: what a requested precision runs as on `device`.

    On an accelerator, the request. On CPU, always fp32: half-precision CPU kernels are missing or many
    times slower than fp32 (Blended Latent Diffusion in fp16 stalled for 9+ minutes on a 512² image), so
    an fp16/bf16 request runs in fp32 with a warning naming the profile field `key`. ``"no"`` (accelerate's
    name for full precision, ``train.mixed_precision``) means fp32.
    """
    import warnings

    import torch
    name = "fp32" if precision == "no" else precision
    if name not in PRECISIONS:
        raise ConfigError(f"{key} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if name != "fp32" and torch.device(device).type == "cpu":
        warnings.warn(f"{key} = {precision} on CPU: running in fp32 (half-precision CPU kernels are "
                      f"missing or slow)", stacklevel=2)
        return "fp32"
    return name


def precision_dtype(precision: str, device: Any, key: str):
    """:func:`effective_precision` as a torch dtype."""
    import torch
    name = effective_precision(precision, device, key)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def resolve_device(profile: Profile) -> str:
    """'auto' means the first CUDA device if there is one, else CPU."""
    if profile.device != "auto":
        return profile.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"
