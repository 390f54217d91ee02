"""CUDA graphs, as the training step (charrnn.training.train_step.TrainStep) and the sampler
(charrnn.generation.sample.Sampler) use them: record a step's kernels once, then launch them all at
once per step, where launching them one by one costs the host more than the GPU takes."""

from __future__ import annotations

import contextlib

import torch


def capture(fn):
    """A CUDA graph of fn (which the capture only records, computing nothing) and fn's
    outputs: the graph's own tensors, which every replay overwrites."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph, outputs


@contextlib.contextmanager
def side_stream():
    """Run the block on a fresh stream that follows the current one (CUDA graphs want their
    warm-up steps there), then make the current stream wait for it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)
