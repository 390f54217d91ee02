"""The parts of charrnn the bench calls below its public commands, named in this one
place: where charrnn's modules move them, re-point them here and nowhere else."""

from types import SimpleNamespace


def charrnn_internals() -> SimpleNamespace:
    """charrnn's matmul backend and tuning, under the names the bench uses."""
    from charrnn.kernels import allocator, cpu_matmul
    from charrnn.cells import gru, lstm, scan

    return SimpleNamespace(
        tune_allocator=allocator.tune_allocator,  # glibc malloc tuning, as `charrnn train` does
        onednn_usable=cpu_matmul.onednn_usable,  # whether CPU float32 matmuls may go through oneDNN
        use_onednn=cpu_matmul.use_onednn,  # ((M, K, N), *tensors) -> does this matmul take oneDNN
        Matmul=cpu_matmul.Matmul,  # a scan's per-step product: (W, rows, *others)(a, add=, out=)
        matmul=cpu_matmul.matmul,  # (a, b, add=, out=, onednn=)
        product=cpu_matmul.product,  # a @ b through the backend chosen for its shape
        weight_grad=scan.weight_grad,  # a scan's weight gradient: (h0, out, dA) -> dW
        # whether the CUDA scans use fused cell kernels (each cell that has them)
        fused_cuda_cells=lambda *tensors: all(cell.FUSED.usable(*tensors) for cell in (gru, lstm)),
    )
