"""The recurrent cells, one module each (rnn.py, gru.py, lstm.py, lnlstm.py; what they
share is in base.py and scan.py), and the registry that names them: `--cell`'s choices and
help, config.CELLS and build_model all read REGISTRY.

Standard library only at import time, so that the command line and charrnn.config can read
the names without importing torch; `cell_class` imports a cell's module when it is asked
for. Adding a cell: write its module (docs/cells.md says what it holds) and add one entry.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple


class CellEntry(NamedTuple):
    module: str  # the module that holds the cell
    cls: str  # its class there, a charrnn.cells.base.ScratchCell
    help: str  # one line for --cell's help


REGISTRY = {
    "rnn": CellEntry("charrnn.cells.rnn", "RNNScratch", "the book's Elman RNN, tanh(X W_xh + H W_hh + b)"),
    "gru": CellEntry("charrnn.cells.gru", "GRUScratch", "gated recurrent unit, in torch.nn.GRU's form"),
    "lstm": CellEntry("charrnn.cells.lstm", "LSTMScratch", "long short-term memory, in torch.nn.LSTM's form"),
    "lnlstm": CellEntry("charrnn.cells.lnlstm", "LNLSTMScratch", "layer-normalised LSTM (Ba, Kiros and Hinton 2016)"),
}
CELLS = tuple(REGISTRY)


def cell_class(name: str):
    """The cell class registered as `name` (ValueError naming the choices if none is)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}")
    entry = REGISTRY[name]
    return getattr(importlib.import_module(entry.module), entry.cls)


def cells_help() -> str:
    """--cell's help: every registered cell with its line."""
    return "; ".join(f"{name}: {entry.help}" for name, entry in REGISTRY.items()) + "."
