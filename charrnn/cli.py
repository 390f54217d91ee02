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
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn import __version__
from charrnn.config import TrainConfig, read_preset, resumed_config
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


Opt = typer.Option


D = TrainConfig()  # every option of `train` takes its default from here (one source of them)
TRAIN_SETTINGS = {f.name for f in fields(TrainConfig)}


@app.command()
@user_errors
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
    unknown: Annotated[str, Opt(help="Validation characters the training text lacks: error, or skip (drop them, with a warning).")] = D.unknown,
    doc_sep: Annotated[Optional[str], Opt(help="Ends each document of several files (\\n, \\t, \\r and \\xHH are escapes). [default: a blank line; with --vocab bytes \\x03, end of text]", show_default=False)] = D.doc_sep,
    normalize: Annotated[str, Opt(help="none, or letters: the d2l book's preprocessing (non-letters to one space, lowercase).")] = D.normalize,
    vocab: Annotated[str, Opt(help="chars: the training text's characters (UTF-8 files); bytes: the 256 byte values, so any file trains and the model learns UTF-8 itself.")] = D.vocab,
    sampling: Annotated[str, Opt(help="sequential: contiguous streams, state carried across batches; random: shuffled windows from a zero state (d2l).")] = D.sampling,
    stream_offsets: Annotated[str, Opt(help="sequential: random starts the streams at a new offset every epoch (other truncation points each time); fixed starts them at the text's start.")] = D.stream_offsets,
    cell: Annotated[str, Opt(help="rnn, gru or lstm.")] = D.cell,
    hidden: Annotated[int, Opt(help="Hidden units per layer.")] = D.hidden,
    layers: Annotated[int, Opt(help="Stacked recurrent layers.")] = D.layers,
    dropout: Annotated[float, Opt(help="Dropout on each layer's outputs (never on the carried state).")] = D.dropout,
    locked_dropout: Annotated[bool, Opt("--locked-dropout/--no-locked-dropout", help="One dropout mask per sequence for all its steps (variational dropout) instead of one per step.")] = D.locked_dropout,
    weight_drop: Annotated[float, Opt(help="DropConnect on the recurrent matrices W_hh: this fraction of entries zeroed, one mask per batch (AWD-LSTM).")] = D.weight_drop,
    init: Annotated[str, Opt(help="book: every weight N(0, --init-sigma^2) (d2l); torch: as torch.nn starts them, the one-hot input table N(0, 1); orthogonal: torch, with orthogonal recurrent blocks.")] = D.init,
    init_sigma: Annotated[float, Opt(help="With --init book: the weights' standard deviation.")] = D.init_sigma,
    forget_bias: Annotated[float, Opt(help="LSTM: the forget gate's starting bias.")] = D.forget_bias,
    optimizer: Annotated[str, Opt(help="sgd, adam or adamw.")] = D.optimizer,
    lr: Annotated[float, Opt(help="Learning rate.")] = D.lr,
    lr_schedule: Annotated[str, Opt(help="constant; cosine (decay over the step or time budget to lr x --min-lr-fraction); or plateau (multiply by --plateau-factor after --plateau-patience evaluations without a new best).")] = D.lr_schedule,
    min_lr_fraction: Annotated[float, Opt(help="With --lr-schedule cosine: the learning rate at the end, as a fraction of --lr.")] = D.min_lr_fraction,
    plateau_factor: Annotated[float, Opt(help="With --lr-schedule plateau: multiply the learning rate by this.")] = D.plateau_factor,
    plateau_patience: Annotated[int, Opt(help="With --lr-schedule plateau: evaluations without a new best validation loss before lowering it.")] = D.plateau_patience,
    warmup_steps: Annotated[int, Opt(help="Linear learning-rate warm-up steps.")] = D.warmup_steps,
    weight_decay: Annotated[float, Opt(help="Weight decay (with adamw: decoupled, as AdamW does it).")] = D.weight_decay,
    clip: Annotated[float, Opt(help="Clip gradients to this global L2 norm.")] = D.clip,
    batch_size: Annotated[int, Opt(help="Sequences per batch (per process under torchrun).")] = D.batch_size,
    seq_len: Annotated[int, Opt(help="Characters per sequence (truncated BPTT length).")] = D.seq_len,
    max_steps: Annotated[int, Opt(help="Stop after this many steps in all (0: no limit).")] = D.max_steps,
    epochs: Annotated[float, Opt(help="Stop after this many passes over the training text (0: no limit; 10 when no other limit is given).")] = D.epochs,
    max_time: Annotated[str, Opt(help="A time budget: 90s, 10m, 1h (empty: none). Turned once into a step count, from the measured time of a step and of an evaluation; the count is printed and recorded, so --max-steps with it repeats the run.", show_default=False)] = D.max_time,
    patience: Annotated[int, Opt(help="Early stopping: stop after this many evaluations without a new best validation loss (0: off).")] = D.patience,
    eval_every: Annotated[int, Opt(help="Evaluate (and checkpoint) every N steps.")] = D.eval_every,
    seed: Annotated[int, Opt(help="Random seed; a CPU run repeats exactly with the same seed, settings and number of processes (a --max-time run: with --max-steps of the step count it printed).")] = D.seed,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = D.device,
    threads: Annotated[int, Opt(help="CPU threads for torch (0: torch's default, one per core). On a machine busy with other work, fewer threads than cores can be much faster.")] = D.threads,
    tf32: Annotated[bool, Opt("--tf32/--no-tf32", help="CUDA: TF32 float32 matmuls (faster on Ampere and later GPUs, products rounded to 10 mantissa bits). No effect on a CPU.")] = D.tf32,
    amp: Annotated[str, Opt(help="none, bf16 or auto. bf16: autocast to bfloat16; on a CPU every matmul takes bfloat16 operands (fast with AMX or AVX512-BF16) while the state, gates and weights stay float32; on CUDA the output layer and deeper layers' input projections, the recurrences staying float32. auto: bf16 on a CPU whose bfloat16 matmuls are measured well ahead, else none.")] = D.amp,
    cuda_graphs: Annotated[bool, Opt("--cuda-graphs/--no-cuda-graphs", help="CUDA, one process: capture the training step once as a CUDA graph and replay it (the host then launches one graph instead of thousands of small kernels). No effect on a CPU.")] = D.cuda_graphs,
    out: Annotated[str, Opt(help="Run directory (empty: runs/YYYYmmdd-HHMMSS).", show_default=False)] = D.out,
    sample_prefix: Annotated[str, Opt(help="After training, print a sample that continues this text (empty: none).", show_default=False)] = D.sample_prefix,
    sample_length: Annotated[int, Opt(help="Characters of that sample.")] = D.sample_length,
    sample_greedy: Annotated[bool, Opt("--sample-greedy/--sample-random", help="Whether that sample always takes the most likely character.")] = D.sample_greedy,
    resume: Annotated[Optional[Path], Opt(help="Continue this run directory exactly where it stopped; --max-steps, --epochs and --max-time count the run's total.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Print only the final summary.")] = False,
):
    """Train a character-level language model; checkpoints go to a run directory.

    The run directory holds best.pt (lowest validation loss), last.pt, config.toml,
    metrics.jsonl (one record per evaluation) and curve.png (with matplotlib installed);
    runs/latest points at the newest run. Training stops at --max-steps, --epochs,
    --max-time or --patience, whichever comes first. Ctrl-C saves last.pt and prints how
    to resume. Under torchrun it trains data-parallel, one process per GPU or CPU share.
    A --config preset's values replace these defaults; the options given replace both.
    """
    from charrnn.stops import unescape

    doc_sep = unescape(doc_sep) if doc_sep is not None else None  # typed in a shell: \n is two characters
    # the settings given on the command line (not left at their defaults)
    given = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()
             if k in TRAIN_SETTINGS and ctx.get_parameter_source(k).name != "DEFAULT"}
    if corpus:  # one path stays a string, as it was before several were allowed
        given["corpus"] = str(corpus[0]) if len(corpus) == 1 else [str(path) for path in corpus]
    from charrnn.distributed import process_group, rank, world_size
    from charrnn.report import TerminalReporter
    from charrnn.train import train as run_training

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
        is_rank_zero = rank() == 0  # only rank 0 prints and writes
        processes = world_size()
    if is_rank_zero:
        write_curve(Path(summary["run"]), quiet)
    if summary["interrupted"]:
        if is_rank_zero:
            launcher = "charrnn" if processes == 1 else f"torchrun --nproc_per_node={processes} -m charrnn"
            typer.echo(f"stopped by {summary['interrupted']} at step {summary['steps']}; saved "
                       f"{summary['run']}/last.pt. Resume with:\n  {launcher} train --resume {summary['run']}", err=True)
        raise typer.Exit(130)
    if settings.sample_prefix and is_rank_zero:
        from charrnn.byte_vocab import shown
        from charrnn.sample import generate as generate_chars

        model, vocab, ckpt = load_model(Path(summary["run"]) / "best.pt", "cpu")
        prefix = model_prefix(settings.sample_prefix, ckpt)
        steps = generate_chars(model, vocab, prefix, settings.sample_length, greedy=settings.sample_greedy,
                               seed=settings.seed)
        typer.echo(shown(f"sample: {prefix}" + "".join(c[0] for c in text_steps(steps, vocab, 1))))



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


