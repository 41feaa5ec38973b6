import json

import torch

from reprolib.config import load_profile
from reprolib.report import (TINY_BANNER, TINY_WORLD_BANNER, banner_html, finish_stage, provenance_table,
                             start_stage)


def test_provenance_records_what_the_book_shows(tmp_path):
    P = load_profile("tiny", {"train.steps": 3})
    prov = start_stage("02", P, {"steps": 3})
    assert torch.get_num_threads() == P.cpu_threads == 1          # the profile's runtime is applied
    path = finish_stage(prov, tmp_path)
    rec = json.loads(path.read_text())
    assert rec["stage"] == "02" and rec["profile"] == "tiny" and rec["parameters"] == {"steps": 3}
    assert rec["profile_values"]["train"]["steps"] == 3
    assert torch.__version__.startswith(rec["packages"]["torch"])
    assert rec["duration_s"] >= 0 and rec["ended"] >= rec["started"]
    assert set(rec["git"]) == {"sha", "dirty"} and rec["runtime"] == {"torch_threads": 1}
    line = prov.short()
    assert line.startswith("Produced by stage 02, profile tiny, commit ") and "CPU×" in line
    table = provenance_table(prov)
    assert table.loc["profile", "value"] == "tiny" and "package diffusers" in table.index


def test_start_stage_applies_the_profiles_thread_count_over_what_was_set_before():
    """The profile's runtime is applied by the stage itself, not inherited from the caller (conftest sets 1
    thread for the suite; here the process starts at another count first, each time)."""
    before = torch.get_num_threads()
    try:
        for preset, threads in ((3, 1), (1, 2), (2, 3)):
            torch.set_num_threads(preset)
            P = load_profile("tiny", {"cpu_threads": threads})
            prov = start_stage("03", P)
            assert torch.get_num_threads() == threads and prov.runtime == {"torch_threads": threads}
        torch.set_num_threads(2)
        start_stage("03", load_profile("paper"))          # no setting (paper profile): the caller's count is kept
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_banner_says_what_tiny_numbers_are():
    world = banner_html(load_profile("tiny"))                     # the default: the miniature world
    assert TINY_WORLD_BANNER in world and "toy world" in world and "not results about Stable Diffusion" in world
    random = banner_html(load_profile("tiny", {"model.pretrained": "tiny"}))
    assert TINY_BANNER in random and "not scientific results" in random
    paper = banner_html(load_profile("paper"))
    assert "CompVis/stable-diffusion-v1-4" in paper and "not scientific" not in paper
