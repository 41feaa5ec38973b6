import hashlib
import os

import pytest

from reprolib.config import ConfigError, Profile, available_profiles, load_profile
from reprolib.io import ChecksumError, atomic_write_text, download, sha256_file


def test_profiles_exist_and_tiny_is_default():
    assert {"tiny", "paper"} <= set(available_profiles())
    p = load_profile()
    assert p.name == "tiny" and p.is_tiny


def test_paper_profile_holds_original_hyperparameters():
    p = load_profile("paper")
    assert p.model.pretrained == "CompVis/stable-diffusion-v1-4" and p.model.resolution == 512
    t = p.train
    assert (t.token_loss_scale, t.pixel_loss_scale, t.lr) == (1e-3, 5e-5, 5e-6)
    assert (t.batch_size, t.grad_accum, t.steps, t.lr_scheduler, t.max_grad_norm) == (1, 4, 24500, "constant", 1.0)
    assert t.train_layers == ["mid_8", "up_16", "up_32", "up_64"]
    m = p.multigen
    assert m.detector_id == "google/owlv2-large-patch14-ensemble"
    assert (m.images_per_prompt, m.detection_threshold) == (10, 0.1)
    assert not p.is_tiny


def test_overrides_dotted_and_bare_with_types():
    p = load_profile("paper", {"train.steps": "10", "images_per_prompt": 3, "train_layers": "mid_8,up_64",
                               "lr": None})
    assert p.train.steps == 10 and isinstance(p.train.steps, int)
    assert p.multigen.images_per_prompt == 3
    assert p.train.train_layers == ["mid_8", "up_64"]
    assert p.train.lr == 5e-6  # None keeps the profile's value


@pytest.mark.parametrize("key,value,msg", [
    ("train.nope", 1, "unknown profile field: train.nope"),
    ("bogus", 1, "unknown profile field: bogus"),
    ("output_dir", "x", "ambiguous profile field 'output_dir'"),
    ("train.steps", "ten", "train.steps: expected an integer"),
    ("train.faithful", "maybe", "train.faithful: expected true/false"),
])
def test_bad_overrides_name_the_culprit(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        load_profile("tiny", {key: value})


def test_unknown_profile_lists_available():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*available: .*paper"):
        load_profile("nope")


def test_profile_roundtrip_is_lossless():
    from reprolib.config import from_dict
    p = load_profile("paper")
    assert from_dict(p.to_dict()) == p
    assert isinstance(Profile().train.train_layers, list)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_atomic_write_keeps_old_content_when_writer_fails(tmp_path):
    from reprolib.io import atomic_save
    target = tmp_path / "x.txt"
    target.write_text("old")

    def boom(p):
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_save(target, boom)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["x.txt"]


def test_download_verifies_checksum_and_skips_existing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    good = hashlib.sha256(b"payload").hexdigest()
    dest = download(src.as_uri(), tmp_path / "out" / "f.bin", good, progress=False)
    assert sha256_file(dest) == good
    src.write_bytes(b"changed")           # an existing verified copy is not fetched again
    assert download(src.as_uri(), dest, good, progress=False).read_bytes() == b"payload"
    with pytest.raises(ChecksumError, match="does not match sha256"):
        download(src.as_uri(), tmp_path / "other.bin", good, progress=False)
    assert not (tmp_path / "other.bin").exists()


def test_download_missing_url_names_it(tmp_path):
    with pytest.raises(OSError, match="download failed: file:///nonexistent"):
        download("file:///nonexistent/x.json", tmp_path / "x.json", progress=False)


def test_stale_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    """A SIGKILLed writer leaves its ``.name.pid<pid>@<host>.*.tmp``; only a dead writer's, on this machine,
    is removed (a live writer, or a writer on another machine sharing the folder, keeps its file)."""
    from reprolib import io as rio
    rio.atomic_write_text(tmp_path / "a.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    names = {"dead": f".b.png.pid999999999@{rio.HOST}.ab_1.tmp", "live": f".c.png.pid{os.getpid()}@{rio.HOST}.x.tmp",
             "other host": ".d.png.pid999999999@elsewhere.x.tmp", "not ours": ".e.png.tmp"}
    (tmp_path / "sub").mkdir()
    for n in names.values():
        (tmp_path / "sub" / n).write_text("half")
    assert rio.remove_stale_temps(tmp_path, recursive=False) == 0
    assert rio.remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(v for k, v in names.items() if k != "dead")
