"""Shared fixtures: tiny generated corpora, one tiny trained run per session, a CLI runner
that keeps stdout and stderr apart, and a local HTTP server for the dataset tests.

Everything is small on purpose (hidden <= 16, a few thousand characters, a handful of
steps): the suite runs on two shared cores.
"""

from __future__ import annotations

import functools
import http.server
import inspect
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

WORDS = (
    "the time traveller for so it will be convenient to speak of him was expounding a "
    "recondite matter to us his grey eyes shone and twinkled and his usually pale face "
    "was flushed and animated"
).split()

# the sizes every CLI training run in the tests uses
TINY = ["--hidden", "16", "--batch-size", "4", "--seq-len", "16", "--eval-every", "5", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic English-like text of exactly n_chars characters whose every character
    already occurs in its first 90% (so the last 10% can be a validation split)."""
    rng = random.Random(seed)
    # every character up front (all words, lower and capitalised, and the punctuation)
    header = " ".join(sorted(set(WORDS))) + ", " + " ".join(sorted({w.capitalize() for w in WORDS})) + ".\n"
    parts, size = [header], len(header)
    while size < n_chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
        sentence = (sentence.capitalize() if rng.random() < 0.1 else sentence) + rng.choice([". ", ", ", ".\n"])
        parts.append(sentence)
        size += len(sentence)
    text = "".join(parts)[:n_chars]
    cut = int(len(text) * 0.9)
    assert set(text[cut:]) <= set(text[:cut]), "make_text needs n_chars >= 400"
    return text


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_text(3000)


@pytest.fixture
def corpus_file(tmp_path, corpus_text) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- the CLI


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    def assert_ok(self) -> "CliResult":
        assert self.exit_code == 0, f"exit {self.exit_code}\nstdout: {self.stdout}\nstderr: {self.stderr}\n{self.exception!r}"
        return self

    def assert_one_line_error(self, *fragments: str, code: int | None = None) -> str:
        """A user error: non-zero exit, exactly one line on stderr starting with 'error:',
        no traceback, and no exception other than the exit escaping the command."""
        assert self.exit_code != 0, f"expected an error, got exit 0; stdout: {self.stdout!r}"
        assert self.exception is None or isinstance(self.exception, SystemExit), (
            f"uncaught {type(self.exception).__name__}: {self.exception} (a traceback for the user)"
        )
        if code is not None:
            assert self.exit_code == code, self.stderr
        assert "Traceback" not in self.stderr + self.stdout
        lines = self.stderr.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].strip(), f"stderr is not one line: {self.stderr!r}"
        assert lines[0].startswith("error: "), lines[0]
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
        return lines[0]


def _make_runner():
    from typer.testing import CliRunner

    # click < 8.2 mixes stderr into stdout unless mix_stderr=False; click >= 8.2 (and the
    # click vendored by recent typer) always keeps them apart and has no such argument.
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


@pytest.fixture(scope="session")
def cli():
    """cli(*args) runs `charrnn ARGS` in-process and returns a CliResult."""
    from charrnn.cli.main import app

    runner = _make_runner()

    def invoke(*args) -> CliResult:
        result = runner.invoke(app, [str(a) for a in args])
        try:
            stdout, stderr = result.stdout, result.stderr
        except ValueError:  # an old click that mixed the streams after all
            stdout, stderr = result.output, result.output
        return CliResult(result.exit_code, stdout, stderr, result.exception)

    return invoke


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, cli) -> Path:
    """A tiny LSTM trained for 6 steps through the CLI, built once per session; read-only
    for the tests (copy it before changing anything)."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    run = root / "run"
    cli("train", corpus, "--cell", "lstm", "--max-steps", "6", "--out", run, *TINY).assert_ok()
    return run


# ---------------------------------------------------------------- a local HTTP server


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving one directory, counting GET requests."""

    def __init__(self, directory: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, format, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()
        self.closed = False

    def close(self):
        if not self.closed:
            self.closed = True
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def shared_data_server(tmp_path, monkeypatch):
    """A server for ../shared/data with CHARRNN_DATA_URL pointing at it and an empty cache
    in tmp_path; skips when the shared corpora are absent."""
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip("../shared/data not found: the dataset tests need the shared corpora")
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    server = Server(SHARED_DATA)
    monkeypatch.setenv("CHARRNN_DATA_URL", server.url)
    yield server
    server.close()
