"""Looking inside a trained model: what a checkpoint holds (`checkpoint_info`), and how
surprised the model is by each character of a text (`surprisal`), shaded for a terminal
(`shaded_text`) or a self-contained HTML page (`surprisal_html`). charrnn.inspection.neurons shades
by a unit's activation with the same two helpers (`shaded_runs`, `html_page`)."""

from __future__ import annotations

import html
import math
import os

import torch
import torch.nn.functional as F
from rich.style import Style
from rich.text import Text

from charrnn.scoring.evaluation import eval_mode
from charrnn.model import RNNLMScratch
from charrnn.corpus.sources import well_formed
from charrnn.corpus.vocab import Vocab

# ---------------------------------------------------------------- what a checkpoint holds


def checkpoint_info(ckpt: dict, path: str) -> dict:
    """A checkpoint's model, vocabulary, training progress and corpus as plain values
    (what `charrnn info` prints, and its --json)."""
    model_config, progress = ckpt["model_config"], ckpt.get("progress", {})
    vocab = Vocab.from_dict(ckpt["vocab"])
    best = progress.get("best_val_loss", math.inf)
    return {
        "checkpoint": path,
        "model": {"cell": model_config["cell"], "layers": model_config["layers"],
                  "hidden": model_config["hidden"], "dropout": model_config["dropout"],
                  "parameters": sum(t.numel() for t in ckpt["model"].values())},
        "vocabulary": {"size": len(vocab), "kind": vocab.kind, "characters": ckpt["vocab"].get("tokens"),
                       "unk": vocab.unk is not None},
        "training": {"steps": progress.get("step", 0), "chars_seen": progress.get("chars_seen", 0),
                     "elapsed": progress.get("elapsed", 0.0),
                     "best_val_ppl": math.exp(min(best, 50)) if math.isfinite(best) else None},
        "corpus": ckpt.get("corpus", {}),
    }


def escape_char(c: str) -> str:
    """One character as it reads on one line: newline as \\n, tab as \\t, backslash as
    \\\\, other control characters as \\x.. escapes, everything else as itself."""
    return c if c.isprintable() and c != "\\" else repr(c)[1:-1]


def vocabulary_text(v: dict) -> str:
    if v.get("kind") == "bytes":
        return f"{v['size']} byte values (the model spells UTF-8 itself)"
    # quoted, so a leading space shows
    quoted = '"' + "".join('\\"' if ch == '"' else escape_char(ch) for ch in v["characters"]) + '"'
    return f"{v['size']} characters: " + quoted + (" and <unk>" if v["unk"] else "")


def documents_text(c: dict) -> str:
    """A corpus of documents in a few words: how many files, where, and their separator."""
    folders = [os.path.dirname(f["path"]) for f in c["files"]]
    return f"{len(folders)} file(s) under {os.path.commonpath(folders)}, each ended by {c['doc_sep']!r}"


def info_lines(info: dict) -> list[str]:
    """`checkpoint_info` as aligned lines for a person."""
    m, v, t, c = info["model"], info["vocabulary"], info["training"], info["corpus"]
    layers = f"{m['layers']} layer{'s' if m['layers'] != 1 else ''}"
    dropout = f", dropout {m['dropout']}" if m["dropout"] else ""
    best = f"{t['best_val_ppl']:.3f}" if t["best_val_ppl"] is not None else "none yet"
    where = documents_text(c) if c.get("kind") == "files" and well_formed(c) else {
        "file": c.get("path"), "dataset": f"dataset {c.get('name')}", "builtin": f"built-in ({c.get('name')})",
    }.get(c.get("kind"), "not recorded")
    split = (f"validation file {c['val_file']['path']}" if c.get("val_file")
             else f"{len(c['val_files'])} validation file(s)" if c.get("val_files")
             else "d2l windows" if c.get("windows")
             else f"last {100 * c['val_fraction']:g}% of each file for validation" if c.get("kind") == "files"
             else f"last {100 * c['val_fraction']:g}% for validation" if "val_fraction" in c else "")
    corpus = ", ".join(x for x in (where, f"normalize {c['normalize']}" if c.get("normalize", "none") != "none"
                                   else "", split) if x)
    lines = [
        f"checkpoint  {info['checkpoint']}",
        f"model       {m['cell'].upper()}, {layers} of {m['hidden']} hidden{dropout}; {m['parameters']:,} parameters",
        f"vocabulary  {vocabulary_text(v)}",
        f"training    {t['steps']:,} steps, {t['chars_seen']:,} characters seen, {t['elapsed']:.1f}s; "
        f"best validation perplexity {best}",
        f"corpus      {corpus}",
    ]
    if c.get("sha256"):
        lines.append(f"sha256      {c['sha256']}")
    return lines


