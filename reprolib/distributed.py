"""Processes of a launched run (``accelerate launch`` / ``torchrun``): which one am I, which share is mine.

Two facts shape this module:

* accelerate keeps the process layout in a process-wide singleton that the *first* ``PartialState()``
  fixes for good. Created without ``cpu=True`` on a machine without GPUs it reports one process even
  when ``torchrun`` started several, so every process would redo the whole job and write the same
  files. Stages therefore create it through :func:`process_state`, from the profile's device.
* work is split in *whole batches*: process ``p`` of ``P`` makes batches ``p, p + P, …`` of the list
  one process would make, so every image comes out of the same batch, hence with the same pixels,
  whatever the number of processes.

``accelerate launch --cpu --num_processes N`` starts N processes only through ``mpirun``
(``--mpirun_hostfile``); without it, it starts one. On a machine without GPUs, start the gloo
processes with ``accelerate launch --multi_gpu --num_processes N`` (torchrun underneath) and the
profile's device resolves to ``cpu``: :func:`process_state` then picks gloo (see ``book/howto.md``).
"""
from __future__ import annotations

from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def process_state(device: Any):
    """accelerate's ``PartialState`` for a run on `device` (``cpu`` selects gloo across processes)."""
    import torch
    from accelerate import PartialState
    return PartialState(cpu=torch.device(device).type == "cpu")


def batch_shard(items: Sequence[T], batch_size: int, num_processes: int, index: int) -> list[T]:
    """Items of this process: whole batches ``index, index + P, …`` of ``items`` cut in ``batch_size``.

    Concatenated and cut again in ``batch_size``, a process's share gives back exactly those batches
    (only the last batch of the whole list can be short), so its items are made in the batches one
    process would use.
    """
    if batch_size < 1 or num_processes < 1 or not 0 <= index < num_processes:
        raise ValueError(f"batch_shard: batch_size {batch_size}, process {index} of {num_processes}")
    starts = range(index * batch_size, len(items), batch_size * num_processes)
    return [it for s in starts for it in items[s:s + batch_size]]