def model_prefix(prefix: str, ckpt: dict) -> str:
    """The prefix as the model saw its training text: normalized the same way."""
    from charrnn.text import normalize

    return normalize(prefix, ckpt.get("corpus", {}).get("normalize", "none"))


def load_model(where, device_name: str = "auto"):
    """(model, vocab, checkpoint) from a checkpoint file or run directory (None: runs/latest)."""
    import torch

    from charrnn.checkpoint import load_checkpoint, resolve_checkpoint
    from charrnn.vocab import Vocab
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
    adapt: Annotated[Optional[Path], Opt(help="First adapt the model to this UTF-8 text by dynamic evaluation, to continue its style (characters outside the vocabulary are dropped, with a warning); --prefix then follows it. The checkpoint is not changed.")] = None,
    dyn_lr: Annotated[Optional[float], Opt(help="With --adapt: the learning rate of its updates. [default: 0.0001]", show_default=False)] = None,
    dyn_decay: Annotated[Optional[float], Opt(help="With --adapt: the pull back towards the trained weights, in [0, 1]. [default: 0.001]", show_default=False)] = None,
    length: Annotated[int, Opt(help="Characters to generate.")] = 200,
    temperature: Annotated[float, Opt(help="Divide the logits by this: < 1 is safer, > 1 wilder.")] = 1.0,
    top_k: Annotated[int, Opt(help="Sample only among the k most likely characters (0: all).")] = 0,
    top_p: Annotated[float, Opt(help="Nucleus sampling: only among the fewest most likely characters whose probabilities add up to p (1: all).")] = 1.0,
    greedy: Annotated[bool, Opt("--greedy", help="Always take the most likely character (the book's predict).")] = False,
    samples: Annotated[int, Opt(help="Generate this many continuations at once.")] = 1,
    seed: Annotated[Optional[int], Opt(help="Random seed for repeatable samples.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object: prefix, samples (a list) and settings.")] = False,
    interactive: Annotated[bool, Opt("--interactive", "-i", help="A prompt: each line typed is fed to the model and continued by --length characters; the state carries over between lines (an empty line just continues). Ctrl-D ends.")] = False,
    stop: Annotated[Optional[list[str]], Opt(help="End a continuation at the first occurrence of this string (repeatable; \\n, \\t and \\r are escapes: --stop '\\n\\n' ends at a paragraph); it is not printed unless --include-stop. --length stays the bound; each of --samples stops on its own.", show_default=False)] = None,
    include_stop: Annotated[bool, Opt("--include-stop", help="Print the stop string that ended a continuation.")] = False,
    beam: Annotated[Optional[int], Opt(help="Beam search of this width instead of sampling: the most likely continuations of --length characters found, with their log-probabilities (conservative, like a low temperature).", show_default=False)] = None,
    output: Annotated[Optional[Path], Opt(help="Write what would be printed to this file instead (UTF-8), atomically: whole or not at all.", show_default=False)] = None,
    raw: Annotated[bool, Opt("--raw", help="Byte models: write the bytes the model emits as they are (bytes that are not UTF-8 otherwise come out as U+FFFD, the replacement character).")] = False,
    device: Annotated[str, Opt(help="auto, cpu or cuda. auto: the CPU for one sample (a step per character is too small for a GPU to gain on it), CUDA where available for several (see the README's Performance).")] = "auto",
):
    """Generate text: warm the state up on --prefix, then emit one character at a time."""
    import torch

    from charrnn.checkpoint import resolve_checkpoint
    from charrnn.text import read_byte_text, read_text
    from charrnn.output import TextSink
    from charrnn.sample import GenerationStream
    from charrnn.stops import check_stops, parse_stops, texts_until_stop, write_until_stop

    if prefix and prefix_file:
        raise CharrnnError("give --prefix or --prefix-file, not both")
    dynamic_settings(None, dyn_lr, dyn_decay)  # checked before the model loads
    if interactive and (as_json or samples > 1 or output):
        raise CharrnnError("--interactive continues one sample at a prompt; it takes neither --json, --samples nor --output")
    if raw and as_json:
        raise CharrnnError("--raw writes bytes and --json text: choose one")
    stops = parse_stops(stop or [])
    if beam is not None:
        check_beam_options(samples=samples != 1, temperature=temperature != 1, top_k=top_k != 0, top_p=top_p != 1,
                           greedy=greedy, seed=seed is not None, interactive=interactive, stop=bool(stops),
                           adapt=adapt is not None)
    model, vocab, ckpt = load_model(checkpoint, "cpu" if device == "auto" and samples == 1 else device)
    if prefix_file:  # a byte model takes any file as its prime, UTF-8 or not
        prefix = (vocab.decode(read_byte_text(prefix_file, "prefix file").ids) if vocab.kind == "bytes"
                  else read_text(prefix_file, "prefix file").as_str())
    prefix = model_prefix(prefix, ckpt)
    check_stops(stops, vocab.can_encode)
    out = TextSink(output, raw)
    if beam is not None:
        from charrnn.beam import beam_search

        beams = beam_search(model, vocab.encode(prefix, "the prefix"), beam, length)
        write_beams(out, beams, vocab, prefix, "" if prefix_file else prefix, as_json,
                    {"checkpoint": str(resolve_checkpoint(checkpoint)), "length": length, "beam": beam})
        return finish_output(out, output)
    stream = GenerationStream(model, vocab, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              samples=samples, seed=seed)
    if adapt:
        adapt_to_file(stream, adapt, ckpt, checkpoint, dynamic_settings(None, dyn_lr, dyn_decay))
    stream.feed(prefix, f"the prefix file {prefix_file}" if prefix_file else "the prefix")
    steps = text_steps(stream.sample(length), vocab, samples)  # checks --length before anything is printed
    if model.W_hq.device.type == "cpu" and samples == 1:
        # one sequence is a chain of tiny matrix-vector products: a second CPU thread only
        # adds synchronisation (measured: ~2x slower per character on this project's 2 cores)
        torch.set_num_threads(1)
    if interactive:
        return prompt_loop(stream, length, ckpt, out, stops, include_stop)
    if as_json:
        settings = {"checkpoint": str(resolve_checkpoint(checkpoint)), "length": length, "temperature": temperature,
                    "top_k": top_k, "top_p": top_p, "greedy": greedy, "seed": seed}
        if stops:
            settings.update(stop=stops, include_stop=include_stop)
        texts = texts_until_stop(steps, samples, stops, include_stop)
        out.write(json.dumps({"prefix": prefix, "samples": texts, "settings": settings}, ensure_ascii=False) + "\n")
        return finish_output(out, output)
    if prefix_file:
        prefix = ""  # the prime is the user's own file: print only what follows it
    if samples == 1:
        out.write(prefix)
        write_until_stop(steps, out, stops, include_stop)
        out.write("\n")
        return finish_output(out, output)
    for i, text in enumerate(texts_until_stop(steps, samples, stops, include_stop), 1):
        out.write(f"--- sample {i} ---\n{prefix}{text}\n")
    finish_output(out, output)


