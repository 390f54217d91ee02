"""One training step, and where and in what precision it runs: forward, cross-entropy,
backward and clipping by global norm; eager, or replayed as a CUDA graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from charrnn import cuda_graphs
from charrnn.config import DEVICES
from charrnn.errors import CharrnnError
from charrnn.model import copy_state, detach_state, map_state


def set_threads(threads: int) -> None:
    """torch's CPU threads (--threads of every command that computes): `threads` of them,
    or with 0, as many as torch chose (one per core)."""
    if threads < 0:
        raise CharrnnError(f"--threads must not be negative, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise CharrnnError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharrnnError("--device cuda was asked for, but CUDA is not available here (try --device cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class cuda_precision:
    """TF32 for CUDA float32 matmuls while training with --tf32 (restored afterwards: the
    setting is process-wide). Nothing on a CPU."""

    def __init__(self, device: torch.device, tf32: bool):
        self.active = device.type == "cuda" and tf32

    def __enter__(self):
        if self.active:
            self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return self

    def __exit__(self, *exc):
        if self.active:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def clip_gradients(max_norm: float, params) -> torch.Tensor:
    """Clip by global norm: when the L2 norm of all gradients together exceeds max_norm,
    scale every gradient by max_norm / norm. Returns the norm before clipping. No host
    synchronisation: the scale is computed on the device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    torch._foreach_mul_(grads, scale)
    return norm


class TrainStep:
    """Forward, loss, backward and clipping of one batch; the caller then steps the optimizer
    (outside, so that its learning rate can change from step to step).

    `step(X, Y, state, divisor)` returns the loss (summed cross-entropy / divisor) and the
    final state, detached. With `graphs` (CUDA, one process) the step is captured once as a
    CUDA graph and replayed from then on: a step issues ~3 kernels per time step and layer
    each way, each launch costing the host more time than the GPU needs to run it, and a
    replay launches all of them at once. The paths a step takes:

        no graphs           _eager: gradients from None, computed as they come
        steps 1..WARMUP     _warm_up: eagerly on a side stream (as graph capture requires)
        the next step       _capture, then _replay: the batch, the state and the divisor
                            go into the graph's own tensors, which the replay reads; the
                            loss, the state and every gradient come out in its own
                            tensors, which the next replay overwrites (the gradients are
                            never set to None again)
        another shape or    _eager_into_graph_gradients: the short last batch of
        divisor             --sampling random, added into those same gradients after
                            zeroing them

    A capture that fails falls back to eager steps, and `note` says why."""

    WARMUP = 3

    def __init__(self, model, params, clip: float, amp: bool = False, graphs: bool = False):
        self.model, self.params, self.clip, self.amp, self.graphs = model, params, clip, amp, graphs
        self.steps, self.graph, self.note = 0, None, None

    def __call__(self, X, Y, state, divisor: float):
        self.steps += 1
        if self.graphs and self.graph is None and self.steps > self.WARMUP:
            self._try_capture(X, Y, state, divisor)
        if not self.graphs:
            return self._eager(X, Y, state, divisor)
        if self.graph is None:
            return self._warm_up(X, Y, state, divisor)
        if (X.shape, Y.shape, divisor) == self.key:
            return self._replay(X, Y, state)
        return self._eager_into_graph_gradients(X, Y, state, divisor)

    def _compute(self, X, Y, state, divisor):
        # autocast's cache of casted weights would outlive a graph capture: off (graphs need that)
        with torch.autocast(X.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits, state = self.model(X, state)
            loss = F.cross_entropy(logits.flatten(0, 1), Y.flatten(), reduction="sum") / divisor
        loss.backward()
        clip_gradients(self.clip, self.params)
        return loss.detach(), detach_state(state)

    def _eager(self, X, Y, state, divisor):
        for p in self.params:
            p.grad = None
        return self._compute(X, Y, state, divisor)

    def _warm_up(self, X, Y, state, divisor):
        for p in self.params:
            p.grad = None
        with self._side_stream():
            return self._compute(X, Y, state, divisor)

    def _try_capture(self, X, Y, state, divisor) -> None:
        try:
            self._capture(X, Y, state, divisor)
        except Exception as e:  # noqa: BLE001 - an op that cannot be captured: go on eagerly
            self.note = f"CUDA graph capture failed, training goes on without ({type(e).__name__}: {e})"
            self.graphs, self.graph = False, None
            torch.cuda.synchronize()

    def _capture(self, X, Y, state, divisor):
        self.static_X, self.static_Y = X.clone(), Y.clone()
        self.static_state = map_state(torch.clone, state) if state is not None else self.model.zero_state(X.shape[0])
        for p in self.params:
            p.grad = None
        self.graph, (self.static_loss, self.static_new_state) = self._capture_graph(
            lambda: self._compute(self.static_X, self.static_Y, self.static_state, divisor))
        self.key = (X.shape, Y.shape, divisor)

    def _replay(self, X, Y, state):
        self.static_X.copy_(X)
        self.static_Y.copy_(Y)
        if state is None:
            map_state(torch.Tensor.zero_, self.static_state)
        else:
            copy_state(self.static_state, state)
        self.graph.replay()
        return self.static_loss, self.static_new_state

    def _eager_into_graph_gradients(self, X, Y, state, divisor):
        for p in self.params:
            p.grad.zero_()
        return self._compute(X, Y, state, divisor)

    _side_stream = staticmethod(cuda_graphs.side_stream)  # (hooks the tests replace)
    _capture_graph = staticmethod(cuda_graphs.capture)
