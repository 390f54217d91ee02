"""Byte-level models (`train --vocab bytes`): the vocabulary is the 256 byte values, so any
file trains (no UTF-8 check, nothing unknown) and any text encodes, as its UTF-8 bytes.
An LSTM learns to spell UTF-8 by itself (char-rnn #12, torch-rnn #47 and #133).

The model emits bytes; `decoded_steps` turns them into text incrementally, so a streamed
multi-byte character is never split, and bytes that are not valid UTF-8 are kept as lone
surrogates (Python's surrogateescape): shown as U+FFFD, or written back as the bytes
themselves (`generate --raw`)."""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from charrnn.errors import CharrnnError

ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # an invalid byte, as surrogateescape decodes it


class ByteVocab:
    """The 256 byte values <-> ids 0..255: each id is its byte."""

    kind = "bytes"
    idx_to_token = [bytes([i]) for i in range(256)]
    unk = None
    dtype = torch.uint8

    def __len__(self) -> int:
        return 256

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteVocab)

    def can_encode(self, char: str) -> bool:
        return True

    def encode(self, text: str, what: str = "text") -> torch.Tensor:
        """text's UTF-8 bytes (invalid bytes held as surrogates go back to themselves)."""
        data = bytearray(raw_bytes(text))
        return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)

    def decode(self, ids) -> str:
        """The bytes as text, invalid bytes as lone surrogates (see `shown`)."""
        return bytes(int(i) for i in ids).decode("utf-8", "surrogateescape")

    def ids_of(self, text, start: int = 0, stop: int | None = None, **_character_options) -> tuple[torch.Tensor, int]:
        """The ids of text[start:stop] (a Text read as bytes: its ids are the bytes) and
        none dropped: Vocab.ids_of's options about unknown characters have nothing to do."""
        return text.ids[start:stop], 0

    def to_dict(self) -> dict:
        return {"kind": "bytes"}


def shown(text: str) -> str:
    """Text for a person: each byte that was not valid UTF-8 as U+FFFD, the replacement character."""
    return ESCAPED_BYTE.sub("\ufffd", text)


def raw_bytes(text: str) -> bytes:
    """Text as the bytes a model emitted, invalid ones included."""
    return text.encode("utf-8", "surrogateescape")


def decoded_steps(steps: Iterable[list], samples: int) -> Iterator[list[str]]:
    """Each step's byte per sample (bytes objects) as the text it completes ("" while a
    multi-byte character is unfinished); after the last step, what is left undecoded."""
    decoders = [codecs.getincrementaldecoder("utf-8")("surrogateescape") for _ in range(samples)]
    for step in steps:
        yield [decoder.decode(byte) for decoder, byte in zip(decoders, step)]
    yield [decoder.decode(b"", final=True) for decoder in decoders]


def read_bytes(path: str | Path, what: str = "corpus") -> tuple[torch.Tensor, str]:
    """A file's bytes as uint8 ids, and their sha256; one-line errors for a missing,
    unreadable or empty file."""
    path = Path(path)
    if not path.exists():
        raise CharrnnError(f"{what} not found: {path}")
    if path.is_dir():
        raise CharrnnError(f"{what} is a directory, not a file: {path}")
    try:
        with open(path, "rb") as f:  # read straight into the buffer the ids are: one byte per id, no copy
            data = bytearray(os.fstat(f.fileno()).st_size)
            del data[f.readinto(data) :]
    except OSError as e:
        raise CharrnnError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not data:
        raise CharrnnError(f"{what} {path} is empty")
    return torch.frombuffer(data, dtype=torch.uint8), hashlib.sha256(data).hexdigest()


def utf8_chars(ids: torch.Tensor) -> int | None:
    """How many characters the bytes are as UTF-8, or None when they are not UTF-8:
    every byte that does not continue a sequence (10xxxxxx) starts a character."""
    try:
        bytes(ids.numpy().data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return int(((ids & 0xC0) != 0x80).sum())


def per_character(values, text: str):
    """A byte model's values, one per byte of `text` (a list, or a tensor of rows), taken
    after each character's last byte: where the model has read the whole character, so that
    they line up with the text's characters."""
    ends, offset = [], -1
    for char in text:
        offset += len(raw_bytes(char))
        ends.append(offset)
    return [values[end] for end in ends] if isinstance(values, list) else values[ends]


def char_bits(text: str, byte_bits: list[float]) -> list[float]:
    """Per-byte surprisal (every byte but the first) summed per character (every
    character but the first), so that a byte model's `eval --show` shades characters."""
    offset = len(raw_bytes(text[:1])) - 1  # the first character's later bytes are predicted too
    bits = []
    for char in text[1:]:
        size = len(raw_bytes(char))
        bits.append(sum(byte_bits[offset : offset + size]))
        offset += size
    return bits
