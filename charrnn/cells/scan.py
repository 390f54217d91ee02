"""What the cells' scans (charrnn/cells/rnn.py, gru.py, lstm.py, ...) share.

A scan runs a cell over a sequence. The model computes the input projection of every time
step in one matmul (``xp = X @ W_xh + b``, shape (T, B, G) with G = gates * H); only the
recurrent product is left for the per-step loop, which is the scan's. Each scan returns the
same values (to float rounding) as the cell's step run in a plain autograd loop; it saves
only what its backward needs, in buffers allocated once per call, and its backward:

* walks t = T-1 .. 0 with ONE matmul per step (``dA_t @ W_hh^T``), where ``dA_t`` is the
  gradient w.r.t. the pre-activation of the recurrent product, written into a (T, B, G)
  buffer preallocated once per call; the activation derivatives are formed per step, while
  that step's tiles are in cache;
* computes the weight gradient after the loop as ONE large matmul over all steps
  (``Hprev^T @ dA`` with ``Hprev = [h0, outputs[:-1]]``, `weight_grad`);
* returns the gradient w.r.t. ``xp`` as (a view of) that buffer, without a copy.

A first layer over characters passes a ``Gathered(table, tokens)`` instead of ``xp``: each
step's input rows are then gathered from ``table = W_xh + b`` just before the step.

When no input requires grad (or grad mode is off, e.g. under ``torch.no_grad`` or
``torch.inference_mode``) a plain forward loop runs that saves nothing and reuses per-step
scratch buffers. Nothing in the loops syncs with the host, so this works on CUDA as well,
where the GRU and LSTM steps run as PyTorch's fused cell kernels (charrnn/kernels/cuda_fused.py).
Double backward is not supported (the backwards are ``once_differentiable``).
"""

from __future__ import annotations

import functools

import torch

from charrnn.kernels import cpu_bfloat16, cpu_matmul

__all__ = ["Gathered", "float32_recurrence", "needs_grad", "check_shapes", "split_input", "join_input",
           "input_grad", "weight_grad", "final_grad"]


class Gathered:
    """The input side of a first layer over characters, ``xp[t] = table[tokens[t]]`` (the
    one-hot product ``one_hot(tokens) @ W_xh + b`` as a row gather from ``table = W_xh +
    b``), given to a scan in place of ``xp``: each step's rows are gathered just before the
    step, into one reused (B, G) buffer that stays in cache, instead of building the whole
    (T, B, G) ``xp`` first (tens of MB written, then read back from memory step by step).
    The scans' gradient for ``table`` is the scatter-add of their gradient w.r.t. ``xp``.

    table: (V, G) floats; tokens: (T, B) integer ids. Stands in for xp where the scans look
    at it: shape, dim(), device, dtype, layout, requires_grad, new_empty/new_zeros, unbind(0).
    """

    def __init__(self, table: torch.Tensor, tokens: torch.Tensor):
        if table.dim() != 2 or tokens.dim() != 2:
            raise ValueError(f"Gathered takes a (V, G) table and (T, B) tokens, got {tuple(table.shape)}, "
                             f"{tuple(tokens.shape)}")
        self.table, self.tokens = table, tokens
        self.shape = torch.Size((*tokens.shape, table.shape[1]))
        self.device, self.dtype, self.layout = table.device, table.dtype, table.layout
        self.requires_grad = table.requires_grad

    def dim(self) -> int:
        return 3

    def new_empty(self, *args, **kwargs) -> torch.Tensor:
        return self.table.new_empty(*args, **kwargs)

    def new_zeros(self, *args, **kwargs) -> torch.Tensor:
        return self.table.new_zeros(*args, **kwargs)

    def unbind(self, dim: int = 0):
        """Step t's (B, G) input, for t = 0 .. T-1; valid until the next one is drawn."""
        if dim != 0:
            raise ValueError("Gathered unbinds along time (dim 0) only")
        buf = self.table.new_empty((self.shape[1], self.shape[2]))
        return (torch.index_select(self.table, 0, ids, out=buf) for ids in self.tokens.unbind(0))


