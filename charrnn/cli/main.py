"""The `charrnn` command line: a thin layer that parses, calls the library, and prints.

This file holds the app, `train`, and the small commands (serve, info, plot);
`generate` is in generate.py, `eval` and `neurons` in evaluate.py. torch is imported
inside the commands, so `charrnn --help` and argument errors are fast.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn import __version__
from charrnn.cells import cells_help
from charrnn.cli.evaluate import evaluate_command, neurons, threads_option
from charrnn.cli.generate import generate, model_prefix, text_steps
from charrnn.config import (SIZE_SETTINGS, ServeLimits, TrainConfig, budget_given, fine_tune_config, read_preset,
                            resumed_config)
from charrnn.errors import CharrnnError

SIZED = " A new --max-time run without a preset chooses it for the text and the budget unless given (docs/presets.md)."

app = typer.Typer(
    help="Character-level recurrent language models written from scratch in PyTorch "
    "(RNN, GRU, LSTM): train, generate, eval, neurons, info, export, plot, serve.",
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


Opt = typer.Option


D = TrainConfig()  # every option of `train` takes its default from here (one source of them)
TRAIN_SETTINGS = {f.name for f in fields(TrainConfig)}


def train(
    ctx: typer.Context,
    corpus: Annotated[Optional[list[Path]], typer.Argument(
        help="A UTF-8 text file; or several paths, folders (every file inside, recursively) and quoted globs "
        "such as `books/*.txt`, read as documents in sorted order, each ended by --doc-sep. With neither CORPUS "
        "nor --dataset: the built-in corpus, the Python language reference shipped with CPython "
        "(pydoc_data.topics, ~465,000 characters).",
        show_default=False)] = None,
    config: Annotated[Optional[Path], Opt(help="A TOML preset (configs/*.toml); options given here override it.")] = None,
    dataset: Annotated[Optional[str], Opt(help="A named corpus, downloaded once and cached: timemachine or tinyshakespeare.")] = D.dataset,
    val_file: Annotated[Optional[Path], Opt(help="Validate on this file instead of the end of the corpus.")] = D.val_file,
    val_dir: Annotated[Optional[str], Opt(help="Validate on these documents, a folder or a quoted glob, instead of the end of each file.")] = D.val_dir,
    val_fraction: Annotated[float, Opt(help="The last fraction of the text (of each file, for documents) used for validation.")] = D.val_fraction,
    train_windows: Annotated[int, Opt(help="With --val-windows: split the d2l book's way, the first N stride-1 windows for training (0: by --val-fraction).")] = D.train_windows,
    val_windows: Annotated[int, Opt(help="With --train-windows: the next N windows for validation.")] = D.val_windows,
    unknown: Annotated[str, Opt(help="Validation characters the training text lacks: error, or skip (drop them, with a warning). With --init-from, characters outside the checkpoint's vocabulary: extend (its default: new rows), error or skip.")] = D.unknown,
    doc_sep: Annotated[Optional[str], Opt(help="Ends each document of several files (\\n, \\t, \\r and \\xHH are escapes). [default: a blank line; with --vocab bytes \\x03, end of text]", show_default=False)] = D.doc_sep,
    normalize: Annotated[str, Opt(help="none, or letters: the d2l book's preprocessing (non-letters to one space, lowercase).")] = D.normalize,
    vocab: Annotated[str, Opt(help="chars: the training text's characters (UTF-8 files); bytes: the 256 byte values, so any file trains and the model learns UTF-8 itself.")] = D.vocab,
    sampling: Annotated[str, Opt(help="sequential: contiguous streams, state carried across batches; random: shuffled windows from a zero state (d2l).")] = D.sampling,
    stream_offsets: Annotated[str, Opt(help="sequential: random starts the streams at a new offset every epoch (other truncation points each time); fixed starts them at the text's start.")] = D.stream_offsets,
    cell: Annotated[str, Opt(help=cells_help())] = D.cell,
    hidden: Annotated[int, Opt(help="Hidden units per layer." + SIZED)] = D.hidden,
    layers: Annotated[int, Opt(help="Stacked recurrent layers." + SIZED)] = D.layers,
    embedding: Annotated[int, Opt(help="0: one-hot characters times the input table W_xh (the book's). K > 0: that table factorised, E (vocabulary x K) @ W_xh, as nn.Embedding before nn.LSTM; Adam trains it better over a long run." + SIZED)] = D.embedding,
    dropout: Annotated[float, Opt(help="Dropout on each layer's outputs (never on the carried state)." + SIZED)] = D.dropout,
    locked_dropout: Annotated[bool, Opt("--locked-dropout/--no-locked-dropout", help="One dropout mask per sequence for all its steps (variational dropout) instead of one per step.")] = D.locked_dropout,
    weight_drop: Annotated[float, Opt(help="DropConnect on the recurrent matrices W_hh: this fraction of entries zeroed, one mask per batch (AWD-LSTM).")] = D.weight_drop,
    init: Annotated[str, Opt(help="book: every weight N(0, --init-sigma^2) (d2l); torch: as torch.nn starts them, the one-hot input table N(0, 1); orthogonal: torch, with orthogonal recurrent blocks.")] = D.init,
    init_sigma: Annotated[float, Opt(help="With --init book: the weights' standard deviation.")] = D.init_sigma,
    forget_bias: Annotated[float, Opt(help="LSTM: the forget gate's starting bias.")] = D.forget_bias,
    optimizer: Annotated[str, Opt(help="sgd, adam or adamw.")] = D.optimizer,
    lr: Annotated[float, Opt(help="Learning rate." + SIZED)] = D.lr,
    lr_schedule: Annotated[str, Opt(help="constant; cosine (decay over the step or time budget to lr x --min-lr-fraction); or plateau (multiply by --plateau-factor after --plateau-patience evaluations without a new best).")] = D.lr_schedule,
    min_lr_fraction: Annotated[float, Opt(help="With --lr-schedule cosine: the learning rate at the end, as a fraction of --lr.")] = D.min_lr_fraction,
    plateau_factor: Annotated[float, Opt(help="With --lr-schedule plateau: multiply the learning rate by this.")] = D.plateau_factor,
    plateau_patience: Annotated[int, Opt(help="With --lr-schedule plateau: evaluations without a new best validation loss before lowering it.")] = D.plateau_patience,
    warmup_steps: Annotated[int, Opt(help="Linear learning-rate warm-up steps.")] = D.warmup_steps,
    weight_decay: Annotated[float, Opt(help="Weight decay (with adamw: decoupled, as AdamW does it).")] = D.weight_decay,
    clip: Annotated[float, Opt(help="Clip gradients to this global L2 norm.")] = D.clip,
    batch_size: Annotated[int, Opt(help="Sequences per batch (per process under torchrun)." + SIZED)] = D.batch_size,
    seq_len: Annotated[int, Opt(help="Characters per sequence (truncated BPTT length)." + SIZED)] = D.seq_len,
    max_steps: Annotated[str, Opt(help="Stop after this many steps in all (0: no limit); with --resume, +N: N more than the run's step total.")] = D.max_steps,
    epochs: Annotated[float, Opt(help="Stop after this many passes over the training text (0: no limit; 10 when no other limit is given)." + SIZED)] = D.epochs,
    max_time: Annotated[str, Opt(help="A time budget: 90s, 10m, 1h (empty: none); with --resume, +10m: 10 minutes more than the run's budget. The run plans the steps that fit from the measured time of a step and of an evaluation, and revises the plan as it goes, so it ends on its budget; --replay repeats it exactly.", show_default=False)] = D.max_time,
    patience: Annotated[int, Opt(help="Early stopping: stop after this many evaluations without a new best validation loss (0: off).")] = D.patience,
    eval_every: Annotated[int, Opt(help="Evaluate (and checkpoint) every N steps.")] = D.eval_every,
    seed: Annotated[int, Opt(help="Random seed; a CPU run repeats exactly with the same seed, settings and number of processes (a --max-time run: with --replay).")] = D.seed,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = D.device,
    threads: Annotated[int, threads_option()] = D.threads,
    tf32: Annotated[bool, Opt("--tf32/--no-tf32", help="CUDA: TF32 float32 matmuls (faster on Ampere and later GPUs, products rounded to 10 mantissa bits). No effect on a CPU.")] = D.tf32,
    amp: Annotated[str, Opt(help="none, bf16 or auto. bf16: autocast to bfloat16; on a CPU every matmul takes bfloat16 operands (fast with AMX or AVX512-BF16) while the state, gates and weights stay float32; on CUDA the output layer and deeper layers' input projections, the recurrences staying float32. auto: bf16 on a CPU whose bfloat16 matmuls are measured well ahead, else none.")] = D.amp,
    cuda_graphs: Annotated[bool, Opt("--cuda-graphs/--no-cuda-graphs", help="CUDA, one process: capture the training step once as a CUDA graph and replay it (the host then launches one graph instead of thousands of small kernels). No effect on a CPU.")] = D.cuda_graphs,
    out: Annotated[str, Opt(help="Run directory (empty: runs/YYYYmmdd-HHMMSS).", show_default=False)] = D.out,
    sample_prefix: Annotated[str, Opt(help="After training, print a sample that continues this text (empty: none).", show_default=False)] = D.sample_prefix,
    sample_length: Annotated[int, Opt(help="Characters of that sample.")] = D.sample_length,
    sample_greedy: Annotated[bool, Opt("--sample-greedy/--sample-random", help="Whether that sample always takes the most likely character.")] = D.sample_greedy,
    init_from: Annotated[Optional[Path], Opt(help="Start from this trained model's weights (a run directory, checkpoint or exported folder): a new run, its own optimizer, schedule and budget. The model's shape comes from it; its vocabulary grows by the new text's characters (--unknown error refuses them, skip drops them).", show_default=False)] = D.init_from,
    resume: Annotated[Optional[Path], Opt(help="Continue this run directory exactly where it stopped; --max-steps, --epochs and --max-time count the run's total (+N, +10m: added to it).")] = None,
    replay: Annotated[Optional[Path], Opt(help="Train a new run with this run directory's settings, following its recorded plan (the step totals its --max-time revisions chose) instead of the clock: it repeats that run exactly.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Print only the final summary.")] = False,
):
    """Train a character-level language model; checkpoints go to a run directory.

    The run directory holds best.pt (lowest validation loss), last.pt, config.toml,
    metrics.jsonl (one record per evaluation) and curve.png (with matplotlib installed);
    runs/latest points at the newest run. Training stops at --max-steps, --epochs,
    --max-time or --patience, whichever comes first. Ctrl-C saves last.pt and prints how
    to resume. Under torchrun it trains data-parallel, one process per GPU or CPU share.
    A --config preset's values replace these defaults; the options given replace both.
    Without a preset, a new --max-time run chooses the model's size (width, embedding,
    dropout, learning rate, batch) for the text and the budget from a few seconds of trial
    steps, and says what it chose and why; the options given win (docs/presets.md).
    """
    from charrnn.generation.stops import unescape

    doc_sep = unescape(doc_sep) if doc_sep is not None else None  # typed in a shell: \n is two characters
    # the settings given on the command line (not left at their defaults)
    given = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()
             if k in TRAIN_SETTINGS and ctx.get_parameter_source(k).name != "DEFAULT"}
    if corpus:  # one path stays a string, as it was before several were allowed
        given["corpus"] = str(corpus[0]) if len(corpus) == 1 else [str(path) for path in corpus]
    from charrnn.training.distributed import process_group, rank, world_size
    from charrnn.training.report import TerminalReporter
    from charrnn.training.train import train as run_training

    settings, opened = train_settings(given, config, resume, replay)
    # Rank 0's writing stays inside the group, which all processes leave together: torchrun
    # stops every process as soon as one exits with an error code (130 after a signal).
    with process_group(settings.device):  # under torchrun; nothing otherwise
        summary = run_training(settings, TerminalReporter(quiet=quiet), resume=opened if resume else None,
                               replay=opened if replay else None)
        is_rank_zero = rank() == 0  # only rank 0 prints and writes
        if is_rank_zero:
            write_curve(Path(summary["run"]), quiet)
            if summary["interrupted"]:
                processes = world_size()
                launcher = "charrnn" if processes == 1 else f"torchrun --nproc_per_node={processes} -m charrnn"
                typer.echo(f"stopped by {summary['interrupted']} at step {summary['steps']}; saved {summary['run']}"
                           f"/last.pt. Resume with:\n  {launcher} train --resume {summary['run']}", err=True)
    if summary["interrupted"]:
        raise typer.Exit(130)
    if settings.sample_prefix and is_rank_zero:
        from charrnn.corpus.byte_vocab import shown
        from charrnn.storage.load import load_model
        from charrnn.generation.sample import generate as generate_chars

        model, vocab, ckpt = load_model(Path(summary["run"]) / "best.pt", "cpu")
        prefix = model_prefix(settings.sample_prefix, ckpt)
        steps = generate_chars(model, vocab, prefix, settings.sample_length, greedy=settings.sample_greedy,
                               seed=settings.seed)
        typer.echo(shown(f"sample: {prefix}" + "".join(c[0] for c in text_steps(steps, vocab, 1))))


def train_settings(given: dict, config: Path | None, resume: Path | None, replay: Path | None):
    """The run's TrainConfig from the options given, a preset, or the run resumed or replayed
    (opened once: its settings here, its weights and state in training), and that run."""
    from charrnn.storage.checkpoint import load_checkpoint
    from charrnn.training.run import Resumed

    if resume and replay:
        raise CharrnnError("--resume continues a run and --replay starts a new one: give one of them")
    opened = None
    if resume or replay:
        opened = Resumed.open(resume or replay)
        values = resumed_config(opened.ckpt, opened.path, given, replay=bool(replay))
    else:
        values = read_preset(config) if config else {}
        if "corpus" in given:
            values.pop("dataset", None)  # a corpus on the command line replaces the preset's dataset
        values.update(budget_given(given))
        if values.get("init_from"):
            values = fine_tune_config(values, load_checkpoint(values["init_from"]))
        elif values.get("max_time") and not config:  # a preset is a whole recipe: it keeps its defaults
            values["auto_size"] = [name for name in SIZE_SETTINGS if name not in values]
    return TrainConfig.from_dict(values, str(config) if config else "config"), opened


def write_curve(run: Path, quiet: bool) -> None:
    """curve.png in the run directory. Training does not need matplotlib: without it, say
    in one line that the curve was skipped. A run stopped before its first evaluation has
    nothing to draw."""
    from charrnn.training.plot import plot_runs

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


def serve(
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    host: Annotated[str, Opt(help="The address to listen on. 127.0.0.1: this machine only; 0.0.0.0 or another address lets anyone who can reach it use the model (there is no login).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="The port to listen on.")] = 8000,
    max_length: Annotated[int, Opt(help="The most characters one request may generate.")] = ServeLimits.max_length,
    max_text: Annotated[int, Opt(help="The most characters of a prompt or of a text to evaluate.")] = ServeLimits.max_text,
    threads: Annotated[int, threads_option("1: one request, one core, requests running side by side in worker threads")] = D.threads,
):
    """A local web app: a page to play with the model at /, and an HTTP JSON API.

    POST /api/generate streams a continuation (prefix, length, temperature, top_k, top_p,
    greedy, seed); POST /api/eval gives a text's surprisal per character, or a unit's
    activations (text, neuron); GET /api/info describes the model. Needs the serve extra:
    pip install -e ".[serve]" in a checkout. Ctrl-C or SIGTERM stops it within a second
    (a stream still going is cut).
    """
    import socket

    try:
        import uvicorn

        from charrnn.serve import create_app
    except ModuleNotFoundError as e:
        raise CharrnnError(f"charrnn serve needs {e.name}: pip install -e '.[serve]' in a checkout") from None
    from charrnn.storage.load import load_model
    from charrnn.kernels.device import set_threads

    limits = ServeLimits(max_length, max_text)
    set_threads(threads or 1)  # (see --threads)
    loaded = load_model(checkpoint, "cpu")
    app_ = create_app(loaded.model, loaded.vocab, loaded.checkpoint, str(loaded.path), limits)
    try:  # bound here, so that a port in use is one error line, not uvicorn's log and exit
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise CharrnnError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: anyone who can reach it can use the model", err=True)
    typer.echo(f"serving {loaded.path} at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    # SIGTERM or Ctrl-C closes the listener at once; a stream still going half a second later is cut
    uvicorn.Server(uvicorn.Config(app_, log_level="warning", timeout_graceful_shutdown=0.5)).run(sockets=[listener])


def info(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
):
    """What a checkpoint holds: model, vocabulary, training so far, corpus and its sha256."""
    from charrnn.storage.checkpoint import load_checkpoint, resolve_checkpoint
    from charrnn.inspection.surprisal import checkpoint_info, info_lines

    path = resolve_checkpoint(checkpoint)
    try:
        details = checkpoint_info(load_checkpoint(path), str(path))
        shown = json.dumps(details, ensure_ascii=False) if as_json else "\n".join(info_lines(details))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CharrnnError(f"{path} is a checkpoint with missing or malformed fields ({e!r})") from None
    typer.echo(shown)


def export(
    run: Annotated[Optional[Path], typer.Argument(help="A run directory, checkpoint file or exported folder. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    out: Annotated[Path, Opt(help="The folder to write (made if needed; files of an earlier export there are replaced).")] = Path("export"),
    onnx: Annotated[bool, Opt("--onnx", help="Also model.onnx, one step of the model, checked by onnxruntime against PyTorch.")] = False,
):
    """Take a model out of charrnn: model.safetensors, config.json, vocab.json and README.md.

    The layout the Hugging Face Hub uses; nothing in it is a pickle. --checkpoint OUT then
    works wherever a checkpoint does, with the run's own results. Needs the export extra:
    pip install -e ".[export]" in a checkout. See docs/export.md.
    """
    from charrnn.storage.export import export_model

    written = export_model(run, out, onnx)
    typer.echo(f"exported {written['source']} to {written['out']}: {', '.join(written['files'])}")
    if written["onnx_check"]:
        check = written["onnx_check"]
        typer.echo(f"model.onnx ({check['exporter']} exporter): onnxruntime's logits agree with PyTorch's over "
                   f"{check['steps']} steps (largest difference {check['max_logit_difference']:.2g})")


def plot(
    runs: Annotated[Optional[list[Path]], typer.Argument(metavar="RUN...", help="Run directories (or their metrics.jsonl files). [default: runs/latest]", show_default=False)] = None,
    out: Annotated[Path, Opt(help="The image to write; its suffix picks the format (.png, .svg, .pdf).")] = Path("curves.png"),
):
    """Draw learning curves: train and validation perplexity against step, runs on the same axes.

    One colour per run, validation solid, train dashed, log-scale perplexity. Needs
    matplotlib: pip install matplotlib.
    """
    from charrnn.training.plot import plot_runs

    typer.echo(f"wrote {plot_runs(runs or [Path('runs/latest')], out)}")


# ---------------------------------------------------------------- the commands, in the order --help lists them

app.command()(user_errors(train))
app.command()(user_errors(generate))
app.command("eval")(user_errors(evaluate_command))
app.command()(user_errors(neurons))
app.command()(user_errors(serve))
app.command()(user_errors(info))
app.command()(user_errors(export))
app.command()(user_errors(plot))
