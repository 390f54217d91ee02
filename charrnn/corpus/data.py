"""A corpus as training and validation ids: read (charrnn.corpus.sources, charrnn.corpus.text), split,
and encoded in its vocabulary (charrnn.corpus.vocab); found and checked again from a
checkpoint's record of it; kept encoded in the run directory for a quick resume.

The ids are made in the tensor the text was read into: the training part in place, the
validation part copied out (a tenth of the text), so a corpus costs about its size in
bytes (for up to 256 distinct characters), whether it is one file or ten thousand.
"""

from __future__ import annotations

import contextlib
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

from charrnn.corpus.byte_vocab import ByteVocab
from charrnn.config import UNKNOWN_CHOICES, VOCAB_KINDS
from charrnn.errors import CharrnnError
from charrnn.corpus.sources import (check_present, corpus_files, first_change, is_documents, read_documents, read_source,
                             separator, unchanged, well_formed)
from charrnn.corpus.text import ENCODE_CHUNK, Text, characters, read_byte_text, read_text
from charrnn.corpus.vocab import Vocab, counted


@dataclass
class Corpus:
    """Training and validation ids, their vocabulary, where they came from (enough to find
    and check the same split again: `source`), and notes for the user about the text."""

    train_ids: torch.Tensor
    val_ids: torch.Tensor
    vocab: Vocab
    source: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_corpus(
    path: str | list[str] | None = None,
    dataset: str | None = None,
    *,
    val_file: str | None = None,
    val_dir: str | list[str] | None = None,
    val_fraction: float = 0.1,
    doc_sep: str | None = None,
    normalize_how: str = "none",
    windows: tuple[int, int, int] | None = None,
    unknown: str = "error",
    quiet: bool = False,
    vocab_kind: str = "chars",
    base_vocab: dict | None = None,
) -> Corpus:
    """Read a corpus (`path`: a file, or several paths, folders and globs read as documents
    each ended by `doc_sep`, see charrnn.corpus.sources), a named dataset, or (neither given) the
    built-in corpus, and split it: `val_file` or the documents of `val_dir` if given, else
    the last `val_fraction` of the text (of each document). `windows` = (train_windows,
    val_windows, seq_len) is the d2l split instead: the first train_windows stride-1
    windows for training and the next val_windows for validation. Validation characters
    the training text lacks are an error that names them, or with `unknown="skip"` are
    dropped, with a note saying how many. `vocab_kind="bytes"` reads the files as bytes,
    for a vocabulary of the 256 byte values. `base_vocab` (a Vocab.to_dict(): a run --init-from
    a checkpoint) is the vocabulary to start from: with `unknown="extend"` grown by the
    training text's other characters, with "error" or "skip" kept, as the validation text's is."""
    check_corpus_options(path, dataset, val_file, val_dir, unknown, fine_tuning=base_vocab is not None)
    by_bytes = check_vocab_kind(vocab_kind, normalize_how) == "bytes"
    documents = is_documents(path, val_dir)
    doc_sep = separator(doc_sep, vocab_kind)
    read = read_source(path, dataset, documents=documents, doc_sep=doc_sep, normalize_how=normalize_how,
                       by_bytes=by_bytes, quiet=quiet)
    text, source = read.text, read.record
    source.update(normalize=normalize_how, val_fraction=val_fraction, unknown=unknown)
    if documents:
        source["doc_sep"] = doc_sep
    if by_bytes:  # (only then: the sources of character runs stay as they were)
        source["vocab"] = "bytes"
    elif base_vocab is not None:
        source["base_vocab"] = base_vocab
    notes, length = text.notes, len(text.ids)

    val_text = text
    if windows:
        n_train, n_val, seq_len = windows
        train_span = (0, min(n_train + seq_len, length))
        val_span = (min(n_train, length), min(n_train + n_val + seq_len, length))
        source["windows"] = list(windows)
    elif documents and (val_file or val_dir):
        val_files = corpus_files(val_file or val_dir, "validation file" if val_file else "--val-dir")
        val = read_documents(val_files, doc_sep, normalize_how, by_bytes, "validation")
        val_text, source["val_files"] = val.text, val.record["files"]
        notes += val_text.notes
        train_span, val_span = (0, length), (0, len(val_text.ids))
    elif val_file:
        val_text = (read_byte_text if by_bytes else read_text)(val_file, "validation file", normalize_how)
        notes += val_text.notes
        train_span, val_span = (0, length), (0, len(val_text.ids))
        source["val_file"] = {"path": str(Path(val_file).resolve()), "sha256": val_text.sha256}
    else:
        text, val_text = split_documents(text, read.lengths, read.sep_len, val_fraction)
        train_span, val_span = (0, len(text.ids)), (0, len(val_text.ids))
    if val_span[1] - val_span[0] < 2:
        raise CharrnnError(f"the validation split has {val_span[1] - val_span[0]} character(s); it needs at least 2")

    if by_bytes:
        vocab = ByteVocab()
    elif base_vocab is not None:
        vocab = grown_vocab(base_vocab, text, train_span, unknown)
    else:
        vocab = corpus_vocab(text, train_span, normalize_how)
    train_ids, val_ids = encode_split(vocab, text, train_span, val_text, val_span, unknown, notes)
    return Corpus(train_ids, val_ids, vocab, source, notes)


