"""`charrnn eval` and `charrnn neurons`: a model's perplexity on a text (static, or with
dynamic evaluation), the text shaded by surprisal or by one unit, and the units that track
simple properties of the text."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.config import DYNAMIC_DECAYS, DYNAMIC_LRS, DynamicSettings, TrainConfig
from charrnn.errors import CharrnnError

Opt = typer.Option
DYN = DynamicSettings()  # what --dyn-lr and --dyn-decay given alone are paired with
THREADS_HELP = ("CPU threads for torch (0: {zero}). On a machine busy with other work, fewer threads than cores "
                "can be much faster.")


def threads_option(zero: str = "torch's default, one per core"):
    """--threads, for every command that computes: one help text, `zero` saying what 0 does there."""
    return Opt(help=THREADS_HELP.format(zero=zero))


def rates(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def evaluate_command(
    file: Annotated[Optional[Path], typer.Argument(help="A UTF-8 text file. [default: the checkpoint's own validation split]", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    batch_size: Annotated[Optional[int], Opt(help="Parallel streams the text is cut into. [default: as training evaluated the checkpoint]", show_default=False)] = None,
    seq_len: Annotated[Optional[int], Opt(help="Characters per forward call (and per window, for a run that evaluated windows). [default: as training evaluated the checkpoint]", show_default=False)] = None,
    unknown: Annotated[str, Opt(help="Characters of FILE outside the model's vocabulary: error, or skip (drop them, with a warning).")] = "error",
    show: Annotated[bool, Opt("--show", help="Print the text with each character shaded by the model's surprisal (bits), to see where it is confused.")] = False,
    show_chars: Annotated[int, Opt(help="How much of the text --show and --show-html shade: the first N characters.")] = 2000,
    show_html: Annotated[Optional[Path], Opt(help="Write the shaded text as a self-contained HTML page to this file.")] = None,
    neuron: Annotated[Optional[str], Opt(help="With --show or --show-html: shade by this unit's activation (blue -1 to red 1) instead of by surprisal. L:U is layer L's output unit U, L:Uc an LSTM's memory cell (layers from 1, units from 0; `charrnn neurons` finds units worth a look).")] = None,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = "auto",
    dynamic: Annotated[bool, Opt("--dynamic", help="Also dynamic evaluation: the model adapts to the text as it reads it (a gradient step after each scored segment); prints the static and dynamic figures and the gain. The checkpoint is not changed.")] = False,
    dyn_seq_len: Annotated[Optional[int], Opt(help=f"With --dynamic: characters per segment (one update each). [default: {DYN.seq_len}]", show_default=False)] = None,
    dyn_lr: Annotated[Optional[float], Opt(help=f"With --dynamic: the update's learning rate (0: no adaptation), used as given: no tuning, and --dyn-decay {DYN.decay:g} unless given. [default: tuned on the tail of the training text, among {rates(DYNAMIC_LRS)}]", show_default=False)] = None,
    dyn_decay: Annotated[Optional[float], Opt(help=f"With --dynamic: how strongly each update pulls the weights back towards the trained ones, in [0, 1], used as given: no tuning, and --dyn-lr {DYN.lr:g} unless given. [default: tuned, among {rates(DYNAMIC_DECAYS)}]", show_default=False)] = None,
    threads: Annotated[int, threads_option()] = TrainConfig.threads,
):
    """Perplexity and bits per character of a model on FILE or on its validation split.

    With --dynamic, also dynamic evaluation (Krause et al., 2018), its learning rate and decay
    tuned on the tail of the training text unless given; see docs/dynamic-evaluation.md.
    """
    from charrnn.storage.load import load_model
    from charrnn.corpus.data import check_unknown
    from charrnn.scoring.evaluation import evaluate, nats_summary, recorded_layout
    from charrnn.inspection.neurons import parse_unit
    from charrnn.kernels.device import set_threads

    if (batch_size is not None and batch_size < 1) or (seq_len is not None and seq_len < 1):
        raise CharrnnError("--batch-size and --seq-len must be positive")
    check_unknown(unknown)
    if show_chars < 2:
        raise CharrnnError(f"--show-chars must be at least 2, got {show_chars}")
    if show and as_json:
        raise CharrnnError("--show prints shaded text; it does not mix with --json (use --show-html FILE)")
    if neuron and not (show or show_html):
        raise CharrnnError("--neuron picks what --show or --show-html shade by; give one of them")
    settings = dynamic_settings(dyn_seq_len, dyn_lr, dyn_decay) if dynamic else None
    set_threads(threads)
    loaded = load_model(checkpoint, device)
    model, vocab, ckpt = loaded
    unit = parse_unit(neuron, model) if neuron else None
    ids, what = text_ids(file, loaded, unknown, "eval")
    if len(ids) < 2:
        raise CharrnnError(f"{what} is too short to evaluate (it needs at least 2 characters)")
    layout = recorded_layout(ckpt)  # the logged validation loss's, so that the two agree
    layout.update({k: v for k, v in (("batch_size", batch_size), ("seq_len", seq_len)) if v is not None})
    if not layout["carry_state"] and len(ids) <= layout["seq_len"]:
        raise CharrnnError(f"{what} is shorter than one window of {layout['seq_len'] + 1} characters")
    loss_sum, count = evaluate(model, ids, **layout)
    result = {**nats_summary(loss_sum / count), "chars": count, "text": what}
    shown_unit = "characters"
    if vocab.kind == "bytes":
        result, shown_unit = byte_model_result(result, ids, not layout["carry_state"]), "bytes"
    if show or show_html:
        shown = what if len(ids) <= show_chars else f"the first {show_chars:,} {shown_unit} of {what}"
        show_text(model, vocab, ids[:show_chars], shown, show, show_html, unit)
    if settings:
        tuned = dyn_lr is None and dyn_decay is None  # either given: the user's settings, as they are
        result["dynamic"] = dynamic_figures(model, ids, training_corpus(loaded), settings, tuned)
    if as_json:
        typer.echo(json.dumps(result))
    elif vocab.kind == "bytes":
        per_char = f"{result['bits_per_char']:.3f} bits/char" if result["bits_per_char"] is not None else "not UTF-8"
        typer.echo(f"{what}: perplexity {result['perplexity']:.3f} | {result['bits_per_byte']:.3f} bits/byte | "
                   f"{per_char} | loss {result['loss']:.4f} nats/byte | {count:,} bytes")
    else:
        typer.echo(f"{what}: {figures_line(result)} | {count:,} characters")
    if settings and not as_json:
        print_dynamic(result["dynamic"], settings.seq_len)


def neurons(
    file: Annotated[Optional[Path], typer.Argument(help="A UTF-8 text file. [default: the checkpoint's own validation split]", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    top: Annotated[int, Opt(help="Units listed per property, best first.")] = 3,
    max_chars: Annotated[int, Opt(help="Read only the first N characters of the text (every unit's activation at every character is kept in memory).")] = 20000,
    unknown: Annotated[str, Opt(help="Characters of FILE outside the model's vocabulary: error, or skip (drop them, with a warning).")] = "error",
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    threads: Annotated[int, threads_option()] = TrainConfig.threads,
):
    """Which hidden units track simple properties of the text (after Karpathy et al. 2015).

    Runs the text through the model as one stream, records every unit of every layer (H,
    and an LSTM's memory cell C) after each character, and lists for each property (inside
    double quotes, inside brackets, bracket depth, position in the line, start of a word,
    upper case, digit) the units whose activation correlates most with it (Pearson's r, either
    sign). Units are L:Uh or L:Uc, layers from 1, units from 0; see one with
    `charrnn eval --show --neuron L:U`.
    """
    from charrnn.storage.load import load_model
    from charrnn.corpus.byte_vocab import per_character
    from charrnn.corpus.data import check_unknown
    from charrnn.inspection.neurons import best_units, best_units_lines, record, text_properties
    from charrnn.kernels.device import set_threads

    check_unknown(unknown)
    if top < 1 or max_chars < 2:
        raise CharrnnError("--top must be at least 1 and --max-chars at least 2")
    set_threads(threads)
    loaded = load_model(checkpoint, "cpu")
    model, vocab = loaded.model, loaded.vocab
    ids, what = text_ids(file, loaded, unknown, "neurons")
    ids = ids[:max_chars]
    if len(ids) < 2:
        raise CharrnnError(f"{what} is too short (it needs at least 2 characters)")
    activations, units = record(model, ids)
    text, counted, size = vocab.decode(ids), {"chars": len(ids)}, f"{len(ids):,} characters"
    if vocab.kind == "bytes":  # a byte model's values come per byte, the text's properties per character
        activations = per_character(activations, text)
        counted, size = {"bytes": len(ids), "chars": len(text)}, f"{len(ids):,} bytes ({len(text):,} characters)"
    found = best_units(activations, units, text_properties(text), top)
    if as_json:
        typer.echo(json.dumps({"text": what, **counted, "properties": found}))
        return
    typer.echo(f"{what}, {size}: {len(units):,} units")
    typer.echo("\n".join(best_units_lines(found)))


def figures_line(figures: dict) -> str:
    return (f"perplexity {figures['perplexity']:.3f} | {figures['bits_per_char']:.3f} bits/char | "
            f"loss {figures['loss']:.4f} nats/char")


def dynamic_settings(seq_len, lr, decay):
    """DynamicSettings from the options given (None: the default)."""
    given = {"seq_len": seq_len, "lr": lr, "decay": decay}
    return DynamicSettings(**{k: v for k, v in given.items() if v is not None})


def training_corpus(loaded):
    """The loaded checkpoint's corpus: dynamic evaluation's gradient statistics and tuning text come from its training part."""
    from charrnn.corpus.data import reload_corpus

    source = loaded.checkpoint.get("corpus")
    if not isinstance(source, dict) or not source:
        raise CharrnnError("the checkpoint does not record its training corpus, which dynamic evaluation needs")
    return reload_corpus(source, cache_dir=loaded.run_dir)


def print_candidate(settings, loss: float, static: float) -> None:
    typer.echo(f"  lr {settings.lr:g}, decay {settings.decay:g}: {loss:.4f} nats/char, static {static:.4f}: "
               f"gain {static - loss:+.4f}", err=True)


def dynamic_figures(model, ids, corpus, settings, tuned: bool) -> dict:
    """Static and dynamic figures of one reading, the gain in nats/char, the settings used
    (None: tuning found none that beat static) and, when `tuned`, what tuning tried on the
    tail of the training text (printed to stderr as it goes)."""
    from dataclasses import asdict

    from charrnn.scoring.dynamic import compare, training_tail
    from charrnn.scoring.evaluation import nats_summary

    tail = training_tail(corpus.train_ids, corpus.source) if tuned else None
    if tuned:
        typer.echo(f"tuning --dyn-lr and --dyn-decay on the last {len(tail) - 1:,} characters of the training text:",
                   err=True)
    sums = compare(model, ids, corpus.train_ids, settings, tail, on_result=print_candidate)
    static, dynamic = (nats_summary(total / n) for total, n in (sums["static"], sums["dynamic"]))
    figures = {"static": static, "dynamic": dynamic, "gain": static["loss"] - dynamic["loss"],
               "chars": sums["static"][1], "settings": asdict(sums["settings"]) if sums["settings"] else None,
               "tuning": None}
    tuning = sums["tuning"]
    if tuning is not None:
        figures["tuning"] = {"chars": tuning.chars, "static": tuning.static, "skipped": tuning.skipped,
                             "tried": [{"lr": s.lr, "decay": s.decay, "loss": loss} for s, loss in tuning.tried]}
        if tuning.skipped:
            typer.echo(f"  {tuning.skipped} candidate(s) left untried: tuning's time bound", err=True)
    return figures


def print_dynamic(figures: dict, seq_len: int) -> None:
    """The static and dynamic figures of one reading and the gain, or why there is none."""
    typer.echo(f"one stream in segments of {seq_len}: static {figures_line(figures['static'])}")
    settings, how = figures["settings"], ", tuned on the training text's tail" if figures["tuning"] else ""
    if settings is None:
        typer.echo("dynamic: no candidate beat static on the training text's tail, so the static figure stands")
        return
    typer.echo(f"dynamic (lr {settings['lr']:g}, decay {settings['decay']:g}{how}): {figures_line(figures['dynamic'])}")
    typer.echo(f"gain: {figures['gain']:.4f} nats/char ({figures['gain'] / math.log(2):.4f} bits/char)")


def byte_model_result(result: dict, ids, window: int) -> dict:
    """A byte model's measures are per byte; where the text is UTF-8, bits per character
    too (bits per byte times the text's bytes per character), so that byte and character
    models compare on one text."""
    from charrnn.corpus.byte_vocab import utf8_chars

    bits_per_byte = result["bits_per_char"]
    chars = None if window else utf8_chars(ids)  # (the d2l windows are not the text once through)
    return {"perplexity": result["perplexity"], "bits_per_byte": bits_per_byte,
            "bits_per_char": bits_per_byte * len(ids) / chars if chars else None, "loss": result["loss"],
            "bytes": result["chars"], "chars": chars, "text": result["text"]}


def text_ids(file: Path | None, loaded, unknown: str, command: str):
    """(ids, what) of FILE, or of the loaded checkpoint's validation split; warnings
    printed. A byte model reads any file (every byte is in its vocabulary)."""
    from charrnn.corpus.data import reload_corpus, skipped_note
    from charrnn.corpus.text import read_byte_text, read_text

    vocab, source = loaded.vocab, loaded.checkpoint.get("corpus") or {}
    if file is None:
        if not isinstance(source, dict) or not source:
            raise CharrnnError(f"the checkpoint does not record its corpus; give a FILE to {command}")
        corpus = reload_corpus(source, cache_dir=loaded.run_dir)
        ids, what, notes = corpus.val_ids, "the validation split", corpus.notes
    elif vocab.kind == "bytes":
        ids, what, notes = read_byte_text(file, "file").ids, str(file), []
    else:
        text, what = read_text(file, "file", source.get("normalize", "none")), str(file)
        ids, dropped = vocab.ids_of(text, what=what, unknown=unknown, hint=" (--unknown skip drops them)",
                                    in_place=True)
        notes = text.notes + ([skipped_note(dropped, what)] if dropped else [])
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    return ids, what


def show_text(model, vocab, ids, what: str, show: bool, html_file: Path | None, unit) -> None:
    """Shade each character of the text by the model's surprisal, or by one unit's
    activation: in the terminal, or as HTML."""
    from rich.console import Console

    from charrnn.inspection.neurons import activation_html, activation_legend, shaded_by_unit, unit_activations
    from charrnn.inspection.surprisal import legend_text, mean_perplexity, shaded_text, surprisal, surprisal_html

    text = vocab.decode(ids)
    if unit:
        values = unit_activations(model, ids, unit)
        if vocab.kind == "bytes":  # each character shaded by the unit after its last byte
            from charrnn.corpus.byte_vocab import per_character, shown

            values, text = per_character(values, text), shown(text)
        title = f"unit {unit} on {what}"
        page, shaded, legend = activation_html(text, values, title), shaded_by_unit(text, values), activation_legend()
    else:
        bits = surprisal(model, vocab, text)
        if vocab.kind == "bytes":  # shade characters, each by the bits of its bytes
            from charrnn.corpus.byte_vocab import char_bits, shown

            bits, text = char_bits(text, bits), shown(text)
        title = f"perplexity {mean_perplexity(bits):.3f} on {what}"
        page, shaded, legend = surprisal_html(text, bits, title), shaded_text(text, bits), legend_text()
    if html_file:
        from charrnn.storage.atomic import write_text

        try:
            write_text(html_file, page)
        except OSError as e:
            raise CharrnnError(f"cannot write {html_file}: {e.strerror or e}") from None
    if show:
        console = Console(soft_wrap=True, highlight=False)
        console.print(shaded)
        console.print(legend)
        console.print(title, markup=False)
