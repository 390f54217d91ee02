"""PyTorch's fused CUDA kernels for one cell step, which a cell's scan uses on a GPU.

On a GPU every small elementwise op is a kernel launch of its own, a few microseconds of
host time however little it computes: a gated step is ~8 such ops forward and ~13 backward
around its one matmul, so at the sizes people train the host, not the GPU, sets the pace.
PyTorch ships the fused CUDA kernels that torch.nn.LSTMCell and GRUCell use (the private ops
aten::_thnn_fused_lstm_cell, _thnn_fused_gru_cell and their backwards): each does a whole
step's gates, new state and what the backward needs in one launch. A cell whose form
matches one registers it as a FusedStep (charrnn/cells/gru.py and lstm.py do), with the
cell's own equations as the reference and the inputs of a self-test; the cell's scan then
runs one matmul and one fused kernel per step each way on CUDA, once the self-test at first
use has checked that cell's kernels. Elsewhere, or if its test fails, that cell's scan runs
its plain operations; the other cells are not affected.
"""

from __future__ import annotations

import torch

__all__ = ["DEVICES", "FusedStep"]

DEVICES = ("cuda",)  # device types whose scans use the kernels


class FusedStep:
    """One cell's fused step kernel and its backward, and what each computes in plain
    operations (`forward_reference`, `backward_reference`: the cell's own equations).
    `test_cases(rand)` gives the self-test's inputs from `rand(*shape)`, a seeded normal
    tensor on the device: (the step's arguments, a function of the reference step's results
    that gives the backward's argument tuples)."""

    def __init__(self, forward, backward, forward_reference, backward_reference, test_cases):
        self.forward, self.backward = forward, backward
        self.forward_reference, self.backward_reference = forward_reference, backward_reference
        self.test_cases = test_cases
        self.self_test_passed: dict[str, bool] = {}  # device type -> result of the one-time self-test

    def usable(self, *tensors: torch.Tensor) -> bool:
        """Whether a scan over these tensors uses the fused kernels."""
        device = tensors[0].device
        if device.type not in DEVICES or any(t.dtype not in (torch.float32, torch.float64) for t in tensors):
            return False
        if device.type not in self.self_test_passed:
            self.self_test_passed[device.type] = self._self_test(device)
        return self.self_test_passed[device.type]

    def _self_test(self, device: torch.device) -> bool:
        """Both kernels against their references on small random inputs."""
        try:
            g = torch.Generator().manual_seed(0)

            def rand(*shape):
                return torch.randn(*shape, generator=g).to(device)

            args, backward_cases = self.test_cases(rand)
            with torch.no_grad():
                got, want = self.forward(*args), self.forward_reference(*args)
                pairs = list(zip(got, want))
                for case in backward_cases(want):
                    pairs += zip(self.backward(*case), self.backward_reference(*case))
                return all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in pairs)
        except Exception:  # missing op, changed signature or workspace layout, ...
            return False
