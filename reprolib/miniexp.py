"""The miniature replication: TokenCompose vs. a plain fine-tune of the same base, measured exactly.

From the shipped miniworld base model (``data/miniworld/base``, made by ``scripts/train_world_base.py``)
two UNets are fine-tuned with :func:`reprolib.train.train` on the same multi-object world scenes with
exact masks, the same steps, data order, noise and seed:

* **(a) ``tokencompose``**: denoising loss + the token and pixel grounding losses (the profile's
  ``token_loss_scale`` / ``pixel_loss_scale``, by default the paper's 1e-3 / 5e-5);
* **(b) ``finetune``**: λ = 0 (both scales 0), the fair control: any gain of (a) over the base that
  (b) also shows comes from seeing multi-object images, not from the grounding losses.

Both are then scored by **MultiGen-mini**: a fixed set of 5-category prompts over the world's ten
nouns (:func:`reprolib.multigen.sample_prompts`, seeded), several images per prompt whose initial
noise is fixed in advance (:func:`reprolib.multigen.image_seed`, the same for every model), presence
from the exact world detector (:func:`reprolib.worlddetector.detect`) in place of OWLv2, and MG1–MG5
computed by MultiGen's own scorer (:func:`reprolib.multigen.score_run`, the original's maths) with
bootstrap CIs over prompts and paired tests (:func:`reprolib.multigen.paired_test`) between models.
The detector's probability plays OWLv2's score; its threshold is 0.5 (the detector's operating
point, at which its held-out accuracy is recorded in ``data/miniworld/detector.json``), applied as
MultiGen applies its threshold (``score > threshold``).

The attention-mass measure reuses :func:`reprolib.viz.sdedit_mass` (SDEdit from world scenes whose
masks are exact): the fraction of each noun's cross-attention inside its object, per denoising step.

Sizes (:data:`SIZES`): ``toy`` is for tests (seconds), ``tiny`` is the notebook default (a few
minutes on 2 CPU cores), ``long`` gives tighter CIs.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import Profile, apply_overrides
from .io import atomic_save, atomic_write_json
from .miniworld import CATEGORIES, sample_scenes
from .models import WORLD_BASE_DIR

#: The shipped world base (``model.pretrained: miniworld``).
BASE_DIR = WORLD_BASE_DIR
#: The three models compared, in table order.
ARMS = ("base", "tokencompose", "finetune")
#: Groups the base UNet's fine-tunes train: mid + up (SD1.4: mid_8, up_16/32/64).
BASE_TRAIN_LAYERS = ("mid_2", "up_4", "up_8", "up_16")
DETECTION_THRESHOLD = 0.5
#: Seed streams (numpy SeedSequence keys) of the experiment's scenes, disjoint from integer seeds.
TRAIN_STREAM, MASS_STREAM = 21, 22


class ExperimentError(ValueError):
    """A bad experiment setting or input; the message names it."""


@dataclass(frozen=True)
class ExperimentSize:
    """How big one run is. Fine-tune: ``steps`` optimizer steps of ``batch`` images from ``n_train``
    scenes (``train_objects``: weights of 1..5 objects). MultiGen-mini: ``n_prompts`` × ``images_per_prompt``
    images with ``num_inference_steps`` PNDM steps. Attention mass: ``mass_scenes`` SDEdit runs."""
    n_train: int
    steps: int
    batch: int
    lr: float
    n_prompts: int
    images_per_prompt: int
    num_inference_steps: int
    guidance_scale: float
    mass_scenes: int
    mass_steps: int
    mass_strength: float = 0.6
    gen_batch: int = 40
    n_boot: int = 1000
    train_objects: tuple[float, ...] = (0.0, 1.0, 1.0, 1.0, 1.0)


SIZES: Mapping[str, ExperimentSize] = {
    "toy": ExperimentSize(n_train=4, steps=2, batch=2, lr=1e-4, n_prompts=2, images_per_prompt=1,
                          num_inference_steps=2, guidance_scale=5.0, mass_scenes=1, mass_steps=2, n_boot=50),
    "tiny": ExperimentSize(n_train=240, steps=100, batch=8, lr=3e-4, n_prompts=30, images_per_prompt=4,
                           num_inference_steps=15, guidance_scale=5.0, mass_scenes=12, mass_steps=10),
    "long": ExperimentSize(n_train=2000, steps=600, batch=16, lr=3e-4, n_prompts=100, images_per_prompt=8,
                           num_inference_steps=25, guidance_scale=5.0, mass_scenes=40, mass_steps=20,
                           n_boot=2000),
}


def experiment_size(name: str, **overrides: Any) -> ExperimentSize:
    """A preset of :data:`SIZES` with some fields replaced (None values are ignored)."""
    if name not in SIZES:
        raise ExperimentError(f"unknown experiment size {name!r}; known: {', '.join(SIZES)}")
    fields = set(ExperimentSize.__dataclass_fields__)
    bad = [k for k in overrides if k not in fields]
    if bad:
        raise ExperimentError(f"unknown experiment size field {bad[0]!r}")
    return replace(SIZES[name], **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- profiles of the arms

def arm_profile(P: Profile, size: ExperimentSize, arm: str, base: str | Path, out_dir: str | Path) -> Profile:
    """The profile one fine-tune runs with: the world base, the size's steps/batch/lr, mid+up layers;
    ``finetune`` zeroes both grounding scales (λ = 0), everything else identical."""
    if arm not in ("tokencompose", "finetune"):
        raise ExperimentError(f"arm must be 'tokencompose' or 'finetune', got {arm!r}")
    over: dict[str, Any] = {
        "model.pretrained": str(base), "model.unet": None, "model.resolution": 64,
        "train.steps": size.steps, "train.batch_size": size.batch, "train.grad_accum": 1, "train.lr": size.lr,
        "train.lr_scheduler": "constant", "train.lr_warmup_steps": 0, "train.faithful": False,
        "train.mixed_precision": "no", "train.train_layers": list(BASE_TRAIN_LAYERS),
        "train.checkpointing_steps": max(size.steps, 1), "train.checkpoints_total_limit": 1,
        "train.output_dir": str(Path(out_dir) / arm),
    }
    if arm == "finetune":
        over.update({"train.token_loss_scale": 0.0, "train.pixel_loss_scale": 0.0})
    Q = apply_overrides(P, over)
    if Q.train.token_loss_scale == 0 and Q.train.pixel_loss_scale == 0 and arm == "tokencompose":
        raise ExperimentError("arm 'tokencompose' needs a non-zero train.token_loss_scale or pixel_loss_scale")
    return Q


def training_dataset(root: str | Path, size: ExperimentSize, seed: int, tokenizer):
    """Multi-object world records with exact masks (stage-01 layout), as a dataset for reprolib.train."""
    from .data import RecordDataset, make_tiny_dataset
    from .train import records_fingerprint
    records = make_tiny_dataset(root, size.n_train, seed=seed, size=64, n_objects=size.train_objects,
                                progress=False)
    ds = RecordDataset(records, 64, tokenizer)
    ds.fingerprint = records_fingerprint(records, 64)
    return ds


def finetune(P: Profile, size: ExperimentSize, arm: str, base: str | Path, out_dir: str | Path,
             components=None, progress: bool = True):
    """Fine-tune one arm from the base (resumable); returns reprolib.train's TrainResult.

    ``components``: the base's parts with a DDPM scheduler, to share the frozen VAE/text encoder/
    tokenizer between arms (the UNet is always loaded fresh from ``base``)."""
    from .models import load_components, load_unet, swap_unet
    from .train import train
    Q = arm_profile(P, size, arm, base, out_dir)
    comps = components or load_components(str(base), scheduler="ddpm")
    comps = swap_unet(comps, load_unet(str(base)))
    ds = training_dataset(Path(out_dir) / "data", size, P.seed, comps.tokenizer)
    return train(Q, ds, Q.train.output_dir, components=comps, progress=progress)


# --------------------------------------------------------------------------- MultiGen-mini

def world_prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` MultiGen records of 5 distinct world categories (official JSON format), seeded."""
    from .multigen import sample_prompts
    return sample_prompts(list(CATEGORIES), n, k=5, seed=seed)


