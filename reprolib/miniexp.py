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

from .config import Profile, TrainConfig, apply_overrides
from .io import REPO_ROOT, atomic_save, atomic_write_json
from .miniworld import CATEGORIES, sample_scenes
from .models import WORLD_BASE_DIR

#: The shipped world base (``model.pretrained: miniworld``).
BASE_DIR = WORLD_BASE_DIR
#: The three models compared, in table order.
ARMS = ("base", "tokencompose", "finetune")
#: What a reader sees for each arm (tables, figures, the verdict): never the internal key.
ARM_LABELS = {"base": "World base (not fine-tuned)", "tokencompose": "(a) TokenCompose fine-tune",
              "finetune": "(b) plain fine-tune, λ = 0"}
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
    #: Fine-tune seeds (data order, noise, timesteps) per arm; empty: the profile's seed alone. The evaluation
    #: (prompts, initial noise) and the training scenes stay fixed by the profile's seed for every fine-tune.
    seeds: tuple[int, ...] = ()


SIZES: Mapping[str, ExperimentSize] = {
    "toy": ExperimentSize(n_train=4, steps=2, batch=2, lr=1e-4, n_prompts=2, images_per_prompt=1,
                          num_inference_steps=2, guidance_scale=5.0, mass_scenes=1, mass_steps=2, n_boot=50),
    "tiny": ExperimentSize(n_train=240, steps=100, batch=8, lr=3e-4, n_prompts=30, images_per_prompt=4,
                           num_inference_steps=15, guidance_scale=5.0, mass_scenes=12, mass_steps=10),
    "long": ExperimentSize(n_train=2000, steps=600, batch=16, lr=3e-4, n_prompts=100, images_per_prompt=8,
                           num_inference_steps=25, guidance_scale=5.0, mass_scenes=40, mass_steps=20,
                           n_boot=2000, seeds=(0, 1, 2)),
}


def experiment_size(name: str, **overrides: Any) -> ExperimentSize:
    """A preset of :data:`SIZES` with some fields replaced (None values are ignored)."""
    if name not in SIZES:
        raise ExperimentError(f"unknown experiment size {name!r}; known: {', '.join(SIZES)}")
    fields = set(ExperimentSize.__dataclass_fields__)
    bad = [k for k in overrides if k not in fields]
    if bad:
        raise ExperimentError(f"unknown experiment size field {bad[0]!r}")
    if overrides.get("seeds") is not None:
        overrides["seeds"] = tuple(int(x) for x in overrides["seeds"])
    return replace(SIZES[name], **{k: v for k, v in overrides.items() if v is not None})


def fine_tune_seeds(P: Profile, size: ExperimentSize) -> list[int]:
    """The fine-tune seeds of a run: the size's, else the profile's ``train.seed`` (one fine-tune per arm)."""
    return list(dict.fromkeys(size.seeds)) or [P.train.seed]


def seed_profile(P: Profile, seed: int) -> Profile:
    """The profile of one fine-tune seed: ``train.seed`` is what reprolib.train draws data order, noise and
    timesteps from (the top-level ``seed`` fixes the scenes and the evaluation, shared by every fine-tune)."""
    return P if seed == P.train.seed else apply_overrides(P, {"train.seed": int(seed)})


def model_key(arm: str, seed: int | None = None) -> str:
    """``tokencompose@1``: one fine-tune of an arm; the base (never fine-tuned) has no seed."""
    return arm if seed is None else f"{arm}@{seed}"


