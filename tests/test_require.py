"""The skips of tests that need something outside the repository become failures when CI requires it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _pytest(*args, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPROLIB_REQUIRE_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=TESTS.parent, env={**environ, **env}, capture_output=True, text=True, timeout=300)


#: one test that reads the shared folder itself, one through conftest's ``shared_dir`` fixture
TESTS_ON_SHARED = ["tests/test_reported.py::test_shipped_copies_are_the_hand_checked_tables_with_their_source",
                   "tests/test_data.py::test_coco_sources_match_the_shared_checksums"]


def test_missing_shared_data_skips_or_fails_when_required(tmp_path):
    missing = str(tmp_path / "no-shared-here")
    r = _pytest(*TESTS_ON_SHARED, REPROLIB_SHARED=missing)
    assert r.returncode == 0 and "3 skipped" in r.stdout and "failed" not in r.stdout, r.stdout
    r = _pytest(*TESTS_ON_SHARED, REPROLIB_SHARED=missing, REPROLIB_REQUIRE_SHARED="1")
    assert r.returncode == 1 and "REPROLIB_REQUIRE_SHARED=1" in r.stdout and missing in r.stdout, r.stdout
    assert "2 failed, 1 error" in r.stdout and "skipped" not in r.stdout, r.stdout   # the fixture's is an error


def test_ci_requires_the_shared_data_the_book_and_the_gsam_packages():
    line = next(x for x in (TESTS.parent / ".ci" / "run").read_text().splitlines() if "pytest" in x and
                not x.startswith("#"))
    for what in ("BOOK", "SHARED", "GSAM"):
        assert f"REPROLIB_REQUIRE_{what}=1" in line, line