def generate_set(components, records: Sequence[Mapping[str, Any]], size: ExperimentSize, seed: int = 0,
                 progress: bool = False) -> dict[str, np.ndarray]:
    """Image id ``<prompt>_<index>`` → uint8 image; the noise of each id is fixed by
    :func:`reprolib.multigen.image_seed` (identical across models)."""
    from .multigen import image_id, image_seed
    from .viz import generate_images
    items = [(r["unique_id"], j) for r in records for j in range(size.images_per_prompt)]
    out: dict[str, np.ndarray] = {}
    for s in tqdm(range(0, len(items), size.gen_batch), desc="generate", disable=not progress, leave=False):
        chunk = items[s:s + size.gen_batch]
        prompts = [records[p]["text"] for p, _ in chunk]
        seeds = [image_seed(p, j, seed) for p, j in chunk]
        imgs = generate_images(components, prompts, seeds, size.num_inference_steps, size.guidance_scale)
        out.update({image_id(p, j): im for (p, j), im in zip(chunk, imgs)})
    return out


def detect_set(detector, images: Mapping[str, np.ndarray]) -> dict[str, dict[str, list]]:
    """Detections in the original's JSON shape: id → {"classes": [...], "scores": [...]} (all ten
    categories with the detector's probability as score)."""
    from .worlddetector import detect
    ids = list(images)
    if not ids:
        return {}
    probs = detect(detector, np.stack([images[i] for i in ids]))
    cats = list(detector.categories)
    return {i: {"classes": cats, "scores": [float(p) for p in row]} for i, row in zip(ids, probs)}


