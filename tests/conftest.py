"""Shared fixtures: the real SD1.4 tokenizer, the real shared data folder, tiny models."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from _require import SHARED_DATA, need_shared

# Toy-sized kernels: one intra-op thread is faster than two, and far faster when the CPU is shared
# (measured: the tiny pipeline ran 12x slower with 2 threads beside one other busy process).
# REPROLIB_TEST_THREADS=2 runs the suite with two: float comparisons must hold for any thread count.
THREADS = int(os.environ.get("REPROLIB_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)

SHARED = SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from reprolib.models import clip_tokenizer
    return clip_tokenizer()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    need_shared(SHARED / "metadata.jsonl")         # a failure in CI (REPROLIB_REQUIRE_SHARED=1)
    return SHARED


@pytest.fixture(scope="session")
def metadata_records(shared_dir) -> list[dict]:
    with open(shared_dir / "metadata.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture()
def tiny_unet():
    from reprolib.models import tiny_unet as make
    return make(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)          # a stage's start_stage() applies its profile's cpu_threads
