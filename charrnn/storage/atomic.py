"""Atomic file writes: whole or not at all.

Every file charrnn writes in place of another (a checkpoint, config.toml, a learning
curve, generated text, a downloaded corpus) goes through `write_atomically`: into a
temporary file in the same folder, flushed and fsynced, renamed over the target, and the
folder fsynced where the system allows it, so that a reader never sees half a file and a
crash leaves the old one as it was. The temporary file is named `.NAME.XXXXXXXX.tmp`, so
`remove_stale_temporaries` can clear what a killed writer (SIGKILL, power loss) left.

Standard library only: charrnn.corpus.datasets writes with it without importing torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY = ".{name}.*.tmp"  # what write_atomically writes before the rename (mkstemp's prefix and suffix)


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a binary file that becomes `path` once it returns, atomically;
    the file gets the permissions of an ordinary new file. On any failure (in `write`,
    or the system's: disk full, read-only) the temporary file is removed, `path` is
    untouched and the exception propagates."""
    path = Path(path)
    prefix, suffix = TEMPORARY.format(name=path.name).split("*")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # Ctrl-C inside a writer that then fails as it closes (torch.save's zip writer
        # does): that error would hide the interruption, a traceback instead of a clean
        # stop, so raise the KeyboardInterrupt itself
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        raise
    sync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """`data` into `path`, atomically."""
    write_atomically(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """`text` into `path` in `encoding`, atomically."""
    write_bytes(path, text.encode(encoding))


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power loss; a system that cannot
    open or sync folders (Windows, some network file systems) is left as it is."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete the temporary files that writers killed mid-write left behind; the files
    they were replacing are intact."""
    for tmp in Path(directory).glob(TEMPORARY.format(name="*")):
        tmp.unlink(missing_ok=True)


def umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
