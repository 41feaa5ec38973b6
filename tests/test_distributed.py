"""Stages 02 and 03 on two launched processes (gloo, CPU) give what one process gives.

The pure pieces (how a step's samples and MultiGen's batches are dealt out) are checked directly; the
slow tests run the real entry points, ``reprolib.train`` and ``reprolib.multigen``, once alone (in
this process, as ``python -m`` would) and under ``accelerate launch --multi_gpu --num_processes 2``
(torchrun; on a machine without GPUs the profile's device is ``cpu`` and the processes talk gloo:
``--cpu`` alone starts one process unless given an MPI hostfile), on the miniature world's base
model, and compare the logs, the weights and the images.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _floats import assert_close_scaled
from reprolib import train as T
from reprolib.distributed import batch_shard

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- pure pieces

@pytest.mark.parametrize("n,eff,micro_of,tail", [(5, 4, "fast", "partial"), (6, 4, "faithful", "partial"),
                                                  (9, 4, "fast", "drop"), (7, 8, "faithful", "partial"),
                                                  (13, 6, "fast", "partial")])
def test_step_shards_use_every_sample_of_a_step_once_across_processes(n, eff, micro_of, tail):
    """Union over processes of each step's real keys = that step of the one-process order, each once."""
    order = list(T.EpochSampler(n, seed=1, effective_batch=eff, tail=tail))
    steps = [order[s:s + eff] for s in range(0, len(order), eff)]
    for P in [p for p in (1, 2, 3, 4) if eff % p == 0]:
        micro = eff // P if micro_of == "fast" else 1
        per_proc = []
        for rank in range(P):
            sh = T.StepShards(T.EpochSampler(n, seed=1, effective_batch=eff, tail=tail), micro, P, rank)
            batches = list(sh)
            assert len(batches) == len(sh) and sh.steps_per_epoch == len(steps)
            assert all(len(b) <= micro for b in batches)
            per_proc.append(batches)
        full = len(order) // eff                           # steps before a short tail, if any
        for s, step in enumerate(steps):
            got = []
            for rank in range(P):
                k = eff // P // micro                          # micro-batches of a full step
                mine = per_proc[rank][s * k:(s + 1) * k] if s < full else per_proc[rank][full * k:]
                real = [key[:2] for b in mine for key in b if key[2] == 1.0]
                fake = [key for b in mine for key in b if key[2] == 0.0]
                assert bool(fake) == (not real), "a placeholder only stands in for an empty shard"
                assert all(key[:2] == step[0] for key in fake)
                got += real
            assert got == step, f"{P} processes, step {s}"


def test_one_process_step_shards_are_plain_dataloader_batches():
    order = T.EpochSampler(10, seed=0, effective_batch=4)
    plain = torch.utils.data.DataLoader(list(order), batch_size=4, collate_fn=list)
    assert [[k[:2] for k in b] for b in T.StepShards(order, 4)] == [list(map(tuple, b)) for b in plain]


@pytest.mark.parametrize("n,bs,P", [(6, 4, 2), (20, 8, 3), (3, 4, 2), (17, 1, 4), (0, 2, 2)])
def test_batch_shard_gives_each_item_once_in_the_one_process_batches(n, bs, P):
    items = list(range(n))
    one = [items[s:s + bs] for s in range(0, n, bs)]
    shards = [batch_shard(items, bs, P, r) for r in range(P)]
    assert sorted(i for sh in shards for i in sh) == items
    for sh in shards:
        assert all(b in one for b in (sh[s:s + bs] for s in range(0, len(sh), bs)))
    with pytest.raises(ValueError, match="process 2 of 2"):
        batch_shard(items, bs, 2, 2)


# --------------------------------------------------------------------------- launched runs

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(module: str, args: list[str], processes: int, capsys, timeout: int = 300) -> str:
    """``python -m module args`` on one process (here, in-process) or under ``accelerate launch``; its output."""
    if processes == 1:
        import importlib
        capsys.readouterr()
        importlib.import_module(module).main(args)
        return capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", module, *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    (f,) = folder.glob("*.safetensors")
    return load_file(str(f))


