"""The private parts of charrnn the bench calls, named in this one place: where charrnn's
modules move them, re-point them here and nowhere else."""

from types import SimpleNamespace


def charrnn_internals() -> SimpleNamespace:
    """charrnn's matmul backend and tuning, under the names the bench uses."""
    from charrnn import bptt

    return SimpleNamespace(
        tune_allocator=bptt.tune_allocator,  # glibc malloc tuning, as `charrnn train` does
        onednn_usable=bptt._onednn_ok,  # whether CPU float32 matmuls may go through oneDNN
        use_onednn=bptt._use_onednn,  # (multiply-adds, *tensors) -> does this matmul take oneDNN
        Matmul=bptt._Matmul,  # a scan's per-step product: (W, rows, *others)(a, add=, out=)
        matmul=lambda a, b, add=None, out=None, onednn=False: bptt._mm(onednn, a, b, add, out),
        weight_grad=bptt._weight_grad,  # a scan's weight gradient: (h0, out, dA) -> dW
        fused_cuda_cells=bptt._use_fused,  # whether the CUDA scans use fused cell kernels
    )
