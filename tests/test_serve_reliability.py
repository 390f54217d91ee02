"""`charrnn serve` never answers a bare 500: random JSON bodies (deep nesting, huge and odd
numbers, wrong types) to every route get a JSON answer, a bug in a handler is a logged
JSON 500, and a real server process stops within a second of SIGTERM, a stream in flight
or not. What the API answers to what is listed in docs/reliability.md."""

from __future__ import annotations

import collections
import http.client
import importlib.util
import json
import logging
import math
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="charrnn serve needs the serve extra: pip install -e '.[serve]' in a checkout")

from starlette.testclient import TestClient  # noqa: E402

import charrnn.serve  # noqa: E402
from charrnn.storage.load import load_model  # noqa: E402
from charrnn.config import ServeLimits  # noqa: E402
from charrnn.serve import EVAL_FIELDS, GENERATE_FIELDS, create_app  # noqa: E402

from conftest import TINY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROUTES = [("POST", "/api/generate"), ("POST", "/api/eval"), ("GET", "/api/info"), ("GET", "/"),
          ("POST", "/api/info"), ("GET", "/api/generate"), ("POST", "/api/nothing")]


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory, cli, corpus_text):
    run = tmp_path_factory.mktemp("bytes") / "run"
    corpus = run.parent / "corpus.txt"
    corpus.write_text(corpus_text[:1000] + "Ωμέγα € 𝄞 " + corpus_text[1000:], encoding="utf-8")
    cli("train", corpus, "--vocab", "bytes", "--max-steps", "2", "--out", run, *TINY).assert_ok()
    return run


@pytest.fixture(scope="module", params=["chars", "bytes"])
def client(request, trained_run, byte_run):
    model, vocab, ckpt = load_model(trained_run if request.param == "chars" else byte_run, "cpu")
    return TestClient(create_app(model, vocab, ckpt, "the test run", ServeLimits(max_length=300, max_text=200)))


