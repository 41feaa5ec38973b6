# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Stage 04 — samples and per-token cross-attention maps
#
# Samples of SD1.4 and TokenCompose from the same seeds (Figs 1–2), and the cross-attention map of each
# word of a prompt over the denoising steps (Figs 3–4), recorded while the image is generated
# (`reprolib.viz`). Maps are the conditional branch of classifier-free guidance, averaged over heads
# and over the layers of the chosen resolution (default: the 64×64 decoder maps, `up_64`; the tiny
# UNet's are `up_32`). A word split into several tokens is the sum of its tokens' maps, as in the
# original pixel loss.
#
# The figures are then turned into a measured claim: for each noun, the fraction of its attention
# mass inside its object's mask at each step, with bootstrap CIs over prompts. The mask of a generated
# image is not known in advance, so the protocol matters (see `reprolib.viz`):
#
# * **tiny profile, `sdedit`**: denoising starts from a miniature-world scene noised to
#   `sdedit_strength`, prompted with its own caption; the scene's masks are exact and the layout is
#   the scene's by construction. Scenes come from a seed stream of their own (held out from training).
# * **paper profile, `generated`**: images are generated from noise and each noun is segmented in the
#   final image with Grounded-SAM (stage 01's models). Nouns the segmenter does not find cannot be
#   scored; their count is reported.
#
# On the tiny profile the checkpoint `base` is the miniature world's base model and stage 02's
# fine-tuned UNet is added when its export exists (`use_trained`): the figures show a toy model in a toy
# world and check the pipeline; they say nothing about TokenCompose on SD1.4.

# %% tags=["parameters"]
profile = "tiny"
checkpoints = None          # aliases (sd14, tokencompose_a, tokencompose_b), hub ids or UNet folders
prompt_file = None          # YAML of figure prompts (default: data/attention_prompts.yaml)
seeds = None
timesteps = None            # denoising step indices shown in Figs 3–4 (negative: from the end)
layers = None               # layer groups, e.g. ["up_64"] (tiny: ["up_32"])
num_inference_steps = None
guidance_scale = None
mass_protocol = None        # "sdedit" or "generated"
mass_prompts = None
sdedit_strength = None
mask_mode = None            # "area" or "original"
n_bootstrap = None
batch_size = None
use_trained = None          # also show stage 02's fine-tuned UNet when its export exists (default)
overhead_repeats = None     # timed runs of the capture-overhead check (None: 1 on tiny, 3 otherwise)
overrides = None            # any other profile overrides {"section.field": value} (the runner passes these)
out_dir = None

# %%
from pathlib import Path

import pandas as pd
import torch
from IPython.display import display
from PIL import Image
from myst_nb import glue

from reprolib import viz
from reprolib.config import resolve_device, stage_profile
from reprolib.io import atomic_save, atomic_write_json, repo_path
from reprolib.models import load_checkpoint_components
from reprolib.report import glue_banner, glue_provenance, start_stage
from reprolib.tables import display_name, glue_table
from reprolib.viz import mass_display

params = dict(checkpoints=checkpoints, prompt_file=prompt_file, seeds=seeds, timesteps=timesteps, layers=layers,
              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, mass_protocol=mass_protocol,
              mass_prompts=mass_prompts, sdedit_strength=sdedit_strength, mask_mode=mask_mode,
              n_bootstrap=n_bootstrap, batch_size=batch_size, use_trained=use_trained,
              overhead_repeats=overhead_repeats)
P = stage_profile(profile, overrides, "attention", params)   # profile < runner overrides < parameters set here
prov = start_stage("04", P, {**params, "profile": profile, "out_dir": out_dir, "overrides": overrides})
A = P.attention
out = Path(out_dir or A.output_dir)
device = resolve_device(P)
figure_prompts = viz.load_prompts("tiny" if P.is_tiny else "paper", repo_path(A.prompt_file or viz.PROMPTS_FILE))
glue_banner("attn_", P)

ckpts = list(A.checkpoints)
trained = Path(P.train.output_dir) / "unet"
if A.use_trained and (trained / "config.json").is_file() and str(trained) not in ckpts:
    ckpts.append(str(trained))
labels = {c: display_name(c, P) for c in ckpts}          # what a reader sees, never a folder path
print("checkpoints:", labels)

