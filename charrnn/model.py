"""The recurrent cells and the language model, written from scratch in the style of
Dive into Deep Learning ("RNN from scratch", "GRU", "LSTM", "deep RNN").

Every cell follows one shape:

- `project(inputs)`: the input side of every step at once, `X @ W_xh + b` for inputs of
  shape (num_steps, batch, num_inputs). The language model's first layer instead reads
  rows of its input table (StackedScratch.gathered): the same numbers as
  `one_hot(tokens) @ W_xh + b`, since a one-hot product only selects a row.
- `recur(xp, state)`: the loop over time; only the recurrent product `H @ W_hh` is left in
  it. For the first layer, xp is those gathered rows: the gather happens step by step. It is
  the cell's scan (charrnn/rnn_cell.py, gru_cell.py, lstm_cell.py): one autograd Function
  with a hand-written backward pass through time, one matmul per step going back, and each
  weight gradient as one large matmul over all steps afterwards.
- `step(xp_t, state)`: one time step, the matmul and then the cell file's `step` (the
  equations the sampler also runs). `loop(xp, state)` runs it step by step under autograd:
  the reference that `recur` is tested against.
- `forward(inputs, state=None)`: the book's interface, `recur(project(inputs), state)`.

State is a tensor `H` (RNN, GRU) or a tuple `(H, C)` (LSTM); `None` means zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from charrnn import gru_cell, lstm_cell, rnn_cell
from charrnn.config import CELLS, INITS, ModelConfig
from charrnn.kernels.cpu_matmul import linear
from charrnn.scan import Gathered


class ScratchCell(nn.Module):
    """What the three cells share. Subclasses set `gates` (how many H-wide blocks the
    input projection has) and implement `step` and `recur`; state is what `step` takes."""

    gates = 1

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__()
        self.num_inputs, self.num_hiddens, self.sigma = num_inputs, num_hiddens, sigma
        width = self.gates * num_hiddens
        self.W_xh = nn.Parameter(torch.randn(num_inputs, width) * sigma)
        self.W_hh = nn.Parameter(torch.randn(num_hiddens, width) * sigma)
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

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs @ W_xh + b` for all steps in one matmul: (T, B, in) -> (T, B, gates*H)."""
        return linear(inputs, self.W_xh, self.input_bias())

    def zero_state(self, batch_size: int, like: torch.Tensor):
        return like.new_zeros(batch_size, self.num_hiddens)

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


class RNNScratch(ScratchCell):
    """The book's RNN: `H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)`."""

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__(num_inputs, num_hiddens, sigma)
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))

    def input_bias(self):
        return self.b_h

    def _copy_torch_biases(self, b_ih, b_hh):
        self.b_h.copy_(b_ih + b_hh)

    def step(self, xp_t, H):
        H = rnn_cell.step(torch.addmm(xp_t, H, self.W_hh))
        return H, H

    def recur(self, xp, state=None):
        H = self.zero_state(xp.shape[1], xp) if state is None else state
        return rnn_cell.rnn_scan(xp, H, self.recurrent_weight())


class GRUScratch(ScratchCell):
    """Gated recurrent unit, in PyTorch's (and cuDNN's) form rather than the book's.

    The book applies the reset gate before the hidden product, `tanh(X W_xh + (R * H) W_hh
    + b_h)`; PyTorch applies it after, `tanh(X W_xn + b_xn + R * (H W_hn + b_hn))`. We follow
    PyTorch on purpose: the three hidden products (reset, update, candidate) then become one
    matmul `H @ W_hh`, and weights interoperate with torch.nn.GRU. That is also why the
    hidden side keeps its own bias `b_hh`: the candidate's `b_hn` sits inside `R * (...)`
    and cannot be folded into the input-side bias. Gate blocks are ordered r, z, n.
    """

    gates = 3

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__(num_inputs, num_hiddens, sigma)
        self.b_xh = nn.Parameter(torch.zeros(3 * num_hiddens))
        self.b_hh = nn.Parameter(torch.zeros(3 * num_hiddens))

    def input_bias(self):
        return self.b_xh

    def _copy_torch_biases(self, b_ih, b_hh):
        self.b_xh.copy_(b_ih)
        self.b_hh.copy_(b_hh)

    def step(self, xp_t, H):
        H, _ = gru_cell.step(xp_t, torch.addmm(self.b_hh, H, self.W_hh), H)
        return H, H

    def recur(self, xp, state=None):
        H = self.zero_state(xp.shape[1], xp) if state is None else state
        return gru_cell.gru_scan(xp, H, self.recurrent_weight(), self.b_hh)