def text_steps(steps, vocab, samples: int):
    """Each step's new text per sample: a byte model's bytes decoded as UTF-8 as they complete characters."""
    from charrnn.byte_vocab import decoded_steps

    return decoded_steps(steps, samples) if vocab.kind == "bytes" else steps


def check_beam_options(**given: bool) -> None:
    """--beam searches for the likeliest text: the sampling options have no meaning there."""
    named = ", ".join("--" + name.replace("_", "-") for name, present in given.items() if present)
    if named:
        raise CharrnnError(f"--beam searches for the most likely text; it does not take {named}")


def write_beams(out, beams, vocab, prefix: str, shown_prefix: str, as_json: bool, settings: dict) -> None:
    """Beam search's continuations, most likely first, with their log-probabilities."""
    if as_json:
        found = [{"text": vocab.decode(ids), "log_probability": score} for ids, score in beams]
        out.write(json.dumps({"prefix": prefix, "beams": found, "settings": settings}, ensure_ascii=False) + "\n")
        return
    for i, (ids, score) in enumerate(beams, 1):
        out.write(f"--- beam {i}: log-probability {score:.3f} ---\n{shown_prefix}{vocab.decode(ids)}\n")


def adapt_to_file(stream, path: Path, ckpt: dict, checkpoint, settings) -> None:
    """Dynamic evaluation of the stream's model on the file, leaving the stream at its end."""
    from charrnn.text import read_text
    from charrnn.dynamic import adapt_stream

    text = read_text(path, "adapt file", (ckpt.get("corpus") or {}).get("normalize", "none"))
    ids, dropped = stream.vocab.ids_of(text, what=str(path), unknown="skip", in_place=True)
    skipped = [f"dropped {dropped} character(s) of {path} that are not in the vocabulary"] if dropped else []
    for note in text.notes + skipped:
        typer.echo(f"warning: {note}", err=True)
    if len(ids) < 2:
        raise CharrnnError(f"the adapt file {path} has fewer than 2 characters the model knows")
    adapt_stream(stream, ids, training_ids(ckpt, checkpoint), settings)


