"""Stop strings for generation: a continuation ends at the first occurrence of any of them
(gpt-2-simple's `truncate`), and `--length` stays the bound."""

from __future__ import annotations

import re

from charrnn.errors import CharrnnError

# a shell passes `--stop '\n\n'` as backslashes and letters: these escapes are read as the characters
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(value: str) -> str:
    """A value typed in a shell with \\n, \\t, \\r, \\\\ and \\xHH (a control character such
    as \\x03) read as escapes; others are kept as typed."""

    def character(match) -> str:
        escape = match.group(1)
        return chr(int(escape[1:], 16)) if len(escape) == 3 else ESCAPES.get(escape, match.group(0))

    return re.sub(r"\\(x[0-9a-fA-F]{2}|.)", character, value)


def parse_stops(values: list[str]) -> list[str]:
    """--stop values, escapes read (`unescape`)."""
    stops = [unescape(value) for value in values]
    if not all(stops):
        raise CharrnnError("--stop must not be empty")
    return stops


def check_stops(stops: list[str], can_encode) -> None:
    """A stop string with a character the model cannot emit would never match: say so."""
    for stop in stops:
        missing = sorted({c for c in stop if not can_encode(c)})
        if missing:
            raise CharrnnError(f"--stop {stop!r} can never occur: the model's vocabulary lacks "
                               + ", ".join(map(repr, missing)))


class StopScanner:
    """One continuation's text, released as it is made: characters that may begin a stop
    string are held back until they are known not to; at the first occurrence of a stop
    string the continuation ends, and the stop string is released only with `include`."""

    def __init__(self, stops: list[str], include: bool = False):
        self.stops, self.include = stops, include
        self.held, self.stopped = "", False
        self.first_chars = {stop[0] for stop in stops}

    def push(self, text: str) -> str:
        """The text now known to belong to the continuation, once `text` follows it."""
        if self.stopped:
            return ""
        if not self.held and self.first_chars.isdisjoint(text):  # the common case: no stop string starts here
            return text
        released = ""
        for char in text:
            self.held += char
            # held is the longest end of the text that begins a stop string, so any stop
            # string ending at this character ends held; the longest one started first
            ended = [stop for stop in self.stops if self.held.endswith(stop)]
            if ended:
                self.stopped = True
                released += self.held if self.include else self.held[: -max(map(len, ended))]
                self.held = ""
                break
            keep = self._partial_length()
            released += self.held[: len(self.held) - keep]
            self.held = self.held[len(self.held) - keep :]
        return released

    def _partial_length(self) -> int:
        """The length of the longest end of `held` that begins some stop string."""
        for length in range(len(self.held), 0, -1):
            tail = self.held[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0

    def flush(self) -> str:
        """What is still held back, when the continuation ends without a stop string."""
        held, self.held = self.held, ""
        return held


def write_until_stop(steps, out, stops: list[str], include_stop: bool) -> None:
    """One sample's characters written as they come, up to the first stop string."""
    scanner = StopScanner(stops, include_stop)
    for chars in steps:
        out.write(scanner.push(chars[0]))
        out.flush()
        if scanner.stopped:
            return
    out.write(scanner.flush())


def texts_until_stop(steps, samples: int, stops: list[str], include_stop: bool) -> list[str]:
    """Every sample's text, each up to its own first stop string; sampling ends when all have stopped."""
    scanners = [StopScanner(stops, include_stop) for _ in range(samples)]
    texts = [[] for _ in range(samples)]
    for chars in steps:
        for text, scanner, char in zip(texts, scanners, chars):
            text.append(scanner.push(char))
        if all(scanner.stopped for scanner in scanners):
            break
    return ["".join(text) + scanner.flush() for text, scanner in zip(texts, scanners)]
