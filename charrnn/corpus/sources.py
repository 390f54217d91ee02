"""Where a corpus's text comes from, read as one text, and the record of it (a checkpoint's
`corpus`) that finds and checks the same text again.

A corpus is one file, a named dataset, the built-in corpus, or documents: the files that
several paths, folders (every regular file inside, recursively, names starting with a dot
skipped) and globs (expanded here: quote them from the shell) name, in sorted order, each
followed by a separator that the model learns (`--doc-sep`). The record names every file
with its sha256.

    files        corpus/a.txt      corpus/b.txt  notes.txt       (sorted, each once)
    text         a a a a a a a a ¶ b b b b b ¶   n n n n n n ¶   (each file, then ¶)
    training     a a a a a a a ¶   b b b b ¶     n n n n n ¶     (the first 90% of each)
    validation   a ¶ b ¶ n ¶                                     (the last 10% of each)

The split is charrnn.corpus.data's; the separator follows each part, so validation ends its
documents as training does.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from charrnn.corpus.byte_vocab import ByteVocab
from charrnn.errors import CharrnnError
from charrnn.corpus.text import (READ_CHUNK, Text, builtin_sha256, builtin_text, decode_chunks, encode_pieces, normalize,
                          normalize_pieces, read_byte_text, read_text)

# what ends a document: a blank line; for byte models the end-of-text control character,
# a byte that text files do not contain, so a document's end is never mistaken for a paragraph's
SEPARATORS = {"chars": "\n\n", "bytes": "\x03"}


@dataclass
class SourceText:
    """A corpus's text, its record, and its documents: each one's length in ids (without
    its separator; one document is the whole text) and the separator's length in ids."""

    text: Text
    record: dict
    lengths: list[int]
    sep_len: int = 0


def read_source(paths: str | list[str] | None, dataset: str | None, *, documents: bool, doc_sep: str,
                normalize_how: str, by_bytes: bool, quiet: bool = False) -> SourceText:
    """The text of a corpus file, the documents of `paths`, a named dataset, or (neither
    given) the built-in corpus, with its record: kind, where, sha256."""
    read = read_byte_text if by_bytes else read_text
    if documents:
        return read_documents(corpus_files(paths), doc_sep, normalize_how, by_bytes)
    if dataset:
        from charrnn.corpus.datasets import dataset_path

        text = read(dataset_path(dataset, quiet=quiet), normalize_how=normalize_how)
        record = {"kind": "dataset", "name": dataset}
    elif paths:
        text = read(paths, normalize_how=normalize_how)
        record = {"kind": "file", "path": str(Path(paths).resolve())}
    else:
        builtin = builtin_text()
        text = Text(ByteVocab().encode(builtin), []) if by_bytes else Text.from_str(builtin, normalize_how)
        text.sha256 = builtin_sha256(builtin)
        record = {"kind": "builtin", "name": "pydoc_data.topics"}
    return SourceText(text, {**record, "sha256": text.sha256}, [len(text.ids)])


def is_documents(paths: str | list[str] | None, val_dir) -> bool:
    """Whether a corpus is read as documents: given as a list of paths, a folder, a glob, or
    validated on --val-dir. One file given as a string is one text, as it always was."""
    return bool(paths) and (isinstance(paths, list) or not Path(paths).is_file() or val_dir is not None)


def separator(doc_sep: str | None, vocab_kind: str) -> str:
    """--doc-sep, or the vocabulary's default."""
    return SEPARATORS[vocab_kind] if doc_sep is None else doc_sep


# ---------------------------------------------------------------- which files