def assert_a_json_answer(response, *statuses: int) -> None:
    """A status the API documents, and an error as one line of JSON: never a bare 500."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and error and "\n" not in error


# ---------------------------------------------------------------- random bodies

# values a request may well send, so that many bodies are good ones and get a 200
GOOD = {"prefix": ["", "the", "the time ", "Ωmega"], "length": [0, 1, 40, 300], "temperature": [0, 0.5, 1, 2.5],
        "top_k": [0, 1, 5, 1000], "top_p": [0.01, 0.9, 1], "greedy": [True, False], "seed": [None, 0, 2**63 - 1],
        "text": ["the time", "the time traveller", "Ωμέγα € 𝄞 the"], "neuron": [None, "1:0", "1:3c", "1:15h", "1:15c"]}
assert set(GOOD) == {*GENERATE_FIELDS, *EVAL_FIELDS}
ODD_NUMBERS = [-1, -0.0, 1e-320, 1e308, 2**63, 2**64, 10**400, -10**400, 0.5, 1.5]
ODD_STRINGS = ["", "1:3c", "9:0", "1:99", "1:", "\ud800", "the \udcff", "Ω\x00", "x" * 300, "[[[", "null"]


def odd_value(rng, depth: int = 0):
    """A JSON value of any kind: huge, tiny, non-finite or negative numbers, strings of any
    characters (lone surrogates too), arrays and objects nested a little."""
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([*ODD_NUMBERS, math.inf, -math.inf, math.nan])
    if kind == 2:
        return rng.choice([rng.randint(-2**70, 2**70), rng.uniform(-1e6, 1e6), rng.randint(-3, 3) * 10 ** rng.randint(0, 4000)])
    if kind == 3:
        return rng.choice(ODD_STRINGS)
    if kind == 4:
        return "".join(chr(rng.choice([rng.randint(0, 127), rng.randint(128, 0x10FFFF)])) for _ in range(rng.randint(0, 12)))
    if kind == 5:
        return [odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {odd_value(rng, 3) if rng.random() < 0.3 else rng.choice(list(GOOD)): odd_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def request_body(rng, fields: dict) -> bytes:
    """Mostly an object with some of the route's fields, each good nine times in ten, now
    and then a field it does not know; else any JSON value, deep nesting, or bytes."""
    kind = rng.random()
    if kind < 0.6:
        body = {name: rng.choice(GOOD[name]) if rng.random() < 0.9 else odd_value(rng)
                for name in fields if rng.random() < 0.6 or name == "text"}
        if rng.random() < 0.1:
            body[rng.choice(["checkpoint", "", "text" if "prefix" in fields else "prefix"])] = odd_value(rng)
        return as_json(body)
    if kind < 0.75:
        return as_json(odd_value(rng))
    if kind < 0.9:
        depth, opening = rng.choice([rng.randint(1, 3000), 999, 1000, 1001, 3000]), rng.choice("[{")
        closing = {"[": "]", "{": "}"}[opening]
        inner = ('{"a":' * depth + "1" + "}" * depth) if opening == "{" else "[" * depth + "]" * depth
        return f'{{"text": {inner}}}'.encode() if rng.random() < 0.5 else (opening * depth + closing * (depth // 3)).encode()
    return rng.randbytes(rng.randint(0, 40))


def as_json(value) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity as Python writes them; lone surrogates as \u escapes


def test_any_body_to_any_route_gets_a_json_answer(client):
    """A seeded stream of 400 requests, three in four to the two POST routes; every answer
    is one the API documents, every error one line of JSON."""
    rng, statuses = random.Random(28), collections.Counter()
    for _ in range(400):
        route = rng.choice([("POST", "/api/generate", GENERATE_FIELDS), ("POST", "/api/eval", EVAL_FIELDS)] * 3
                           + [(method, path, GENERATE_FIELDS) for method, path in ROUTES])
        method, path, fields = route
        response = client.request(method, path, content=request_body(rng, fields),
                                  headers={"Content-Type": "application/json"})
        assert_a_json_answer(response, 200, 400, 404, 405, 413)
        statuses[path, response.status_code] += 1
    # the stream reached the model as well as the checks
    assert statuses["/api/generate", 200] > 20 and statuses["/api/eval", 200] > 20, statuses


def test_deeply_nested_json_under_the_size_limit_is_a_400(trained_run):
    model, vocab, ckpt = load_model(trained_run, "cpu")
    client = TestClient(create_app(model, vocab, ckpt, "the test run"))  # the limits `charrnn serve` starts with
    for path, body in [("/api/generate", b"[" * 100_000),
                       ("/api/eval", b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")]:
        response = client.post(path, content=body)
        assert_a_json_answer(response, 400)
        assert "nested too deeply" in response.json()["error"]


# ---------------------------------------------------------------- a bug in a handler


def test_a_bug_in_a_handler_is_a_logged_json_500(client, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("shape '[20000, 1, 128]' is invalid\nsecond line")

    monkeypatch.setattr(charrnn.serve, "unit_activations", broken)
    with caplog.at_level(logging.ERROR, logger="charrnn.serve"):
        response = client.post("/api/eval", json={"text": "the time", "neuron": "1:0"})
    assert_a_json_answer(response, 500)
    assert response.json()["error"] == ("internal error, logged by the server: RuntimeError: "
                                        "shape '[20000, 1, 128]' is invalid")
    [record] = caplog.records
    assert record.getMessage() == "POST /api/eval failed" and record.exc_info[0] is RuntimeError


def test_a_neuron_on_a_model_with_an_embedding_is_answered(cli, corpus_file, tmp_path):
    """The crash `charrnn neurons` had there (issue 23) must not reach the API either: a
    good request gets its answer."""
    run = tmp_path / "embedded"
    cli("train", corpus_file, "--embedding", "4", "--max-steps", "2", "--out", run, *TINY).assert_ok()
    model, vocab, ckpt = load_model(run, "cpu")
    response = TestClient(create_app(model, vocab, ckpt, "embedded")).post(
        "/api/eval", json={"text": "the time", "neuron": "1:3c"})
    assert_a_json_answer(response, 200)
    assert len(response.json()["activations"]) == len("the time")


# ---------------------------------------------------------------- a real server process


def start_server(trained_run: Path):
    spec = importlib.util.spec_from_file_location("serve_screenshot", ROOT / "scripts" / "serve_screenshot.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    port = script.free_port()
    return script.start_server(str(trained_run), port, "--max-length", "1000000"), port


def request(port: int, method: str, path: str, body: bytes | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    return conn.getresponse()


def stopped_within(proc: subprocess.Popen, seconds: float) -> float:
    """SIGTERM, then how long the process took to exit (killed, failing, after `seconds`)."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"charrnn serve was still running {seconds} s after SIGTERM")
    return time.monotonic() - start


def test_a_real_server_answers_json_and_stops_at_once_on_sigterm(trained_run):
    proc, port = start_server(trained_run)
    try:
        nested = request(port, "POST", "/api/generate", b"[" * 100_000)
        assert nested.status == 400 and "nested too deeply" in json.loads(nested.read())["error"]
        wrong = request(port, "POST", "/api/eval", json.dumps({"text": "the time", "neuron": 3}).encode())
        assert wrong.status == 400 and json.loads(wrong.read()) == {"error": "'neuron' must be a string or null, got 3"}
        stream = request(port, "POST", "/api/generate", json.dumps({"length": 1_000_000, "seed": 0}).encode())
        assert stream.status == 200 and len(stream.read(10)) == 10  # a long stream in flight
        stopped_within(proc, 2)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        with pytest.raises((http.client.IncompleteRead, OSError)):
            stream.read()  # cut: it ends short, not as a complete answer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_real_server_stops_at_once_on_sigterm_right_after_it_starts(trained_run):
    proc, port = start_server(trained_run)
    try:
        assert request(port, "GET", "/api/info").status == 200
        stopped_within(proc, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