# %%
prompt_table = pd.DataFrame([dict(figure=fig, prompt=sp.prompt, nouns=", ".join(sp.nouns), source=sp.source)
                             for fig, specs in figure_prompts.items() for sp in specs])
glue_table("attn_prompts", prompt_table.rename(columns=str.capitalize), wrap={"Prompt": 16, "Source": 14})

# %% [markdown]
# ## Generation with recording
#
# For each checkpoint: the sample prompts (one image per seed), the Figs 3–4 prompt, and the prompt set
# of the mass companion. Every checkpoint starts from the same noise (a CPU generator per image seed).

# %%
fig34 = figure_prompts["fig3_4"][0]
samples = {fig: figure_prompts.get(fig, []) for fig in ("fig1", "fig2")}
if A.mass_protocol == "sdedit":
    from reprolib.miniworld import sample_scenes
    scenes = sample_scenes(A.mass_prompts, seed=[4, P.seed], size=P.model.resolution)
elif A.mass_protocol == "generated":
    from reprolib.gsam import load_from_profile
    mass_specs = figure_prompts["mass"][: A.mass_prompts]
    gsam_model = load_from_profile(P.data, device, seed=P.model.seed)     # stage 01's backend and weights
    segment = viz.gsam_segmenter(gsam_model)
else:
    raise ValueError(f"attention.mass_protocol must be 'sdedit' or 'generated', got {A.mass_protocol!r}")

gen = dict(layers=A.layers, num_inference_steps=A.num_inference_steps, guidance_scale=A.guidance_scale,
           height=P.model.resolution, width=P.model.resolution)
jobs = list(dict.fromkeys([(sp.prompt, s) for specs in samples.values() for sp in specs for s in A.seeds]
                          + [(fig34.prompt, A.seeds[0])]))     # each (prompt, seed) generated once
sample_images, records34, tables, missing = {}, {}, [], []
overhead = None
for ckpt in ckpts:
    comps = load_checkpoint_components(ckpt, base=P.model.pretrained, seed=P.model.seed).to(device)
    label, tokenizer = labels[ckpt], comps.tokenizer
    recs = viz.generate_with_attention(comps, [p for p, _ in jobs], [s for _, s in jobs], **gen,
                                       batch_size=A.batch_size, checkpoint=label)
    by_job = dict(zip(jobs, recs))
    for fig, specs in samples.items():
        sample_images.setdefault(fig, {})[label] = [[by_job[sp.prompt, s].image for s in A.seeds] for sp in specs]
        for i, sp in enumerate(specs):
            for s in A.seeds:
                atomic_save(out / "samples" / viz.file_label(label) / f"{fig}_{i}_s{s}.png",
                            lambda p, im=by_job[sp.prompt, s].image: Image.fromarray(im).save(p, format="png"))
    records34[label] = by_job[fig34.prompt, A.seeds[0]]
    del recs, by_job                                           # sample maps are not needed any more
    if A.mass_protocol == "sdedit":
        t, _ = viz.sdedit_mass(comps, scenes, A.seeds[0], A.layers, A.num_inference_steps, A.guidance_scale,
                               A.sdedit_strength, checkpoint=label, mode=A.mask_mode, batch_size=A.batch_size)
    else:
        t, _, miss = viz.generated_mass(comps, mass_specs, A.seeds, segment, A.layers, A.num_inference_steps,
                                        A.guidance_scale, checkpoint=label, mode=A.mask_mode,
                                        batch_size=A.batch_size)
        missing += [dict(checkpoint=label, prompt=mass_specs[i].prompt, seed=s, noun=n) for i, s, n in miss]
    tables.append(t)
    if ckpt == ckpts[0]:
        overhead = viz.capture_overhead(comps, fig34.prompt, A.layers, A.num_inference_steps, A.guidance_scale,
                                        repeats=A.overhead_repeats or (1 if P.is_tiny else 3),
                                        height=P.model.resolution, width=P.model.resolution,
                                        warmup=False)           # the model has just generated: warm
    del comps
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
mass = pd.concat(tables, ignore_index=True)
atomic_save(out / "mass.csv", lambda p: mass.to_csv(p, index=False))
print(f"{len(mass)} mass rows; {len(missing)} nouns not found by the segmenter")

# %% [markdown]
# ## Figs 1–2: samples, same seeds for every checkpoint