def corpus_files(paths: str | Path | list[str], what: str = "corpus") -> list[Path]:
    """The files that `paths` name, resolved, sorted, each once: a file itself; every
    regular file under a folder; a glob's matches (a matching folder: its files)."""
    files = set()
    for given in paths if isinstance(paths, list) else [paths]:
        path = Path(given)
        if path.is_dir():
            found = folder_files(path)
            if not found:
                raise CharrnnError(f"{what} folder {path} has no files")
        elif path.is_file():
            found = [path]
        elif any(c in str(given) for c in "*?["):
            found = [file for match in sorted(glob.glob(str(given), recursive=True))
                     for file in (folder_files(Path(match)) if Path(match).is_dir() else [Path(match)])]
            if not found:
                raise CharrnnError(f"no file matches the {what} pattern {given!r}")
        elif path.exists():
            raise CharrnnError(f"{what} {path} is not a regular file")
        else:
            raise CharrnnError(f"{what} not found: {path}")
        files.update(file.resolve() for file in found)
    return sorted(files)


def folder_files(folder: Path) -> list[Path]:
    """Every regular file under `folder`, recursively. Names starting with a dot (.git,
    .DS_Store) are skipped: they are a tool's, not the writer's."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root, name) for name in names if not name.startswith(".") and Path(root, name).is_file()]
    return found


# ---------------------------------------------------------------- reading documents


def read_documents(files: list[Path], doc_sep: str, normalize_how: str, by_bytes: bool,
                   what: str = "corpus") -> SourceText:
    """The files as one Text, each followed by `doc_sep`, read a chunk at a time into one
    tensor of ids (as read_text reads one file), and their record: each file's sha256, and
    as the corpus's sha256 that of the files' listing."""
    reader = read_byte_documents if by_bytes else read_text_documents
    text, hashes, lengths, sep_len = reader(files, doc_sep, normalize_how, what)
    text.sha256 = listing_sha256(files, hashes)
    record = {"kind": "files", "files": [{"path": str(path), "sha256": sha256} for path, sha256 in zip(files, hashes)],
              "sha256": text.sha256}
    return SourceText(text, record, lengths, sep_len)


def read_text_documents(files: list[Path], doc_sep: str, normalize_how: str,
                        what: str) -> tuple[Text, list[str], list[int], int]:
    """UTF-8 files as one Text: the same checks as read_text, each error naming its file; an
    empty file is an error too (a failed export, most likely)."""
    sep, hashes, lengths, notes = normalize(doc_sep, normalize_how), [], [], []

    def pieces():
        for path in files:
            name, digest, length = f"{what} file {path}", hashlib.sha256(), 0
            try:
                with open(path, "rb") as f:
                    for piece in normalize_pieces(decode_chunks(f, digest, name, notes), normalize_how):
                        length += len(piece)
                        yield piece
            except OSError as e:
                raise CharrnnError(f"cannot read {name}: {e.strerror or e}") from None
            if not length:
                raise CharrnnError(f"{name} is empty")
            hashes.append(digest.hexdigest())
            lengths.append(length)
            yield sep

    # a character takes at least one byte, so the files' sizes are room enough
    ids, chars = encode_pieces(pieces(), sum(file_size(path) for path in files) + len(files) * len(sep))
    if len(notes) > 1:  # one line, not one per file
        notes = [f"removed the UTF-8 byte-order mark at the start of {len(notes)} files"]
    return Text(ids, chars, notes=notes), hashes, lengths, len(sep)


def read_byte_documents(files: list[Path], doc_sep: str, normalize_how: str,
                        what: str) -> tuple[Text, list[str], list[int], int]:
    """Files as bytes, straight into one buffer: any file, an empty one included. The
    separator is --doc-sep's UTF-8 bytes. (`normalize_how` is always none here.)"""
    sep = doc_sep.encode("utf-8", "surrogateescape")
    data = bytearray(sum(file_size(path) for path in files) + len(files) * len(sep))
    end, hashes, lengths = 0, [], []
    for path in files:
        digest, start = hashlib.sha256(), end
        try:
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    digest.update(chunk)
                    data[end : end + len(chunk)] = chunk  # (grows the buffer if the file grew)
                    end += len(chunk)
        except OSError as e:
            raise CharrnnError(f"cannot read {what} file {path}: {e.strerror or e}") from None
        data[end : end + len(sep)] = sep
        hashes.append(digest.hexdigest())
        lengths.append(end - start)
        end += len(sep)
    del data[end:]
    ids = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return Text(ids, []), hashes, lengths, len(sep)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # it vanished since it was listed: reading it says so


