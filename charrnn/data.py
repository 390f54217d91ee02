"""Corpora, the character vocabulary, splits and batches.

A corpus is UTF-8 text, read as text. The vocabulary is the sorted set of characters of
the training text; it travels inside every checkpoint and is the only encoder used at
generate and eval time.

Large corpora: a file is read, hashed, decoded and encoded a chunk at a time, in one pass,
straight into one tensor of ids in the narrowest integer dtype that fits (a byte per
character for up to 256 distinct characters). The text is never held as one str, nor as a
Python int per character; the split and the vocabulary's ids are made in that tensor, and
training batches are views into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from charrnn.byte_vocab import ByteVocab, read_bytes
from charrnn.config import UNKNOWN_CHOICES, VOCAB_KINDS
from charrnn.errors import CharrnnError

UNK = "<unk>"
NORMALIZERS = ("none", "letters")
BOM = "\ufeff"
CODE_POINTS = 0x110000  # every Unicode code point is below this
READ_CHUNK = 1 << 18  # bytes read, hashed and decoded at a time
ENCODE_CHUNK = 1 << 18  # characters encoded at a time: the int32 working copies stay a few MB


def ids_dtype(count: int) -> torch.dtype:
    """The narrowest integer dtype for ids 0..count-1."""
    return torch.uint8 if count <= 256 else torch.int16 if count <= 32767 else torch.int32


# ---------------------------------------------------------------- reading text


@dataclass
class Text:
    """A text in its own compact encoding, made as it is read, before any vocabulary is
    known: `ids` index `chars`, its distinct characters in the order they were first met.
    `Vocab.ids_of` turns it into a vocabulary's ids. `notes` are things the reader changed
    that the user should hear about (a removed byte-order mark)."""

    ids: torch.Tensor
    chars: list[str]
    sha256: str = ""
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_str(cls, text: str, normalize_how: str = "none") -> "Text":
        return cls(*encode_pieces([normalize(text, normalize_how)], len(text)))

    def as_str(self) -> str:
        """The text as one str: for small texts (a prefix file), not for corpora."""
        return "".join(map(self.chars.__getitem__, self.ids.tolist()))


def read_text(path: str | Path, what: str = "corpus", normalize_how: str = "none") -> Text:
    """A UTF-8 file's text (normalized as `normalize_how` says) and the sha256 of its bytes;
    one-line errors otherwise.

    A leading byte-order mark is removed (with a note). Line endings are kept as they are
    (CRLF stays CRLF: the model learns the text it is given). A NUL byte means the file is
    binary (or UTF-16) and is an error, with its offset."""
    path = Path(path)
    if not path.exists():
        raise CharrnnError(f"{what} not found: {path}")
    if path.is_dir():
        raise CharrnnError(f"{what} is a directory, not a text file: {path}")
    name, digest, notes = f"{what} {path}", hashlib.sha256(), []
    try:
        with open(path, "rb") as f:
            # A character takes at least one byte, so the file's size is room enough.
            pieces = normalize_pieces(decode_chunks(f, digest, name, notes), normalize_how)
            ids, chars = encode_pieces(pieces, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise CharrnnError(f"cannot read {name}: {e.strerror or e}") from None
    if not len(ids):
        raise CharrnnError(f"{name} is empty")
    return Text(ids, chars, digest.hexdigest(), notes)


def read_byte_text(path: str | Path, what: str = "corpus", normalize_how: str = "none") -> Text:
    """A file's bytes as a Text for a byte vocabulary: its ids are the bytes themselves.
    (`normalize_how` makes it a drop-in for read_text; check_vocab_kind allows only none.)"""
    ids, sha256 = read_bytes(path, what)
    return Text(ids, [], sha256)


def decode_chunks(f: BinaryIO, digest, name: str, notes: list[str]) -> Iterator[str]:
    """A binary file's text, a chunk at a time, its bytes hashed into `digest` as they are
    read, a leading byte-order mark removed (and noted)."""
    pending, offset = b"", 0
    while True:
        chunk = f.read(READ_CHUNK)
        digest.update(chunk)
        data = pending + chunk
        cut = char_boundary(data) if chunk else len(data)
        piece = decode_piece(data[:cut], offset, name)
        if offset == 0 and piece.startswith(BOM):
            piece = piece[1:]
            notes.append(f"removed the UTF-8 byte-order mark at the start of {name}")
        yield piece
        pending, offset = data[cut:], offset + cut
        if not chunk:
            return


def char_boundary(data: bytes) -> int:
    """Where to cut `data` so that no UTF-8 sequence is split: just before its last
    character when that starts within the last 4 bytes (it may be incomplete)."""
    for i in range(len(data) - 1, max(len(data) - 5, -1), -1):
        if data[i] & 0xC0 != 0x80:  # ASCII or the lead byte of a sequence
            return i + 1 if data[i] < 0x80 else i
    return len(data)  # no character starts near the end: invalid, and the decoder says where


def decode_piece(data: bytes, offset: int, name: str) -> str:
    """`data` (which starts `offset` bytes into the file) as text; one-line errors that
    give the offset in the file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        utf16 = offset == 0 and data[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise CharrnnError(
            f"{name} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {offset + e.start} is invalid"
            + (" (it starts with a UTF-16 byte-order mark: convert it to UTF-8)" if utf16 else "")
        ) from None
    if "\x00" in text:
        raise CharrnnError(f"{name} looks binary: it has a NUL byte at offset {offset + data.index(0)}")
    return text


def builtin_text() -> str:
    """The built-in corpus: the Python language reference shipped with CPython
    (`pydoc_data.topics`, about 465,000 characters), so training needs no file or network."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def builtin_sha256(text: str) -> str:
    """The built-in corpus's checksum: the sha256 of its UTF-8 encoding (it has no file)."""
    return hashlib.sha256(text.encode()).hexdigest()


def normalize(text: str, how: str) -> str:
    """`letters` is the d2l book's preprocessing: every run of non-letters becomes one
    space, then everything is lowercased."""
    if how == "letters":
        return re.sub("[^A-Za-z]+", " ", text).lower()
    if how != "none":
        raise CharrnnError(f"unknown --normalize {how!r}; choose one of {', '.join(NORMALIZERS)}")
    return text


def normalize_pieces(pieces: Iterable[str], how: str) -> Iterator[str]:
    """`normalize` of the pieces' concatenation, a piece at a time: a run of non-letters
    cut by a piece boundary becomes a space on each side, and the second is dropped."""
    ends_with_space = False
    for piece in pieces:
        piece = normalize(piece, how)
        if how == "letters" and ends_with_space and piece.startswith(" "):
            piece = piece[1:]
        if piece:
            ends_with_space = piece.endswith(" ")
            yield piece


def code_points(pieces: Iterable[str]) -> Iterator[torch.Tensor]:
    """The pieces' code points as int32 tensors of at most ENCODE_CHUNK each. A lone
    surrogate (a Python str can hold one, a UTF-8 file cannot) is its own code point."""
    for piece in pieces:
        for start in range(0, len(piece), ENCODE_CHUNK):
            data = bytearray(piece[start : start + ENCODE_CHUNK].encode("utf-32-le", "surrogatepass"))
            yield torch.frombuffer(data, dtype=torch.int32)


def encode_pieces(pieces: Iterable[str], capacity: int) -> tuple[torch.Tensor, list[str]]:
    """The pieces as ids numbered in the order characters are first met, and those
    characters: a chunk at a time through a code point -> id table, into one tensor of
    `capacity` ids (grown if the text is longer) in the narrowest dtype that fits so far."""
    ids = torch.empty(capacity, dtype=torch.uint8)
    id_of = torch.full((CODE_POINTS,), -1, dtype=torch.int32)
    chars, length = [], 0
    for points in code_points(pieces):
        chunk = id_of.index_select(0, points)
        new = chunk < 0
        if bool(new.any()):
            fresh = points[new].unique()
            id_of[fresh] = torch.arange(len(chars), len(chars) + len(fresh), dtype=torch.int32)
            chars += map(chr, fresh.tolist())
            chunk = id_of.index_select(0, points)
        if length + len(chunk) > len(ids) or ids_dtype(len(chars)) != ids.dtype:
            ids = moved(ids[:length], max(len(ids), 2 * (length + len(chunk))), ids_dtype(len(chars)))
        ids[length : length + len(chunk)] = chunk
        length += len(chunk)
    # The room left unused is never touched, so it costs no memory; but a tensor saved to
    # disk takes its storage along, so a largely unused one is copied to its own size.
    return (ids[:length] if len(ids) - length <= length // 8 else ids[:length].clone()), chars


def moved(ids: torch.Tensor, capacity: int, dtype: torch.dtype) -> torch.Tensor:
    """`ids` copied to the start of a new tensor of `capacity` ids of `dtype`."""
    room = torch.empty(capacity, dtype=dtype)
    room[: len(ids)] = ids
    return room


def chunks(ids: torch.Tensor) -> Iterator[torch.Tensor]:
    """`ids` as int32 copies of at most ENCODE_CHUNK, for lookups in tables."""
    for start in range(0, len(ids), ENCODE_CHUNK):
        yield ids[start : start + ENCODE_CHUNK].int()


def characters(text: Text, start: int = 0, stop: int | None = None) -> list[str]:
    """The distinct characters of text[start:stop]."""
    seen = torch.zeros(len(text.chars), dtype=torch.bool)
    for chunk in chunks(text.ids[start:stop]):
        seen |= torch.bincount(chunk, minlength=len(text.chars)) > 0
    return [text.chars[i] for i in seen.nonzero().flatten().tolist()]


def escape_chars(chars) -> str:
    """Characters as a person can read them in one line: `'\\n', 'é', '\\x00'`."""
    return ", ".join(repr(c) for c in chars)


# ---------------------------------------------------------------- vocabulary


class Vocab:
    """Characters <-> integer ids. `tokens` is sorted; with `unk`, the token `<unk>` stands
    for every character outside it (the book's vocabulary), else such characters are errors."""

    kind = "chars"

    def __init__(self, tokens, unk: bool = False):
        tokens = set(tokens) | ({UNK} if unk else set())
        self.idx_to_token = sorted(tokens)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        self.unk = self.token_to_idx.get(UNK) if unk else None

    @classmethod
    def from_text(cls, text: str, unk: bool = False) -> "Vocab":
        return cls(set(text), unk)

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of text that the vocabulary cannot encode, sorted."""
        if self.unk is not None:
            return []
        return sorted(set(text) - self.token_to_idx.keys())

    @staticmethod
    def unknown_error(missing: list[str], what: str, hint: str = "") -> CharrnnError:
        shown = escape_chars(missing[:20]) + (", ..." if len(missing) > 20 else "")
        return CharrnnError(
            f"{what} has {len(missing)} character(s) not in the model's vocabulary: {shown}{hint}"
        )

    def encode(self, text: str, what: str = "text") -> torch.Tensor:
        """A 1-D tensor of ids in the narrowest integer dtype that holds the vocabulary."""
        return self.ids_of(Text.from_str(text), what=what)[0]

    def ids_of(self, text: Text, start: int = 0, stop: int | None = None, *, what: str = "text",
               unknown: str = "error", hint: str = "", in_place: bool = False) -> tuple[torch.Tensor, int]:
        """This vocabulary's ids for text[start:stop], and how many characters were dropped.
        Characters outside the vocabulary raise a CharrnnError naming them (`unknown=
        "error"`; `hint` ends the message) or are dropped (`"skip"`). `in_place` writes the
        ids over the text's own (when the dtypes agree), which then must not be used again."""
        source = text.ids[start:stop]
        outside = -1 if self.unk is None else self.unk
        lookup = torch.tensor([self.token_to_idx.get(c, outside) for c in text.chars], dtype=torch.int32)
        out = source if in_place and source.dtype == self.dtype else torch.empty(len(source), dtype=self.dtype)
        written, missing = 0, set()
        for chunk in chunks(source):
            ids = lookup.index_select(0, chunk)
            known = ids >= 0
            if not bool(known.all()):
                if unknown == "error":
                    missing.update(chunk[~known].tolist())
                    continue
                ids = ids[known]
            out[written : written + len(ids)] = ids
            written += len(ids)
        if missing:
            raise self.unknown_error(sorted(text.chars[i] for i in missing), what, hint)
        return out[:written], len(source) - written

    @property
    def dtype(self) -> torch.dtype:
        return ids_dtype(len(self))

    def decode(self, ids) -> str:
        return "".join(self.idx_to_token[int(i)] for i in ids)

    def to_dict(self) -> dict:
        tokens = [t for t in self.idx_to_token if not (self.unk is not None and t == UNK)]
        return {"tokens": tokens, "unk": self.unk is not None}

    def can_encode(self, char: str) -> bool:
        return char in self.token_to_idx

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab | ByteVocab":
        if d.get("kind") == "bytes":
            return ByteVocab()
        tokens = d["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("vocabulary tokens must be a list of strings")
        return cls(tokens, bool(d["unk"]))


# ---------------------------------------------------------------- corpus and split


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
    path: str | None = None,
    dataset: str | None = None,
    *,
    val_file: str | None = None,
    val_fraction: float = 0.1,
    normalize_how: str = "none",
    windows: tuple[int, int, int] | None = None,
    unknown: str = "error",
    quiet: bool = False,
    vocab_kind: str = "chars",
) -> Corpus:
    """Read a corpus file, a named dataset, or (neither given) the built-in corpus, and
    split it: `val_file` if given, else the last `val_fraction` of the text. `windows`
    = (train_windows, val_windows, seq_len) is the d2l split instead: the first
    train_windows stride-1 windows for training and the next val_windows for validation.
    Validation characters the training text lacks are an error that names them, or with
    `unknown="skip"` are dropped, with a note saying how many. `vocab_kind="bytes"` reads
    the files as bytes, for a vocabulary of the 256 byte values."""
    if path and dataset:
        raise CharrnnError("give a corpus file or --dataset, not both")
    check_unknown(unknown)
    by_bytes = check_vocab_kind(vocab_kind, normalize_how) == "bytes"
    read = read_byte_text if by_bytes else read_text
    if dataset:
        from charrnn.datasets import dataset_path

        text = read(dataset_path(dataset, quiet=quiet), normalize_how=normalize_how)
        source = {"kind": "dataset", "name": dataset}
    elif path:
        text = read(path, normalize_how=normalize_how)
        source = {"kind": "file", "path": str(Path(path).resolve())}
    else:
        builtin = builtin_text()
        text = Text(ByteVocab().encode(builtin), []) if by_bytes else Text.from_str(builtin, normalize_how)
        text.sha256 = builtin_sha256(builtin)
        source = {"kind": "builtin", "name": "pydoc_data.topics"}
    source.update(sha256=text.sha256, normalize=normalize_how, val_fraction=val_fraction, unknown=unknown)
    if by_bytes:  # (only then: the sources of character runs stay as they were)
        source["vocab"] = "bytes"
    notes, length = text.notes, len(text.ids)

    val_text = text
    if windows:
        n_train, n_val, seq_len = windows
        train_span = (0, min(n_train + seq_len, length))
        val_span = (min(n_train, length), min(n_train + n_val + seq_len, length))
        source["windows"] = list(windows)
    elif val_file:
        val_text = read(val_file, "validation file", normalize_how)
        notes += val_text.notes
        train_span, val_span = (0, length), (0, len(val_text.ids))
        source["val_file"] = {"path": str(Path(val_file).resolve()), "sha256": val_text.sha256}
    else:
        if not 0 < val_fraction < 1:
            raise CharrnnError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        cut = int(length * (1 - val_fraction))
        train_span, val_span = (0, cut), (cut, length)
    if val_span[1] - val_span[0] < 2:
        raise CharrnnError(f"the validation split has {val_span[1] - val_span[0]} character(s); it needs at least 2")

    if by_bytes:
        vocab = ByteVocab()
    elif normalize_how == "letters":  # the book's vocabulary: 26 letters, space and <unk>
        vocab = Vocab(string.ascii_lowercase + " ", unk=True)
    else:
        vocab = Vocab(characters(text, *train_span))
    val_ids, dropped = vocab.ids_of(val_text, *val_span, what="the validation text", unknown=unknown,
                                    hint=" (--unknown skip drops them)")
    if dropped:
        notes.append(skipped_note(dropped, "the validation text"))
        if len(val_ids) < 2:
            raise CharrnnError(f"the validation text has {len(val_ids)} character(s) left after --unknown skip; "
                               "it needs at least 2")
    # Last, and in place: the training ids take the place of the text's own.
    train_ids, _ = vocab.ids_of(text, *train_span, what="the training text", in_place=True)
    return Corpus(train_ids, val_ids, vocab, source, notes)


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
    return f"dropped {dropped} character(s) of {what} that are not in the vocabulary (--unknown skip)"


def reload_corpus(source: dict, cache_dir: str | Path | None = None) -> Corpus:
    """The corpus a checkpoint was trained on, found again from its recorded source and
    checked against its sha256 (a clear error if it moved or changed).

    With `cache_dir` (the run directory) the ids come from the run's encoding cache when it
    is there: the source is still hashed (hashing is fast; decoding and encoding are what
    take time on a large corpus) so a changed file is still caught."""
    if not well_formed(source):
        raise CharrnnError("the checkpoint's record of its corpus is damaged; give a FILE to eval")
    kind = source["kind"]
    where = {"file": source.get("path"), "dataset": f"dataset {source.get('name')}"}.get(kind, "the built-in corpus")
    if kind == "file" and not Path(source["path"]).is_file():
        raise CharrnnError(f"the training corpus moved or was deleted: {source['path']} (give a FILE to eval)")
    val_file = source.get("val_file")
    cached = load_encoded(cache_dir, source) if cache_dir else None
    if cached is not None and source_hashes(source) == (source["sha256"], val_file and val_file["sha256"]):
        return cached
    windows = source.get("windows")
    corpus = load_corpus(
        source["path"] if kind == "file" else None,
        source["name"] if kind == "dataset" else None,
        val_file=val_file["path"] if val_file else None,
        val_fraction=source["val_fraction"],
        normalize_how=source["normalize"],
        windows=tuple(windows) if windows else None,
        unknown=source.get("unknown", "error"),
        quiet=True,
        vocab_kind=source.get("vocab", "chars"),
    )
    if corpus.source["sha256"] != source["sha256"]:
        raise CharrnnError(f"{where} changed since training (sha256 differs); give a FILE to eval")
    if val_file and corpus.source["val_file"]["sha256"] != val_file["sha256"]:
        raise CharrnnError(f"the validation file {val_file['path']} changed since training (sha256 differs)")
    return corpus


def well_formed(source) -> bool:
    """Whether a recorded source (from a checkpoint, perhaps a stranger's) has the fields
    load_corpus writes, of their types."""
    if not isinstance(source, dict) or source.get("kind") not in ("file", "dataset", "builtin"):
        return False
    needed = ["sha256", "normalize"] + {"file": ["path"], "dataset": ["name"], "builtin": []}[source["kind"]]
    if not all(isinstance(source.get(key), str) for key in needed) or type(source.get("val_fraction")) not in (int, float):
        return False
    if not isinstance(source.get("vocab", "chars"), str):
        return False
    windows, val_file = source.get("windows"), source.get("val_file")
    if windows is not None and not (isinstance(windows, list) and len(windows) == 3
                                    and all(type(n) is int and n >= 0 for n in windows)):
        return False
    return val_file is None or isinstance(val_file, dict) and all(isinstance(val_file.get(k), str) for k in ("path", "sha256"))


def source_hashes(source: dict) -> tuple[str | None, str | None]:
    """The sha256 of the corpus and of the validation file (None: none, or unreadable) as
    they are now, from a recorded source."""
    from charrnn.datasets import dataset_path, sha256_file

    def file_hash(path) -> str | None:
        try:
            return sha256_file(path)
        except OSError:
            return None

    kind, val_file = source.get("kind"), source.get("val_file")
    if kind == "file":
        main = file_hash(source["path"])
    elif kind == "dataset":
        main = file_hash(dataset_path(source["name"], quiet=True))
    else:
        main = builtin_sha256(builtin_text())
    return main, val_file and file_hash(val_file["path"])


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
    from charrnn.checkpoint import atomic_save

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


# ---------------------------------------------------------------- batches


class StreamBatches:
    """Truncated BPTT batches, as char-rnn makes them: the text is cut into `batch_size`
    contiguous streams, and batch i is the next `seq_len` characters of every stream, so
    the hidden state at the end of one batch is the right start for the next. Inputs and
    targets are (batch, seq_len) int64.

        text     a b c d e f g h i j k l m n o p q r s t u v w x ...
        offset   |-o-|  (0 <= o < seq_len, new every epoch)
        streams  row 0: e f g h i j | k l m n o p | ...     batch 0 | batch 1 | ...
                 row 1: ... the next `length` characters ...
                 ...
                 row B-1

    With `offsets="random"` each epoch starts the streams `o` characters into the text, o
    drawn from the seed and the epoch number (so a resumed run draws the same), and the
    truncation points move with it: epoch after epoch the model sees other 128-character
    chunks and other carried states, not the same ones again. With "fixed", o = 0 always
    (char-rnn's way). Every epoch has the same number of batches."""

    carries_state = True

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, offsets: str = "random"):
        length = (len(ids) - seq_len) // batch_size  # room for an offset of up to seq_len - 1
        if length < seq_len:
            raise CharrnnError(
                f"the training text has {len(ids)} characters: too short for {batch_size} streams "
                f"of --seq-len {seq_len} (it needs at least {batch_size * seq_len + seq_len}); "
                "lower --batch-size or --seq-len"
            )
        self.ids, self.batch_size, self.length, self.seq_len = ids, batch_size, length, seq_len
        self.seed, self.random_offsets = seed, offsets == "random"
        self.batches_per_epoch = length // seq_len
        self._epoch = None

    def offset(self, epoch: int) -> int:
        if not self.random_offsets:
            return 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randint(self.seq_len, (), generator=g))

    def batch(self, epoch: int, index: int):
        if self._epoch != epoch:  # views of the text, no copy
            o, n = self.offset(epoch), self.batch_size * self.length
            self.inputs = self.ids[o : o + n].view(self.batch_size, self.length)
            self.targets = self.ids[o + 1 : o + n + 1].view(self.batch_size, self.length)
            self._epoch = epoch
        s = slice(index * self.seq_len, (index + 1) * self.seq_len)
        return self.inputs[:, s].long(), self.targets[:, s].long()


