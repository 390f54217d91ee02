"""Generated text written to a file atomically: into a temporary file in the same
directory, flushed and fsynced, then renamed over the target, so that a reader never sees
half a file and an interrupted run leaves the old one as it was."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from charrnn.checkpoint import _umask
from charrnn.errors import CharrnnError


def write_atomically(path: Path, data: bytes) -> None:
    """`data` into `path`, whole or not at all; a one-line CharrnnError if it cannot be written."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CharrnnError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the text is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CharrnnError(f"cannot write {path}: {e.strerror or e}") from None
        raise
