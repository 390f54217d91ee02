"""Where generated text goes: stdout, or a file written atomically (charrnn.storage.atomic: a
reader never sees half a file and an interrupted run leaves the old one as it was)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from charrnn.storage.atomic import write_bytes
from charrnn.corpus.byte_vocab import raw_bytes, shown
from charrnn.errors import CharrnnError


def write_file(path: Path, data: bytes) -> None:
    """`data` into `path`, whole or not at all; a one-line CharrnnError if it cannot be written."""
    try:
        write_bytes(path, data)
    except OSError as e:
        raise CharrnnError(f"cannot write {path}: {e.strerror or e}") from None


class TextSink:
    """Where generate's text goes: stdout as it comes, or with `path` a buffer that `close`
    writes to that file atomically. A byte model's bytes that are not UTF-8 arrive as lone
    surrogates (see charrnn.corpus.byte_vocab): they come out as U+FFFD, or with `raw` as the
    bytes themselves."""

    def __init__(self, path: Path | None, raw: bool):
        self.path, self.raw = path, raw
        self.buffer = io.BytesIO() if path else None

    def write(self, text: str) -> None:
        if self.buffer is not None:
            self.buffer.write(raw_bytes(text) if self.raw else shown(text).encode("utf-8"))
        elif self.raw:
            sys.stdout.buffer.write(raw_bytes(text))
        else:
            sys.stdout.write(shown(text))

    def flush(self) -> None:
        if self.buffer is None:
            (sys.stdout.buffer if self.raw else sys.stdout).flush()

    def close(self) -> None:
        """Write the file (with `path`); stdout needs nothing more."""
        if self.buffer is not None:
            write_file(self.path, self.buffer.getvalue())