def _relative_update_gap(a, b, start) -> float:
    """‖(a − start) − (b − start)‖ / ‖b − start‖ over the whole model: how far apart two updates are."""
    diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in start])
    upd = torch.cat([(b[k].double() - start[k].double()).flatten() for k in start])
    return float(diff.norm() / upd.norm())


@pytest.mark.slow
def test_training_on_two_processes_matches_one_process(tmp_path, capsys):
    """Same effective batch 4 (fast: 2 per process; faithful: 1 × accumulation 2 per process).

    Five examples make every epoch end with a one-sample step, so the second process holds no sample
    of it (the weight-0 placeholder) and the log's means must be taken over all processes' samples.
    """
    common = ["device=cpu", f"data.root={tmp_path / 'data'}", "data.n_images=5", "train.steps=3",
              "train.checkpointing_steps=2", "train.lr=1e-4", "train.num_workers=0"]
    runs = {"one": (1, []), "two": (2, []), "two_faithful": (2, ["train.faithful=true"])}
    for name, (procs, extra) in runs.items():
        out = _launch("reprolib.train", ["--out", str(tmp_path / name), *common, *extra], procs, capsys)
        assert f"3 of 3 steps on {procs} process(es), 9 images" in out
    logs = {name: __import__("pandas").read_csv(tmp_path / name / "log.csv") for name in runs}
    ref = logs["one"]
    assert ref["samples"].tolist() == [4, 1, 4]
    start = _weights(ROOT / "data" / "miniworld" / "base" / "unet")
    w_ref = _weights(tmp_path / "one" / "unet")
    assert sum(not torch.equal(w_ref[k], start[k]) for k in start) > len(start) // 2, "training moved the weights"
    for name in ("two", "two_faithful"):
        log = logs[name]
        assert log["samples"].tolist() == [4, 1, 4], name
        for col in ("loss", "denoise", "token", "pixel", "grad_norm"):
            assert_close_scaled(log[col].to_numpy(), ref[col].to_numpy(), rtol=1e-4, msg=f"{name} {col}")
        w = _weights(tmp_path / name / "unet")
        for k in w_ref:
            assert_close_scaled(w[k], w_ref[k], rtol=1e-4, msg=f"{name} {k}")
        gap = _relative_update_gap(w, w_ref, start)
        assert gap < 1e-3, f"{name}: the 3 updates differ by {gap:.2e} of their size"
        summary = json.loads((tmp_path / name / "run_summary.json").read_text())
        assert summary["plan"]["num_processes"] == 2 and summary["images_this_call"] == 9
        assert sorted(p.name for p in (tmp_path / name).glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


@pytest.mark.slow
def test_multigen_on_two_processes_makes_each_image_once_and_identical(tmp_path, capsys):
    """3 prompts × 2 images in batches of 4: process 0 makes batch 0 (4 images), process 1 batch 1 (2)."""
    common = ["device=cpu", "multigen.n_prompts=3", "multigen.images_per_prompt=2", "multigen.batch_size=4",
              "multigen.num_inference_steps=3"]
    made = {}
    for name, procs in (("one", 1), ("two", 2)):
        out = _launch("reprolib.multigen", ["--stage", "generate", f"multigen.output_dir={tmp_path / name}",
                                            *common], procs, capsys)
        lines = [ln.split(":", 1) for ln in out.splitlines() if ln.startswith("generated by process")]
        made[name] = {head: json.loads(body) for head, body in lines}
    assert list(made["one"]) == ["generated by process 0 of 1"]
    done = {head: sum(r["done"] for r in rows) for head, rows in made["two"].items()}
    assert done == {"generated by process 0 of 2": 4, "generated by process 1 of 2": 2}
    from PIL import Image
    expected = sorted(f"{p}_{j}.png" for p in range(3) for j in range(2))
    folders = {name: tmp_path / name / "images" / "miniworld" / "base" for name in made}
    for name, folder in folders.items():
        assert sorted(f.name for f in folder.glob("*.png")) == expected, name
    for f in expected:
        a, b = (np.asarray(Image.open(folders[n] / f)) for n in ("one", "two"))
        assert np.array_equal(a, b), f"{f} differs between one and two processes"
