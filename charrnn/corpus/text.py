"""One text read from a file: decoded, checked and encoded as it is read.

A corpus is UTF-8 text, read as text. A file is read, hashed, decoded and encoded a chunk
at a time, in one pass, straight into one tensor of ids in the narrowest integer dtype that
fits (a byte per character for up to 256 distinct characters). The text is never held as
one str, nor as a Python int per character; the split and the vocabulary's ids are made in
that tensor (charrnn.corpus.data), and training batches are views into it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from charrnn.corpus.byte_vocab import read_bytes
from charrnn.errors import CharrnnError

NORMALIZERS = ("none", "letters")
BOM = "\ufeff"
CODE_POINTS = 0x110000  # every Unicode code point is below this
READ_CHUNK = 1 << 18  # bytes read, hashed and decoded at a time
ENCODE_CHUNK = 1 << 18  # characters encoded at a time: the int32 working copies stay a few MB


def ids_dtype(count: int) -> torch.dtype:
    """The narrowest integer dtype for ids 0..count-1."""
    return torch.uint8 if count <= 256 else torch.int16 if count <= 32767 else torch.int32


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
