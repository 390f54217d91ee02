"""What every cell shares (ScratchCell), and the dropout the cells and the stack use.

A cell is one module of charrnn/cells/ that owns its behaviour: its parameters, its
equations (`step`), its scan with a hand-written backward (`recur`), its state layout
(`state_parts`), its starting biases (`init_biases`), its fast inference step
(`fast_input`, `fast_step`) and its fused CUDA kernels if it has any. Nothing outside the
cell reaches into its state or its weights beyond what this class declares.

- `project(inputs)`: the input side of every step at once, `X @ W_xh + b` for inputs of
  shape (num_steps, batch, num_inputs). A first layer over characters instead reads rows
  of `input_table()`: the same numbers as `one_hot(tokens) @ W_xh + b`.
- `recur(xp, state)`: the loop over time, the cell's scan; only the recurrent product is
  left in it. xp may be a charrnn.cells.scan.Gathered (rows of the input table).
- `step(xp_t, state)`: one time step under autograd; `loop(xp, state)` runs it step by
  step, the reference that `recur` is tested against.
- `forward(inputs, state=None)`: the book's interface, `recur(project(inputs), state)`.

A state is one tensor (B, H) per name in `state_parts` when there are several, e.g. the
LSTM's `(H, C)`, else the tensor itself; `split_state` gives the parts in that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.kernels import cpu_matmul
from charrnn.kernels.cpu_matmul import linear


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """F.dropout(x, p) in training. On a CPU the mask is drawn with torch.rand, several times
    faster there than F.dropout's Bernoulli sampling (docs/performance.md); CUDA's fused
    dropout is kept."""
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * keep_mask(torch.empty_like(x), p)


def keep_mask(buffer: torch.Tensor, p: float) -> torch.Tensor:
    """`buffer` filled with a dropout mask: 0 with probability p, else 1/(1-p)."""
    return buffer.uniform_().ge_(p).div_(1 - p)


class ScratchCell(nn.Module):
    """What the cells share. Subclasses set `gates` (how many H-wide blocks the input
    projection has) and `state_parts`, and implement `input_bias`, `step`, `recur` and
    `fast_step`."""

    gates = 1
    state_parts: tuple[str, ...] = ("h",)  # the state's tensors, in order; "h" is the output

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__()
        self.num_inputs, self.num_hiddens, self.sigma = num_inputs, num_hiddens, sigma
        width = self.gates * num_hiddens
        self.W_xh = nn.Parameter(torch.randn(num_inputs, width) * sigma)  # (in, gates*H)
        self.W_hh = nn.Parameter(torch.randn(num_hiddens, width) * sigma)  # (H, gates*H)
        self.weight_drop = 0.0

    def recurrent_weight(self) -> torch.Tensor:
        """W_hh as this batch's recurrence uses it: in training with weight_drop p, each entry
        is zeroed with probability p and the rest scaled by 1/(1-p) (DropConnect, AWD-LSTM's
        weight drop), one mask for every step of the batch. The scans take this tensor as
        their input, so the gradient flows back to W_hh through the mask."""
        if not (self.training and self.weight_drop):
            return self.W_hh
        return dropout(self.W_hh, self.weight_drop)

    def input_bias(self) -> torch.Tensor:
        raise NotImplementedError

    def init_biases(self, forget_bias: float) -> None:
        """The cell's own starting values after the model's init scheme (init_weights), e.g.
        an LSTM's forget-gate bias; nothing for a cell without one. Called under no_grad."""

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs @ W_xh + b` for all steps in one matmul: (T, B, in) -> (T, B, gates*H)."""
        return linear(inputs, self.W_xh, self.input_bias())

    def input_table(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """(num_inputs, gates*H) or (V, gates*H): `project` of every one-hot input, `W_xh + b`,
        or of every row of an embedding E, `E @ W_xh + b`."""
        return (self.W_xh if E is None else E @ self.W_xh) + self.input_bias()

    def zero_state(self, batch_size: int, like: torch.Tensor):
        parts = [like.new_zeros(batch_size, self.num_hiddens) for _ in self.state_parts]
        return self.join_state(parts)

    def split_state(self, state) -> tuple[torch.Tensor, ...]:
        """The state's tensors, one per name in state_parts, each (B, H)."""
        return (state,) if len(self.state_parts) == 1 else tuple(state)

    def join_state(self, parts):
        """A state from its tensors (split_state's inverse)."""
        return parts[0] if len(self.state_parts) == 1 else tuple(parts)

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs (num_steps, batch, num_inputs) -> outputs (num_steps, batch, H), state."""
        return self.recur(self.project(inputs), state)

    def loop(self, xp, state=None):
        """The recurrence step by step under autograd (the reference for `recur`)."""
        state = self.zero_state(xp.shape[1], xp) if state is None else state
        outputs = []
        for xp_t in xp.unbind(0):
            out, state = self.step(xp_t, state)
            outputs.append(out)
        return torch.stack(outputs), state

    def fast_input(self, rows: int):
        """For inference on `rows` sequences: a function of a layer's input x (rows, in) that
        is `project` for one step, with W_xh packed once for that many rows."""
        mm, bias = cpu_matmul.Matmul(self.W_xh, rows), self.input_bias()
        return lambda x: mm(x, add=bias)

    def fast_step(self, rows: int):
        """For inference on `rows` sequences: a function (xp_t, state) -> (H_t, new state),
        the same as `step`, with W_hh packed once and CPU float32's fast tanh."""
        raise NotImplementedError

    @classmethod
    def from_torch(cls, module: nn.RNNBase, sigma: float = 0.01) -> "ScratchCell":
        """A cell with the weights of a one-layer torch.nn.RNN/GRU/LSTM (same function)."""
        if module.num_layers != 1 or module.bidirectional or module.batch_first:
            raise ValueError("from_torch takes a one-layer, unidirectional, time-major module")
        cell = cls(module.input_size, module.hidden_size, sigma)
        cell.to(dtype=module.weight_ih_l0.dtype, device=module.weight_ih_l0.device)
        with torch.no_grad():
            cell.W_xh.copy_(module.weight_ih_l0.T)
            cell.W_hh.copy_(module.weight_hh_l0.T)
            cell._copy_torch_biases(module.bias_ih_l0, module.bias_hh_l0)
        return cell

    def _copy_torch_biases(self, b_ih: torch.Tensor, b_hh: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no torch.nn counterpart")
