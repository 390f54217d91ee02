"""`charrnn export --onnx`: one step of the model as an ONNX graph, checked by onnxruntime.

    inputs   input_id    int64 (batch,)                       the character just read
             state       float32 (layers, parts, batch, hidden)  parts: the tensors of a
                                                              layer's state (LSTM: H, C)
    outputs  logits      float32 (batch, vocab)               for the next character
             next_state  float32 (layers, parts, batch, hidden)

The step is the model's own: the first layer's input table row, then each cell's `step`
(the equations its scan is tested against), the deeper layers' input projections and the
head. How many parts a layer's state has is read from the model's zero state, so a cell
whose state is a tensor or a tuple of tensors exports without being named here.
docs/export.md samples from the file with onnxruntime and numpy alone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from charrnn.errors import CharrnnError

ONNX_FILE = "model.onnx"
CHECK_STEPS, CHECK_BATCH, TOLERANCE = 200, 2, 1e-5  # the export-time check against PyTorch


class OneStep(nn.Module):
    """(input_id, state) -> (logits, next_state) with the state as one stacked tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        layer_states = model.zero_state(1)
        self.parts = [1 if isinstance(s, torch.Tensor) else len(s) for s in layer_states]
        if len(set(self.parts)) != 1:
            raise CharrnnError("every layer's state must have the same parts to stack them for ONNX")
        self.tuple_state = not isinstance(layer_states[0], torch.Tensor)

    def forward(self, input_id: torch.Tensor, state: torch.Tensor):
        rnn = self.model.rnn
        xp = rnn.input_table()[input_id]  # (batch, gates*H): one_hot(id) @ [E @] W_xh + b
        next_state = []
        for layer, cell in enumerate(rnn.cells):
            if layer > 0:
                xp = cell.input_table(out)  # the cell's input side of one step, in plain torch operations
            layer_state = tuple(state[layer].unbind(0)) if self.tuple_state else state[layer, 0]
            out, layer_state = cell.step(xp, layer_state)
            next_state.append(torch.stack(layer_state) if self.tuple_state else layer_state.unsqueeze(0))
        logits = torch.addmm(self.model.b_q, out, self.model.W_hq)
        return logits, torch.stack(next_state)

    def zero_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(len(self.parts), self.parts[0], batch, self.model.rnn.num_hiddens)


def write_onnx(model, path: Path) -> dict:
    """Export one step of `model` to `path` and check it with onnxruntime against PyTorch
    (CHECK_STEPS steps of CHECK_BATCH random streams, each side feeding back its own
    state); a file that fails the check is removed. Returns the exporter used and the
    largest difference of the logits."""
    step = OneStep(model.float().cpu().eval()).eval()
    exporter = export_graph(step, path)
    try:
        difference = check_onnx(step, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {"exporter": exporter, "max_logit_difference": difference, "steps": CHECK_STEPS}


def export_graph(step: OneStep, path: Path) -> str:
    """torch.onnx.export, by torch.export (dynamo) where it succeeds, else by TorchScript
    tracing; the exporters' progress lines and warnings are kept out of charrnn's output."""
    try:
        import onnx  # noqa: F401  (both exporters need it; dynamo needs onnxscript too)
    except ModuleNotFoundError:
        raise CharrnnError("--onnx needs onnx, onnxscript and onnxruntime: pip install 'charrnn-scratch[export]'") from None
    args = (torch.zeros(CHECK_BATCH, dtype=torch.int64), step.zero_state(CHECK_BATCH))
    names = {"input_names": ["input_id", "state"], "output_names": ["logits", "next_state"]}
    batch = torch.export.Dim("batch")
    attempts = [("dynamo", {"dynamo": True, "external_data": False, "dynamic_shapes": {"input_id": {0: batch}, "state": {2: batch}}}),
                ("torchscript", {"dynamo": False, "dynamic_axes": {"input_id": {0: "batch"}, "state": {2: "batch"},
                                                                   "logits": {0: "batch"}, "next_state": {2: "batch"}}})]
    failures = []
    for name, options in attempts:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                logging.disable(logging.WARNING)  # torch's log handlers hold the real stderr
                torch.onnx.export(step, args, str(path), verbose=False, **names, **options)
            return name
        except Exception as e:  # noqa: BLE001 - the next exporter may manage; both failing is reported
            failures.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        finally:
            logging.disable(logging.NOTSET)
    raise CharrnnError(f"torch.onnx.export failed ({'; '.join(failures)})"[:500])


@torch.no_grad()
def check_onnx(step: OneStep, path: Path) -> float:
    """The largest difference between onnxruntime's outputs (logits and next state) and
    PyTorch's, the same step run eagerly, over CHECK_STEPS random ids: each step starts both
    from PyTorch's state, so what is measured is the graph's error, not float32's drift
    through a recurrence (which a layer-normalised cell amplifies). Over TOLERANCE, relative
    to the size of the value, is an error. The step's agreement with the model's forward over
    a whole sequence is the tests'."""
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise CharrnnError("--onnx checks the file with onnxruntime: pip install 'charrnn-scratch[export]'") from None
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(step.model.vocab_size, (CHECK_BATCH, CHECK_STEPS), generator=generator)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state, difference = step.zero_state(CHECK_BATCH), 0.0
    for t in range(CHECK_STEPS):
        outputs = session.run(None, {"input_id": ids[:, t].numpy(), "state": state.numpy()})
        with torch.inference_mode():
            expected = step(ids[:, t], state)
        for name, got, want in zip(("logits", "next_state"), outputs, expected):
            error = (torch.from_numpy(got) - want).abs()
            if not bool((error <= TOLERANCE * (1 + want.abs())).all()):
                raise CharrnnError(f"{path}: onnxruntime's {name} differ from PyTorch's by {float(error.max()):.3g} "
                                   f"at step {t + 1} (over {TOLERANCE:g}); the file was removed")
            difference = max(difference, float(error.max()))
        state = expected[1]
    return difference