def encode_split(vocab, text: Text, train_span, val_text: Text, val_span, unknown: str, notes: list[str]):
    """The training and validation ids in `vocab`: validation characters outside it are an
    error or dropped (`unknown`; with "extend" an error), training characters only with
    "skip" (a run --init-from a checkpoint that keeps its vocabulary); notes say how many."""
    unknown = "error" if unknown == "extend" else unknown  # (the validation text's characters are not added)
    val_ids, dropped = vocab.ids_of(val_text, *val_span, what="the validation text", unknown=unknown,
                                    hint=" (--unknown skip drops them)", in_place=val_text is not text)
    if dropped:
        notes.append(skipped_note(dropped, "the validation text"))
        if len(val_ids) < 2:
            raise CharrnnError(f"the validation text has {len(val_ids)} character(s) left after --unknown skip; "
                               "it needs at least 2")
    # Last, and in place: the training ids take the place of the text's own.
    train_ids, dropped = vocab.ids_of(text, *train_span, what="the training text", in_place=True, unknown=unknown,
                                      hint=" (--unknown extend adds them, skip drops them)")
    if dropped:
        notes.append(skipped_note(dropped, "the training text"))
    return train_ids, val_ids


def grown_vocab(base_vocab: dict, text: Text, train_span: tuple[int, int], unknown: str) -> Vocab:
    """The vocabulary a run --init-from a checkpoint starts with: the checkpoint's, and with
    --unknown extend the training text's characters it lacks."""
    try:
        base = Vocab.from_dict(base_vocab)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CharrnnError("the checkpoint's vocabulary is damaged") from None
    if base.kind != "chars":
        raise CharrnnError("a byte model's vocabulary is every byte: it goes with --vocab bytes")
    new = [] if base.unk is not None else sorted(set(characters(text, *train_span)) - set(base.idx_to_token))
    if unknown == "error" and new:
        # (raises, naming them and counting their occurrences)
        base.ids_of(text, *train_span, what="the training text", hint=" (--unknown extend adds them, skip drops them)")
    return Vocab(base.idx_to_token + new, unk=base.unk is not None) if unknown == "extend" else base


def check_corpus_options(path, dataset, val_file, val_dir, unknown: str, fine_tuning: bool = False) -> None:
    """The corpus options that exclude each other, and --unknown's value."""
    if path and dataset:
        raise CharrnnError("give a corpus file or --dataset, not both")
    if val_file and val_dir:
        raise CharrnnError("give --val-file or --val-dir, not both")
    if val_dir and not path:
        raise CharrnnError("--val-dir goes with a CORPUS of files, not with --dataset or the built-in corpus")
    if not (fine_tuning and unknown == "extend"):
        check_unknown(unknown)


def corpus_vocab(text: Text, train_span: tuple[int, int], normalize_how: str) -> Vocab:
    """The training text's characters; with --normalize letters, the book's vocabulary:
    26 letters, space and <unk>."""
    if normalize_how == "letters":
        return Vocab(string.ascii_lowercase + " ", unk=True)
    return Vocab(characters(text, *train_span))


def split_documents(text: Text, lengths: list[int], sep_len: int, val_fraction: float) -> tuple[Text, Text]:
    """The training and validation texts: the first 1 - val_fraction of each document's
    ids and the rest, each part followed by the document's separator (one document of
    the whole text, with none: its first 90% and its last 10%). The training ids are moved
    to the start of text.ids, in place; the validation ids are copied out."""
    if not 0 < val_fraction < 1:
        raise CharrnnError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    train_spans, val_spans, start = [], [], 0
    for length in lengths:
        cut, end = start + int(length * (1 - val_fraction)), start + length
        train_spans += [(start, cut), (end, end + sep_len)]
        val_spans.append((cut, end + sep_len))
        start = end + sep_len
    val_ids = torch.cat([text.ids[a:b] for a, b in val_spans])
    end = 0
    for a, b in train_spans:  # each span moves left (or stays): copied a chunk at a time, front first
        for at in range(a, b, ENCODE_CHUNK):
            piece = text.ids[at : min(at + ENCODE_CHUNK, b)]
            if at != end:
                text.ids[end : end + len(piece)] = piece.clone()  # (the two may overlap)
            end += len(piece)
    return Text(text.ids[:end], text.chars, text.sha256, text.notes), Text(val_ids, text.chars)


