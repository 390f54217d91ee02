"""Named text corpora, downloaded once into a local cache and verified by sha256.

`dataset_path("tinyshakespeare")` returns the path of the cached file, downloading it
first when it is absent (or when the cached copy no longer matches its sha256).

Cache location (see `cache_dir`): `$CHARRNN_CACHE_DIR` if set, else
`$XDG_CACHE_HOME/charrnn` if XDG_CACHE_HOME is set, else `~/.cache/charrnn`.

Mirrors and offline use: if the environment variable `CHARRNN_DATA_URL` is set, every
dataset is fetched from `$CHARRNN_DATA_URL/<filename>` (e.g. `http://mirror/data` or
`file:///srv/corpora`) instead of its own URL. The sha256 check still applies, so a
mirror must serve byte-identical files.

A download streams into a temporary file inside the cache directory, hashing as it
writes; only a file whose sha256 matches is moved into place (atomically, with
charrnn.storage.atomic). On any failure the temporary file is removed, nothing partial stays in
the cache, and a one-line `CharrnnError` says what went wrong.

Standard library only: importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from charrnn.storage.atomic import write_atomically
from charrnn.errors import CharrnnError

DOWNLOAD_TIMEOUT_S = 60
"""Seconds a download may wait on the network (connect or read) before failing."""

_CHUNK = 1 << 20  # 1 MiB


@dataclass(frozen=True)
class Dataset:
    """A named corpus: where it comes from and what it must hash to.

    `url` is the canonical source; when `CHARRNN_DATA_URL` is set the file is fetched
    from `$CHARRNN_DATA_URL/<filename>` instead (see `source_url`). Either way the
    downloaded bytes must match `sha256`. `filename` is the name in the cache directory.
    """

    name: str
    url: str
    sha256: str
    filename: str
    description: str

    def source_url(self) -> str:
        """The URL to download from: `$CHARRNN_DATA_URL/<filename>` if that is set, else `url`."""
        base = os.environ.get("CHARRNN_DATA_URL")
        if base:
            return base.rstrip("/") + "/" + self.filename
        return self.url


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="timemachine",
            url="http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
            sha256="8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
            filename="timemachine.txt",
            description="H. G. Wells, The Time Machine (about 175 KB, English)",
        ),
        Dataset(
            name="tinyshakespeare",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            filename="tinyshakespeare.txt",
            description="Tiny Shakespeare from karpathy/char-rnn (about 1.1 MB, English)",
        ),
    )
}


def cache_dir() -> Path:
    """The directory datasets are cached in (not created here).

    `$CHARRNN_CACHE_DIR` if set, else `$XDG_CACHE_HOME/charrnn` if XDG_CACHE_HOME is
    set, else `~/.cache/charrnn`.
    """
    explicit = os.environ.get("CHARRNN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "charrnn"
    return Path.home() / ".cache" / "charrnn"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    """An exception as a single line of text, for CharrnnError messages."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _one_line(reason)
        text = str(reason)
    elif isinstance(exc, TimeoutError):
        text = f"timed out after {DOWNLOAD_TIMEOUT_S} s"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _download(dataset: Dataset, dest: Path, *, quiet: bool) -> None:
    """Download `dataset` to `dest`, verified by sha256; nothing is left behind on failure."""
    url = dataset.source_url()
    cache = dest.parent
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CharrnnError(f"could not create the cache directory {cache}: {_one_line(exc)}") from exc
    if not quiet:
        print(f"downloading {dataset.name} from {url}", file=sys.stderr, flush=True)

    def fetch(f) -> None:  # into write_atomically's temporary file, hashing as it goes
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            TimeoutError,
            ConnectionError,
            ValueError,
        ) as exc:
            # URLError covers HTTPError; HTTPException a truncated or garbled response;
            # ValueError a malformed URL.
            raise CharrnnError(f"could not download {dataset.name} from {url}: {_one_line(exc)}") from exc
        except OSError as exc:
            # Disk full, permissions, or a socket error that is not a URLError.
            raise CharrnnError(
                f"could not download {dataset.name} from {url} into {cache}: {_one_line(exc)}"
            ) from exc
        got = digest.hexdigest()
        if got != dataset.sha256:
            raise CharrnnError(
                f"downloaded {dataset.name} does not match its sha256 "
                f"(expected {dataset.sha256}, got {got}); the file was deleted"
            )

    # on any failure, KeyboardInterrupt too, nothing partial is left in the cache
    try:
        write_atomically(dest, fetch)
    except OSError as exc:  # making the temporary file, or moving it into place
        raise CharrnnError(f"could not write {dataset.name} into {dest}: {_one_line(exc)}") from exc


def dataset_path(name: str, *, quiet: bool = False) -> Path:
    """The path of the cached corpus `name`, downloading it first when absent.

    The file comes from the dataset's URL, or from `$CHARRNN_DATA_URL/<filename>` when
    that environment variable is set; it must match the dataset's sha256. A cached file
    whose sha256 does not match (corrupted) is deleted and downloaded again. Unless
    `quiet`, a download prints one line to stderr. Raises CharrnnError (one line) for an
    unknown name or a failed download.
    """
    dataset = DATASETS.get(name)
    if dataset is None:
        known = ", ".join(sorted(DATASETS))
        raise CharrnnError(f"unknown dataset {name!r}; known datasets: {known}")
    dest = cache_dir() / dataset.filename
    if dest.is_file():
        try:
            if sha256_file(dest) == dataset.sha256:
                return dest
            if not quiet:
                print(
                    f"cached {dataset.name} at {dest} does not match its sha256; downloading it again",
                    file=sys.stderr,
                    flush=True,
                )
            dest.unlink()
        except OSError as exc:
            raise CharrnnError(f"could not check the cached {dataset.name} at {dest}: {_one_line(exc)}") from exc
    _download(dataset, dest, quiet=quiet)
    return dest
