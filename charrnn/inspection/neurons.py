"""What single hidden units do (Karpathy, Johnson and Fei-Fei, "Visualizing and
Understanding Recurrent Networks", 2015): every unit's activation after every character
(`record`), simple properties of the text at each character (`text_properties`), the units
whose activation correlates best with each property (`best_units`), and a text shaded by
one unit's activation for a terminal (`shaded_by_unit`) or an HTML page (`activation_html`).

A unit is named `L:Uh` (layer L's output H, unit U) or, for another part of a cell's state
(its `state_parts`), by that part's name: `L:Uc` is an LSTM's memory cell; layers count from
1, units from 0.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

import torch
from rich.style import Style
from rich.text import Text

from charrnn.errors import CharrnnError
from charrnn.model import RNNLMScratch
from charrnn.inspection.surprisal import html_page, shaded_runs

# ---------------------------------------------------------------- units and their activations


@dataclass(frozen=True)
class Unit:
    layer: int  # from 1
    index: int  # from 0
    state: str  # a part of the layer's state: "h" (its output) or e.g. "c" (an LSTM's memory cell)

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}{self.state}"


def parse_unit(name: str, model: RNNLMScratch) -> Unit:
    """`L:U` (the output H), `L:Uh` or `L:Uc` (an LSTM's memory cell), checked against the model."""
    match = re.fullmatch(r"\s*(\d+):(\d+)([a-z]?)\s*", name)
    if not match:
        raise CharrnnError(f"a unit is LAYER:UNIT, e.g. 1:37 (or 1:37c for an LSTM's memory cell), got {name!r}")
    cells = model.rnn.cells
    unit = Unit(int(match[1]), int(match[2]), match[3] or "h")
    if not 1 <= unit.layer <= len(cells):
        raise CharrnnError(f"unit {name}: the model has layers 1 to {len(cells)}")
    if unit.index >= cells[unit.layer - 1].num_hiddens:
        raise CharrnnError(f"unit {name}: layer {unit.layer} has units 0 to {cells[unit.layer - 1].num_hiddens - 1}")
    parts = cells[unit.layer - 1].state_parts
    if unit.state not in parts:
        if unit.state == "c":
            raise CharrnnError(f"unit {name}: only an LSTM has a memory cell (c); this model is not one")
        raise CharrnnError(f"unit {name}: layer {unit.layer}'s state has the parts {', '.join(parts)}")
    return unit


@torch.inference_mode()
def record(model: RNNLMScratch, ids: torch.Tensor) -> tuple[torch.Tensor, list[Unit]]:
    """Every unit's value after each character of `ids`, run as one stream from a zero
    state (the model's `activations`): activations (len(ids), units) and the units, layer by
    layer and within a layer by the parts of its state (H, then an LSTM's C)."""
    model.eval()
    columns, units = [], []
    for layer, parts in enumerate(model.activations(ids), 1):
        for state_name, values in parts.items():
            columns.append(values)
            units += [Unit(layer, i, state_name) for i in range(values.shape[1])]
    return torch.cat(columns, 1).float().cpu(), units


def unit_activations(model: RNNLMScratch, ids: torch.Tensor, unit: Unit) -> list[float]:
    """One unit's value after each character of `ids`."""
    activations, units = record(model, ids)
    return activations[:, units.index(unit)].tolist()


# ---------------------------------------------------------------- what the text is doing


OPENING, CLOSING = "([{", ")]}"


def text_properties(text: str) -> dict[str, list[float]]:
    """Simple properties of the text after each character (what a unit that has just read
    it could know): inside double quotes (the opening quote counts as inside, the closing one
    not), inside brackets and how deep, how far the line has run, the first letter of a word,
    an upper-case letter, a digit."""
    quoted, depth, column, previous = False, 0, 0, "\n"
    rows = []
    for char in text:
        quoted ^= char == '"'
        depth = depth + 1 if char in OPENING else max(depth - 1, 0) if char in CLOSING else depth
        column = 0 if char == "\n" else column + 1
        rows.append((quoted, depth > 0, depth, column, char.isalpha() and not previous.isalpha(),
                     char.isupper(), char.isdigit()))
        previous = char
    names = ("inside double quotes", "inside brackets", "bracket depth", "position in line",
             "start of a word", "upper case", "digit")
    return {name: [float(row[i]) for row in rows] for i, name in enumerate(names)}


def correlations(activations: torch.Tensor, target: list[float]) -> torch.Tensor:
    """Pearson's r of every column of activations (T, N) with target (T,); 0 for a unit
    that never changes."""
    X = activations.double() - activations.double().mean(0)
    y = torch.tensor(target, dtype=torch.float64)
    y = y - y.mean()
    scale = X.norm(dim=0) * y.norm()
    return torch.where(scale > 0, (X.T @ y) / scale.clamp(min=1e-300), torch.zeros_like(scale))


def best_units(activations: torch.Tensor, units: list[Unit], properties: dict[str, list[float]],
               top: int = 3) -> list[dict]:
    """For each property, the `top` units whose activation correlates most strongly with it
    (either sign), best first; a property that never changes in the text has none."""
    found = []
    for name, target in properties.items():
        if min(target) == max(target):
            found.append({"property": name, "units": []})
            continue
        r = correlations(activations, target)
        order = r.abs().argsort(descending=True)[:top].tolist()
        found.append({"property": name, "units": [{"unit": str(units[i]), "correlation": float(r[i])}
                                                  for i in order]})
    return found


def best_units_lines(found: list[dict]) -> list[str]:
    """`best_units` as an aligned table for a person."""
    width = max(len(f["property"]) for f in found)
    lines = [f"{'property':<{width}}  best units (correlation)"]
    for f in found:
        units = "   ".join(f"{u['unit']:>7} {u['correlation']:+.3f}" for u in f["units"])
        lines.append(f"{f['property']:<{width}}  {units or 'never changes in this text'}")
    return lines


# ---------------------------------------------------------------- shading by activation


# RdBu, 11 shades from -1 (dark blue) through 0 (near white) to +1 (dark red)
ACTIVATION_SHADES = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
                     "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"]