def check_vocab_kind(vocab_kind: str, normalize_how: str) -> str:
    if vocab_kind not in VOCAB_KINDS:
        raise CharrnnError(f"--vocab must be one of {', '.join(VOCAB_KINDS)}, got {vocab_kind!r}")
    if vocab_kind == "bytes" and normalize_how != "none":
        raise CharrnnError(f"--normalize {normalize_how} works on characters; it does not go with --vocab bytes")
    return vocab_kind


def check_unknown(unknown: str) -> None:
    if unknown not in UNKNOWN_CHOICES:
        raise CharrnnError(f"--unknown must be one of {', '.join(UNKNOWN_CHOICES)}, got {unknown!r}")


def skipped_note(dropped: int, what: str) -> str:
    return f"dropped {counted(dropped, 'occurrence')} of characters not in the vocabulary from {what} (--unknown skip)"


def reload_corpus(source: dict, cache_dir: str | Path | None = None) -> Corpus:
    """The corpus a checkpoint was trained on, found again from its recorded source and
    checked against its sha256: a clear error naming the file that moved or changed.

    With `cache_dir` (the run directory) the ids come from the run's encoding cache when it
    is there: the files are still hashed (hashing is fast; decoding and encoding are what
    take time on a large corpus) so a changed file is still caught."""
    if not well_formed(source):
        raise CharrnnError("the checkpoint's record of its corpus is damaged; give a FILE to eval")
    check_present(source)
    cached = load_encoded(cache_dir, source) if cache_dir else None
    if cached is not None and unchanged(source):
        return cached
    kind, val_file, val_files, windows = (source["kind"], source.get("val_file"), source.get("val_files"),
                                          source.get("windows"))
    corpus = load_corpus(
        [f["path"] for f in source["files"]] if kind == "files" else source["path"] if kind == "file" else None,
        source["name"] if kind == "dataset" else None,
        val_file=val_file["path"] if val_file else None,
        val_dir=[f["path"] for f in val_files] if val_files else None,
        val_fraction=source["val_fraction"],
        doc_sep=source.get("doc_sep"),
        normalize_how=source["normalize"],
        windows=tuple(windows) if windows else None,
        unknown=source.get("unknown", "error"),
        quiet=True,
        vocab_kind=source.get("vocab", "chars"),
        base_vocab=source.get("base_vocab"),
    )
    change = first_change(source, corpus.source)
    if change:
        raise CharrnnError(f"{change}; give a FILE to eval")
    return corpus


# ---------------------------------------------------------------- the encoding cache

ENCODED_FORMAT = "charrnn-encoded-corpus"


def encoded_path(run_dir: str | Path, source: dict) -> Path:
    """Where a run keeps its encoded corpus: named by the corpus's sha256."""
    return Path(run_dir) / f"encoded-{source['sha256'][:16]}.pt"


def save_encoded(corpus: Corpus, run_dir: str | Path) -> None:
    """Keep the corpus's ids in the run directory, so that a resume skips decoding and
    encoding the text. Best effort: if it cannot be written (a full disk), the run goes on
    and a resume reads the text again."""
    path = encoded_path(run_dir, corpus.source)
    if path.exists():
        return
    from charrnn.storage.checkpoint import atomic_save

    try:
        atomic_save({"format": ENCODED_FORMAT, "source": corpus.source, "vocab": corpus.vocab.to_dict(),
                     "train_ids": corpus.train_ids, "val_ids": corpus.val_ids, "notes": corpus.notes}, path)
    except OSError:
        pass


def load_encoded(run_dir: str | Path, source: dict) -> Corpus | None:
    """The corpus from the run's encoding cache, or None when there is no usable one
    (absent, unreadable, for another source, or not ids of its vocabulary); an unusable
    one is deleted, to be written again."""
    path = encoded_path(run_dir, source)
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        vocab = Vocab.from_dict(cache["vocab"])
        ids = (cache["train_ids"], cache["val_ids"])
        usable = cache["format"] == ENCODED_FORMAT and cache["source"] == source and all(
            isinstance(t, torch.Tensor) and t.dtype == vocab.dtype and t.dim() == 1 and len(t) > 0
            and 0 <= int(t.min()) and int(t.max()) < len(vocab) for t in ids) and isinstance(cache["notes"], list)
    except Exception:  # torch.load fails in many ways on a damaged file; it is only a cache
        usable = False
    if not usable:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return Corpus(*ids, vocab, source, cache["notes"])