def score_arms(results: Mapping[str, Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
               images_per_prompt: int, n_boot: int = 1000, seed: int = 0,
               threshold: float = DETECTION_THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scores, paired, cells) of every arm with MultiGen's scorer; paired tests between every pair
    of arms in :data:`ARMS` order (diff = first − second)."""
    from .multigen import NUM_INS, cell_table, paired_test, score_run
    scores, cells = [], {}
    for arm, res in results.items():
        df = score_run(res, records, threshold, images_per_prompt, n_boot, seed)
        df.insert(0, "checkpoint", arm)
        scores.append(df)
        cells[arm] = cell_table(res, records, threshold)
    arms = [a for a in ARMS if a in results] + [a for a in results if a not in ARMS]
    pairs = [("tokencompose", "finetune"), ("tokencompose", "base"), ("finetune", "base")]
    pairs = [p for p in pairs if p[0] in results and p[1] in results] or \
        [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:]]
    paired = [{"a": a, "b": b, **paired_test(cells[a], cells[b], k, n_boot, seed)}
              for a, b in pairs for k in range(1, NUM_INS + 1)]
    cell_df = pd.concat([c.assign(checkpoint=a) for a, c in cells.items()], ignore_index=True)
    score_df = pd.concat(scores, ignore_index=True)
    score_df.insert(1, "prompt_set", "miniworld")
    return score_df, pd.DataFrame(paired), cell_df


def mg_table(scores: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Rows = models, columns = MG1..MG5 as "mean [ci_low, ci_high]" (%)."""
    wide = {}
    for arm, g in scores.groupby("checkpoint", sort=False):
        wide[arm] = {f"MG{int(r.k)}": f"{r.mean:.{decimals}f} [{r.ci_low:.{decimals}f}, {r.ci_high:.{decimals}f}]"
                     for r in g.itertuples()}
    return pd.DataFrame.from_dict(wide, orient="index")


def verdict(paired: pd.DataFrame, a: str = "tokencompose", b: str = "finetune", alpha: float = 0.05) -> str:
    """One sentence on whether ``a`` beats ``b`` in MultiGen-mini, read off the paired tests (bootstrap
    p over prompts, two-sided), so that the book's summary is computed, not typed."""
    rows = paired[(paired["a"] == a) & (paired["b"] == b)].sort_values("k")
    if rows.empty:
        raise ExperimentError(f"no paired tests of {a!r} against {b!r}")
    better = rows[(rows["p_bootstrap"] < alpha) & (rows["diff"] > 0)]
    worse = rows[(rows["p_bootstrap"] < alpha) & (rows["diff"] < 0)]
    best = rows.loc[rows["p_bootstrap"].idxmin()]
    if not better.empty and worse.empty:
        ks = ", ".join(f"MG{int(k)}" for k in better["k"])
        return f"{a} beats {b} at {ks} (paired bootstrap p < {alpha})."
    if not worse.empty and better.empty:
        ks = ", ".join(f"MG{int(k)}" for k in worse["k"])
        return f"{a} is worse than {b} at {ks} (paired bootstrap p < {alpha})."
    if better.empty and worse.empty:
        return (f"{a} does not beat {b}: no MG-k difference is significant at {alpha} (smallest p = "
                f"{best['p_bootstrap']:.2f}, MG{int(best['k'])}: {best['diff']:+.1f} points).")
    return f"mixed: {a} is better than {b} at some k and worse at others (paired bootstrap p < {alpha})."


# --------------------------------------------------------------------------- attention mass

def mass_scenes(n: int, seed: int = 0) -> list:
    """``n`` world scenes of 4–5 objects (exact masks) for the SDEdit attention-mass protocol."""
    return sample_scenes(n, [MASS_STREAM, seed], n_objects=(0, 0, 0, 1, 1), progress=False)


def attention_mass(models: Mapping[str, Any], size: ExperimentSize, seed: int = 0,
                   layers: Sequence[str] = ("up_16",)) -> pd.DataFrame:
    """Per (model, scene, noun, layer, step): the fraction of the noun's attention inside its mask."""
    from .viz import sdedit_mass
    scenes = mass_scenes(size.mass_scenes, seed)
    tables = []
    for arm, comps in models.items():
        t, _ = sdedit_mass(comps, scenes, list(range(len(scenes))), list(layers), size.mass_steps,
                           size.guidance_scale, size.mass_strength, checkpoint=arm, batch_size=8)
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


# --------------------------------------------------------------------------- the whole run

@dataclass
class ExperimentResult:
    """Everything the notebook shows: tables, images of each arm, the two training logs, timings."""
    scores: pd.DataFrame
    paired: pd.DataFrame
    cells: pd.DataFrame
    mass: pd.DataFrame
    records: list[dict[str, Any]]
    images: dict[str, dict[str, np.ndarray]]
    train_logs: dict[str, pd.DataFrame]
    timings: dict[str, float]
    size: ExperimentSize
    out_dir: Path
    meta: dict[str, Any] = field(default_factory=dict)


def _save_csv(path: Path, df: pd.DataFrame) -> Path:
    return atomic_save(path, lambda p: df.to_csv(p, index=False))


def run_experiment(P: Profile, size: ExperimentSize, out_dir: str | Path, base: str | Path = BASE_DIR,
                   detector_path: str | Path | None = None, progress: bool = True) -> ExperimentResult:
    """Fine-tune (a) and (b) from ``base``, generate MultiGen-mini for base/(a)/(b), detect, score,
    measure attention mass; writes scores/paired/cells/mass CSVs and a summary JSON to ``out_dir``."""
    from .models import load_components, load_unet, swap_unet
    from .worlddetector import load_world_detector
    base = Path(base)
    if not (base / "unet" / "config.json").is_file():
        raise ExperimentError(f"no base model at {base} (train it with scripts/train_world_base.py)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    logs, unets = {}, {}
    from diffusers import PNDMScheduler
    train_comps = load_components(str(base), scheduler="ddpm")
    for arm in ("tokencompose", "finetune"):
        t0 = time.perf_counter()
        res = finetune(P, size, arm, base, out, train_comps, progress)
        if not res.completed:
            raise ExperimentError(f"fine-tune {arm} did not complete ({res.out_dir})")
        timings[f"train_{arm}_s"] = time.perf_counter() - t0
        logs[arm], unets[arm] = res.log, res.unet_dir
    base_comps = replace(train_comps, unet=load_unet(str(base)),
                         scheduler=PNDMScheduler.from_pretrained(str(base), subfolder="scheduler"))
    models = {"base": base_comps}
    for arm in ("tokencompose", "finetune"):
        models[arm] = swap_unet(base_comps, load_unet(str(unets[arm])))
    for comps in models.values():
        comps.unet.eval()
    detector = load_world_detector(detector_path)
    records = world_prompts(size.n_prompts, P.seed)
    images, results = {}, {}
    t0 = time.perf_counter()
    for arm, comps in models.items():
        images[arm] = generate_set(comps, records, size, P.seed, progress)
        results[arm] = detect_set(detector, images[arm])
    timings["multigen_s"] = time.perf_counter() - t0
    scores, paired, cells = score_arms(results, records, size.images_per_prompt, size.n_boot, P.seed)
    t0 = time.perf_counter()
    mass = attention_mass(models, size, P.seed)
    timings["mass_s"] = time.perf_counter() - t0
    for name, df in (("scores", scores), ("paired", paired), ("cells", cells), ("mass", mass)):
        _save_csv(out / f"world_{name}.csv", df)
    meta = {"base": str(base), "detector_threshold": DETECTION_THRESHOLD, "train_layers": list(BASE_TRAIN_LAYERS),
            "token_loss_scale": P.train.token_loss_scale, "pixel_loss_scale": P.train.pixel_loss_scale,
            "seed": P.seed, "threads": torch.get_num_threads()}
    atomic_write_json(out / "world_summary.json", {"size": asdict(size), "timings": timings, **meta})
    return ExperimentResult(scores, paired, cells, mass, records, images, logs, timings, size, out, meta)


def base_check(base: str | Path = BASE_DIR) -> pd.DataFrame:
    """The base's recorded sanity check (``<base>.json`` written by the training script): can it draw
    the shape it is asked for, and how many of five does it draw? Empty when no record exists."""
    import json
    path = Path(base).with_name(Path(base).name + ".json")
    if not path.is_file():
        return pd.DataFrame(columns=["value"])
    rec = json.loads(path.read_text())
    chk = rec.get("sample_check", {})
    rows = {"trained on": rec.get("device_name", rec.get("device")),
            "training steps (UNet)": rec.get("base", {}).get("steps"),
            "training script wall time, all calls (s)": rec.get("all_calls_wall_time_s", rec.get("train_wall_time_s")),
            "VAE reconstructions: detector accuracy per label": rec.get("vae", {}).get("check", {}).get(
                "detector_label_accuracy_reconstructed"),
            "single-object prompts: shape found": chk.get("single_object_found"),
            "single-object prompts: only that shape": chk.get("single_object_exact"),
            "five-object prompts: mean shapes found": chk.get("five_object_mean_found"),
            "images (single / five)": f"{chk.get('images_single')} / {chk.get('images_five')}"}
    return pd.DataFrame({"value": rows})


# --------------------------------------------------------------------------- figures

def sample_grid(result: ExperimentResult, n_prompts: int = 4, index: int = 0):
    """Image ``index`` of the first prompts (rows) for base / (a) / (b) (columns)."""
    from .viz import sample_grid as grid
    from .multigen import image_id
    recs = result.records[:n_prompts]
    imgs = {arm: [[result.images[arm][image_id(r["unique_id"], index)]] for r in recs] for arm in result.images}
    return grid(imgs, [r["text"] for r in recs], [index])


def mg_curves(result: ExperimentResult):
    """MG_k against k with 95 % CI bands, one line per model (MultiGen's own plot)."""
    from .multigen import plot_mg_curves
    return plot_mg_curves(result.scores)


def mass_curves(result: ExperimentResult):
    """Attention mass inside the mask over denoising steps, per model, with CIs over scenes."""
    from .viz import mass_figure, summarize_mass
    summary = summarize_mass(result.mass, ("checkpoint", "layer", "step"), n_boot=result.size.n_boot)
    return mass_figure(summary, facet="layer")
