"""charrnn.storage.atomic: every file written in place of another is whole or not there."""

import os

import pytest

from charrnn.storage.atomic import remove_stale_temporaries, umask, write_atomically, write_bytes, write_text


def test_a_write_replaces_the_file_whole_as_an_ordinary_file(tmp_path):
    path = tmp_path / "out.txt"
    write_text(path, "old")
    write_text(path, "néw\n")
    assert path.read_bytes() == "néw\n".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("bad"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "out.bin"
    write_bytes(path, b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise error

    with pytest.raises(type(error)):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_interruption_hidden_by_the_writer_s_own_error_stays_an_interruption(tmp_path):
    def interrupted(f):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("the writer failed as it closed")

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "x", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_writer_left_is_removed(tmp_path):
    write_bytes(tmp_path / "kept.pt", b"x")
    (tmp_path / ".kept.pt.abc123.tmp").write_bytes(b"half")  # as write_atomically names them
    (tmp_path / "notes.tmp").write_bytes(b"the user's")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pt", "notes.tmp"]


def test_a_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        write_bytes(tmp_path / "nowhere" / "x", b"x")
    assert os.listdir(tmp_path) == []
