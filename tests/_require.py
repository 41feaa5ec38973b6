"""Skips that CI turns into failures, so that a missing input cannot hide a regression.

A test that needs something outside the repository skips on a developer's machine that lacks it, and
fails where the environment says it is required: ``REPROLIB_REQUIRE_SHARED=1`` (the original project's
data and the report's tables in the shared folder), ``REPROLIB_REQUIRE_BOOK=1`` (a built book and a
browser), ``REPROLIB_REQUIRE_GSAM=1`` (the official Grounded-SAM packages). ``.ci/run`` sets all three.
The shared folder is ``../shared`` beside the repository, or ``REPROLIB_SHARED``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_ROOT = Path(os.environ.get("REPROLIB_SHARED") or Path(__file__).resolve().parents[2] / "shared")
SHARED_DATA = SHARED_ROOT / "data" / "tokencompose"      # the original project's data
SHARED_REPORT = SHARED_ROOT / "data" / "report"           # the report's tables


def required(what: str) -> bool:
    """Whether ``REPROLIB_REQUIRE_<WHAT>=1`` is set."""
    return os.environ.get(f"REPROLIB_REQUIRE_{what.upper()}") == "1"


def need(cond: bool, why: str, what: str) -> None:
    """Skip with ``why`` unless ``cond``; fail instead when ``what`` is required."""
    if not cond:
        if required(what):
            pytest.fail(f"{why} (REPROLIB_REQUIRE_{what.upper()}=1)")
        pytest.skip(why)


def need_shared(path: Path) -> Path:
    """``path`` inside the shared folder, or a skip (a failure with ``REPROLIB_REQUIRE_SHARED=1``)."""
    need(path.exists(), f"shared data not found at {path}", "shared")
    return path