class WindowBatches:
    """The d2l book's sampling: every stride-1 window of seq_len + 1 characters, shuffled
    anew each epoch (from the seed and the epoch number, so a resumed run sees the same
    order), batches of `batch_size` windows with a smaller last one; each window starts
    from a zero state."""

    carries_state = False

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0):
        count = len(ids) - seq_len
        if count < 1:
            raise CharrnnError(
                f"the training text has {len(ids)} characters: shorter than one training "
                f"sequence (--seq-len {seq_len} needs {seq_len + 1})"
            )
        self.windows = ids.unfold(0, seq_len + 1, 1)
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = -(-count // batch_size)
        self._order = (None, None)

    def batch(self, epoch: int, index: int):
        if self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            # drawn on the CPU (the same order on every device), then moved where the text is
            self._order = (epoch, torch.randperm(len(self.windows), generator=g).to(self.windows.device))
        rows = self.windows[self._order[1][index * self.batch_size : (index + 1) * self.batch_size]]
        return rows[:, :-1].long(), rows[:, 1:].long()


def make_batches(ids, sampling: str, batch_size: int, seq_len: int, seed: int = 0, offsets: str = "random"):
    if sampling == "sequential":
        return StreamBatches(ids, batch_size, seq_len, seed, offsets)
    if sampling == "random":
        return WindowBatches(ids, batch_size, seq_len, seed)
    raise CharrnnError(f"unknown --sampling {sampling!r}; choose sequential or random")
