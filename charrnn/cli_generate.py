"""`charrnn generate`: continue a prefix with sampled (or greedy, or beam-searched)
characters, once, several times, or at an interactive prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.cli_eval import dynamic_settings, training_ids
from charrnn.errors import CharrnnError

Opt = typer.Option


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

    from charrnn.checkpoint import load_model, resolve_checkpoint
    from charrnn.text import read_byte_text, read_text
    from charrnn.output import TextSink
    from charrnn.sample import GenerationStream
    from charrnn.stops import check_stops, parse_stops, texts_until_stop

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
        # adds synchronisation, and makes each character slower
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
    # a prime from the user's own file is not printed: only what follows it
    write_samples(out, steps, "" if prefix_file else prefix, samples, stops, include_stop)
    finish_output(out, output)


def write_samples(out, steps, prefix: str, samples: int, stops: list[str], include_stop: bool) -> None:
    """One continuation after its prefix, or several, each under a `--- sample i ---` line."""
    from charrnn.stops import texts_until_stop, write_until_stop

    if samples == 1:
        out.write(prefix)
        write_until_stop(steps, out, stops, include_stop)
        out.write("\n")
        return
    for i, text in enumerate(texts_until_stop(steps, samples, stops, include_stop), 1):
        out.write(f"--- sample {i} ---\n{prefix}{text}\n")


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
    from charrnn.vocab import counted

    text = read_text(path, "adapt file", (ckpt.get("corpus") or {}).get("normalize", "none"))
    ids, dropped = stream.vocab.ids_of(text, what=str(path), unknown="skip", in_place=True)
    skipped = [f"dropped {counted(dropped, 'occurrence')} of characters not in the vocabulary from {path}"] if dropped else []
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


def model_prefix(prefix: str, ckpt: dict) -> str:
    """The prefix as the model saw its training text: normalized the same way."""
    from charrnn.text import normalize

    return normalize(prefix, ckpt.get("corpus", {}).get("normalize", "none"))