def finish_output(out, output: Path | None) -> None:
    """With --output, the text collected in `out` goes to that file, atomically."""
    out.close()
    if output:
        typer.echo(f"wrote {output}", err=True)


def prompt_loop(stream, length: int, ckpt: dict, out, stops: list[str], include_stop: bool) -> None:
    """Feed each line typed (normalized as the training text was) and stream its
    continuation (up to a stop string), until end of input (Ctrl-D). A line the vocabulary
    cannot encode gets a one-line message and the loop goes on."""
    from charrnn.stops import write_until_stop

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
            write_until_stop(text_steps(stream.sample(length), stream.vocab, 1), out, stops, include_stop)
            out.write("\n")
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(130) from None


@app.command("eval")
@user_errors
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
    dyn_seq_len: Annotated[Optional[int], Opt(help="With --dynamic: characters per segment (one update each). [default: 50]", show_default=False)] = None,
    dyn_lr: Annotated[Optional[float], Opt(help="With --dynamic: the update's learning rate (0: no adaptation). [default: 0.0001]", show_default=False)] = None,
    dyn_decay: Annotated[Optional[float], Opt(help="With --dynamic: how strongly each update pulls the weights back towards the trained ones, in [0, 1]. [default: 0.001]", show_default=False)] = None,
):
    """Perplexity and bits per character of a model on FILE or on its validation split.

    With --dynamic, also dynamic evaluation (Krause et al., 2018); see docs/dynamic-evaluation.md.
    """
    from charrnn.data import check_unknown
    from charrnn.evaluation import evaluate, nats_summary, recorded_layout
    from charrnn.neurons import parse_unit

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
    model, vocab, ckpt = load_model(checkpoint, device)
    unit = parse_unit(neuron, model) if neuron else None
    ids, what = text_ids(file, checkpoint, ckpt, vocab, unknown, "eval")
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
        result["dynamic"] = dynamic_figures(model, ids, training_ids(ckpt, checkpoint), settings)
    if as_json:
        typer.echo(json.dumps(result))
    elif vocab.kind == "bytes":
        per_char = f"{result['bits_per_char']:.3f} bits/char" if result["bits_per_char"] is not None else "not UTF-8"
        typer.echo(f"{what}: perplexity {result['perplexity']:.3f} | {result['bits_per_byte']:.3f} bits/byte | "
                   f"{per_char} | loss {result['loss']:.4f} nats/byte | {count:,} bytes")
    else:
        typer.echo(f"{what}: {figures_line(result)} | {count:,} characters")
    if settings and not as_json:
        figures = result["dynamic"]
        typer.echo(f"one stream in segments of {settings.seq_len}: static {figures_line(figures['static'])}")
        typer.echo(f"dynamic (lr {settings.lr:g}, decay {settings.decay:g}): {figures_line(figures['dynamic'])}")
        typer.echo(f"gain: {figures['gain']:.4f} nats/char ({figures['gain'] / math.log(2):.4f} bits/char)")


