"""Training on many files through the CLI: folders, several paths and globs read as
documents in sorted order, each ended by a separator the model learns; validation from
the end of each file or from --val-dir; the checkpoint's list of files and their sha256,
checked by --resume and eval; bad files named in one line for character models and read
as they are by byte models."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from charrnn.storage.checkpoint import load_checkpoint
from charrnn.corpus.vocab import Vocab

from conftest import TINY, make_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def write_documents(folder, names: list[str], size: int = 1000) -> dict:
    """Files of English-like text under folder, each other than the rest; {resolved path: text}."""
    texts = {}
    for seed, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make_text(size, seed=seed), encoding="utf-8")
        texts[path.resolve()] = path.read_text(encoding="utf-8")
    return texts


def encoded(run) -> tuple[str, str]:
    """The training and validation text the run trained on, decoded from its encoding cache."""
    source = load_checkpoint(run / "last.pt")["corpus"]
    cache = torch.load(run / f"encoded-{source['sha256'][:16]}.pt", weights_only=True)
    vocab = Vocab.from_dict(cache["vocab"])
    return vocab.decode(cache["train_ids"]), vocab.decode(cache["val_ids"])


def split_by_file(texts: list[str], sep: str) -> tuple[str, str]:
    """What the training and validation texts must be: the first 90% of each file and the
    rest, each part followed by the separator."""
    cuts = [int(len(text) * 0.9) for text in texts]
    return ("".join(text[:cut] + sep for text, cut in zip(texts, cuts)),
            "".join(text[cut:] + sep for text, cut in zip(texts, cuts)))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, cli):
    """A run on a folder of three files (one in a subfolder) and a hidden one, which is skipped."""
    root = tmp_path_factory.mktemp("many")
    texts = write_documents(root / "corpus", ["b.txt", "a.txt", "sub/c.md"])
    (root / "corpus" / ".hidden").write_bytes(b"\x00 not read")
    run = root / "run"
    cli("train", root / "corpus", "--max-steps", "2", "--out", run, *TINY).assert_ok()
    return run, texts


def test_a_folder_is_its_files_in_sorted_order_each_ended_by_a_blank_line(folder_run):
    run, texts = folder_run
    source = load_checkpoint(run / "last.pt")["corpus"]
    paths = sorted(texts)
    assert source["kind"] == "files" and source["doc_sep"] == "\n\n"
    assert [f["path"] for f in source["files"]] == [str(path) for path in paths]
    assert [f["sha256"] for f in source["files"]] == [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    # the separator is in the encoded text, after the training part and the validation part of each file
    assert encoded(run) == split_by_file([texts[path] for path in sorted(texts)], "\n\n")


def test_eval_and_info_on_a_many_file_checkpoint(cli, folder_run):
    run, _ = folder_run
    result = json.loads(cli("eval", "--checkpoint", run, "--json").assert_ok().stdout)
    # the validation split found again from the recorded files: the loss training logged
    assert result["loss"] == pytest.approx(load_checkpoint(run / "best.pt")["progress"]["best_val_loss"], abs=1e-6)
    assert "3 file(s) under" in cli("info", run).assert_ok().stdout
    assert "last 10% of each file for validation" in cli("info", run).stdout


def test_several_paths_and_a_glob_are_one_sorted_list_each_file_once(cli, tmp_path):
    texts = write_documents(tmp_path, ["corpus/a.txt", "corpus/b.txt", "books/x.txt", "books/y.txt",
                                       "books/z.md", "one.txt"])
    run = tmp_path / "run"
    cli("train", tmp_path / "corpus", tmp_path / "one.txt", tmp_path / "books" / "*.txt", tmp_path / "corpus" / "a.txt",
        "--max-steps", "1", "--out", run, *TINY).assert_ok()
    chosen = sorted(path for path in texts if path.suffix == ".txt")
    source = load_checkpoint(run / "last.pt")["corpus"]
    assert [f["path"] for f in source["files"]] == [str(path) for path in chosen]  # z.md: not matched
    assert encoded(run) == split_by_file([texts[path] for path in chosen], "\n\n")
    # config.toml records the paths as given, and is a preset again
    config = tomllib.loads((run / "config.toml").read_text())
    assert len(config["corpus"]) == 4 and config["corpus"][2].endswith("*.txt")


def test_val_dir_validates_on_whole_documents(cli, tmp_path):
    train_texts = write_documents(tmp_path / "train", ["a.txt", "b.txt"])
    val_texts = write_documents(tmp_path / "val", ["v1.txt", "v2.txt"], size=500)
    run = tmp_path / "run"
    cli("train", tmp_path / "train", "--val-dir", tmp_path / "val", "--max-steps", "1", "--out", run,
        *TINY).assert_ok()
    source = load_checkpoint(run / "last.pt")["corpus"]
    assert [f["path"] for f in source["val_files"]] == [str(path) for path in sorted(val_texts)]
    training, validation = encoded(run)
    assert training == "".join(train_texts[path] + "\n\n" for path in sorted(train_texts))
    assert validation == "".join(val_texts[path] + "\n\n" for path in sorted(val_texts))
    cli("train", tmp_path / "train", "--val-dir", tmp_path / "val", "--val-file", tmp_path / "val" / "v1.txt") \
        .assert_one_line_error("--val-file or --val-dir")


def test_the_separator_is_a_character_the_model_learns(cli, tmp_path):
    texts = write_documents(tmp_path / "corpus", ["a.txt", "b.txt"])
    run = tmp_path / "run"
    cli("train", tmp_path / "corpus", "--doc-sep", r"\x1e", "--max-steps", "1", "--out", run, *TINY).assert_ok()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["corpus"]["doc_sep"] == "\x1e" and "\x1e" in ckpt["vocab"]["tokens"]
    assert encoded(run) == split_by_file([texts[path] for path in sorted(texts)], "\x1e")
    assert tomllib.loads((run / "config.toml").read_text())["doc_sep"] == "\x1e"


BAD_FILES = {"empty.txt": (b"", "is empty"),
             "blob.bin": (b"PK\x03\x04\x00\x00binary", "looks binary"),
             "latin1.txt": ("café au lait".encode("latin-1"), "is not UTF-8")}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_file_in_a_folder_is_one_line_naming_it_for_character_models(cli, tmp_path, name):
    write_documents(tmp_path / "corpus", ["a.txt", "b.txt"])
    data, fragment = BAD_FILES[name]
    (tmp_path / "corpus" / name).write_bytes(data)
    cli("train", tmp_path / "corpus", "--max-steps", "1", "--out", tmp_path / "run", *TINY) \
        .assert_one_line_error(fragment, str((tmp_path / "corpus" / name).resolve()))


def test_byte_models_read_every_file_and_end_documents_with_0x03(cli, tmp_path):
    write_documents(tmp_path / "corpus", ["a.txt", "b.txt"])
    for name, (data, _) in BAD_FILES.items():
        (tmp_path / "corpus" / name).write_bytes(data)
    run = tmp_path / "run"
    cli("train", tmp_path / "corpus", "--vocab", "bytes", "--max-steps", "1", "--out", run, *TINY).assert_ok()
    source = load_checkpoint(run / "last.pt")["corpus"]
    assert source["doc_sep"] == "\x03" and len(source["files"]) == 5
    contents = {path.name: path.read_bytes() for path in (tmp_path / "corpus").iterdir()}
    cuts = {name: int(len(data) * 0.9) for name, data in contents.items()}
    train_ids = torch.load(run / f"encoded-{source['sha256'][:16]}.pt", weights_only=True)["train_ids"]
    assert bytes(train_ids.tolist()) == b"".join(contents[name][: cuts[name]] + b"\x03" for name in sorted(contents))
    assert [Path(f["path"]).name for f in source["files"]] == sorted(contents)


def test_resume_and_eval_name_the_file_that_changed_or_vanished(cli, tmp_path):
    texts = write_documents(tmp_path / "corpus", ["a.txt", "b.txt", "c.txt"])
    run = tmp_path / "run"
    cli("train", tmp_path / "corpus", "--max-steps", "1", "--out", run, *TINY).assert_ok()
    cli("train", "--resume", run, "--max-steps", "2", "-q").assert_ok()  # unchanged: from the encoded cache
    changed = (tmp_path / "corpus" / "b.txt").resolve()
    changed.write_text(texts[changed] + "more")
    cli("train", "--resume", run, "--max-steps", "3", "-q") \
        .assert_one_line_error("changed since training", str(changed))
    for cache in run.glob("encoded-*.pt"):  # and read from the files, with no cache
        cache.unlink()
    cli("eval", "--checkpoint", run).assert_one_line_error("changed since training", str(changed))
    changed.write_text(texts[changed])
    cli("eval", "--checkpoint", run).assert_ok()
    gone = (tmp_path / "corpus" / "c.txt").resolve()
    shutil.move(gone, tmp_path / "c.txt")
    cli("train", "--resume", run, "--max-steps", "3", "-q") \
        .assert_one_line_error("moved or was deleted", str(gone))
    cli("eval", "--checkpoint", run).assert_one_line_error("moved or was deleted", str(gone))


def test_paths_that_name_no_file_are_one_line(cli, tmp_path):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "a.txt").write_text(make_text(1000))
    cli("train", tmp_path / "a.txt", tmp_path / "*.md").assert_one_line_error("no file matches", "*.md")
    cli("train", tmp_path / "empty-folder").assert_one_line_error("has no files", "empty-folder")
    cli("train", tmp_path / "a.txt", tmp_path / "missing.txt").assert_one_line_error("not found", "missing.txt")