def split_key(key: str) -> tuple[str, int | None]:
    """Inverse of :func:`model_key`."""
    arm, _, seed = key.partition("@")
    return arm, (int(seed) if seed else None)


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
             components=None, progress: bool = True, data_root: str | Path | None = None,
             data_seed: int | None = None):
    """Fine-tune one arm from the base (resumable); returns reprolib.train's TrainResult.

    ``components``: the base's parts with a DDPM scheduler, to share the frozen VAE/text encoder/
    tokenizer between arms (the UNet is always loaded fresh from ``base``). ``P.seed`` seeds the fine-tune
    (data order, noise, timesteps); the training scenes come from ``data_seed`` (default ``P.seed``) under
    ``data_root`` (default ``out_dir/data``), so fine-tunes of several seeds can share one set of scenes."""
    from .models import load_components, load_unet, swap_unet
    from .train import train
    Q = arm_profile(P, size, arm, base, out_dir)
    comps = components or load_components(str(base), scheduler="ddpm")
    comps = swap_unet(comps, load_unet(str(base)))
    ds = training_dataset(Path(data_root or Path(out_dir) / "data"), size,
                          P.seed if data_seed is None else data_seed, comps.tokenizer)
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
    of arms in :data:`ARMS` order (diff = first − second). ``images_per_prompt`` counts every image of a
    prompt in ``results`` (with pooled seeds: images per prompt × seeds, see :func:`pool_seeds`)."""
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


def arm_label(arm: str) -> str:
    """The display name of an arm or of one fine-tune of it (``tokencompose@1``: "… (seed 1)")."""
    name, seed = split_key(arm)
    label = ARM_LABELS.get(name, name)
    return label if seed is None else f"{label} (seed {seed})"


def pool_seeds(results: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], images_per_prompt: int
               ) -> dict[str, dict[str, Any]]:
    """Per arm, the detections of all its fine-tunes as one run: seed number ``i``'s image ``j`` of a prompt
    becomes image ``i · images_per_prompt + j``, so that MultiGen's scorer and the paired tests see the seeds
    as replicates within a prompt (prompts stay the resampling unit, and cells pair seed by seed). The base,
    fine-tuned by no seed, is repeated for each seed so that it pairs with every fine-tune."""
    from .multigen import image_id
    pooled: dict[str, dict[str, Any]] = {}
    for key, res in results.items():
        arm, seed = split_key(key)
        for i, s in enumerate(seeds):
            if seed is not None and seed != s:
                continue
            for img, det in res.items():
                pid, j = (int(x) for x in img.split("_")[:2])
                pooled.setdefault(arm, {})[image_id(pid, i * images_per_prompt + j)] = det
    return pooled


def seed_effects(seed_scores: pd.DataFrame, pairs: Sequence[tuple[str, str]] = (("tokencompose", "finetune"),)
                 ) -> pd.DataFrame:
    """Between-seed spread of each effect: per pair and k, MG_k(a, seed) − MG_k(b, seed) over the seeds
    (the base's single score stands for every seed): mean, sample SD (ddof 1; NaN with one seed), n."""
    rows = []
    for a, b in pairs:
        for k, g in seed_scores.groupby("k"):
            ga = g[g["checkpoint"] == a].set_index("train_seed")["mean"]
            gb = g[g["checkpoint"] == b].set_index("train_seed")["mean"]
            if gb.index.isna().all() and len(gb) == 1:      # the base: one score for every seed
                gb = pd.Series(gb.iloc[0], index=ga.index)
            d = (ga - gb.reindex(ga.index)).dropna()
            rows.append({"a": a, "b": b, "k": int(k), "seed_mean": float(d.mean()) if len(d) else np.nan,
                         "seed_sd": float(d.std(ddof=1)) if len(d) > 1 else np.nan, "n_seeds": len(d),
                         "per_seed": ", ".join(f"{v:+.1f}" for v in d)})
    return pd.DataFrame(rows)


def mg_table(scores: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Rows = models (display names, first column), columns = "MG1 (%)".."MG5 (%)" as "mean [lo, hi]"."""
    from .tables import mean_ci
    rows = []
    for arm, g in scores.groupby("checkpoint", sort=False):
        row = {"Model": arm_label(arm)}
        row.update({f"MG{int(r.k)} (%)": mean_ci(r.mean, r.ci_low, r.ci_high, decimals) for r in g.itertuples()})
        rows.append(row)
    return pd.DataFrame(rows)


def mg_table_bold(scores: pd.DataFrame) -> pd.DataFrame:
    """Cells of :func:`mg_table` to set in bold: the best mean per MG-k column (ties all bold)."""
    from .tables import best_mask
    means = scores.pivot_table(index="checkpoint", columns="k", values="mean", sort=False)
    means = means.reindex(list(dict.fromkeys(scores["checkpoint"])))
    means.columns = [f"MG{int(k)} (%)" for k in means.columns]
    bold = best_mask(means.reset_index(drop=True))
    bold.insert(0, "Model", False)
    return bold


def paired_display(paired: pd.DataFrame, effects: pd.DataFrame | None = None) -> pd.DataFrame:
    """World paired tests as the book shows them (:func:`reprolib.multigen.paired_display`'s columns, one
    prompt set), and (with :func:`seed_effects`) the difference seed by seed with its between-seed SD."""
    from .multigen import paired_display as shown
    from .tables import mean_std
    labels = {k: arm_label(k) for k in pd.concat([paired["a"], paired["b"]]).unique()}
    as_mg = paired.rename(columns={"a": "checkpoint_a", "b": "checkpoint_b"}).assign(prompt_set="miniworld")
    out = shown(as_mg, labels, decimals=1).drop(columns="Prompt set")
    if effects is not None and len(effects) and (effects["n_seeds"] > 1).any():   # one seed: nothing to add
        e = paired[["a", "b", "k"]].merge(effects, on=["a", "b", "k"], how="left")
        out["A − B per seed (points)"] = e["per_seed"].fillna("–").to_numpy()
        out["mean ± between-seed SD"] = [mean_std(m, sd, 1) for m, sd in zip(e["seed_mean"], e["seed_sd"])]
    return out


def train_last_display(logs: Mapping[str, pd.DataFrame], last: int = 5) -> pd.DataFrame:
    """Mean of each fine-tune's last ``last`` logged losses, one row per arm (display names)."""
    rows = []
    for arm, log in logs.items():
        cols = [c for c in ("loss", "denoise", "token", "pixel") if c in log.columns]
        tail = log[cols].tail(last).mean(numeric_only=True)
        rows.append({"Fine-tune": arm_label(arm), **{f"{c} (mean of last {last} steps)": tail[c] for c in cols}})
    return pd.DataFrame(rows)


def timings_display(timings: Mapping[str, float]) -> pd.DataFrame:
    """The experiment's wall times, one row per part."""
    return pd.DataFrame({"Part": [str(k).replace("_", " ") for k in timings],
                         "Wall time (s)": [float(v) for v in timings.values()]})


#: The comparison's analysis plan, fixed before the multi-seed run (the chapter states it in words): the
#: primary metrics, the test (paired bootstrap over prompts, fine-tune seeds pooled as replicates within a
#: prompt, two-sided), its level and the correction over the primary metrics.
PLAN = {"primary": (3, 4), "alpha": 0.05, "correction": "holm"}


def tested(paired: pd.DataFrame, a: str = "tokencompose", b: str = "finetune", ks: Sequence[int] | None = None,
           holm: bool = False) -> pd.DataFrame:
    """The paired tests of ``a`` against ``b`` that count (``ks``; default all), by k, their bootstrap p
    Holm-adjusted over that family when ``holm`` (the plan's correction, :data:`PLAN`)."""
    rows = paired[(paired["a"] == a) & (paired["b"] == b)].sort_values("k")
    if ks is not None:
        rows = rows[rows["k"].isin(list(ks))]
    if holm and len(rows):
        from statsmodels.stats.multitest import multipletests
        rows = rows.assign(p_bootstrap=multipletests(rows["p_bootstrap"].to_numpy(), method="holm")[1])
    return rows


def directions(rows: pd.DataFrame, alpha: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tested rows where ``a`` is significantly better, and those where it is significantly worse."""
    sig = rows["p_bootstrap"] < alpha
    return rows[sig & (rows["diff"] > 0)], rows[sig & (rows["diff"] < 0)]


def verdict(paired: pd.DataFrame, a: str = "tokencompose", b: str = "finetune", alpha: float = 0.05,
            ks: Sequence[int] | None = None, holm: bool = False) -> str:
    """One sentence on whether ``a`` beats ``b`` in MultiGen-mini, read off the paired tests (bootstrap
    p over prompts, two-sided), so that the book's summary is computed, not typed. ``ks``: the MG-k that
    count (default all); ``holm``: Holm-adjust their p-values first (the plan's family, :data:`PLAN`)."""
    rows = tested(paired, a, b, ks, holm)
    if rows.empty:
        raise ExperimentError(f"no paired tests of {a!r} against {b!r}")
    better, worse = directions(rows, alpha)
    best = rows.loc[rows["p_bootstrap"].idxmin()]
    na, nb = arm_label(a), arm_label(b)
    if not better.empty and worse.empty:
        ks_ = ", ".join(f"MG{int(k)}" for k in better["k"])
        return f"{na} beats {nb} at {ks_} (paired bootstrap p < {alpha}{', Holm' if holm else ''})."
    if not worse.empty and better.empty:
        ks_ = ", ".join(f"MG{int(k)}" for k in worse["k"])
        return f"{na} is worse than {nb} at {ks_} (paired bootstrap p < {alpha}{', Holm' if holm else ''})."
    if better.empty and worse.empty:
        which = "MG-k" if ks is None else "/".join(f"MG{int(k)}" for k in sorted(ks))
        adj = ", Holm-adjusted" if holm else ""
        return (f"{na} does not beat {nb}: no {which} difference is significant at {alpha}{adj} (smallest p = "
                f"{best['p_bootstrap']:.2f}, MG{int(best['k'])}: {best['diff']:+.1f} points).")
    return (f"mixed: {na} is better than {nb} at some k and worse at others (paired bootstrap p < {alpha}"
            f"{', Holm' if holm else ''}).")


# --------------------------------------------------------------------------- attention mass

def mass_scenes(n: int, seed: int = 0) -> list:
    """``n`` world scenes of 4–5 objects (exact masks) for the SDEdit attention-mass protocol."""
    return sample_scenes(n, [MASS_STREAM, seed], n_objects=(0, 0, 0, 1, 1), progress=False)


def attention_mass(models: Mapping[str, Any], size: ExperimentSize, seed: int = 0,
                   layers: Sequence[str] = BASE_TRAIN_LAYERS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(mass, flow)`` for every model (keys :func:`model_key`; ``train_seed`` column) at every group
    TokenCompose trains, from one SDEdit pass over the same held-out scenes: per (model, scene, noun, layer, step) the fraction of the noun's attention inside
    its exact mask, and per (model, scene, layer, step, token role) the share of all attention that role gets
    (:func:`reprolib.viz.flow_table`): where the text information flows."""
    from .viz import sdedit_flow
    scenes = mass_scenes(size.mass_scenes, seed)
    mass, flow = [], []
    for arm, comps in models.items():
        name, seed = split_key(arm)
        m, f = sdedit_flow(comps, scenes, list(range(len(scenes))), list(layers), size.mass_steps,
                           size.guidance_scale, size.mass_strength, checkpoint=name, batch_size=8)
        mass.append(m.assign(train_seed=seed))
        flow.append(f.assign(train_seed=seed))
    return pd.concat(mass, ignore_index=True), pd.concat(flow, ignore_index=True)


def mass_by_layer(mass: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer group): mean noun mass inside the mask, mean chance (mask area), and their ratio,
    over every (scene, noun, step). The ratio is the grounding gate's measure: 1 = no better than spread."""
    g = mass.groupby(["checkpoint", "layer"], sort=False)
    out = g[["mass", "chance"]].mean().reset_index()
    out["ratio"] = out["mass"] / out["chance"]
    out["rows"] = g.size().to_numpy()
    return out


def flow_by_layer(flow: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer group, role): the mean share of attention (over scenes and steps)."""
    out = flow.groupby(["checkpoint", "layer", "role"], sort=False)["share"].mean().reset_index()
    return out


def flow_display(flow: pd.DataFrame, mass: pd.DataFrame, arm: str = "base") -> pd.DataFrame:
    """One model's diagnosis as the book shows it: per layer group, the share of attention (%) each token
    role receives, then the nouns' mass inside their masks against chance."""
    from .viz import TOKEN_ROLES
    f = flow_by_layer(flow)
    f = f[f["checkpoint"] == arm].pivot(index="layer", columns="role", values="share")
    m = mass_by_layer(mass)
    m = m[m["checkpoint"] == arm].set_index("layer")
    layers = list(dict.fromkeys(m.index.tolist() + f.index.tolist()))
    rows = []
    for lay in layers:
        row = {"Layer group": lay}
        row.update({f"{role} (% of attention)": 100 * f.loc[lay, role] if lay in f.index else np.nan
                    for role in TOKEN_ROLES})
        row.update({"noun mass inside mask": m.loc[lay, "mass"], "chance (mask area)": m.loc[lay, "chance"],
                    "mass / chance": m.loc[lay, "ratio"]})
        rows.append(row)
    return pd.DataFrame(rows)


def flow_summary(flow: pd.DataFrame, mass: pd.DataFrame, arm: str = "base", layer: str = "up_16") -> str:
    """One computed sentence of the diagnosis: where `arm`'s attention goes at `layer`, and how far above
    chance its nouns' mass is there and at its best group."""
    f = flow_by_layer(flow)
    f = f[(f["checkpoint"] == arm) & (f["layer"] == layer)].set_index("role")["share"]
    m = mass_by_layer(mass)
    m = m[m["checkpoint"] == arm].set_index("layer")["ratio"]
    if f.empty or layer not in m.index:
        raise ExperimentError(f"no flow or mass rows for {arm!r} at {layer!r}")
    best = m.idxmax()
    return (f"At {layer}, {arm_label(arm)} gives {100 * f['EOS and padding']:.0f} % of its cross-attention to EOS and "
            f"padding, {100 * f['nouns']:.0f} % to the nouns, {100 * f['other words']:.0f} % to the other words and "
            f"{100 * f['BOS']:.0f} % to BOS; its nouns' mass inside their masks is {m[layer]:.2f} × chance there "
            f"(best group {best}: {m[best]:.2f} ×).")


# --------------------------------------------------------------------------- validity gates

#: The validity gates of the miniature world: the preconditions under which its TokenCompose-vs-control
#: comparison can say something about the real experiment. (name, threshold in words).
GATES = {
    "single": "single-object prompts: the prompted shape is found ≥ 90 %",
    "grounding": "base noun mass inside its mask ≥ 2.5 × chance at every trained group",
    "mg3": "base composes poorly like SD1.4 (COCO MG3 50.7): MG3 ≤ 60 %",
    "mg4": "base composes poorly like SD1.4 (COCO MG4 11.7): MG4 ≤ 25 %",
    "control": "the λ = 0 control lowers no MG-k of the base beyond its 95 % CI",
    "bld": "BLD change-object edits with the base succeed ≥ 50 % (stage 05, world detector)",
}


def validity_gates(base_record: Mapping[str, Any], mass: pd.DataFrame, scores: pd.DataFrame,
                   paired: pd.DataFrame, edit_success: pd.DataFrame | None = None,
                   layers: Sequence[str] = BASE_TRAIN_LAYERS) -> pd.DataFrame:
    """Each gate of :data:`GATES` with its measured value and whether it passes (``None``: not measured).

    ``base_record`` is the base's ``base.json`` (its sample check); ``mass`` the world mass table;
    ``scores``/``paired`` MultiGen-mini's; ``edit_success`` stage 05's per-edit table (``checkpoint`` =
    ``base`` rows are the world base's edits).
    """
    rows = []

    def add(key: str, value: str, ok: bool | None) -> None:
        rows.append({"gate": key, "Gate": GATES[key], "Measured": value,
                     "Passes": "–" if ok is None else ("yes" if ok else "no")})

    found = base_record.get("sample_check", {}).get("single_object_found")
    n = base_record.get("sample_check", {}).get("images_single")
    add("single", "–" if found is None else f"{100 * found:.0f} % of {n} images (base record)",
        None if found is None else found >= 0.90)
    by = mass_by_layer(mass)
    by = by[(by["checkpoint"] == "base") & by["layer"].isin(layers)]
    if len(by):
        add("grounding", ", ".join(f"{r.layer} {r.ratio:.2f}×" for r in by.itertuples()),
            bool((by["ratio"] >= 2.5).all() and len(by) == len(layers)))
    else:
        add("grounding", "–", None)
    base_mg = scores[scores["checkpoint"] == "base"].set_index("k")["mean"]
    for key, k, limit in (("mg3", 3, 60.0), ("mg4", 4, 25.0)):
        add(key, f"MG{k} {base_mg[k]:.1f} %" if k in base_mg.index else "–",
            None if k not in base_mg.index else bool(base_mg[k] <= limit))
    ctl = paired[(paired["a"] == "finetune") & (paired["b"] == "base")]
    if len(ctl):
        lower = ctl[ctl["ci_high"] < 0]
        add("control", "lower at " + ", ".join(f"MG{int(r.k)} ({r.diff:+.1f} [{r.ci_low:.1f}, {r.ci_high:.1f}])"
                                                for r in lower.itertuples()) if len(lower) else
            "no MG-k lower beyond its CI", lower.empty)
    else:
        add("control", "–", None)
    if edit_success is not None and (edit_success["checkpoint"] == "base").any():
        e = edit_success[edit_success["checkpoint"] == "base"]
        rate = float(e["success"].mean())
        add("bld", f"{100 * rate:.0f} % of {len(e)} edits", rate >= 0.50)
    else:
        add("bld", "– (stage 05's world edits not found)", None)
    return pd.DataFrame(rows)


def failed_gates(gates: pd.DataFrame) -> list[str]:
    """The gates that were measured and fail."""
    return gates.loc[gates["Passes"] == "no", "gate"].tolist()


def gated_verdict(sentence: str, gates: pd.DataFrame) -> str:
    """The comparison's verdict, made conditional on the gates: a verdict of a world that fails its
    preconditions says nothing about Stable Diffusion, and the sentence must say so first."""
    failed = failed_gates(gates)
    if not failed:
        return f"All validity gates pass. {sentence}"
    return (f"Conditional: {len(failed)} of {len(gates)} validity gates fail ({', '.join(failed)}), so this "
            f"world lacks preconditions of the real experiment. In this world: {sentence}")


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
    flow: pd.DataFrame = field(default_factory=pd.DataFrame)
    seed_scores: pd.DataFrame = field(default_factory=pd.DataFrame)   # MG-k per (model, fine-tune seed)
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)       # :func:`seed_effects`
    seeds: list[int] = field(default_factory=list)


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
    seeds = fine_tune_seeds(P, size)
    from diffusers import PNDMScheduler
    train_comps = load_components(str(base), scheduler="ddpm")
    for seed in seeds:                    # one fine-tune per arm and seed; one seed keeps the historic layout
        Ps = seed_profile(P, seed)
        seed_dir = out if seeds == [P.train.seed] else out / f"seed_{seed}"
        for arm in ("tokencompose", "finetune"):
            t0 = time.perf_counter()
            res = finetune(Ps, size, arm, base, seed_dir, train_comps, progress, data_root=out / "data",
                           data_seed=P.seed)
            if not res.completed:
                raise ExperimentError(f"fine-tune {arm} (seed {seed}) did not complete ({res.out_dir})")
            key = arm if len(seeds) == 1 else model_key(arm, seed)
            timings[f"train_{key}_s"] = time.perf_counter() - t0
            logs[key], unets[model_key(arm, seed)] = res.log, res.unet_dir
    base_comps = replace(train_comps, unet=load_unet(str(base)),
                         scheduler=PNDMScheduler.from_pretrained(str(base), subfolder="scheduler"))
    models = {"base": base_comps}
    for key, unet_dir in unets.items():
        models[key] = swap_unet(base_comps, load_unet(str(unet_dir)))
    for comps in models.values():
        comps.unet.eval()
    detector = load_world_detector(detector_path)
    records = world_prompts(size.n_prompts, P.seed)
    images, results = {}, {}
    t0 = time.perf_counter()
    for key, comps in models.items():                     # the same prompts and initial noise for every model
        imgs = generate_set(comps, records, size, P.seed, progress)
        results[key] = detect_set(detector, imgs)
        name, seed = split_key(key)
        if seed is None or seed == seeds[0]:
            images[name] = imgs                            # the sample grid shows the first seed's fine-tunes
    timings["multigen_s"] = time.perf_counter() - t0
    pooled = pool_seeds(results, seeds, size.images_per_prompt)
    scores, paired, cells = score_arms(pooled, records, size.images_per_prompt * len(seeds), size.n_boot, P.seed)
    seed_scores = seed_score_table(results, records, size)
    effects = seed_effects(seed_scores, [("tokencompose", "finetune"), ("tokencompose", "base"), ("finetune", "base")])
    t0 = time.perf_counter()
    mass, flow = attention_mass(models, size, P.seed)
    timings["mass_s"] = time.perf_counter() - t0
    for name, df in (("scores", scores), ("paired", paired), ("cells", cells), ("mass", mass), ("flow", flow),
                     ("seed_scores", seed_scores), ("effects", effects)):
        _save_csv(out / f"world_{name}.csv", df)
    meta = {"base": str(base), "detector_threshold": DETECTION_THRESHOLD, "train_layers": list(BASE_TRAIN_LAYERS),
            "token_loss_scale": P.train.token_loss_scale, "pixel_loss_scale": P.train.pixel_loss_scale,
            "seed": P.seed, "fine_tune_seeds": seeds, "threads": torch.get_num_threads()}
    atomic_write_json(out / "world_summary.json", {"size": asdict(size), "timings": timings, **meta})
    return ExperimentResult(scores, paired, cells, mass, records, images, logs, timings, size, out, meta, flow,
                            seed_scores, effects, seeds)


def seed_score_table(results: Mapping[str, Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
                     size: ExperimentSize, threshold: float = DETECTION_THRESHOLD) -> pd.DataFrame:
    """MG-k of every model separately (each arm at each fine-tune seed; the base once, ``train_seed`` NaN)."""
    from .multigen import score_run
    rows = []
    for key, res in results.items():
        arm, seed = split_key(key)
        df = score_run(res, records, threshold, size.images_per_prompt, size.n_boot, 0)
        rows.append(df.assign(checkpoint=arm, train_seed=np.nan if seed is None else seed))
    return pd.concat(rows, ignore_index=True)


def base_record(base: str | Path = BASE_DIR) -> dict[str, Any]:
    """The base's training record (``<base>.json``, written by the training script); empty when absent."""
    import json
    path = Path(base).with_name(Path(base).name + ".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def mass_arms_display(mass: pd.DataFrame) -> pd.DataFrame:
    """Rows = models, columns = layer groups: the noun mass inside the mask over chance (1 = spread evenly)."""
    by = mass_by_layer(mass)
    wide = by.pivot(index="checkpoint", columns="layer", values="ratio")
    wide = wide.reindex(list(dict.fromkeys(by["checkpoint"])))[list(dict.fromkeys(by["layer"]))]
    wide.columns = [f"{c} (× chance)" for c in wide.columns]
    wide.insert(0, "Model", [arm_label(a) for a in wide.index])
    return wide.reset_index(drop=True)


def base_check(base: str | Path = BASE_DIR) -> pd.DataFrame:
    """The base's recorded sanity check (``<base>.json`` written by the training script): can it draw
    the shape it is asked for, and how many of five does it draw? Empty when no record exists."""
    rec = base_record(base)
    if not rec:
        return pd.DataFrame(columns=["Check", "Value"])
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
    def text(v: Any) -> Any:
        return f"{v:.4g}" if isinstance(v, float) else v
    return pd.DataFrame({"Check": list(rows), "Value": [text(v) for v in rows.values()]})


# --------------------------------------------------------------------------- figures

def sample_grid(result: ExperimentResult, n_prompts: int = 4, index: int = 0):
    """Image ``index`` of the first prompts (rows) for base / (a) / (b) (columns)."""
    from .viz import sample_grid as grid
    from .multigen import image_id
    recs = result.records[:n_prompts]
    imgs = {arm_label(arm): [[result.images[arm][image_id(r["unique_id"], index)]] for r in recs]
            for arm in result.images}
    return grid(imgs, [r["text"] for r in recs], [index])


def mg_curves(result: ExperimentResult):
    """MG_k against k with 95 % CI bands, one line per model (MultiGen's own plot)."""
    from .multigen import plot_mg_curves
    return plot_mg_curves(result.scores, labels=ARM_LABELS)


def mass_curves(result: ExperimentResult):
    """Attention mass inside the mask over denoising steps, per model, with CIs over scenes."""
    from .viz import mass_figure, summarize_mass
    summary = summarize_mass(result.mass, ("checkpoint", "layer", "step"), n_boot=result.size.n_boot)
    summary["checkpoint"] = summary["checkpoint"].map(arm_label)
    return mass_figure(summary, facet="layer")


# --------------------------------------------------------------------------- committed multi-seed runs

#: Where the committed multi-seed run lives (``scripts/export_world_run.py`` writes it; stage 06 shows it).
COMMITTED_DIR = Path(__file__).resolve().parent.parent / "data" / "miniworld" / "multiseed"
#: A committed run of stage 06 on a second base (frozen contextless text encoder; data/miniworld/candidates/).
CANDIDATE_DIR = COMMITTED_DIR.parent / "candidates" / "contextless"
_COPIED = ("world_scores.csv", "world_paired.csv", "world_effects.csv", "world_seed_scores.csv",
           "world_summary.json", "provenance.json")


def export_run(run_dir: str | Path, dest: str | Path, edit_success: pd.DataFrame | None = None,
               command: str = "") -> Path:
    """Keep a finished stage-06 run small enough to commit: its score, paired, effect and provenance files,
    the attention mass and flow summarised per (model, seed, layer), and its validity gates (measured from
    the run's own tables, the shipped base's record and stage 05's world edits when given)."""
    import json
    import shutil
    run, out = Path(run_dir), Path(dest)
    missing = [f for f in _COPIED if not (run / f).is_file()]
    if missing:
        raise ExperimentError(f"{run}: not a finished stage-06 run ({missing[0]} missing)")
    out.mkdir(parents=True, exist_ok=True)
    for f in _COPIED:
        atomic_save(out / f, lambda tmp, f=f: shutil.copyfile(run / f, tmp))
    mass = pd.read_csv(run / "world_mass.csv")
    by_seed = mass.groupby(["checkpoint", "train_seed", "layer"], dropna=False, sort=False)[["mass", "chance"]].mean()
    _save_csv(out / "world_mass_by_layer.csv", by_seed.reset_index())
    flow = pd.read_csv(run / "world_flow.csv")
    _save_csv(out / "world_flow_by_layer.csv", flow_by_layer(flow))
    summary = json.loads((run / "world_summary.json").read_text())
    base = summary.get("base", BASE_DIR)
    record = base_record(base)
    gates = validity_gates(record, mass, pd.read_csv(run / "world_scores.csv"),
                           pd.read_csv(run / "world_paired.csv"), edit_success)
    _save_csv(out / "world_gates.csv", gates)
    if Path(base).resolve() != Path(BASE_DIR).resolve():   # another base: keep its record
        atomic_write_json(out / "base.json", record)
    atomic_write_json(out / "export.json", {"run_dir": str(run), "command": command})
    return out


def load_committed(dest: str | Path = COMMITTED_DIR) -> dict[str, Any] | None:
    """The committed multi-seed run's tables and records (None when none is committed)."""
    import json
    d = Path(dest)
    if not (d / "export.json").is_file():
        return None
    tables: dict[str, Any] = {p.stem[len("world_"):]: pd.read_csv(p) for p in sorted(d.glob("world_*.csv"))}
    for name, file in (("summary", "world_summary.json"), ("provenance", "provenance.json"), ("export", "export.json")):
        tables[name] = json.loads((d / file).read_text())
    tables["base"] = json.loads((d / "base.json").read_text()) if (d / "base.json").is_file() else None
    tables["dir"] = repo_relative(d)
    return tables


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when inside it (the book never shows a machine's paths)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else p.name


def layer_ratios(mass: pd.DataFrame) -> pd.Series:
    """Noun mass ÷ chance indexed by (model, layer group): :func:`mass_by_layer`'s ratio, for lookups."""
    return mass_by_layer(mass).set_index(["checkpoint", "layer"])["ratio"]


def candidate_line(shipped: Mapping[str, Any], candidate: Mapping[str, Any]) -> str:
    """One computed sentence comparing a second base with the shipped one: grounding at each one's best
    trained group, MG3 and MG4 of the bases, and which gates each fails."""
    def best(c: Mapping[str, Any]) -> tuple[str, float]:
        by = layer_ratios(c["mass_by_layer"])["base"]
        by = by[by.index.isin(BASE_TRAIN_LAYERS)]
        return str(by.idxmax()), float(by.max())

    def mg(c: Mapping[str, Any], k: int) -> float:
        s = c["scores"]
        return float(s[(s["checkpoint"] == "base") & (s["k"] == k)]["mean"].iloc[0])

    (ls, rs), (lc, rc) = best(shipped), best(candidate)
    fails = failed_gates(candidate["gates"])
    return (f"With the caption kept out of EOS and padding, the base's best noun mass ÷ chance is {rc:.2f} × "
            f"({lc}) against {rs:.2f} × ({ls}) for the shipped base; MG3 {mg(candidate, 3):.1f} % against "
            f"{mg(shipped, 3):.1f} %, MG4 {mg(candidate, 4):.1f} % against {mg(shipped, 4):.1f} %. "
            f"It fails {len(fails)} of {len(candidate['gates'])} gates ({', '.join(fails) or 'none'}), the shipped "
            f"base {len(failed_gates(shipped['gates']))}; the shipped base stays the world's base.")


SENSITIVITY_DIR = COMMITTED_DIR.parent / "sensitivity"
#: The paper's token-loss scale (the training config's default), the unit of the sensitivity runs.
PAPER_TOKEN_LOSS_SCALE = TrainConfig.token_loss_scale


def load_sensitivity(root: str | Path = SENSITIVITY_DIR) -> list[dict[str, Any]]:
    """The committed loss-scale runs (one folder per scale, each a stage-06 export), by token-loss scale."""
    runs = [load_committed(d) for d in sorted(Path(root).glob("*")) if d.is_dir()]
    return sorted((r for r in runs if r is not None), key=lambda r: r["summary"]["token_loss_scale"])


def scale_table(runs: Sequence[Mapping[str, Any]], ks: Sequence[int] = PLAN["primary"],
                layers: Sequence[str] = ("up_4", "up_16")) -> pd.DataFrame:
    """Loss-scale sensitivity, one row per run: the scales, (a) − (b) at the primary MG-k with its CI and
    Holm-adjusted bootstrap p, and each arm's noun mass ÷ chance at ``layers``."""
    rows = []
    for r in runs:
        summ = r["summary"]
        row: dict[str, Any] = {"λ token": f"{summ['token_loss_scale']:.0e}", "γ pixel": f"{summ['pixel_loss_scale']:.0e}",
                               "× paper": f"{summ['token_loss_scale'] / PAPER_TOKEN_LOSS_SCALE:g}"}
        for t in tested(r["paired"], ks=ks, holm=True).itertuples():
            row[f"MG{int(t.k)} (a) − (b), points [95 % CI]"] = f"{t.diff:+.1f} [{t.ci_low:.1f}, {t.ci_high:.1f}]"
            row[f"MG{int(t.k)} p (Holm)"] = f"{t.p_bootstrap:.2f}" if t.p_bootstrap >= 0.01 else "< 0.01"
        by = layer_ratios(r["mass_by_layer"])
        for arm in ("tokencompose", "finetune"):
            row[f"{'(a)' if arm == 'tokencompose' else '(b)'} mass ÷ chance, " + "/".join(layers)] = " / ".join(
                f"{by.get((arm, lay), float('nan')):.2f}" for lay in layers)
        rows.append(row)
    return pd.DataFrame(rows)


def scale_line(runs: Sequence[Mapping[str, Any]], layer: str = "up_4") -> str:
    """One computed sentence: how (a)'s grounding and its primary-metric effect move with the loss scale."""
    if not runs:
        return "no loss-scale runs are committed."
    def times(r: Mapping[str, Any]) -> str:
        return f"×{r['summary']['token_loss_scale'] / PAPER_TOKEN_LOSS_SCALE:g}"

    parts = [f"{times(r)}: {layer_ratios(r['mass_by_layer']).get(('tokencompose', layer), float('nan')):.2f}"
             for r in runs]
    # the verdict's own reading of each run: better only (it beats), worse only (it is worse), or mixed
    dirs = [directions(tested(r["paired"], ks=PLAN["primary"], holm=True), PLAN["alpha"]) for r in runs]
    better = [r for r, (b, w) in zip(runs, dirs) if len(b) and w.empty]
    worse = [r for r, (b, w) in zip(runs, dirs) if len(w) and b.empty]
    at = ", ".join(times(r) for r in worse)
    return (f"(a)'s noun mass ÷ chance at {layer} by loss scale (× the paper's): {', '.join(parts)}; "
            f"(a) beats (b) at the primary MG3/MG4 (paired bootstrap, Holm, α {PLAN['alpha']}) in {len(better)} "
            f"of {len(runs)} scales and is worse in {len(worse)}{f' ({at})' if worse else ''}.")


def committed_line(committed: Mapping[str, Any]) -> str:
    """The provenance line of a committed run: commit, date, device, wall time, seeds and its command."""
    prov, summ = committed["provenance"], committed["summary"]
    sha = (prov.get("git", {}).get("sha") or "unknown")[:8] + ("+dirty" if prov.get("git", {}).get("dirty") else "")
    dev = ", ".join(prov.get("device", {}).get("gpus", [])) or f"CPU×{prov.get('device', {}).get('cpu_count')}"
    dur = prov.get("duration_s")
    seeds = ", ".join(str(x) for x in summ.get("fine_tune_seeds", []))
    return (f"Committed run ({committed.get('dir', 'data/miniworld/multiseed')}): stage 06, profile {prov.get('profile')}, commit {sha}, on "
            f"{dev}, {str(prov.get('started', ''))[:16].replace('T', ' ')} UTC"
            f"{f', {dur:.0f} s' if dur is not None else ''}; fine-tune seeds {seeds}; exported by "
            f"“{committed['export'].get('command', '')}”.")