MIDDLE = len(ACTIVATION_SHADES) // 2


def activation_level(value: float) -> int:
    """Index into ACTIVATION_SHADES; values beyond [-1, 1] (an LSTM's memory cell) take the end shades."""
    if not math.isfinite(value):
        return 0 if value < 0 else len(ACTIVATION_SHADES) - 1
    return MIDDLE + round(max(-1.0, min(1.0, value)) * MIDDLE)


def text_colour(level: int) -> str:
    return "white" if abs(level - MIDDLE) >= 4 else "black"


def activation_style(level: int) -> Style:
    return Style(bgcolor=ACTIVATION_SHADES[level], color=text_colour(level))


def shaded_by_unit(text: str, values: list[float]) -> Text:
    """The text with each character's background shaded by the unit's value after reading it."""
    return shaded_runs(text, [activation_style(activation_level(v)) for v in values])


def activation_legend() -> Text:
    """One line: the shades from -1 to 1."""
    legend = Text("activation: -1 ")
    for level in range(len(ACTIVATION_SHADES)):
        legend.append("  ", activation_style(level))
    legend.append(" +1")
    return legend


def activation_html(text: str, values: list[float], title: str) -> str:
    """A self-contained HTML page of the text shaded by a unit's values, each in its tooltip."""
    css = "\n".join(f".a{level} {{ background: {colour}; color: {text_colour(level)}; }}"
                    for level, colour in enumerate(ACTIVATION_SHADES))
    body = "".join(f'<span class="a{activation_level(v)}" title="{v:+.3f}">{html.escape(c)}</span>'
                   for c, v in zip(text, values))
    legend = " ".join(f'<span class="a{level}">&nbsp;{(level - MIDDLE) / MIDDLE:+.1f}&nbsp;</span>'
                      for level in range(len(ACTIVATION_SHADES)))
    return html_page(title, css, f"activation after each character: {legend}\n(hover over a character "
                     "for the value)", body)