# ---------------------------------------------------------------- surprisal per character


@torch.inference_mode()
def surprisal(model: RNNLMScratch, vocab: Vocab, text: str, chunk: int = 256) -> list[float]:
    """-log2 p(text[i] | text[:i]) for i = 1 .. len(text) - 1, in bits: one stream whose
    state runs through the whole text (fed `chunk` characters per call). The first
    character has no prediction, so the list is one shorter than the text. Runs in eval
    mode and leaves the model in the mode it found it in."""
    ids = vocab.encode(text, "the text").long().to(model.W_hq.device)
    bits, state = [], None
    with eval_mode(model):
        for start in range(0, len(ids) - 1, chunk):
            X = ids[start : start + chunk].unsqueeze(0)
            Y = ids[start + 1 : start + chunk + 1].unsqueeze(0)
            X = X[:, : Y.shape[1]]
            logits, state = model(X, state)
            nats = F.cross_entropy(logits[0], Y[0], reduction="none")
            bits.extend((nats / math.log(2)).tolist())
    return bits


# Background shades, light to dark, for surprisal below 1, 2, ..., 8 bits and above: the
# YlOrRd scale. Under 1 bit (the model saw it coming) stays unshaded, so confusion stands out.
SHADES = [None, "#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"]


def shade_level(bits: float) -> int:
    """Index into SHADES: whole bits, capped at the darkest."""
    return min(int(bits), len(SHADES) - 1) if math.isfinite(bits) else len(SHADES) - 1


def shade_style(level: int) -> Style:
    colour = SHADES[level]
    if colour is None:
        return Style()
    return Style(bgcolor=colour, color="black" if level < 6 else "white")


def shaded_text(text: str, bits: list[float]) -> Text:
    """The text with each character's background shaded by its surprisal (the first
    character, which has no prediction, unshaded)."""
    return shaded_runs(text, [Style()] + [shade_style(shade_level(b)) for b in bits])


def shaded_runs(text: str, styles: list[Style]) -> Text:
    """The text with character i in styles[i]: one span per run of equal style, not one
    per character."""
    shaded, start = Text(), 0
    for end in range(1, len(text) + 1):
        if end == len(text) or styles[end] != styles[start]:
            shaded.append(text[start:end], styles[start])
            start = end
    return shaded


def legend_labels() -> list[str]:
    top = len(SHADES) - 1
    return ["< 1"] + [f"{i}-{i + 1}" for i in range(1, top)] + [f"{top}+"]


def legend_text() -> Text:
    """One line: the shades and the bits each one stands for."""
    legend = Text("surprisal, bits per character: ")
    for level, label in enumerate(legend_labels()):
        legend.append(f" {label} ", shade_style(level))
        legend.append(" ")
    return legend


def mean_perplexity(bits: list[float]) -> float:
    return 2 ** (sum(bits) / len(bits)) if bits else math.nan


def surprisal_html(text: str, bits: list[float], title: str) -> str:
    """A self-contained HTML page (inline CSS, no scripts) of the shaded text: newlines
    kept, every character escaped, each predicted character's surprisal in its tooltip."""
    css_classes = "\n".join(
        f".s{level} {{ background: {colour}; color: {'black' if level < 6 else 'white'}; }}"
        for level, colour in enumerate(SHADES) if colour)
    body = [html.escape(text[:1])]
    for char, b in zip(text[1:], bits):
        level = shade_level(b)
        css = f' class="s{level}"' if SHADES[level] else ""
        body.append(f'<span{css} title="{b:.2f} bits">{html.escape(char)}</span>')
    legend = " ".join(
        f'<span class="s{level}">&nbsp;{html.escape(label)}&nbsp;</span>' if SHADES[level]
        else f"<span>&nbsp;{html.escape(label)}&nbsp;</span>"
        for level, label in enumerate(legend_labels()))
    return html_page(title, css_classes, f"surprisal, bits per character: {legend}\n(hover over a character "
                     "for its surprisal; the first character has no prediction)", "".join(body))


def html_page(title: str, css: str, legend: str, shaded: str) -> str:
    """A self-contained page: a title, a legend line and the shaded text (all HTML)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
pre {{ white-space: pre-wrap; font-family: monospace; font-size: 14px; line-height: 1.5; }}
.legend span {{ font-family: monospace; }}
{css}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="legend">{legend}</p>
<pre>{shaded}</pre>
</body>
</html>
"""
