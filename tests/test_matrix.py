"""Every command on every kind of model the trainer makes: each cell of the registry x 1-2
layers x with and without an embedding x a character or a byte vocabulary x each kind of
dropout. The full product is too many models to train in CI, so MODELS is every cell x
embedding x vocabulary (the pairs where the input side differs) with the layers and the
dropout kinds rotated through them, so that every cell also meets both depths and every
kind of dropout. Each model is tiny and trained once per session, on a text with
non-ASCII characters (so byte models see multi-byte characters).

No command may end in a traceback, and what can be checked against the library is: eval
on the validation split gives the run's logged validation loss, greedy generation (CLI and
serve) gives the library's greedy text, and serve's /api/eval gives eval's figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from charrnn.config import CELLS
from conftest import make_text

PREFIX = "the tíme "
DROPOUT_KINDS = {"none": [], "dropout": ["--dropout", "0.2"],
                 "locked": ["--dropout", "0.2", "--locked-dropout"], "weight-drop": ["--weight-drop", "0.2"]}
SIZES = ["--hidden", "8", "--batch-size", "4", "--seq-len", "16", "--max-steps", "4", "--eval-every", "2",
         "--quiet"]


@dataclass(frozen=True)
class Spec:
    cell: str
    layers: int
    embedding: int
    vocab: str
    dropout: str

    @property
    def name(self) -> str:
        return f"{self.cell}-{self.layers}L-{'emb' if self.embedding else 'onehot'}-{self.vocab}-{self.dropout}"

    def options(self) -> list[str]:
        return ["--cell", self.cell, "--layers", str(self.layers), "--embedding", str(self.embedding),
                "--vocab", self.vocab, *DROPOUT_KINDS[self.dropout]]


def models() -> list[Spec]:
    kinds, specs = list(DROPOUT_KINDS), []
    for c, cell in enumerate(CELLS):
        for i, (embedding, vocab) in enumerate((e, v) for e in (0, 4) for v in ("chars", "bytes")):
            specs.append(Spec(cell, 1 + (i + c) % 2, embedding, vocab, kinds[(i + c) % len(kinds)]))
    return specs


MODELS = models()


def test_the_models_cover_every_value_of_every_axis():
    for axis, values in (("cell", set(CELLS)), ("layers", {1, 2}), ("embedding", {0, 4}),
                         ("vocab", {"chars", "bytes"}), ("dropout", set(DROPOUT_KINDS))):
        assert {getattr(s, axis) for s in MODELS} == values, axis
    for cell in CELLS:  # and each cell meets both depths and every dropout kind
        assert {s.layers for s in MODELS if s.cell == cell} == {1, 2}
        assert {s.dropout for s in MODELS if s.cell == cell} == set(DROPOUT_KINDS)


@pytest.fixture(scope="session")
def matrix_corpus(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("matrix")
    # every character of the text occurs in its first 90% (make_text's header), the
    # accented ones included
    text = make_text(2500).replace("time", "tíme").replace("grey", "gréy")
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    (root / "other.txt").write_text(text[-400:], encoding="utf-8")
    return root, text


@pytest.fixture(scope="session")
def trained(matrix_corpus, cli):
    """trained(spec) -> the run directory of that tiny model, trained on first use."""
    root, _ = matrix_corpus
    runs: dict[Spec, Path] = {}

    def get(spec: Spec) -> Path:
        if spec not in runs:
            run = root / spec.name
            cli("train", root / "corpus.txt", *spec.options(), *SIZES, "--out", run).assert_ok()
            runs[spec] = run
        return runs[spec]

    return get


def ok(result):
    """exit 0 and no exception escaping the command (a traceback for the user)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result.assert_ok()


def library_greedy(run: Path, prefix: str, length: int):
    """(the model's greedy continuation as raw bytes, as the text generate prints) from the library."""
    from charrnn.corpus.byte_vocab import shown
    from charrnn.storage.load import load_model
    from charrnn.cli.generate import text_steps
    from charrnn.generation.sample import generate

    loaded = load_model(run, "cpu")
    steps = [chars[0] for chars in generate(loaded.model, loaded.vocab, prefix, length, greedy=True)]
    raw = b"".join(steps) if loaded.vocab.kind == "bytes" else "".join(steps).encode("utf-8")
    printed = "".join(chars[0] for chars in text_steps(([s] for s in steps), loaded.vocab, 1))
    return raw, shown(prefix + printed) + "\n"


# ---------------------------------------------------------------- the commands


def generate_plain(cli, run, spec, root):
    out = ok(cli("generate", "--checkpoint", run, "--prefix", PREFIX, "--length", "30", "--seed", "1")).stdout
    assert out.startswith(PREFIX) and out.endswith("\n")


def generate_greedy(cli, run, spec, root):
    out = ok(cli("generate", "--checkpoint", run, "--prefix", PREFIX, "--length", "30", "--greedy")).stdout
    assert out == library_greedy(run, PREFIX, 30)[1]


def generate_beam(cli, run, spec, root):
    out = ok(cli("generate", "--checkpoint", run, "--prefix", PREFIX, "--length", "10", "--beam", "2")).stdout
    assert out.count("--- beam ") == 2


