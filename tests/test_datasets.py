"""charrnn.corpus.datasets against a real local HTTP server serving ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Server

from charrnn.corpus import datasets
from charrnn.corpus.datasets import DATASETS, cache_dir, dataset_path, sha256_file
from charrnn.errors import CharrnnError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NAME = "tinyshakespeare"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(path))
    monkeypatch.delenv("CHARRNN_DATA_URL", raising=False)
    return path


@pytest.fixture
def serve(monkeypatch):
    """serve(directory) starts a server for it and points CHARRNN_DATA_URL at it."""
    servers: list[Server] = []

    def start(directory: Path) -> Server:
        server = Server(directory)
        servers.append(server)
        monkeypatch.setenv("CHARRNN_DATA_URL", server.url)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def shared_server(serve) -> Server:
    if not (SHARED_DATA / DATASETS[NAME].filename).is_file():
        pytest.skip("../shared/data not found: the dataset tests need the shared corpora")
    return serve(SHARED_DATA)


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*")) if directory.exists() else []


def assert_one_line(exc: CharrnnError) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


def test_first_call_downloads_and_verifies(cache, shared_server, capsys):
    path = dataset_path(NAME)
    assert path == cache / "tinyshakespeare.txt"
    assert path.is_file()
    assert sha256_file(path) == DATASETS[NAME].sha256
    assert shared_server.requests == ["/tinyshakespeare.txt"]
    assert files_in(cache) == [path]  # no temporary file left behind
    err = capsys.readouterr().err
    assert err == f"downloading {NAME} from {shared_server.url}/tinyshakespeare.txt\n"


def test_second_call_reuses_the_cache(cache, shared_server, capsys):
    first = dataset_path(NAME, quiet=True)
    assert len(shared_server.requests) == 1
    second = dataset_path(NAME)
    assert second == first
    assert len(shared_server.requests) == 1  # no new HTTP request
    assert capsys.readouterr().err == ""


def test_timemachine_downloads_too(cache, serve):
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip("../shared/data not found: the dataset tests need the shared corpora")
    server = serve(SHARED_DATA)
    path = dataset_path("timemachine", quiet=True)
    assert path == cache / "timemachine.txt"
    assert sha256_file(path) == DATASETS["timemachine"].sha256
    assert server.requests == ["/timemachine.txt"]


def test_http_404_leaves_nothing(cache, serve, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    server = serve(empty)
    with pytest.raises(CharrnnError) as info:
        dataset_path(NAME, quiet=True)
    message = assert_one_line(info.value)
    assert message == (
        f"could not download {NAME} from {server.url}/tinyshakespeare.txt: HTTP Error 404: File not found"
    )
    assert files_in(cache) == []


def test_connection_refused_is_one_line(cache, serve, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    server = serve(empty)
    server.close()  # nothing listens on that port any more
    with pytest.raises(CharrnnError) as info:
        dataset_path(NAME, quiet=True)
    assert assert_one_line(info.value).startswith(f"could not download {NAME} from {server.url}/")
    assert files_in(cache) == []


def test_sha256_mismatch_leaves_nothing(cache, serve, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "tinyshakespeare.txt").write_text("not shakespeare\n")
    serve(wrong)
    with pytest.raises(CharrnnError) as info:
        dataset_path(NAME, quiet=True)
    message = assert_one_line(info.value)
    expected = DATASETS[NAME].sha256
    got = sha256_file(wrong / "tinyshakespeare.txt")
    assert message == (
        f"downloaded {NAME} does not match its sha256 (expected {expected}, got {got}); the file was deleted"
    )
    assert files_in(cache) == []


def test_corrupted_cache_is_downloaded_again(cache, shared_server):
    cache.mkdir(parents=True)
    corrupted = cache / "tinyshakespeare.txt"
    corrupted.write_text("truncated")
    path = dataset_path(NAME, quiet=True)
    assert path == corrupted
    assert sha256_file(path) == DATASETS[NAME].sha256
    assert shared_server.requests == ["/tinyshakespeare.txt"]
    assert files_in(cache) == [path]


def test_corrupted_cache_and_failed_download_leaves_nothing(cache, serve, tmp_path):
    cache.mkdir(parents=True)
    (cache / "tinyshakespeare.txt").write_text("truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    serve(empty)
    with pytest.raises(CharrnnError):
        dataset_path(NAME, quiet=True)
    assert files_in(cache) == []


def test_file_url_mirror(cache, monkeypatch):
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip("../shared/data not found: the dataset tests need the shared corpora")
    monkeypatch.setenv("CHARRNN_DATA_URL", SHARED_DATA.as_uri())
    path = dataset_path(NAME, quiet=True)
    assert sha256_file(path) == DATASETS[NAME].sha256


def test_unknown_dataset_lists_the_known_names(cache):
    with pytest.raises(CharrnnError) as info:
        dataset_path("nosuchcorpus")
    message = assert_one_line(info.value)
    assert "nosuchcorpus" in message
    for name in DATASETS:
        assert name in message
    assert files_in(cache) == []


def test_cache_dir_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("CHARRNN_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "charrnn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "charrnn"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"


def test_sha256_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_datasets_registry_is_frozen():
    dataset = DATASETS[NAME]
    assert dataset.filename == "tinyshakespeare.txt"
    with pytest.raises(AttributeError):
        dataset.name = "other"  # type: ignore[misc]


def test_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, charrnn.corpus.datasets; sys.exit('torch' in sys.modules)"
    root = Path(datasets.__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_failure_while_moving_into_place_leaves_nothing(cache, shared_server, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.os, "replace", broken_replace)
    with pytest.raises(CharrnnError) as info:
        dataset_path(NAME, quiet=True)
    assert "No space left on device" in assert_one_line(info.value)
    assert files_in(cache) == []
