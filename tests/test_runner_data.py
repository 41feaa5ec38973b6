"""A stage's shipped data is part of its cache key: re-exporting committed results re-runs the stage."""
from pathlib import Path

from reprolib import runner


def test_data_digest_follows_names_and_bytes(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "a.csv").write_text("x,y\n1,2\n")
    first = runner.data_digest(["d"], root=tmp_path)
    assert runner.data_digest(["d"], root=tmp_path) == first
    (tmp_path / "d" / "sub" / "a.csv").write_text("x,y\n1,3\n")
    changed = runner.data_digest(["d"], root=tmp_path)
    assert changed != first
    (tmp_path / "d" / "sub" / "a.csv").rename(tmp_path / "d" / "sub" / "b.csv")
    assert runner.data_digest(["d"], root=tmp_path) not in (first, changed)
    assert runner.data_digest(["missing"], root=tmp_path) == runner.data_digest([], root=tmp_path)


def test_stage_code_adds_the_data_of_stages_that_read_shipped_data():
    six = runner.Stage("06", "06_miniworld", Path("notebooks/06_miniworld.ipynb"))
    one = runner.Stage("01", "01_preprocess", Path("notebooks/01_preprocess.ipynb"))
    assert "data/miniworld" in runner.DATA_DEPS["06"] and "data/report" in runner.DATA_DEPS["07"]
    assert runner.stage_code(one, "c") == "c"
    assert runner.stage_code(six, "c") == "c" + runner.data_digest(runner.DATA_DEPS["06"])
