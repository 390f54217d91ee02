"""Data-parallel training over several processes, as torchrun starts them.

torchrun gives every process it starts RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT. `process_group()` joins them for the duration of a block; `train()` trains
data-parallel whenever a process group is initialized (its own, or the caller's), and
exactly as before when there is none:

    with process_group("auto"):
        train(config)

Every process holds the whole model; each trains on its own rows of the global batch,
DistributedDataParallel averages the gradients in `backward()`, and every process takes
the same optimizer step. Rank 0 alone reports and writes files. The helpers below are
collectives: every process must call them at the same point, and without a process group
they return their input unchanged.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


@contextmanager
def process_group(device: str = "auto"):
    """Join the torchrun processes for the block: gloo for CPU tensors, and nccl for CUDA
    tensors when the run is on CUDA (each process on `cuda:LOCAL_RANK`). Outside torchrun,
    or when the caller already made a process group, it does nothing."""
    if not launched_by_torchrun() or is_distributed():
        yield
        return
    on_cuda = device != "cpu" and torch.cuda.is_available()  # as pick_device chooses
    if on_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # gloo carries the small CPU collectives (stop flag, clock, losses) even beside nccl,
    # so they never wait for the GPU
    dist.init_process_group("cpu:gloo,cuda:nccl" if on_cuda else "gloo")
    yield  # after an error, leave the group as it is: its peers may be inside a collective
    dist.barrier()  # leave together: no process exits while another still writes
    dist.destroy_process_group()
    # gloo's worker threads free the last gradient all-reduces of DDP, which hold a Python
    # object from backward(), when they get the GIL; an interpreter that shuts down before
    # then aborts the process ("terminate called without an active exception", about one
    # exit in five here with torch 2.13). A moment without the GIL lets them finish.
    time.sleep(0.2)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def process_device(device: torch.device) -> torch.device:
    """This process's own GPU, cuda:LOCAL_RANK, when training on CUDA across processes."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as the training loop calls it: wrapped in DistributedDataParallel, which
    averages the gradients over all processes during backward() (so gradient clipping
    afterwards sees the global norm), or the model itself without a process group. Save
    and evaluate the model itself: its state_dict has no `module.` prefix."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """The sum (or "max") of `values` over all processes, the same on every one."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


def agree_to_stop(elapsed: float, signal_name: str | None) -> tuple[float, str | None]:
    """What all processes must agree on before every step, so that they leave the training
    loop at the same step: the clock (the latest of theirs, for --max-time and the
    learning-rate schedule), and whether to stop (when any of them got Ctrl-C or SIGTERM;
    the name of the signal). One all-reduce of two numbers."""
    number = signal.Signals[signal_name].value if signal_name else 0
    elapsed, number = all_reduce([elapsed, number], "max")
    return elapsed, signal.Signals(int(number)).name if number else None


def from_rank_zero(value):
    """Rank 0's `value` (any picklable object) on every process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows, rank by rank (each process must have as many): the hidden
    state of every stream, for a checkpoint that resumes on any number of processes."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
