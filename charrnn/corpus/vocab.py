"""The character vocabulary: the sorted set of characters of the training text. It travels
inside every checkpoint and is the only encoder used at generate and eval time. (Byte
models use charrnn.corpus.byte_vocab.ByteVocab instead: the 256 byte values.)"""

from __future__ import annotations

import torch

from charrnn.corpus.byte_vocab import ByteVocab
from charrnn.errors import CharrnnError
from charrnn.corpus.text import Text, chunks, ids_dtype

UNK = "<unk>"


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
    def unknown_error(missing: list[str], occurrences: int, what: str, hint: str = "") -> CharrnnError:
        shown = escape_chars(missing[:20]) + (", ..." if len(missing) > 20 else "")
        return CharrnnError(
            f"{what} has {counted(len(missing), 'distinct character')} not in the model's vocabulary "
            f"({counted(occurrences, 'occurrence')}): {shown}{hint}"
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
        written, missing, occurrences = 0, set(), 0
        for chunk in chunks(source):
            ids = lookup.index_select(0, chunk)
            known = ids >= 0
            if not bool(known.all()):
                if unknown == "error":
                    missing.update(chunk[~known].tolist())
                    occurrences += int((~known).sum())
                    continue
                ids = ids[known]
            out[written : written + len(ids)] = ids
            written += len(ids)
        if missing:
            raise self.unknown_error(sorted(text.chars[i] for i in missing), occurrences, what, hint)
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


def counted(n: int, thing: str) -> str:
    """'1 occurrence', '12 occurrences'."""
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


def escape_chars(chars) -> str:
    """Characters as a person can read them in one line: `'\\n', 'é', '\\x00'`."""
    return ", ".join(repr(c) for c in chars)
