"""`charrnn generate`: continue a prefix with sampled (or greedy, or beam-searched)
characters, once, several times, or at an interactive prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.cli.evaluate import (DYN, DYNAMIC_DECAYS, DYNAMIC_LRS, dynamic_settings, print_candidate, rates, threads_option,
                                  training_corpus)
from charrnn.config import SAMPLING as S
from charrnn.config import TrainConfig
from charrnn.errors import CharrnnError

Opt = typer.Option  # the sampling options' defaults are charrnn.config.SamplingConfig's


def generate(
    checkpoint: Annotated[Optional[Path], Opt(help="A checkpoint file or run directory. [default: the best checkpoint of runs/latest]", show_default=False)] = None,
    prefix: Annotated[str, Opt(help="Text to warm the state up on; the continuation follows it (empty: none, the first character comes from the zero state).")] = "",
    prefix_file: Annotated[Optional[Path], Opt(help="Warm up on this UTF-8 file instead (a long prime); only the continuation is printed.")] = None,
    adapt: Annotated[Optional[Path], Opt(help="First adapt the model to this UTF-8 text by dynamic evaluation, to continue its style (characters outside the vocabulary are dropped, with a warning); --prefix then follows it. The checkpoint is not changed.")] = None,
    dyn_lr: Annotated[Optional[float], Opt(help=f"With --adapt: the learning rate of its updates, used as given: no tuning, and --dyn-decay {DYN.decay:g} unless given. [default: tuned on the adapt text, among {rates(DYNAMIC_LRS)}]", show_default=False)] = None,
    dyn_decay: Annotated[Optional[float], Opt(help=f"With --adapt: the pull back towards the trained weights, in [0, 1], used as given: no tuning, and --dyn-lr {DYN.lr:g} unless given. [default: tuned, among {rates(DYNAMIC_DECAYS)}]", show_default=False)] = None,
    length: Annotated[int, Opt(help="Characters to generate.")] = S.length,
    temperature: Annotated[float, Opt(help="Divide the logits by this: < 1 is safer, > 1 wilder.")] = S.temperature,
    top_k: Annotated[int, Opt(help="Sample only among the k most likely characters (0: all).")] = S.top_k,
    top_p: Annotated[float, Opt(help="Nucleus sampling: only among the fewest most likely characters whose probabilities add up to p (1: all).")] = S.top_p,
    greedy: Annotated[bool, Opt("--greedy", help="Always take the most likely character (the book's predict).")] = S.greedy,
    samples: Annotated[int, Opt(help="Generate this many continuations at once.")] = S.samples,
    seed: Annotated[Optional[int], Opt(help="Random seed for repeatable samples.")] = S.seed,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object: prefix, samples (a list) and settings.")] = False,
    interactive: Annotated[bool, Opt("--interactive", "-i", help="A prompt: each line typed is fed to the model and continued by --length characters; the state carries over between lines (an empty line just continues). Ctrl-D ends.")] = False,
    stop: Annotated[Optional[list[str]], Opt(help="End a continuation at the first occurrence of this string (repeatable; \\n, \\t and \\r are escapes: --stop '\\n\\n' ends at a paragraph); it is not printed unless --include-stop. --length stays the bound; each of --samples stops on its own.", show_default=False)] = None,
    include_stop: Annotated[bool, Opt("--include-stop", help="Print the stop string that ended a continuation.")] = False,
    beam: Annotated[Optional[int], Opt(help="Beam search of this width instead of sampling: the most likely continuations of --length characters found, with their log-probabilities (conservative, like a low temperature).", show_default=False)] = None,
    output: Annotated[Optional[Path], Opt(help="Write what would be printed to this file instead (UTF-8), atomically: whole or not at all.", show_default=False)] = None,
    raw: Annotated[bool, Opt("--raw", help="Byte models: write the bytes the model emits as they are (bytes that are not UTF-8 otherwise come out as U+FFFD, the replacement character).")] = False,
    device: Annotated[str, Opt(help="auto, cpu or cuda. auto: the CPU for one sample (a step per character is too small for a GPU to gain on it), CUDA where available for several (see the README's Performance).")] = "auto",
    threads: Annotated[int, threads_option("torch's default, and 1 while one sample is generated on a CPU, where a second thread only adds synchronisation")] = TrainConfig.threads,
):
    """Generate text: warm the state up on --prefix, then emit one character at a time."""
    import torch

    from charrnn.storage.load import load_model
    from charrnn.corpus.text import read_byte_text, read_text
    from charrnn.generation.output import TextSink
    from charrnn.generation.sample import GenerationStream
    from charrnn.generation.stops import check_stops, parse_stops, texts_until_stop
    from charrnn.kernels.device import set_threads

    if prefix and prefix_file:
        raise CharrnnError("give --prefix or --prefix-file, not both")
    dynamic_settings(None, dyn_lr, dyn_decay)  # checked before the model loads
    set_threads(threads)
    check_output_options(interactive, as_json, samples, output, raw)
    stops = parse_stops(stop or [])
    if beam is not None:
        check_beam_options(samples=samples != 1, temperature=temperature != 1, top_k=top_k != 0, top_p=top_p != 1,
                           greedy=greedy, seed=seed is not None, interactive=interactive, stop=bool(stops),
                           adapt=adapt is not None)
    loaded = load_model(checkpoint, "cpu" if device == "auto" and samples == 1 else device)
    model, vocab, ckpt = loaded
    if prefix_file:  # a byte model takes any file as its prime, UTF-8 or not
        prefix = (vocab.decode(read_byte_text(prefix_file, "prefix file").ids) if vocab.kind == "bytes"
                  else read_text(prefix_file, "prefix file").as_str())
    prefix = model_prefix(prefix, ckpt)
    check_stops(stops, vocab.can_encode)
    out = TextSink(output, raw)
    if beam is not None:
        from charrnn.generation.beam import beam_search

        beams = beam_search(model, vocab.encode(prefix, "the prefix"), beam, length)
        write_beams(out, beams, vocab, prefix, "" if prefix_file else prefix, as_json,
                    {"checkpoint": str(loaded.path), "length": length, "beam": beam})
        return finish_output(out, output)
    stream = GenerationStream(model, vocab, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              samples=samples, seed=seed)
    if adapt:
        adapt_to_file(stream, adapt, loaded, dyn_lr, dyn_decay)
    stream.feed(prefix, f"the prefix file {prefix_file}" if prefix_file else "the prefix")
    steps = text_steps(stream.sample(length), vocab, samples)  # checks --length before anything is printed
    if model.W_hq.device.type == "cpu" and samples == 1 and not threads:
        # one sequence is a chain of tiny matrix-vector products: a second CPU thread only
        # adds synchronisation, and makes each character slower
        torch.set_num_threads(1)
    if interactive:
        return prompt_loop(stream, length, ckpt, out, stops, include_stop)
    if as_json:
        settings = {"checkpoint": str(loaded.path), "length": length, "temperature": temperature,
                    "top_k": top_k, "top_p": top_p, "greedy": greedy, "seed": seed}
        if stops:
            settings.update(stop=stops, include_stop=include_stop)
        texts = texts_until_stop(steps, samples, stops, include_stop)
        out.write(json.dumps({"prefix": prefix, "samples": texts, "settings": settings}, ensure_ascii=False) + "\n")
        return finish_output(out, output)
    # a prime from the user's own file is not printed: only what follows it
    write_samples(out, steps, "" if prefix_file else prefix, samples, stops, include_stop)
    finish_output(out, output)


def write_samples(out, steps, prefix: str, samples: int, stops: list[str], include_stop: bool) -> None:
    """One continuation after its prefix, or several, each under a `--- sample i ---` line."""
    from charrnn.generation.stops import texts_until_stop, write_until_stop

    if samples == 1:
        out.write(prefix)
        write_until_stop(steps, out, stops, include_stop)
        out.write("\n")
        return
    for i, text in enumerate(texts_until_stop(steps, samples, stops, include_stop), 1):
        out.write(f"--- sample {i} ---\n{prefix}{text}\n")


def text_steps(steps, vocab, samples: int):
    """Each step's new text per sample: a byte model's bytes decoded as UTF-8 as they complete characters."""
    from charrnn.corpus.byte_vocab import decoded_steps

    return decoded_steps(steps, samples) if vocab.kind == "bytes" else steps


def check_output_options(interactive: bool, as_json: bool, samples: int, output, raw: bool) -> None:
    if interactive and (as_json or samples > 1 or output):
        raise CharrnnError("--interactive continues one sample at a prompt; it takes neither --json, --samples nor --output")
    if raw and as_json:
        raise CharrnnError("--raw writes bytes and --json text: choose one")


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


def adapt_to_file(stream, path: Path, loaded, lr: float | None, decay: float | None) -> None:
    """Dynamic evaluation of the stream's model on the file, leaving the stream at its end:
    with `lr` and `decay`, or (neither given) with those that predict the file's start best
    (no adaptation if none beats the model as trained)."""
    from dataclasses import replace

    from charrnn.config import TUNE_CHARS
    from charrnn.corpus.text import read_text
    from charrnn.corpus.vocab import counted
    from charrnn.scoring.dynamic import adapt_stream, gradient_rms, tune

    text = read_text(path, "adapt file", (loaded.checkpoint.get("corpus") or {}).get("normalize", "none"))
    ids, dropped = stream.vocab.ids_of(text, what=str(path), unknown="skip", in_place=True)
    skipped = [f"dropped {counted(dropped, 'occurrence')} of characters not in the vocabulary from {path}"] if dropped else []
    for note in text.notes + skipped:
        typer.echo(f"warning: {note}", err=True)
    if len(ids) < 2:
        raise CharrnnError(f"the adapt file {path} has fewer than 2 characters the model knows")
    settings = dynamic_settings(None, lr, decay)
    # the training text's gradient statistics, once: tuning's candidates share the segment length
    rms = gradient_rms(stream.model, training_corpus(loaded).train_ids, settings.seq_len)
    if lr is None and decay is None:
        start = ids[: TUNE_CHARS + 1]
        typer.echo(f"tuning --dyn-lr and --dyn-decay on the first {len(start) - 1:,} characters of {path}:", err=True)
        tuning = tune(stream.model, start, rms, settings.seq_len, on_result=print_candidate)
        if tuning.chosen is None:
            typer.echo(f"warning: no candidate predicted {path} better than the model as trained: it is read "
                       "without adapting", err=True)
        settings = tuning.chosen or replace(settings, lr=0.0)
    adapt_stream(stream, ids, rms, settings)


def finish_output(out, output: Path | None) -> None:
    """With --output, the text collected in `out` goes to that file, atomically."""
    out.close()
    if output:
        typer.echo(f"wrote {output}", err=True)


def prompt_loop(stream, length: int, ckpt: dict, out, stops: list[str], include_stop: bool) -> None:
    """Feed each line typed (normalized as the training text was) and stream its
    continuation (up to a stop string), until end of input (Ctrl-D). A line the vocabulary
    cannot encode gets a one-line message and the loop goes on."""
    from charrnn.generation.stops import write_until_stop

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


def model_prefix(prefix: str, ckpt: dict) -> str:
    """The prefix as the model saw its training text: normalized the same way."""
    from charrnn.corpus.text import normalize

    return normalize(prefix, ckpt.get("corpus", {}).get("normalize", "none"))