def figures_line(figures: dict) -> str:
    return (f"perplexity {figures['perplexity']:.3f} | {figures['bits_per_char']:.3f} bits/char | "
            f"loss {figures['loss']:.4f} nats/char")


def dynamic_settings(seq_len, lr, decay):
    """DynamicSettings from the options given (None: the default)."""
    from charrnn.dynamic import DynamicSettings

    given = {"seq_len": seq_len, "lr": lr, "decay": decay}
    return DynamicSettings(**{k: v for k, v in given.items() if v is not None})


def training_ids(ckpt: dict, checkpoint):
    """The checkpoint's training text as ids: dynamic evaluation's gradient statistics come from it."""
    from charrnn.checkpoint import resolve_checkpoint
    from charrnn.data import reload_corpus

    source = ckpt.get("corpus")
    if not isinstance(source, dict) or not source:
        raise CharrnnError("the checkpoint does not record its training corpus, which dynamic evaluation needs")
    return reload_corpus(source, cache_dir=resolve_checkpoint(checkpoint).parent).train_ids


def dynamic_figures(model, ids, train_ids, settings) -> dict:
    """Static and dynamic figures of one reading, the gain in nats/char and the settings."""
    from dataclasses import asdict

    from charrnn.dynamic import compare
    from charrnn.evaluation import nats_summary

    sums = compare(model, ids, train_ids, settings)
    static, dynamic = (nats_summary(total / count) for total, count in (sums["static"], sums["dynamic"]))
    return {"static": static, "dynamic": dynamic, "gain": static["loss"] - dynamic["loss"], "chars": sums["static"][1],
            "settings": asdict(settings)}