class LSTMScratch(ScratchCell):
    """Long short-term memory; state `(H, C)`. Gate blocks are ordered i, f, g, o as in
    torch.nn.LSTM, with one bias per gate (PyTorch's two biases add up to it)."""

    gates = 4

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__(num_inputs, num_hiddens, sigma)
        self.b_h = nn.Parameter(torch.zeros(4 * num_hiddens))

    def input_bias(self):
        return self.b_h

    def _copy_torch_biases(self, b_ih, b_hh):
        self.b_h.copy_(b_ih + b_hh)

    def zero_state(self, batch_size, like):
        H = like.new_zeros(batch_size, self.num_hiddens)
        return H, torch.zeros_like(H)

    def step(self, xp_t, state):
        H, C = state
        H, C, _ = lstm_cell.step(torch.addmm(xp_t, H, self.W_hh), C)
        return H, (H, C)

    def recur(self, xp, state=None):
        H, C = self.zero_state(xp.shape[1], xp) if state is None else state
        outputs, H, C = lstm_cell.lstm_scan(xp, H, C, self.recurrent_weight())
        return outputs, (H, C)


CELL_CLASSES = {"rnn": RNNScratch, "gru": GRUScratch, "lstm": LSTMScratch}


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


class StackedScratch(nn.Module):
    """Deep RNN: layer l's outputs are layer l+1's inputs; dropout is applied to every
    layer's outputs (so between layers, and before the output head), never to the state
    carried from step to step. With `locked` a sequence keeps one mask for all its time
    steps (variational dropout, Gal and Ghahramani 2016); otherwise every step draws its
    own. State: a list with one entry per layer.

    With `vocab_size`, the first cell's inputs are an embedding of one-hot characters:
    `one_hot(X) @ E`, E (vocab_size, K) with K the cell's num_inputs. The one-hot input stays
    the interface, and the input table the model reads rows of is `E @ W_xh + b`: W_xh
    factorised, as nn.Embedding before torch.nn.LSTM has it. Under Adam, which moves each
    entry of a one-hot W_xh by about lr per step, the factors train better over a long run
    (docs/presets.md)."""

    def __init__(self, cells: list[ScratchCell], dropout: float = 0.0, locked: bool = False,
                 vocab_size: int | None = None, sigma: float = 0.01):
        super().__init__()
        self.cells = nn.ModuleList(cells)
        self.p, self.locked = dropout, locked
        self.E = None if vocab_size is None else nn.Parameter(torch.randn(vocab_size, cells[0].num_inputs) * sigma)
        self.num_inputs = cells[0].num_inputs if vocab_size is None else vocab_size
        self.num_hiddens = cells[-1].num_hiddens

    def dropout(self, outputs: torch.Tensor) -> torch.Tensor:
        """outputs (num_steps, batch, H), masked in training."""
        if not (self.training and self.p):
            return outputs
        if not self.locked:
            return dropout(outputs, self.p)
        return outputs * keep_mask(outputs.new_empty(1, *outputs.shape[1:]), self.p)

    def _run(self, xp, state, reference=False):
        state = [None] * len(self.cells) if state is None else list(state)
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                xp = cell.project(self.dropout(outputs))
            outputs, state[layer] = (cell.loop if reference else cell.recur)(xp, state[layer])
        return self.dropout(outputs), state

    def forward(self, inputs, state=None, reference=False):
        """inputs (num_steps, batch, num_inputs); `reference` runs every layer's `loop`."""
        return self._run(self.cells[0].project(inputs if self.E is None else inputs @ self.E), state, reference)

    def forward_tokens(self, tokens, state=None):
        return self._run(self.gathered(tokens), state)

    def input_table(self) -> torch.Tensor:
        """(num_inputs, gates*H): the first layer's input side for each one-hot input,
        `W_xh + b`, or `E @ W_xh + b` with an embedding."""
        first = self.cells[0]
        return (first.W_xh if self.E is None else self.E @ first.W_xh) + first.input_bias()

    def gathered(self, tokens: torch.Tensor) -> Gathered:
        """`one_hot(tokens) @ [E @] W_xh + b` as a row gather, (T, B) int -> (T, B, gates*H),
        for the first cell's `recur` to gather step by step (see charrnn.scan.Gathered). The
        bias is added to the (vocabulary-sized) table rather than to every gathered row: the
        same numbers, and its gradient is a sum over the table's rows instead of over all T*B."""
        return Gathered(self.input_table(), tokens)

    def zero_state(self, batch_size, like):
        return [cell.zero_state(batch_size, like) for cell in self.cells]


