"""Training batches from a text's ids: carried-state streams (char-rnn's way) or shuffled
windows from a zero state (the d2l book's). Both are views into the ids, never copies of
the text."""

from __future__ import annotations

import torch

from charrnn.errors import CharrnnError


def make_batches(ids, sampling: str, batch_size: int, seq_len: int, seed: int = 0, offsets: str = "random"):
    if sampling == "sequential":
        return StreamBatches(ids, batch_size, seq_len, seed, offsets)
    if sampling == "random":
        return WindowBatches(ids, batch_size, seq_len, seed)
    raise CharrnnError(f"unknown --sampling {sampling!r}; choose sequential or random")


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