def byte_model_result(result: dict, ids, window: int) -> dict:
    """A byte model's measures are per byte; where the text is UTF-8, bits per character
    too (bits per byte times the text's bytes per character), so that byte and character
    models compare on one text."""
    from charrnn.byte_vocab import utf8_chars

    bits_per_byte = result["bits_per_char"]
    chars = None if window else utf8_chars(ids)  # (the d2l windows are not the text once through)
    return {"perplexity": result["perplexity"], "bits_per_byte": bits_per_byte,
            "bits_per_char": bits_per_byte * len(ids) / chars if chars else None, "loss": result["loss"],
            "bytes": result["chars"], "chars": chars, "text": result["text"]}


def text_ids(file: Path | None, checkpoint: Path | None, ckpt: dict, vocab, unknown: str, command: str):
    """(ids, what) of FILE, or of the checkpoint's validation split; warnings printed. A
    byte model reads any file (every byte is in its vocabulary)."""
    from charrnn.checkpoint import resolve_checkpoint
    from charrnn.data import reload_corpus, skipped_note
    from charrnn.text import read_byte_text, read_text

    source = ckpt.get("corpus") or {}
    if file is None:
        if not isinstance(source, dict) or not source:
            raise CharrnnError(f"the checkpoint does not record its corpus; give a FILE to {command}")
        corpus = reload_corpus(source, cache_dir=resolve_checkpoint(checkpoint).parent)
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

    from charrnn.neurons import activation_html, activation_legend, shaded_by_unit, unit_activations
    from charrnn.surprisal import legend_text, mean_perplexity, shaded_text, surprisal, surprisal_html

    text = vocab.decode(ids)
    if unit:
        values = unit_activations(model, ids, unit)
        title = f"unit {unit} on {what}"
        page, shaded, legend = activation_html(text, values, title), shaded_by_unit(text, values), activation_legend()
    else:
        bits = surprisal(model, vocab, text)
        if vocab.kind == "bytes":  # shade characters, each by the bits of its bytes
            from charrnn.byte_vocab import char_bits, shown

            bits, text = char_bits(text, bits), shown(text)
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
    ids, what = text_ids(file, checkpoint, ckpt, vocab, unknown, "neurons")
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
    pip install -e ".[serve]" in a checkout. Ctrl-C stops it.
    """
    import socket

    import torch

    try:
        import uvicorn

        from charrnn.serve import Limits, create_app
    except ModuleNotFoundError as e:
        raise CharrnnError(f"charrnn serve needs {e.name}: pip install -e '.[serve]' in a checkout") from None
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
    matplotlib: pip install matplotlib.
    """
    from charrnn.plot import plot_runs

    typer.echo(f"wrote {plot_runs(runs or [Path('runs/latest')], out)}")