def generate_stop(cli, run, spec, root):
    out = ok(cli("generate", "--checkpoint", run, "--prefix", PREFIX, "--length", "60", "--seed", "2",
                 "--stop", " ")).stdout
    assert " " not in out[len(PREFIX):]


def generate_json(cli, run, spec, root):
    out = json.loads(ok(cli("generate", "--checkpoint", run, "--prefix", PREFIX, "--length", "20",
                            "--samples", "2", "--seed", "3", "--json")).stdout)
    assert len(out["samples"]) == 2 and out["settings"]["checkpoint"] == str(run / "best.pt")


def eval_plain(cli, run, spec, root):
    result = json.loads(ok(cli("eval", "--checkpoint", run, "--json")).stdout)
    logged = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert result["loss"] == pytest.approx(min(logged), rel=1e-6)  # best.pt's
    assert "perplexity" in ok(cli("eval", "--checkpoint", run)).stdout


def eval_show(cli, run, spec, root):
    assert ok(cli("eval", "--checkpoint", run, "--show", "--show-chars", "80")).stdout


def eval_show_html(cli, run, spec, root):
    page = root / f"{spec.name}.html"
    ok(cli("eval", root / "other.txt", "--checkpoint", run, "--show-html", page))
    assert page.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


def eval_dynamic(cli, run, spec, root):
    result = json.loads(ok(cli("eval", "--checkpoint", run, "--dynamic", "--json")).stdout)
    assert math.isfinite(result["dynamic"]["gain"])


def eval_neuron(cli, run, spec, root):
    unit = f"{spec.layers}:0{'c' if spec.cell == 'lstm' else ''}"
    assert ok(cli("eval", "--checkpoint", run, "--show", "--show-chars", "80", "--neuron", unit)).stdout


def neurons(cli, run, spec, root):
    out = json.loads(ok(cli("neurons", "--checkpoint", run, "--max-chars", "300", "--json")).stdout)
    assert 0 < out["chars"] <= 300 and out["properties"]


def info(cli, run, spec, root):
    details = json.loads(ok(cli("info", run, "--json")).stdout)
    assert details["model"]["cell"] == spec.cell and details["model"]["layers"] == spec.layers


def serve_client(run):
    pytest.importorskip("starlette", reason="serve needs the serve extra")
    from starlette.testclient import TestClient

    from charrnn.storage.load import load_model
    from charrnn.serve import create_app

    loaded = load_model(run, "cpu")
    return TestClient(create_app(loaded.model, loaded.vocab, loaded.checkpoint, str(loaded.path)))


def serve_generate(cli, run, spec, root):
    client = serve_client(run)
    response = client.post("/api/generate", json={"prefix": PREFIX, "length": 30, "greedy": True})
    assert response.status_code == 200, response.text
    assert response.content == library_greedy(run, PREFIX, 30)[0]
    sampled = client.post("/api/generate", json={"prefix": PREFIX, "length": 30, "temperature": 0.8, "seed": 1})
    assert sampled.status_code == 200, sampled.text


def serve_eval(cli, run, spec, root):
    client = serve_client(run)
    text = (root / "other.txt").read_text(encoding="utf-8")[:200]
    (root / f"{spec.name}.txt").write_text(text, encoding="utf-8")
    response = client.post("/api/eval", json={"text": text})
    assert response.status_code == 200, response.text
    # eval as one stream predicts every character (byte) after the first, as serve does
    cli_result = json.loads(ok(cli("eval", root / f"{spec.name}.txt", "--checkpoint", run, "--json",
                                   "--batch-size", "1")).stdout)
    answer = response.json()
    if spec.vocab == "bytes":  # per byte, as eval; the surprisal is per character, its bytes' bits added up
        assert answer["bits_per_byte"] == pytest.approx(cli_result["bits_per_byte"], rel=1e-5)
        assert len(answer["surprisal"]) == len(text) - 1  # each character after the first
    else:
        bits = answer["surprisal"]  # of each character after the first
        assert sum(bits) / len(bits) == pytest.approx(cli_result["bits_per_char"], rel=1e-5)
    assert len(response.json()["colours"]) == len(text)  # the page shades each character


def serve_eval_neuron(cli, run, spec, root):
    text = (root / "other.txt").read_text(encoding="utf-8")[:200]
    by_unit = serve_client(run).post("/api/eval", json={"text": text, "neuron": f"{spec.layers}:0"})
    assert by_unit.status_code == 200, by_unit.text
    assert len(by_unit.json()["activations"]) == len(by_unit.json()["colours"]) == len(text)


COMMANDS = [generate_plain, generate_greedy, generate_beam, generate_stop, generate_json, eval_plain, eval_show,
            eval_show_html, eval_dynamic, eval_neuron, neurons, info, serve_generate, serve_eval, serve_eval_neuron]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_every_command_on_every_kind_of_model(cli, trained, matrix_corpus, spec, command):
    command(cli, trained(spec), spec, matrix_corpus[0])