def listing_sha256(files: list[Path], hashes: list[str]) -> str:
    """One sha256 for many files: that of their listing as `sha256sum` prints it."""
    listing = "".join(f"{sha256}  {path}\n" for path, sha256 in zip(files, hashes))
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


# ---------------------------------------------------------------- the record, checked again


def well_formed(source) -> bool:
    """Whether a recorded source (from a checkpoint, perhaps a stranger's) has the fields
    charrnn.corpus.data.load_corpus writes, of their types."""
    if not isinstance(source, dict) or source.get("kind") not in ("file", "files", "dataset", "builtin"):
        return False
    needed = ["sha256", "normalize"] + {"file": ["path"], "files": ["doc_sep"], "dataset": ["name"],
                                        "builtin": []}[source["kind"]]
    if not all(isinstance(source.get(key), str) for key in needed):
        return False
    if type(source.get("val_fraction")) not in (int, float) or not isinstance(source.get("vocab", "chars"), str):
        return False
    if not isinstance(source.get("base_vocab", {}), dict):  # (a run --init-from a checkpoint: its vocabulary)
        return False
    if source["kind"] == "files" and not (file_list(source.get("files")) and source["files"]):
        return False
    windows, val_file = source.get("windows"), source.get("val_file")
    if windows is not None and not (isinstance(windows, list) and len(windows) == 3
                                    and all(type(n) is int and n >= 0 for n in windows)):
        return False
    return (val_file is None or file_list([val_file])) and file_list(source.get("val_files", []))


def file_list(files) -> bool:
    return isinstance(files, list) and all(
        isinstance(f, dict) and all(isinstance(f.get(key), str) for key in ("path", "sha256")) for f in files)


def recorded_files(source: dict) -> list[tuple[str, str, str]]:
    """(what, path, sha256) of every file a record names: the corpus's, then validation's."""
    files = ([("the training corpus", source["path"], source["sha256"])] if source["kind"] == "file" else
             [("the training corpus file", f["path"], f["sha256"]) for f in source.get("files", [])])
    val_files = [source["val_file"]] if source.get("val_file") else source.get("val_files", [])
    return files + [("the validation file", f["path"], f["sha256"]) for f in val_files]


def check_present(source: dict) -> None:
    """A one-line error naming the first file of a record that is not there any more."""
    for what, path, _ in recorded_files(source):
        if not Path(path).is_file():
            raise CharrnnError(f"{what} moved or was deleted: {path} (give a FILE to eval)")


def unchanged(source: dict) -> bool:
    """Whether every file of a record (and a dataset or the built-in corpus) still has its
    recorded sha256."""
    from charrnn.corpus.datasets import dataset_path

    if source["kind"] == "dataset" and file_sha256(dataset_path(source["name"], quiet=True)) != source["sha256"]:
        return False
    if source["kind"] == "builtin" and builtin_sha256(builtin_text()) != source["sha256"]:
        return False
    return all(file_sha256(path) == sha256 for _, path, sha256 in recorded_files(source))


def first_change(recorded: dict, now: dict) -> str | None:
    """What differs between a record and the record of the text as it reads now, in words
    that name the file; None when nothing does."""
    for (what, path, before), (_, _, after) in zip(recorded_files(recorded), recorded_files(now)):
        if before != after:
            return f"{what} {path} changed since training (sha256 differs)"
    if recorded["sha256"] != now["sha256"]:
        where = {"dataset": f"dataset {recorded.get('name')}",
                 "builtin": "the built-in corpus"}.get(recorded["kind"], "the training corpus")
        return f"{where} changed since training (sha256 differs)"
    return None


def file_sha256(path) -> str | None:
    """A file's sha256 now; None when it cannot be read."""
    from charrnn.corpus.datasets import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None