# %%
for fig_name, key in (("fig1", "attn_fig1"), ("fig2", "attn_fig2")):
    specs = samples[fig_name]
    if not specs:
        continue
    f = viz.sample_grid(sample_images[fig_name], [sp.prompt for sp in specs], A.seeds)
    atomic_save(out / f"{fig_name}.png", lambda p, f=f: f.savefig(p, format="png", dpi=150, bbox_inches="tight"))
    glue(key, f, display=False)

# %% [markdown]
# ## Figs 3–4: per-word maps over the denoising steps
#
# Rows are the words of the prompt (nouns in bold red), columns the chosen steps, checkpoints side by
# side, each checkpoint's final image in its own column; one colour scale per word (row), with its bar.

# %%
words = viz.prompt_words(tokenizer, fig34.prompt, fig34.nouns)
for group in A.layers:
    f = viz.attention_over_time(records34, words, group, A.timesteps, overlay=False, norm="row")
    atomic_save(out / f"fig3_4_{group}.png", lambda p, f=f: f.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    glue("attn_fig3_4" if group == A.layers[0] else f"attn_fig3_4_{group}", f, display=False)

# %% [markdown]
# ## Attention mass inside each noun's mask
#
# Mean over prompts (each prompt first averaged over its nouns and seeds), 95 % percentile-bootstrap CI
# over prompts; the dashed line is the mask's area fraction, what attention spread evenly would score.
# Step 0 is the first recorded step: with the `sdedit` protocol it is already at `sdedit_strength`·T.

# %%
summary = viz.summarize_mass(mass, by=("checkpoint", "layer", "step"), n_boot=A.n_bootstrap, seed=P.seed)
by_noun = viz.summarize_mass(mass, by=("checkpoint", "noun", "step"), n_boot=A.n_bootstrap, seed=P.seed)
overall = viz.summarize_mass(mass, by=("checkpoint", "layer"), n_boot=A.n_bootstrap, seed=P.seed)
palette = viz.checkpoint_palette(list(labels.values()))
f_mass = viz.mass_figure(summary, facet="layer", palette=palette)
f_noun = viz.mass_figure(by_noun, facet="noun", palette=palette)
for name, f in (("mass", f_mass), ("mass_by_noun", f_noun)):
    atomic_save(out / f"{name}.png", lambda p, f=f: f.savefig(p, format="png", dpi=150, bbox_inches="tight"))
    glue(f"attn_{name}", f, display=False)
atomic_save(out / "mass_summary.csv", lambda p: summary.to_csv(p, index=False))
glue_table("attn_mass_table", mass_display(overall), title="Attention mass inside the mask, mean over steps")

# %% [markdown]
# Paired difference (each other checkpoint minus the first) on the same prompts, seeds and starting
# noise, per step; a CI excluding 0 is a measured difference in grounding.

# %%
base = labels[ckpts[0]]
diffs = pd.concat([viz.paired_difference(mass, base, labels[c], by=("layer", "step"), n_boot=A.n_bootstrap,
                                         seed=P.seed).assign(comparison=f"{labels[c]} − {base}")
                   for c in ckpts[1:]], ignore_index=True) if len(ckpts) > 1 else pd.DataFrame()
atomic_save(out / "mass_diff.csv", lambda p: diffs.to_csv(p, index=False))
glue_table("attn_mass_diff", mass_display(diffs) if len(diffs) else diffs,
           title="Paired differences of attention mass (each checkpoint − the first)")
if missing:
    glue_table("attn_missing", pd.DataFrame(missing), display=False)

# %% [markdown]
# ## Capture overhead
#
# Median wall time of plain generation (fused attention, nothing kept) vs generation with recording,
# for the Figs 3–4 prompt on this device; the budget is 20 %. `benchmarks/attention_overhead.py`
# measures the same with more repeats.

# %%
ov = pd.DataFrame([{k: v for k, v in overhead.items() if not k.endswith("_all")}])
atomic_write_json(out / "overhead.json", overhead)
ov["layers"] = ov["layers"].map(lambda v: ", ".join(v) if isinstance(v, (list, tuple)) else v)
glue_table("attn_overhead", ov, decimals=3, title="Cost of recording",
           labels={"device": "Device", "layers": "Layers recorded", "num_inference_steps": "Steps",
                   "repeats": "Repeats", "plain_s": "Plain generation (s)", "capture_s": "With recording (s)",
                   "overhead": "Overhead (fraction)", "within_budget": "Within the +20 % budget"})

# %%
glue_provenance("attn_", prov, out)
