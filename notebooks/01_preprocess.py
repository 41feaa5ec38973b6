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
# # Stage 01 — training data
#
# The training records of TokenCompose: images, captions, the nouns of each caption, and a segmentation
# mask per noun. The `paper` profile downloads the authors' 4,526 COCO records and their images and
# regenerates the masks with Grounded-SAM (the authors' masks can no longer be downloaded). The `tiny`
# profile writes miniature-world scenes (`reprolib.miniworld`) with exact masks and runs Grounded-SAM, with
# small random models, on a couple of its images to exercise that code path; those masks are not meaningful.

# %% tags=["parameters"]
profile = "tiny"
source = None            # "synthetic" or "coco"
root = None              # where records are written (default: the profile's data.root)
n_images = None          # synthetic records
limit = None             # coco records to download and segment (None: all 4,526)
gsam_limit = None        # images sent through Grounded-SAM
gsam_batch_size = None
box_threshold = None
text_threshold = None
segmenter = None         # "sam" or "sam_hq"
detector_id = None
sam_id = None
pos_tagger = None        # noun tagger ("flair/pos-english" on paper: needs flair); "none" skips the noun check
original_masks = None    # folder holding the authors' seg/ masks, for the IoU check
overrides = None         # any other profile overrides {"section.field": value} (the runner passes these)
out_dir = None

# %%
from pathlib import Path

from myst_nb import glue

from reprolib import data, gsam
from reprolib.config import resolve_device, stage_profile
from reprolib.report import glue_banner, glue_provenance, start_stage
from reprolib.tables import glue_table

params = dict(source=source, root=root, n_images=n_images, limit=limit, gsam_limit=gsam_limit,
              gsam_batch_size=gsam_batch_size, box_threshold=box_threshold, text_threshold=text_threshold,
              segmenter=segmenter, detector_id=detector_id, sam_id=sam_id, pos_tagger=pos_tagger,
              original_masks=original_masks)
P = stage_profile(profile, overrides, "data", params)    # profile < runner overrides < parameters set here
prov = start_stage("01", P, {**params, "profile": profile, "out_dir": out_dir, "overrides": overrides})
out = Path(out_dir or P.data.root)
device = resolve_device(P)
tagger = data.make_tagger(P.data.pos_tagger)           # before any download: a missing tagger fails here, in one line
glue_banner("data_", P)

# %% [markdown]
# ## Records and images

# %%
if P.data.source == "synthetic":
    train_records = data.training_records(P, out)
    rows = data.read_metadata(out / data.METADATA)
    gsam_root = out / "gsam"             # the exact masks stay the training masks
elif P.data.source == "coco":
    rows = data.read_metadata(data.fetch_metadata(out / "original_metadata.jsonl"))
    rows = rows[: P.data.limit] if P.data.limit is not None else rows
    print(data.download_images([r["file_name"] for r in rows], out))
    gsam_root = out                      # the regenerated masks are the training masks
else:
    raise ValueError(f"data.source must be 'synthetic' or 'coco', got {P.data.source!r}")
print(f"{len(rows)} records in {out}")

# %% [markdown]
# ## Nouns
#
# Every record already lists its nouns. Re-extracting them from the captions with the profile's tagger
# (the paper profile: flair's `flair/pos-english`, as the authors) measures how closely that step is
# reproduced.

# %%
if tagger is None:
    print(f"noun check skipped: data.pos_tagger is {P.data.pos_tagger!r}")
else:
    nouns = data.noun_agreement(rows, tagger)
    nouns_summary = data.noun_agreement_summary(nouns)
    glue_table("data_nouns", nouns_summary)

# %% [markdown]
# ## Grounded-SAM masks
#
# `data.gsam_backend` picks the code: `official` runs the authors' packages (`groundingdino-py`,
# `segment-anything-hq`) on their checkpoint files, `transformers` the transformers ports. Which code and which
# weights made the masks is recorded in the stage's provenance and shown in the book.

# %%
model = gsam.load_from_profile(P.data, device=device, seed=P.model.seed)
masks_by = gsam.identity_table(model)
prov.runtime["gsam"] = model.identity
glue("data_gsam_identity", masks_by.style.hide(axis="index"), display=False)
display(masks_by)
glue("data_gsam_backend", model.identity.get("backend", "–"), display=False)
result = gsam.annotate(rows, out, gsam_root, model, batch_size=P.data.gsam_batch_size, limit=P.data.gsam_limit)
gsam_records = data.load_records(gsam_root, image_dir=out, check_files=True)
if P.data.source == "coco":
    train_records = gsam_records
print(f"Grounded-SAM: {result.processed} images processed, {result.skipped} already done")

# %% [markdown]
# ## QA

# %%
summary = gsam.summary_table({"training records": train_records, "Grounded-SAM output": gsam_records})
glue_table("data_summary", summary)

# %%
coverage = gsam.coverage_table(gsam_records, top=20)
glue_table("data_coverage", coverage)

# %%
fig = gsam.qa_figure(train_records, n=8, ncols=4, title="training records")
glue("data_qa_figure", fig, display=False)

# %%
fig_gsam = gsam.qa_figure(gsam_records, n=8, ncols=4, title="Grounded-SAM masks")
glue("data_gsam_figure", fig_gsam, display=False)

# %% [markdown]
# Regenerated vs reference masks: on the tiny profile the reference is the exact synthetic masks; on the
# paper profile it is the authors' metadata (which nouns they found a mask for) and, when `original_masks`
# points at their `seg/` folder, their masks (IoU).

# %%
if P.data.source == "synthetic":
    reference, with_iou = train_records, True
else:
    ref_root = Path(P.data.original_masks) if P.data.original_masks else out
    reference = [data.row_to_record(r, ref_root, out) for r in rows]
    with_iou = P.data.original_masks is not None
agreement = gsam.iou_summary(gsam.mask_iou_table(gsam_records, reference, iou=with_iou))
glue_table("data_agreement", agreement)

# %%
glue_provenance("data_", prov, out)
