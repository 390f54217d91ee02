"""The `charrnn` command line: a thin layer that parses, calls the library, and prints.

torch is imported inside the commands, so `charrnn --help` and argument errors are fast.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn import __version__
from charrnn.errors import CharrnnError

app = typer.Typer(
    help="Character-level recurrent language models written from scratch in PyTorch "
    "(RNN, GRU, LSTM): train, generate, eval, neurons, info, plot, serve.",
    no_args_is_help=True,
    # markdown, not rich markup: rich would take "[default: 256]" in a help text for a style tag and drop it
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def user_errors(command):
    """User mistakes end in one line on stderr and a non-zero exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CharrnnError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except BrokenPipeError:  # the reader left (`charrnn generate | head`): stop quietly, as `yes | head` does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
            raise typer.Exit(128 + signal.SIGPIPE) from None
        except OSError as e:  # the file system said no (disk full, permissions): not a bug to trace
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(CharrnnError.exit_code) from None

    return wrapper


def version_callback(value: bool):
    if value:
        typer.echo(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """Character-level recurrent language models written from scratch in PyTorch."""
    # a terminal or pipe that cannot show every character (PYTHONIOENCODING=ascii, a Latin-1
    # locale) gets escapes such as \u2019 for the rest, instead of a UnicodeEncodeError
    for stream in (sys.stdout, sys.stderr):
        if "utf" not in (getattr(stream, "encoding", None) or "utf").lower() and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def read_preset(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CharrnnError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise CharrnnError(f"config file {path} is not valid TOML: {e}") from None


Opt = typer.Option


@app.command()
@user_errors
def train(
    corpus: Annotated[Optional[Path], typer.Argument(
        help="A UTF-8 text file. With neither CORPUS nor --dataset: the built-in corpus, the Python "
        "language reference shipped with CPython (pydoc_data.topics, ~465,000 characters).",
        show_default=False)] = None,
    config: Annotated[Optional[Path], Opt(help="A TOML preset (configs/*.toml); options given here override it.")] = None,
    dataset: Annotated[Optional[str], Opt(help="A named corpus, downloaded once and cached: timemachine or tinyshakespeare.")] = None,
    val_file: Annotated[Optional[Path], Opt(help="Validate on this file instead of the end of the corpus.")] = None,
    unknown: Annotated[Optional[str], Opt(help="Validation characters the training text lacks: error, or skip (drop them, with a warning). [default: error]")] = None,
    val_fraction: Annotated[Optional[float], Opt(help="The last fraction of the text used for validation. [default: 0.1]")] = None,
    normalize: Annotated[Optional[str], Opt(help="none, or letters: the d2l book's preprocessing (non-letters to one space, lowercase). [default: none]")] = None,
    sampling: Annotated[Optional[str], Opt(help="sequential: contiguous streams, state carried across batches; random: shuffled windows from a zero state (d2l). [default: sequential]")] = None,
    cell: Annotated[Optional[str], Opt(help="rnn, gru or lstm. [default: lstm]")] = None,
    hidden: Annotated[Optional[int], Opt(help="Hidden units per layer. [default: 256]")] = None,
    layers: Annotated[Optional[int], Opt(help="Stacked recurrent layers. [default: 1]")] = None,
    dropout: Annotated[Optional[float], Opt(help="Dropout on each layer's outputs. [default: 0]")] = None,
    init_sigma: Annotated[Optional[float], Opt(help="Weights start as N(0, sigma^2) (the book's init). [default: 0.01]")] = None,
    optimizer: Annotated[Optional[str], Opt(help="sgd, adam or adamw. [default: adam]")] = None,
    lr: Annotated[Optional[float], Opt(help="Learning rate. [default: 0.002]")] = None,
    lr_schedule: Annotated[Optional[str], Opt(help="constant; cosine (decay over the step or time budget); or plateau (multiply by --plateau-factor after --plateau-patience evaluations without a new best). [default: constant]")] = None,
    plateau_factor: Annotated[Optional[float], Opt(help="With --lr-schedule plateau: multiply the learning rate by this. [default: 0.5]")] = None,
    plateau_patience: Annotated[Optional[int], Opt(help="With --lr-schedule plateau: evaluations without a new best validation loss before lowering it. [default: 2]")] = None,
    warmup_steps: Annotated[Optional[int], Opt(help="Linear learning-rate warm-up steps. [default: 0]")] = None,
    clip: Annotated[Optional[float], Opt(help="Clip gradients to this global L2 norm. [default: 1.0]")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Sequences per batch (per process under torchrun). [default: 32]")] = None,
    seq_len: Annotated[Optional[int], Opt(help="Characters per sequence (truncated BPTT length). [default: 64]")] = None,
    max_steps: Annotated[Optional[int], Opt(help="Stop after this many steps in all.")] = None,
    epochs: Annotated[Optional[float], Opt(help="Stop after this many passes over the training text (default 10 when no other limit is given).")] = None,
    max_time: Annotated[Optional[str], Opt(help="Stop after this much training time: 90s, 10m, 1h.")] = None,
    patience: Annotated[Optional[int], Opt(help="Early stopping: stop after this many evaluations without a new best validation loss (0: off). [default: 0]")] = None,
    eval_every: Annotated[Optional[int], Opt(help="Evaluate (and checkpoint) every N steps. [default: 200]")] = None,
    seed: Annotated[Optional[int], Opt(help="Random seed; CPU runs with the same seed repeat exactly. [default: 0]")] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu or cuda. [default: auto]")] = None,
    tf32: Annotated[Optional[bool], Opt("--tf32/--no-tf32", help="CUDA: TF32 float32 matmuls (faster on Ampere and later GPUs, products rounded to 10 mantissa bits). No effect on a CPU. [default: off]", show_default=False)] = None,
    amp: Annotated[Optional[str], Opt(help="none, or bf16: CUDA autocast to bfloat16 for the output layer and deeper layers' input projections; the recurrences stay float32. No effect on a CPU. [default: none]")] = None,
    cuda_graphs: Annotated[Optional[bool], Opt("--cuda-graphs/--no-cuda-graphs", help="CUDA, one process: capture the training step once as a CUDA graph and replay it (the host then launches one graph instead of thousands of small kernels). No effect on a CPU. [default: on]", show_default=False)] = None,
    out: Annotated[Optional[Path], Opt(help="Run directory. [default: runs/YYYYmmdd-HHMMSS]")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue this run directory exactly where it stopped; --max-steps, --epochs and --max-time count the run's total.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Print only the final summary.")] = False,
):
    """Train a character-level language model; checkpoints go to a run directory.

    The run directory holds best.pt (lowest validation loss), last.pt, config.toml,
    metrics.jsonl (one record per evaluation) and curve.png (with matplotlib installed);
    runs/latest points at the newest run. Training stops at --max-steps, --epochs,
    --max-time or --patience, whichever comes first. Ctrl-C saves last.pt and prints how
    to resume. Under torchrun it trains data-parallel, one process per GPU or CPU share.
    """
    given = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()
             if v is not None and k not in ("config", "quiet", "resume")}
    from charrnn.distributed import process_group, rank, world_size
    from charrnn.report import TerminalReporter
    from charrnn.train import TrainConfig, train as run_training

    if resume:
        values = resumed_config(resume, given)
    else:
        values = read_preset(config) if config else {}
        if "corpus" in given:
            values.pop("dataset", None)  # a corpus on the command line replaces the preset's dataset
    values.update(given)
    settings = TrainConfig.from_dict(values, str(config) if config else "config")
    with process_group(settings.device):  # under torchrun; nothing otherwise
        summary = run_training(settings, TerminalReporter(quiet=quiet), resume=resume)
        speaks = rank() == 0  # only rank 0 prints and writes
        processes = world_size()
    if speaks:
        write_curve(Path(summary["run"]), quiet)
    if summary["interrupted"]:
        if speaks:
            launcher = "charrnn" if processes == 1 else f"torchrun --nproc_per_node={processes} -m charrnn"
            typer.echo(f"stopped by {summary['interrupted']} at step {summary['steps']}; saved "
                       f"{summary['run']}/last.pt. Resume with:\n  {launcher} train --resume {summary['run']}", err=True)
        raise typer.Exit(130)
    if settings.sample_prefix and speaks:
        from charrnn.sample import generate as generate_chars

        model, vocab, ckpt = load_model(Path(summary["run"]) / "best.pt", "cpu")
        prefix = model_prefix(settings.sample_prefix, ckpt)
        text = "".join(c[0] for c in generate_chars(model, vocab, prefix, settings.sample_length,
                                                    greedy=settings.sample_greedy, seed=settings.seed))
        typer.echo(f"sample: {prefix}{text}")


def write_curve(run: Path, quiet: bool) -> None:
    """curve.png in the run directory. Training does not need matplotlib: without it, say
    in one line that the curve was skipped. A run stopped before its first evaluation has
    nothing to draw."""
    from charrnn.plot import plot_runs

    if not (run / "metrics.jsonl").is_file():
        return
    try:
        curve = plot_runs([run], run / "curve.png")
    except CharrnnError as e:
        if not quiet:
            typer.echo(f"curve.png skipped: {e}", err=True)
        return
    if not quiet:
        typer.echo(f"learning curve: {curve}")


# What may change when a run resumes: how long it goes on and where; not the model or data.
# The batch size may, so that a run resumed on another number of processes can keep its
# global batch (--batch-size x processes).
RESUMABLE = {"max_steps", "epochs", "max_time", "patience", "eval_every", "device", "batch_size", "tf32", "amp",
             "cuda_graphs", "sample_prefix", "sample_length", "sample_greedy"}


def resumed_config(run: Path, given: dict) -> dict:
    from charrnn.checkpoint import LAST_FIRST, load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(run, order=LAST_FIRST)
    values = load_checkpoint(path).get("config")
    if not isinstance(values, dict):
        raise CharrnnError(f"{path} records no training settings, so it cannot be resumed")
    values = dict(values)
    fixed = sorted(k for k in given if k not in RESUMABLE and given[k] != values.get(k))
    if fixed:
        names = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise CharrnnError(f"{names} cannot change when resuming a run (start a new run instead)")
    return values


def model_prefix(prefix: str, ckpt: dict) -> str:
    """The prefix as the model saw its training text: normalized the same way."""
    from charrnn.data import normalize

    return normalize(prefix, ckpt.get("corpus", {}).get("normalize", "none"))


def load_model(where, device_name: str = "auto"):
    """(model, vocab, checkpoint) from a checkpoint file or run directory (None: runs/latest)."""
    import torch

    from charrnn.checkpoint import load_checkpoint, resolve_checkpoint
    from charrnn.data import Vocab
    from charrnn.model import ModelConfig, build_model
    from charrnn.train import pick_device

    device = pick_device(device_name)
    ckpt = load_checkpoint(resolve_checkpoint(where), map_location=device)
    try:
        vocab = Vocab.from_dict(ckpt["vocab"])
        config = ModelConfig(**ckpt["model_config"])
        if not (isinstance(config.layers, int) and 0 < config.layers <= len(ckpt["model"])):
            raise ValueError(f"{config.layers!r} layers")
        # Built on the meta device: no memory is set aside for whatever sizes a damaged or
        # hostile file claims; the weights are the file's own tensors.
        with torch.device("meta"):
            model = build_model(config)
        model.load_state_dict(ckpt["model"], assign=True)
    except (TypeError, KeyError, RuntimeError, ValueError, AttributeError) as e:
        raise CharrnnError(f"the checkpoint's model does not fit its config: {str(e).splitlines()[0]}") from None
    if len(vocab) != config.vocab_size:
        raise CharrnnError(f"the checkpoint's vocabulary has {len(vocab)} characters but its model {config.vocab_size}")
    if not all(p.device.type != "meta" and p.is_floating_point() and bool(torch.isfinite(p).all())
               for p in model.parameters()):
        raise CharrnnError("the checkpoint's weights are not all finite floating-point numbers")
    return model.to(device).eval(), vocab, ckpt


@app.command()
@user_errors
def generate(
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    prefix: Annotated[str, Opt(help="Text to warm the state up on; the continuation follows it.")] = "",
    prefix_file: Annotated[Optional[Path], Opt(help="Warm up on this UTF-8 file instead (a long prime); only the continuation is printed.")] = None,
    length: Annotated[int, Opt(help="Characters to generate.")] = 200,
    temperature: Annotated[float, Opt(help="Divide the logits by this: < 1 is safer, > 1 wilder.")] = 1.0,
    top_k: Annotated[int, Opt(help="Sample only among the k most likely characters (0: all).")] = 0,
    top_p: Annotated[float, Opt(help="Nucleus sampling: only among the fewest most likely characters whose probabilities add up to p (1: all).")] = 1.0,
    greedy: Annotated[bool, Opt("--greedy", help="Always take the most likely character (the book's predict).")] = False,
    samples: Annotated[int, Opt(help="Generate this many continuations at once.")] = 1,
    seed: Annotated[Optional[int], Opt(help="Random seed for repeatable samples.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object: prefix, samples (a list) and settings.")] = False,
    interactive: Annotated[bool, Opt("--interactive", "-i", help="A prompt: each line typed is fed to the model and continued by --length characters; the state carries over between lines (an empty line just continues). Ctrl-D ends.")] = False,
    device: Annotated[str, Opt(help="auto, cpu or cuda. auto: the CPU for one sample (a step per character is too small for a GPU to gain on it), CUDA where available for several (see the README's Performance).")] = "auto",
):
    """Generate text: warm the state up on --prefix, then emit one character at a time."""
    import torch

    from charrnn.checkpoint import resolve_checkpoint
    from charrnn.data import read_text
    from charrnn.sample import GenerationStream

    if prefix and prefix_file:
        raise CharrnnError("give --prefix or --prefix-file, not both")
    if interactive and (as_json or samples > 1):
        raise CharrnnError("--interactive continues one sample at a prompt; it takes neither --json nor --samples")
    if prefix_file:
        prefix = read_text(prefix_file, "prefix file").as_str()
    model, vocab, ckpt = load_model(checkpoint, "cpu" if device == "auto" and samples == 1 else device)
    prefix = model_prefix(prefix, ckpt)
    stream = GenerationStream(model, vocab, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              samples=samples, seed=seed)
    stream.feed(prefix, f"the prefix file {prefix_file}" if prefix_file else "the prefix")
    steps = stream.sample(length)  # checks --length before anything is printed, the prompt included
    if model.W_hq.device.type == "cpu" and samples == 1:
        # one sequence is a chain of tiny matrix-vector products: a second CPU thread only
        # adds synchronisation (measured: ~2x slower per character on this project's 2 cores)
        torch.set_num_threads(1)
    if interactive:
        return prompt_loop(stream, length, ckpt)
    if as_json:
        texts = ["".join(chars) for chars in zip(*steps)] or [""] * samples
        settings = {"checkpoint": str(resolve_checkpoint(checkpoint)), "length": length, "temperature": temperature,
                    "top_k": top_k, "top_p": top_p, "greedy": greedy, "seed": seed}
        typer.echo(json.dumps({"prefix": prefix, "samples": texts, "settings": settings}, ensure_ascii=False))
        return
    if prefix_file:
        prefix = ""  # the prime is the user's own file: print only what follows it
    if samples == 1:
        sys.stdout.write(prefix)
        for chars in steps:
            sys.stdout.write(chars[0])
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    columns = list(zip(*steps)) or [()] * samples
    for i, chars in enumerate(columns, 1):
        typer.echo(f"--- sample {i} ---\n{prefix}{''.join(chars)}")


def prompt_loop(stream, length: int, ckpt: dict) -> None:
    """Feed each line typed (normalized as the training text was) and stream its
    continuation, until end of input (Ctrl-D). A line the vocabulary cannot encode gets a
    one-line message and the loop goes on."""
    try:
        import readline  # noqa: F401  (gives input() line editing and history where available)
    except ImportError:
        pass
    typer.echo(f"Type text for the model to continue ({length} characters each); an empty line "
               "continues where it stopped; Ctrl-D ends.", err=True)
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                typer.echo("")  # end the prompt's line
                return
            try:
                stream.feed(model_prefix(line, ckpt), "that line")
            except CharrnnError as e:
                typer.echo(f"error: {e}", err=True)
                continue
            for chars in stream.sample(length):
                sys.stdout.write(chars[0])
                sys.stdout.flush()
            sys.stdout.write("\n")
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(130) from None


@app.command("eval")
@user_errors
def evaluate_command(
    file: Annotated[Optional[Path], typer.Argument(help="A UTF-8 text file. [default: the checkpoint's own validation split]", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    batch_size: Annotated[int, Opt(help="Parallel streams the text is cut into.")] = 16,
    seq_len: Annotated[int, Opt(help="Characters per forward call.")] = 256,
    unknown: Annotated[str, Opt(help="Characters of FILE outside the model's vocabulary: error, or skip (drop them, with a warning).")] = "error",
    show: Annotated[bool, Opt("--show", help="Print the text with each character shaded by the model's surprisal (bits), to see where it is confused.")] = False,
    show_chars: Annotated[int, Opt(help="How much of the text --show and --show-html shade: the first N characters.")] = 2000,
    show_html: Annotated[Optional[Path], Opt(help="Write the shaded text as a self-contained HTML page to this file.")] = None,
    neuron: Annotated[Optional[str], Opt(help="With --show or --show-html: shade by this unit's activation (blue -1 to red 1) instead of by surprisal. L:U is layer L's output unit U, L:Uc an LSTM's memory cell (layers from 1, units from 0; `charrnn neurons` finds units worth a look).")] = None,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = "auto",
):
    """Perplexity and bits per character of a model on FILE or on its validation split."""
    from charrnn.data import check_unknown
    from charrnn.neurons import parse_unit
    from charrnn.train import evaluate

    if batch_size < 1 or seq_len < 1:
        raise CharrnnError("--batch-size and --seq-len must be positive")
    check_unknown(unknown)
    if show_chars < 2:
        raise CharrnnError(f"--show-chars must be at least 2, got {show_chars}")
    if show and as_json:
        raise CharrnnError("--show prints shaded text; it does not mix with --json (use --show-html FILE)")
    if neuron and not (show or show_html):
        raise CharrnnError("--neuron picks what --show or --show-html shade by; give one of them")
    model, vocab, ckpt = load_model(checkpoint, device)
    unit = parse_unit(neuron, model) if neuron else None
    ids, what, window = text_ids(file, checkpoint, ckpt, vocab, unknown, "eval")
    if len(ids) < 2:
        raise CharrnnError(f"{what} is too short to evaluate (it needs at least 2 characters)")
    if window:  # the book's split: stride-1 windows of the run's seq_len, each from a zero state
        loss_sum, count = evaluate(model, ids, batch_size=1024, seq_len=window, carry_state=False)
    else:
        loss_sum, count = evaluate(model, ids, batch_size=batch_size, seq_len=seq_len)
    loss = loss_sum / count
    result = {"perplexity": math.exp(min(loss, 709)), "bits_per_char": loss / math.log(2), "loss": loss,
              "chars": count, "text": what}
    if show or show_html:
        shown = what if len(ids) <= show_chars else f"the first {show_chars:,} characters of {what}"
        show_text(model, vocab, ids[:show_chars], shown, show, show_html, unit)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"{what}: perplexity {result['perplexity']:.3f} | {result['bits_per_char']:.3f} "
                   f"bits/char | loss {loss:.4f} nats/char | {count:,} characters")


def text_ids(file: Path | None, checkpoint: Path | None, ckpt: dict, vocab, unknown: str, command: str):
    """(ids, what, window) of FILE, or of the checkpoint's validation split (window: the
    book's window length where the run used d2l windows, else 0); warnings printed."""
    from charrnn.checkpoint import resolve_checkpoint
    from charrnn.data import read_text, reload_corpus, skipped_note

    source = ckpt.get("corpus") or {}
    if file is None:
        if not isinstance(source, dict) or not source:
            raise CharrnnError(f"the checkpoint does not record its corpus; give a FILE to {command}")
        corpus = reload_corpus(source, cache_dir=resolve_checkpoint(checkpoint).parent)
        ids, what, notes = corpus.val_ids, "the validation split", corpus.notes
        window = source["windows"][2] if "windows" in source else 0
    else:
        text, what, window = read_text(file, "file", source.get("normalize", "none")), str(file), 0
        ids, dropped = vocab.ids_of(text, what=what, unknown=unknown, hint=" (--unknown skip drops them)",
                                    in_place=True)
        notes = text.notes + ([skipped_note(dropped, what)] if dropped else [])
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    return ids, what, window


def show_text(model, vocab, ids, what: str, show: bool, html_file: Path | None, unit) -> None:
    """Shade each character of the text by the model's surprisal, or by one unit's
    activation: in the terminal, or as HTML."""
    from rich.console import Console

    from charrnn.neurons import activation_html, activation_legend, shaded_by_unit, unit_activations
    from charrnn.surprisal import legend_text, mean_perplexity, shaded_text, surprisal, surprisal_html

    text = vocab.decode(ids)
    if unit:
        values = unit_activations(model, ids, unit)
        title = f"unit {unit} on {what}"
        page, shaded, legend = activation_html(text, values, title), shaded_by_unit(text, values), activation_legend()
    else:
        bits = surprisal(model, vocab, text)
        title = f"perplexity {mean_perplexity(bits):.3f} on {what}"
        page, shaded, legend = surprisal_html(text, bits, title), shaded_text(text, bits), legend_text()
    if html_file:
        try:
            html_file.write_text(page, encoding="utf-8")
        except OSError as e:
            raise CharrnnError(f"cannot write {html_file}: {e.strerror or e}") from None
    if show:
        console = Console(soft_wrap=True, highlight=False)
        console.print(shaded)
        console.print(legend)
        console.print(title, markup=False)


@app.command()
@user_errors
def neurons(
    file: Annotated[Optional[Path], typer.Argument(help="A UTF-8 text file. [default: the checkpoint's own validation split]", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    top: Annotated[int, Opt(help="Units listed per property, best first.")] = 3,
    max_chars: Annotated[int, Opt(help="Read only the first N characters of the text (every unit's activation at every character is kept in memory).")] = 20000,
    unknown: Annotated[str, Opt(help="Characters of FILE outside the model's vocabulary: error, or skip (drop them, with a warning).")] = "error",
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
):
    """Which hidden units track simple properties of the text (after Karpathy et al. 2015).

    Runs the text through the model as one stream, records every unit of every layer (H,
    and an LSTM's memory cell C) after each character, and lists for each property (inside
    double quotes, inside brackets, bracket depth, position in the line, start of a word,
    upper case, digit) the units whose activation correlates most with it (Pearson's r, either
    sign). Units are L:Uh or L:Uc, layers from 1, units from 0; see one with
    `charrnn eval --show --neuron L:U`.
    """
    from charrnn.data import check_unknown
    from charrnn.neurons import best_units, best_units_lines, record, text_properties

    check_unknown(unknown)
    if top < 1 or max_chars < 2:
        raise CharrnnError("--top must be at least 1 and --max-chars at least 2")
    model, vocab, ckpt = load_model(checkpoint, "cpu")
    ids, what, _ = text_ids(file, checkpoint, ckpt, vocab, unknown, "neurons")
    ids = ids[:max_chars]
    if len(ids) < 2:
        raise CharrnnError(f"{what} is too short (it needs at least 2 characters)")
    activations, units = record(model, ids)
    found = best_units(activations, units, text_properties(vocab.decode(ids)), top)
    if as_json:
        typer.echo(json.dumps({"text": what, "chars": len(ids), "properties": found}))
        return
    typer.echo(f"{what}, {len(ids):,} characters: {len(units):,} units")
    typer.echo("\n".join(best_units_lines(found)))


@app.command()
@user_errors
def serve(
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    host: Annotated[str, Opt(help="The address to listen on. 127.0.0.1: this machine only; 0.0.0.0 or another address lets anyone who can reach it use the model (there is no login).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="The port to listen on.")] = 8000,
    max_length: Annotated[int, Opt(help="The most characters one request may generate.")] = 2000,
    max_text: Annotated[int, Opt(help="The most characters of a prompt or of a text to evaluate.")] = 10_000,
):
    """A local web app: a page to play with the model at /, and an HTTP JSON API.

    POST /api/generate streams a continuation (prefix, length, temperature, top_k, top_p,
    greedy, seed); POST /api/eval gives a text's surprisal per character, or a unit's
    activations (text, neuron); GET /api/info describes the model. Needs the serve extra:
    pip install charrnn[serve]. Ctrl-C stops it.
    """
    import socket

    import torch

    try:
        import uvicorn

        from charrnn.serve import Limits, create_app
    except ModuleNotFoundError as e:
        raise CharrnnError(f"charrnn serve needs {e.name}: pip install charrnn[serve]") from None
    from charrnn.checkpoint import resolve_checkpoint

    if max_length < 1 or max_text < 1:
        raise CharrnnError("--max-length and --max-text must be positive")
    model, vocab, ckpt = load_model(checkpoint, "cpu")
    torch.set_num_threads(1)  # one request, one core: requests run side by side in worker threads
    app_ = create_app(model, vocab, ckpt, str(resolve_checkpoint(checkpoint)), Limits(max_length, max_text))
    try:  # bound here, so that a port in use is one error line, not uvicorn's log and exit
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise CharrnnError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: anyone who can reach it can use the model", err=True)
    typer.echo(f"serving {resolve_checkpoint(checkpoint)} at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    uvicorn.Server(uvicorn.Config(app_, log_level="warning")).run(sockets=[listener])


@app.command()
@user_errors
def info(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
):
    """What a checkpoint holds: model, vocabulary, training so far, corpus and its sha256."""
    from charrnn.checkpoint import load_checkpoint, resolve_checkpoint
    from charrnn.surprisal import checkpoint_info, info_lines

    path = resolve_checkpoint(checkpoint)
    try:
        details = checkpoint_info(load_checkpoint(path), str(path))
        shown = json.dumps(details, ensure_ascii=False) if as_json else "\n".join(info_lines(details))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CharrnnError(f"{path} is a checkpoint with missing or malformed fields ({e!r})") from None
    typer.echo(shown)


@app.command()
@user_errors
def plot(
    runs: Annotated[Optional[list[Path]], typer.Argument(metavar="RUN...", help="Run directories (or their metrics.jsonl files). [default: runs/latest]", show_default=False)] = None,
    out: Annotated[Path, Opt(help="The image to write; its suffix picks the format (.png, .svg, .pdf).")] = Path("curves.png"),
):
    """Draw learning curves: train and validation perplexity against step, runs on the same axes.

    One colour per run, validation solid, train dashed, log-scale perplexity. Needs
    matplotlib: pip install charrnn[plot].
    """
    from charrnn.plot import plot_runs

    typer.echo(f"wrote {plot_runs(runs or [Path('runs/latest')], out)}")