class RNNLMScratch(nn.Module):
    """The book's RNN language model: a recurrent network over one-hot characters and a
    linear head `W_hq`, `b_q` over the vocabulary. `rnn` is a cell or a StackedScratch."""

    def __init__(self, rnn: nn.Module, vocab_size: int, sigma: float = 0.01):
        super().__init__()
        if isinstance(rnn, ScratchCell):
            rnn = StackedScratch([rnn])
        self.rnn, self.vocab_size = rnn, vocab_size
        self.W_hq = nn.Parameter(torch.randn(rnn.num_hiddens, vocab_size) * sigma)
        self.b_q = nn.Parameter(torch.zeros(vocab_size))

    def one_hot(self, X: torch.Tensor) -> torch.Tensor:
        """(batch, num_steps) ids -> (num_steps, batch, vocab_size) one-hot floats."""
        return F.one_hot(X.T, self.vocab_size).to(self.W_hq.dtype)

    def output_layer(self, rnn_outputs: torch.Tensor) -> torch.Tensor:
        """(num_steps, batch, H) -> logits (batch, num_steps, vocab), one matmul for all steps."""
        return linear(rnn_outputs, self.W_hq, self.b_q).transpose(0, 1)

    def forward(self, X: torch.Tensor, state=None):
        """X (batch, num_steps) ids -> logits (batch, num_steps, vocab), final state."""
        rnn_outputs, state = self.rnn.forward_tokens(X.T, state)
        return self.output_layer(rnn_outputs), state

    def forward_one_hot(self, X: torch.Tensor, state=None):
        """The book's literal computation, kept as the reference the fast path is tested
        against: one-hot inputs times W_xh, the recurrence step by step under autograd, and
        the output layer applied step by step."""
        rnn_outputs, state = self.rnn(self.one_hot(X), state, reference=True)
        logits = torch.stack([torch.matmul(H, self.W_hq) + self.b_q for H in rnn_outputs], 1)
        return logits, state

    def zero_state(self, batch_size: int):
        return self.rnn.zero_state(batch_size, self.W_hq)


def build_model(config: ModelConfig) -> RNNLMScratch:
    """The language model a ModelConfig describes, with fresh weights."""
    if config.cell not in CELL_CLASSES:
        raise ValueError(f"unknown cell {config.cell!r}; choose one of {', '.join(CELLS)}")
    if config.init not in INITS:
        raise ValueError(f"unknown init {config.init!r}; choose one of {', '.join(INITS)}")
    cell_class, sigma = CELL_CLASSES[config.cell], config.init_sigma
    sizes = [config.embedding or config.vocab_size] + [config.hidden] * config.layers
    cells = [cell_class(n_in, n_out, sigma) for n_in, n_out in zip(sizes, sizes[1:])]
    for cell in cells:
        cell.weight_drop = config.weight_drop
    stack = StackedScratch(cells, config.dropout, config.locked_dropout,
                           vocab_size=config.vocab_size if config.embedding else None, sigma=sigma)
    model = RNNLMScratch(stack, config.vocab_size, sigma)
    init_weights(model, config.init, config.forget_bias)
    return model


@torch.no_grad()
def init_weights(model: RNNLMScratch, scheme: str, forget_bias: float = 0.0) -> None:
    """Start the weights as `scheme` says (the cells and the head were made with the book's).

    - book: every weight N(0, sigma^2), every bias 0 (d2l; what the cells are built with).
    - torch: as torch.nn.LSTM/GRU/RNN and nn.Linear start, uniform in +-1/sqrt(H) for the
      recurrent matrices, deeper layers' input matrices and the head; the first layer's
      input table as nn.Embedding starts, N(0, 1). A one-hot input selects one row of that
      table, so the row is all the input there is: at the book's small sigma the gates
      barely hear the character, and Adam, which moves each entry by about lr a step,
      needs hundreds of steps to make them listen (docs/presets.md measures this). With an
      embedding E, E starts as nn.Embedding, N(0, 1), and the first W_xh as torch.nn.LSTM's
      input matrix, uniform in +-1/sqrt(H).
    - orthogonal: as torch, but each H x H gate block of W_hh is a random orthogonal matrix
      (its gain is 1 in every direction, so the state neither explodes nor fades at first).

    With `forget_bias` the LSTM's forget-gate bias starts at that value, whatever the scheme."""
    if scheme != "book":
        if model.rnn.E is not None:
            model.rnn.E.normal_(0, 1)
        for layer, cell in enumerate(model.rnn.cells):
            bound = 1 / math.sqrt(cell.num_hiddens)
            if layer == 0 and model.rnn.E is None:
                cell.W_xh.normal_(0, 1)
            else:
                cell.W_xh.uniform_(-bound, bound)
            cell.W_hh.uniform_(-bound, bound)
            if scheme == "orthogonal":
                H = cell.num_hiddens
                for g in range(cell.gates):
                    cell.W_hh[:, g * H : (g + 1) * H] = nn.init.orthogonal_(torch.empty(H, H))
        model.W_hq.uniform_(-1 / math.sqrt(model.rnn.num_hiddens), 1 / math.sqrt(model.rnn.num_hiddens))
    for cell in model.rnn.cells:
        if isinstance(cell, LSTMScratch):
            H = cell.num_hiddens
            cell.b_h[H : 2 * H] = forget_bias


def map_state(fn, state):
    """Apply fn to every tensor of a hidden state (a tensor, or tuples/lists of them)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if state is None:
        return None
    return type(state)(map_state(fn, s) for s in state)


def copy_state(dst, src) -> None:
    """Copy a hidden state's values into another of the same structure, tensor by tensor."""
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    else:
        for d, s in zip(dst, src):
            copy_state(d, s)


def detach_state(state):
    """Cut the graph between batches (truncated BPTT) but keep the values."""
    return map_state(torch.Tensor.detach, state)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
