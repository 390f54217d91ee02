"""Corpora, the character vocabulary, splits and batches.

A corpus is UTF-8 text, read as text. The vocabulary is the sorted set of characters of
the training text; it travels inside every checkpoint and is the only encoder used at
generate and eval time.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

from charrnn.errors import CharrnnError

UNK = "<unk>"
NORMALIZERS = ("none", "letters")


# ---------------------------------------------------------------- reading text


def read_text(path: str | Path, what: str = "corpus") -> tuple[str, str]:
    """The text of a UTF-8 file and the sha256 of its bytes; one-line errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise CharrnnError(f"{what} not found: {path}")
    if path.is_dir():
        raise CharrnnError(f"{what} is a directory, not a text file: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CharrnnError(f"cannot read {what} {path}: {e.strerror or e}") from None
    return decode_text(data, f"{what} {path}"), hashlib.sha256(data).hexdigest()


def decode_text(data: bytes, name: str) -> str:
    if not data:
        raise CharrnnError(f"{name} is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharrnnError(
            f"{name} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} is invalid"
        ) from None
    if "\x00" in text:
        raise CharrnnError(f"{name} looks binary: it has a NUL byte at offset {data.index(0)}")
    return text


def builtin_text() -> str:
    """The built-in corpus: the Python language reference shipped with CPython
    (`pydoc_data.topics`, about 465,000 characters), so training needs no file or network."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def normalize(text: str, how: str) -> str:
    """`letters` is the d2l book's preprocessing: every run of non-letters becomes one
    space, then everything is lowercased."""
    if how == "letters":
        return re.sub("[^A-Za-z]+", " ", text).lower()
    if how != "none":
        raise CharrnnError(f"unknown --normalize {how!r}; choose one of {', '.join(NORMALIZERS)}")
    return text


def escape_chars(chars) -> str:
    """Characters as a person can read them in one line: `'\\n', 'é', '\\x00'`."""
    return ", ".join(repr(c) for c in chars)


# ---------------------------------------------------------------- vocabulary


class Vocab:
    """Characters <-> integer ids. `tokens` is sorted; with `unk`, the token `<unk>` stands
    for every character outside it (the book's vocabulary), else such characters are errors."""

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

    def check(self, text: str, what: str) -> None:
        missing = self.unknown(text)
        if missing:
            shown = escape_chars(missing[:20]) + (", ..." if len(missing) > 20 else "")
            raise CharrnnError(
                f"{what} has {len(missing)} character(s) not in the model's vocabulary: {shown}"
            )

    def encode(self, text: str, what: str = "text") -> torch.Tensor:
        """A 1-D tensor of ids in the narrowest integer dtype that holds the vocabulary."""
        self.check(text, what)
        get = self.token_to_idx.get
        ids = [get(c, self.unk) for c in text]
        return torch.tensor(ids, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if len(self) <= 256 else torch.int16 if len(self) <= 32767 else torch.int32

    def decode(self, ids) -> str:
        return "".join(self.idx_to_token[int(i)] for i in ids)

    def to_dict(self) -> dict:
        tokens = [t for t in self.idx_to_token if not (self.unk is not None and t == UNK)]
        return {"tokens": tokens, "unk": self.unk is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(d["tokens"], d["unk"])


# ---------------------------------------------------------------- corpus and split


@dataclass
class Corpus:
    """Training and validation text, their vocabulary, and where they came from
    (enough to find and check the same split again: `source`)."""

    train: str
    val: str
    vocab: Vocab
    source: dict = field(default_factory=dict)


def load_corpus(
    path: str | None = None,
    dataset: str | None = None,
    *,
    val_file: str | None = None,
    val_fraction: float = 0.1,
    normalize_how: str = "none",
    windows: tuple[int, int, int] | None = None,
    quiet: bool = False,
) -> Corpus:
    """Read a corpus file, a named dataset, or (neither given) the built-in corpus, and
    split it: `val_file` if given, else the last `val_fraction` of the text. `windows`
    = (train_windows, val_windows, seq_len) is the d2l split instead: the first
    train_windows stride-1 windows for training and the next val_windows for validation."""
    if path and dataset:
        raise CharrnnError("give a corpus file or --dataset, not both")
    if dataset:
        from charrnn.datasets import dataset_path

        file = dataset_path(dataset, quiet=quiet)
        text, sha = read_text(file)
        source = {"kind": "dataset", "name": dataset}
    elif path:
        text, sha = read_text(path)
        source = {"kind": "file", "path": str(Path(path).resolve())}
    else:
        text = builtin_text()
        sha = hashlib.sha256(text.encode()).hexdigest()
        source = {"kind": "builtin", "name": "pydoc_data.topics"}
    source.update(sha256=sha, normalize=normalize_how, val_fraction=val_fraction)
    text = normalize(text, normalize_how)

    if windows:
        n_train, n_val, seq_len = windows
        train, val = text[: n_train + seq_len], text[n_train : n_train + n_val + seq_len]
        source["windows"] = list(windows)
    elif val_file:
        train = text
        val, val_sha = read_text(val_file, "validation file")
        val = normalize(val, normalize_how)
        source["val_file"] = {"path": str(Path(val_file).resolve()), "sha256": val_sha}
    else:
        if not 0 < val_fraction < 1:
            raise CharrnnError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        cut = int(len(text) * (1 - val_fraction))
        train, val = text[:cut], text[cut:]
    if len(val) < 2:
        raise CharrnnError(f"the validation split has {len(val)} character(s); it needs at least 2")
    if normalize_how == "letters":  # the book's vocabulary: 26 letters, space and <unk>
        vocab = Vocab(string.ascii_lowercase + " ", unk=True)
    else:
        vocab = Vocab.from_text(train)
    vocab.check(val, "the validation text")
    return Corpus(train, val, vocab, source)


def reload_corpus(source: dict) -> Corpus:
    """The corpus a checkpoint was trained on, found again from its recorded source and
    checked against its sha256 (a clear error if it moved or changed)."""
    kind = source.get("kind")
    where = {"file": source.get("path"), "dataset": f"dataset {source.get('name')}"}.get(kind, "the built-in corpus")
    if kind == "file" and not Path(source["path"]).is_file():
        raise CharrnnError(f"the training corpus moved or was deleted: {source['path']} (give a FILE to eval)")
    windows = source.get("windows")
    val_file = source.get("val_file")
    corpus = load_corpus(
        source["path"] if kind == "file" else None,
        source["name"] if kind == "dataset" else None,
        val_file=val_file["path"] if val_file else None,
        val_fraction=source["val_fraction"],
        normalize_how=source["normalize"],
        windows=tuple(windows) if windows else None,
        quiet=True,
    )
    changed = corpus.source["sha256"] != source["sha256"] or (
        val_file and corpus.source["val_file"]["sha256"] != val_file["sha256"]
    )
    if changed:
        raise CharrnnError(f"{where} changed since training (sha256 differs); give a FILE to eval")
    return corpus


# ---------------------------------------------------------------- batches


class StreamBatches:
    """Truncated BPTT batches, as char-rnn makes them: the text is cut into `batch_size`
    contiguous streams, and batch i is the next `seq_len` characters of every stream, so
    the hidden state at the end of one batch is the right start for the next. Inputs and
    targets are (batch, seq_len) int64; a new epoch starts every stream from its start."""

    carries_state = True

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int):
        length = (len(ids) - 1) // batch_size
        if length < seq_len:
            raise CharrnnError(
                f"the training text has {len(ids)} characters: too short for {batch_size} streams "
                f"of --seq-len {seq_len} (it needs at least {batch_size * seq_len + 1}); "
                "lower --batch-size or --seq-len"
            )
        self.inputs = ids[: batch_size * length].view(batch_size, length)
        self.targets = ids[1 : batch_size * length + 1].view(batch_size, length)
        self.seq_len = seq_len
        self.batches_per_epoch = length // seq_len

    def batch(self, epoch: int, index: int):
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
            self._order = (epoch, torch.randperm(len(self.windows), generator=g))
        rows = self.windows[self._order[1][index * self.batch_size : (index + 1) * self.batch_size]]
        return rows[:, :-1].long(), rows[:, 1:].long()


def make_batches(ids, sampling: str, batch_size: int, seq_len: int, seed: int = 0):
    if sampling == "sequential":
        return StreamBatches(ids, batch_size, seq_len)
    if sampling == "random":
        return WindowBatches(ids, batch_size, seq_len, seed)
    raise CharrnnError(f"unknown --sampling {sampling!r}; choose sequential or random")
