"""The random number streams of a training run, and their place in a checkpoint.

Every process draws the initial weights from the seed alone, so all start from the same
model. Dropout masks then come from a stream of each process's own: rank 0 goes on with
the seed's stream (a single process runs as it always did), and rank r > 0 switches to
one seeded from the seed and r, so that corresponding rows on different processes are
not regularised by the same masks.

A checkpoint holds every process's generators, the CPU's and the training GPU's, under
`processes` (rank by rank). A run resumed on as many processes continues every stream
exactly; on another number, rank 0 continues its own. A process with no stream to
continue (another number of processes, or a CPU run resumed on a GPU) gets a fresh one
seeded from the seed, its rank and the step, so that it never replays the masks of the
first steps.
"""

from __future__ import annotations

import torch

from charrnn.training.distributed import gather_rows, rank, world_size


def stream_seed(seed: int, process: int, step: int = 0) -> int:
    """A seed of its own for each (seed, process, step): distinct for distinct triples in
    any realistic run, and within the 64 bits torch.manual_seed takes."""
    return ((seed * 1_000_003 + process) * 1_000_003 + step) % (1 << 63)


def split(seed: int) -> None:
    """Give this process its own dropout stream (rank 0 keeps the seed's). Call it after
    the weights are drawn."""
    if rank() > 0:
        torch.manual_seed(stream_seed(seed, rank()))


def gather(device: torch.device) -> dict:
    """Every process's generator states, for a checkpoint (a collective: every process must
    call it; only rank 0's return value is complete)."""
    states = [{"cpu": state} for state in gather_bytes(torch.get_rng_state())]
    if device.type == "cuda":
        for states_of_one, cuda in zip(states, gather_bytes(torch.cuda.get_rng_state(device))):
            states_of_one["cuda"] = cuda
    return {"processes": states}


def gather_bytes(state: torch.Tensor) -> list[torch.Tensor]:
    # each a tensor of its own: a row of the gathered tensor would be saved and loaded as
    # a view at an offset, which set_rng_state misreads ("Invalid mt19937 state", or a crash)
    return [row.clone() for row in gather_rows(state[None])]


def restore(saved: dict, device: torch.device, seed: int, step: int) -> None:
    """Set this process's generators as a checkpoint's `rng` section saved them.
    (Checkpoints from before per-process streams hold rank 0's CPU state alone.)"""
    processes = saved.get("processes") or [saved]
    # on another number of processes only rank 0's stream (the single process's) goes on
    my_states = processes[rank()] if rank() == 0 or len(processes) == world_size() else None
    fresh = stream_seed(seed, rank(), step)
    if my_states is None:
        torch.manual_seed(fresh)  # the CPU's and every GPU's
        return
    torch.set_rng_state(my_states["cpu"])
    if device.type == "cuda":
        if "cuda" in my_states:
            torch.cuda.set_rng_state(my_states["cuda"], device)
        else:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(fresh)
