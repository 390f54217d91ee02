"""The language model, written from scratch in the style of Dive into Deep Learning ("RNN
from scratch", "deep RNN"): a stack of recurrent cells (StackedScratch) under a linear head
over the vocabulary (RNNLMScratch). The cells themselves, each in its own module, are in
charrnn/cells/ (what every cell offers: charrnn/cells/base.py); RNNScratch, GRUScratch and
LSTMScratch are imported here too, as the book's interface.

What every consumer of a model uses, whatever its cells, embedding or vocabulary:

- `model(X, state)`: the forward over a batch of sequences with its state (the fast scans);
- `model.stepper()`: one step at a time for generation (Stepper, the fast inference path);
- `model.activations(ids)`: every layer's state parts (H, and C where the cell has one)
  after every character, for looking inside;
- `model.zero_state(batch)`, `model.state_output(state)` and each cell's `state_parts`:
  the state, a list with one entry per layer, each the cell's own layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.kernels import cpu_matmul
from charrnn.cells import cell_class
from charrnn.cells.base import ScratchCell, dropout, keep_mask
from charrnn.cells.gru import GRUScratch
from charrnn.cells.lstm import LSTMScratch
from charrnn.cells.rnn import RNNScratch
from charrnn.cells.scan import Gathered
from charrnn.config import INITS, ModelConfig
from charrnn.kernels.cpu_matmul import linear

__all__ = ["RNNScratch", "GRUScratch", "LSTMScratch", "ScratchCell", "StackedScratch", "RNNLMScratch", "Stepper",
           "ModelConfig", "build_model", "init_weights", "dropout", "keep_mask", "map_state", "copy_state",
           "detach_state", "num_parameters"]


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
        """(num_inputs, gates*H): the first layer's input side for each one-hot input, the
        first cell's `input_table` (`W_xh + b`, or `E @ W_xh + b` with an embedding, for the
        plain cells)."""
        return self.cells[0].input_table(self.E)

    def gathered(self, tokens: torch.Tensor) -> Gathered:
        """`one_hot(tokens) @ [E @] W_xh + b` as a row gather, (T, B) int -> (T, B, gates*H),
        for the first cell's `recur` to gather step by step (see charrnn.cells.scan.Gathered). The
        bias is added to the (vocabulary-sized) table rather than to every gathered row: the
        same numbers, and its gradient is a sum over the table's rows instead of over all T*B."""
        return Gathered(self.input_table(), tokens)

    def zero_state(self, batch_size, like):
        return [cell.zero_state(batch_size, like) for cell in self.cells]

    def activations(self, tokens: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Each layer's state parts after every step of one stream from a zero state, tokens
        (T,) -> per layer {part name: (T, H)}, with no dropout. Each cell's own `step` runs
        one step at a time, as its reference `loop` does, so that every part of the state is
        seen at every step (a scan returns only the last)."""
        xp = self.input_table()[tokens].unsqueeze(1)  # (T, 1, gates*H): the gathered rows
        layers = []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                xp = cell.project(torch.stack(outputs))
            state, outputs, parts = cell.zero_state(1, xp), [], []
            for xp_t in xp.unbind(0):
                out, state = cell.step(xp_t, state)
                outputs.append(out)
                parts.append(cell.split_state(state))
            layers.append({name: torch.stack([p[k][0] for p in parts]) for k, name in enumerate(cell.state_parts)})
        return layers


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

    def state_output(self, state) -> torch.Tensor:
        """The last layer's H (batch, H) from a state."""
        last = self.rnn.cells[-1]
        return last.split_state(state[-1])[last.state_parts.index("h")]

    def activations(self, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """ids (T,) -> each layer's {state part: (T, H)} after every character (see
        StackedScratch.activations)."""
        return self.rnn.activations(ids.long().to(self.W_hq.device))

    def stepper(self) -> "Stepper":
        """One step at a time for generation, with as little per-step work as the model allows."""
        return Stepper(self)


class Stepper:
    """The model one step at a time: the first layer's input side for every character
    (`one_hot(id) @ W_xh + b`, with an embedding `one_hot(id) @ E @ W_xh + b`) is read from
    a table made once (StackedScratch.input_table); each cell runs its `fast_input` (deeper
    layers) and `fast_step`, made once per batch size with the weights packed for it; the
    head's matmul is charrnn.kernels.cpu_matmul.Matmul's. Weights are read when it is made."""

    def __init__(self, model: RNNLMScratch):
        self.cells = model.rnn.cells
        self.table = model.rnn.input_table()
        self.W_hq, self.b_q = model.W_hq, model.b_q
        self._steps, self._rows = None, None

    def _prepare(self, rows: int) -> None:
        """The per-layer step functions for batches of `rows`."""
        self._steps = [(None if layer == 0 else cell.fast_input(rows), cell.fast_step(rows))
                       for layer, cell in enumerate(self.cells)]
        self._rows = rows
        self._head = cpu_matmul.Matmul(self.W_hq, rows)

    def step(self, ids, state: list):
        """ids (batch,): a tensor or a list of ints; state: a list, one entry per layer ->
        logits (batch, vocab) for the next character, and the state with each layer's entry
        replaced (the old entries are not modified)."""
        if isinstance(ids, list) and len(ids) == 1:
            x = self.table[ids[0] : ids[0] + 1]  # a view: cheaper than any gather
        else:
            x = self.table.index_select(0, torch.as_tensor(ids, device=self.table.device))
        if self._rows != x.shape[0]:
            self._prepare(x.shape[0])
        for layer, (project, step) in enumerate(self._steps):
            if project is not None:
                x = project(x)
            x, state[layer] = step(x, state[layer])
        return self._head(x, add=self.b_q), state


def build_model(config: ModelConfig) -> RNNLMScratch:
    """The language model a ModelConfig describes, with fresh weights."""
    if config.init not in INITS:
        raise ValueError(f"unknown init {config.init!r}; choose one of {', '.join(INITS)}")
    cls, sigma = cell_class(config.cell), config.init_sigma
    sizes = [config.embedding or config.vocab_size] + [config.hidden] * config.layers
    cells = [cls(n_in, n_out, sigma) for n_in, n_out in zip(sizes, sizes[1:])]
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

    Then each cell sets its own starting biases (ScratchCell.init_biases): with `forget_bias`
    the LSTM's forget-gate bias starts at that value, whatever the scheme."""
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
        cell.init_biases(forget_bias)


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