def float32_recurrence(scan):
    """Under autocast (e.g. training with --amp bf16) a scan runs in float32 all the same:
    its state is carried through every step, where bfloat16's 8-bit mantissa would pile up
    error, and its in-place per-step arithmetic needs one dtype. Inputs that autocast made
    half precision (a deeper layer's xp from a bfloat16 projection) are cast up, which is
    differentiable; the matmuls still use TF32 where that is allowed, and on a CPU
    autocasting to bfloat16 they take bfloat16 operands (charrnn/kernels/cpu_bfloat16.py)."""

    @functools.wraps(scan)
    def wrapper(*tensors):
        device_type = tensors[0].device.type
        if not cpu_bfloat16.autocast_enabled(device_type):
            return scan(*tensors)
        low = cpu_bfloat16.autocast_dtype(device_type)  # (read before autocast is switched off)
        with torch.autocast(device_type=device_type, enabled=False), cpu_bfloat16.matmul_dtype(low):
            return scan(*(t.float() if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16)
                          else t for t in tensors))

    return wrapper


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether the scan must record its backward (else the plain forward loop runs)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def check_shapes(xp, h0: torch.Tensor, W_hh: torch.Tensor, gates: int) -> tuple[int, int, int]:
    """(T, B, H) of a scan's inputs, or ValueError naming the one that does not fit."""
    if xp.dim() != 3:
        raise ValueError(f"xp must be (T, B, {gates}*H), got shape {tuple(xp.shape)}")
    T, B, G = xp.shape
    H = W_hh.shape[0]
    if W_hh.shape != (H, gates * H) or G != gates * H:
        raise ValueError(
            f"W_hh must be (H, {gates}*H) matching xp's last dim; got W_hh {tuple(W_hh.shape)}, xp {tuple(xp.shape)}"
        )
    if h0.shape != (B, H):
        raise ValueError(f"initial state must be (B, H) = ({B}, {H}), got {tuple(h0.shape)}")
    return T, B, H


def split_input(xp) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a scan's autograd Function takes for its input side (tensors only): (xp, None),
    or (table, tokens) for a Gathered."""
    return (xp.table, xp.tokens) if isinstance(xp, Gathered) else (xp, None)


def join_input(src: torch.Tensor, tokens: torch.Tensor | None):
    """The input side again from split_input's pair: xp, or the Gathered."""
    return src if tokens is None else Gathered(src, tokens)


def input_grad(D: torch.Tensor, src: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """The gradient for the input side from D, the gradient w.r.t. xp: D itself, or for a
    gathered input the rows of D added up per token (what F.embedding's backward does)."""
    if tokens is None:
        return D
    return torch.ops.aten.embedding_dense_backward(D, tokens, src.shape[0], -1, False)


def weight_grad(h0: torch.Tensor, out: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """sum_t Hprev_t^T @ dA_t with Hprev = [h0, out[:-1]], as one big matmul (plus one small)."""
    T, B, H = out.shape
    G = dA.shape[-1]
    onednn = cpu_matmul.use_onednn((H, T * B, G), out, dA)
    # (With oneDNN, Hprev^T is copied to contiguous by the op, and the GRU's row-strided dA by
    # matmul: straight copies, much cheaper than transposing the strided dA instead.)
    dW = cpu_matmul.matmul(h0.t(), dA[0], onednn=onednn)
    if T > 1:
        dW = cpu_matmul.matmul(out[:-1].reshape(-1, H).t(), dA[1:].reshape(-1, G), add=dW, out=dW, onednn=onednn)
    return dW


def final_grad(g_outs, g_final: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Gradient into the last hidden state: from outputs[T-1] and/or the returned final state
    (g_outs: the per-step gradients of the outputs, or None; zeros when neither has one)."""
    if g_final is None:
        return g_outs[-1] if g_outs is not None else torch.zeros_like(like)
    return g_final if g_outs is None else g_outs[-1] + g_final
