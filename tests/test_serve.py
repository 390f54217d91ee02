"""`charrnn serve`: the JSON API through Starlette's test client, and the command itself as
a user runs it: a real server process, two clients at once, and the page in a headless
Chromium."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="charrnn serve needs the serve extra: pip install -e '.[serve]' in a checkout")

from starlette.testclient import TestClient  # noqa: E402

from charrnn.storage.load import load_model  # noqa: E402
from charrnn.config import ServeLimits  # noqa: E402
from charrnn.serve import create_app  # noqa: E402
from charrnn.inspection.surprisal import surprisal  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client(trained_run):
    model, vocab, ckpt = load_model(trained_run, "cpu")
    return TestClient(create_app(model, vocab, ckpt, "the test run", ServeLimits(max_length=500, max_text=300)))


def test_info_describes_the_model_and_the_limits(client):
    info = client.get("/api/info").json()
    assert info["checkpoint"] == "the test run"
    assert info["model"]["cell"] == "lstm" and info["model"]["hidden"] == 16
    assert info["limits"] == {"max_length": 500, "max_text": 300}


def test_generate_streams_what_the_cli_generates(client, cli, trained_run):
    settings = {"prefix": "the time", "length": 120, "temperature": 0.8, "top_k": 5, "top_p": 0.9, "seed": 3}
    with client.stream("POST", "/api/generate", json=settings) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        chunks = list(response.iter_text())
    assert len(chunks) > 1  # sent as it was sampled, not as one body
    printed = cli("generate", "--checkpoint", trained_run, "--prefix", "the time", "--length", 120,
                  "--temperature", 0.8, "--top-k", 5, "--top-p", 0.9, "--seed", 3, "--json").assert_ok()
    assert "".join(chunks) == json.loads(printed.stdout)["samples"][0]
    greedy = client.post("/api/generate", json={"prefix": "the", "length": 30, "greedy": True}).text
    assert len(greedy) == 30 and greedy == client.post("/api/generate", json={"prefix": "the", "length": 30,
                                                                             "greedy": True}).text


def test_eval_gives_each_character_s_surprisal_and_shading(client, trained_run, corpus_text):
    model, vocab, _ = load_model(trained_run, "cpu")
    text = corpus_text[:200]
    result = client.post("/api/eval", json={"text": text}).json()
    assert result["surprisal"] == pytest.approx(surprisal(model, vocab, text), rel=1e-5)
    assert len(result["colours"]) == len(result["tooltips"]) == len(text) and result["colours"][0] is None
    by_unit = client.post("/api/eval", json={"text": text, "neuron": "1:3c"}).json()
    assert by_unit["neuron"] == "1:3c" and len(by_unit["activations"]) == len(text)
    assert by_unit["tooltips"][5] == f"1:3c: {by_unit['activations'][5]:+.3f}"
    assert all(c.startswith("#") for c in by_unit["colours"])


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/api/generate", b"{not json", 400, "not valid JSON"),
    ("/api/generate", b"[1, 2]", 400, "a JSON object"),
    ("/api/generate", {"prefix": "the \u00e9t\u00e9"}, 400, "not in the model's vocabulary"),
    ("/api/generate", {"length": 501}, 413, "'length' must be 0 to 500"),
    ("/api/generate", {"length": -1}, 400, "'length' must be 0 to 500, got -1"),
    ("/api/generate", {"prefix": "the " * 80}, 413, "at most 300"),
    ("/api/generate", {"length": "10"}, 400, "'length' must be an integer, got \"10\""),
    ("/api/generate", {"greedy": 1}, 400, "'greedy' must be true or false, got 1"),
    ("/api/generate", {"temperature": -1}, 400, "'temperature' must be a finite number >= 0, got -1"),
    ("/api/generate", b'{"temperature": 1e999}', 400, "'temperature' must be a finite number >= 0, got Infinity"),
    ("/api/generate", {"temperature": 10**400}, 400, "'temperature' must be a finite number >= 0, got 1000"),
    ("/api/generate", b'{"temperature": Infinity}', 400, "Infinity is not a JSON number"),
    ("/api/generate", b'{"temperature": NaN}', 400, "NaN is not a JSON number"),
    ("/api/generate", {"top_k": -1}, 400, "'top_k' must be 0 (no limit) or more, got -1"),
    ("/api/generate", {"top_p": 2}, 400, "'top_p' must be a number in (0, 1], got 2"),
    ("/api/generate", {"top_p": [0.5]}, 400, "'top_p' must be a number, got an array"),
    ("/api/generate", {"seed": 2**70}, 400, "'seed' must be null or 0 to 2**63 - 1, got 1180591620717411303424"),
    ("/api/generate", {"seed": 1.5}, 400, "'seed' must be an integer or null, got 1.5"),
    ("/api/generate", b"[" * 5000, 400, "nested too deeply"),
    ("/api/eval", b'{"text": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, "nested too deeply"),
    ("/api/generate", b'{"length": 1' + b"0" * 5000 + b"}", 400, "a number too long"),
    ("/api/generate", b'{"prefix": "\xff"}', 400, "not UTF-8"),
    ("/api/generate", b'{"prefix": "the \\ud800"}', 400, "'prefix' is not text: a lone surrogate \\ud800 at character 4"),
    ("/api/eval", {"text": "x" * (12 * 300 + 4097)}, 413, "the body is over"),
    ("/api/generate", {"checkpoint": "/etc/passwd"}, 400, "unknown field(s): checkpoint"),
    ("/api/eval", {"text": "the time", "checkpoint": "x.pt"}, 400, "unknown field(s): checkpoint"),
    ("/api/eval", {}, 400, "'text' is required"),
    ("/api/eval", {"text": "t"}, 400, "at least 2"),
    ("/api/eval", {"text": "the time", "neuron": "9:0"}, 400, "layers 1 to 1"),
    ("/api/eval", {"text": "the time", "neuron": 3}, 400, "'neuron' must be a string or null, got 3"),
    ("/api/eval", {"text": None}, 400, "'text' must be a string, got null"),
])
def test_a_bad_request_gets_a_4xx_and_a_one_line_error(client, path, body, status, fragment):
    response = (client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body))
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error and "\n" not in error


@pytest.mark.parametrize("method, path, status", [("GET", "/api/nothing", 404), ("GET", "/api/generate", 405)])
def test_a_wrong_path_or_method_gets_a_json_error_too(client, method, path, status):
    response = client.request(method, path)
    assert response.status_code == status and path in response.json()["error"]


def test_the_page_is_served_at_the_root(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in page.text and "api/generate" in page.text


# ---------------------------------------------------------------- the command, as a user runs it


def load_script():
    """scripts/serve_screenshot.py as a module: it starts servers and drives the browser."""
    spec = importlib.util.spec_from_file_location("serve_screenshot", ROOT / "scripts" / "serve_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(trained_run):
    """`charrnn serve` in its own process on a free localhost port, ready for requests."""
    script = load_script()
    port = script.free_port()
    proc = script.start_server(str(trained_run), port, "--max-length", "1000000")
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def post(port: int, path: str, body: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn.getresponse()


def test_a_slow_client_does_not_hold_up_the_others(server):
    slow = post(server, "/api/generate", {"length": 1_000_000, "seed": 0})  # read a little, then nothing
    assert slow.status == 200 and len(slow.read(10)) == 10
    quick = post(server, "/api/generate", {"prefix": "the", "length": 50, "seed": 0})
    assert quick.status == 200 and len(quick.read().decode()) == 50
    assert len(slow.read(100)) == 100  # the long one was still going all along
    slow.close()


def test_serve_limits_must_be_positive(trained_run, cli):
    cli("serve", "--checkpoint", trained_run, "--max-text", 0).assert_one_line_error("--max-text")


def test_a_port_in_use_is_one_error_line(server, trained_run, cli):
    cli("serve", "--checkpoint", trained_run, "--port", server).assert_one_line_error(
        f"cannot listen on 127.0.0.1:{server}")


def test_the_page_in_chromium_streams_a_continuation_and_shades_it(server, tmp_path):
    """scripts/serve_screenshot.py's browse, on the running `charrnn serve`: types a prompt
    into the page in headless Chromium, waits for the continuation to stream in, shades it
    by a unit and saves a screenshot; it exits if the page shows no text, no shading, or an
    error."""
    pytest.importorskip("selenium", reason="the browser test needs selenium (the dev extra)")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    screenshot = tmp_path / "serve.png"
    load_script().browse(f"http://127.0.0.1:{server}/", "the time", 200, "1:3c", screenshot)
    assert screenshot.read_bytes()[:4] == b"\x89PNG" and screenshot.stat().st_size > 10_000
