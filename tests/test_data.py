"""Reading text, the vocabulary, the split, normalisation and the two batchings."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from charrnn.corpus.batches import StreamBatches, WindowBatches, make_batches
from charrnn.corpus.data import load_corpus, reload_corpus
from charrnn.errors import CharrnnError
from charrnn.corpus.text import builtin_text, normalize, read_text
from charrnn.corpus.vocab import Vocab

from conftest import make_text


def one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------- the vocabulary


UNICODE = "Ça déjà vu, naïve Ελλάδα; Привет мир! 日本語 😀🎉 𝔘 — ok\n"


def test_vocab_is_the_sorted_set_of_characters():
    text = "hello, wörld 😀\n"
    vocab = Vocab.from_text(text)
    assert vocab.idx_to_token == sorted(set(text))
    assert len(vocab) == len(set(text))
    assert all(vocab.token_to_idx[t] == i for i, t in enumerate(vocab.idx_to_token))


def test_encode_decode_round_trip_non_ascii():
    vocab = Vocab.from_text(UNICODE)
    ids = vocab.encode(UNICODE)
    assert ids.ndim == 1 and len(ids) == len(UNICODE)  # one id per code point, emoji included
    assert vocab.decode(ids) == UNICODE
    assert vocab.decode(ids.tolist()) == UNICODE
    assert "😀" in vocab.idx_to_token and "𝔘" in vocab.idx_to_token  # outside the BMP


@pytest.mark.parametrize("size,dtype", [(2, torch.uint8), (256, torch.uint8), (257, torch.int16),
                                        (32767, torch.int16), (32768, torch.int32)])
def test_narrowest_dtype_holds_every_id(size, dtype):
    tokens = [chr(0x4E00 + i) for i in range(size)]  # CJK: one code point each
    vocab = Vocab(tokens)
    assert vocab.dtype == dtype
    text = tokens[-1] + tokens[0] + tokens[size // 2] + tokens[-1]
    ids = vocab.encode(text)
    assert ids.dtype == dtype
    assert ids.tolist() == [size - 1, 0, size // 2, size - 1]  # no wrap-around at the top
    assert vocab.decode(ids) == text


def test_unknown_characters_are_named():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharrnnError) as info:
        vocab.encode("abxΩ\x00", "the prefix")
    message = one_line(info)
    assert "the prefix" in message and "3 distinct characters" in message and "(3 occurrences)" in message
    assert "'x'" in message and "'Ω'" in message and "'\\x00'" in message  # escaped, still one line
    assert vocab.unknown("cab") == []


def test_unk_vocab_maps_unknown_characters():
    vocab = Vocab.from_text("ab ", unk=True)
    ids = vocab.encode("abz")
    assert ids[-1] == vocab.unk
    assert vocab.decode(ids) == "ab<unk>"


@pytest.mark.parametrize("unk", [False, True])
def test_vocab_dict_round_trip(unk):
    vocab = Vocab.from_text(UNICODE, unk=unk)
    again = Vocab.from_dict(vocab.to_dict())
    assert again == vocab
    assert again.idx_to_token == vocab.idx_to_token
    assert again.unk == vocab.unk


# ---------------------------------------------------------------- reading text


def test_read_text_returns_text_and_sha256(tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes(UNICODE.encode())
    text = read_text(path)
    assert text.as_str() == UNICODE
    assert text.sha256 == hashlib.sha256(UNICODE.encode()).hexdigest()


def test_read_text_missing(tmp_path):
    with pytest.raises(CharrnnError) as info:
        read_text(tmp_path / "nope.txt")
    assert "not found" in one_line(info) and "nope.txt" in str(info.value)


def test_read_text_directory(tmp_path):
    with pytest.raises(CharrnnError) as info:
        read_text(tmp_path)
    assert "directory" in one_line(info)


def test_read_text_empty(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(CharrnnError) as info:
        read_text(tmp_path / "e.txt")
    assert "empty" in one_line(info)


@pytest.mark.parametrize("data,offset", [
    (b"\xff\xfeabc", 0),
    (b"hello \xff world", 6),
    ("déjà ".encode() + b"\xc3(" + b"tail", 7),  # a bad continuation byte after multi-byte text
    ("ok 😀".encode() + b"\xf0\x9f\x98", 7),  # a sequence cut short at the end
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 0),
])
def test_read_text_not_utf8_names_the_offset(tmp_path, data, offset):
    (tmp_path / "b.bin").write_bytes(data)
    with pytest.raises(CharrnnError) as info:
        read_text(tmp_path / "b.bin")
    message = one_line(info)
    assert "not UTF-8" in message
    assert f"offset {offset} " in message
    assert f"0x{data[offset]:02x}" in message


def test_read_text_nul_bytes_are_binary(tmp_path):
    (tmp_path / "n.txt").write_bytes(b"abc\x00def")
    with pytest.raises(CharrnnError) as info:
        read_text(tmp_path / "n.txt")
    assert "offset 3" in one_line(info)


# ---------------------------------------------------------------- normalisation and the built-in corpus


def test_normalize_letters_is_the_d2l_preprocessing():
    text = "The Time Machine, by H. G. Wells [1898]\n\nI\n\tThe Time Traveller (for so it will be " \
           "convenient...) — naïve café ÉCOLE 42x"
    assert normalize(text, "letters") == re.sub("[^A-Za-z]+", " ", text).lower()
    assert normalize(text, "none") == text
    with pytest.raises(CharrnnError):
        normalize(text, "lower")


def test_builtin_text_is_the_python_reference():
    text = builtin_text()
    assert 465_000 * 0.9 <= len(text) <= 465_000 * 1.1
    from pydoc_data.topics import topics

    assert topics[sorted(topics)[0]] in text
    assert builtin_text() == text  # deterministic


# ---------------------------------------------------------------- the split


def split_text(corpus) -> tuple[str, str]:
    """A corpus's training and validation text (it holds them as ids)."""
    return corpus.vocab.decode(corpus.train_ids), corpus.vocab.decode(corpus.val_ids)


def test_validation_is_the_last_ten_percent(tmp_path):
    text = make_text(1000)
    (tmp_path / "c.txt").write_text(text)
    corpus = load_corpus(str(tmp_path / "c.txt"))
    train, val = split_text(corpus)
    assert train + val == text
    assert len(val) == 100
    assert val == text[-100:]
    assert corpus.vocab == Vocab.from_text(train)
    assert corpus.source["kind"] == "file"
    assert corpus.source["path"] == str((tmp_path / "c.txt").resolve())
    assert corpus.source["sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_val_fraction(tmp_path):
    text = make_text(1000)
    (tmp_path / "c.txt").write_text(text)
    corpus = load_corpus(str(tmp_path / "c.txt"), val_fraction=0.25)
    assert split_text(corpus)[1] == text[750:]
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(CharrnnError):
            load_corpus(str(tmp_path / "c.txt"), val_fraction=bad)


def test_val_file(tmp_path):
    text, val = make_text(800), make_text(400, seed=3)
    (tmp_path / "c.txt").write_text(text)
    (tmp_path / "v.txt").write_text(val)
    corpus = load_corpus(str(tmp_path / "c.txt"), val_file=str(tmp_path / "v.txt"))
    assert split_text(corpus) == (text, val)
    assert corpus.source["val_file"]["sha256"] == hashlib.sha256(val.encode()).hexdigest()
    again = reload_corpus(corpus.source)
    assert split_text(again) == (text, val)


def test_validation_characters_must_be_in_the_training_vocabulary(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(800))
    (tmp_path / "v.txt").write_text("time machine Ж")
    with pytest.raises(CharrnnError) as info:
        load_corpus(str(tmp_path / "c.txt"), val_file=str(tmp_path / "v.txt"))
    assert "'Ж'" in one_line(info)


def test_normalize_letters_split_uses_unk(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(800) + " ZZZ 123")
    corpus = load_corpus(str(tmp_path / "c.txt"), normalize_how="letters")
    assert set("".join(split_text(corpus))) <= set("abcdefghijklmnopqrstuvwxyz ")
    assert corpus.vocab.unk is not None
    assert corpus.source["normalize"] == "letters"


def test_reload_corpus_detects_changes_and_moves(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(make_text(800))
    corpus = load_corpus(str(path))
    assert torch.equal(reload_corpus(corpus.source).val_ids, corpus.val_ids)
    path.write_text(make_text(800, seed=1))
    with pytest.raises(CharrnnError) as info:
        reload_corpus(corpus.source)
    assert "changed" in one_line(info)
    path.unlink()
    with pytest.raises(CharrnnError) as info:
        reload_corpus(corpus.source)
    assert "moved or was deleted" in one_line(info)


def test_corpus_and_dataset_together_is_an_error(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(800))
    with pytest.raises(CharrnnError):
        load_corpus(str(tmp_path / "c.txt"), "timemachine")


# ---------------------------------------------------------------- stream batches


def test_stream_batches_are_contiguous_streams():
    N, B, T = 208, 4, 5
    ids = torch.arange(N)
    batches = StreamBatches(ids, B, T, offsets="fixed")
    length = (N - T) // B  # 50 characters per stream, with room for an offset < T
    assert batches.batches_per_epoch == length // T == 10
    previous = None
    for i in range(batches.batches_per_epoch):
        X, Y = batches.batch(0, i)
        assert X.shape == Y.shape == (B, T) and X.dtype == Y.dtype == torch.int64
        for b in range(B):
            # batch i is the next T characters of stream b, which starts at b * length
            assert X[b].tolist() == list(range(b * length + i * T, b * length + (i + 1) * T))
        assert torch.equal(Y, X + 1)  # targets are the inputs shifted by one
        if previous is not None:
            assert torch.equal(X[:, 0], previous[:, -1] + 1)  # each stream continues
        previous = X
    first_again, _ = batches.batch(1, 0)  # fixed: a new epoch starts every stream from its start
    assert torch.equal(first_again, batches.batch(0, 0)[0])


def test_stream_batches_move_their_offset_every_epoch():
    N, B, T = 1000, 4, 16
    batches = StreamBatches(torch.arange(N), B, T, seed=3)
    starts = []
    for epoch in range(12):
        X, Y = batches.batch(epoch, 0)
        offset = int(X[0, 0])
        assert 0 <= offset < T and torch.equal(Y, X + 1)
        for i in range(1, batches.batches_per_epoch):  # streams stay contiguous within the epoch
            X_next, Y_next = batches.batch(epoch, i)
            assert torch.equal(X_next[:, 0], X[:, -1] + 1) and int(Y_next.max()) < N
            X = X_next
        starts.append(offset)
    assert len(set(starts)) > 3  # the truncation points move from epoch to epoch
    again = StreamBatches(torch.arange(N), B, T, seed=3)  # the same seed draws the same (exact resume)
    assert [int(again.batch(e, 0)[0][0, 0]) for e in range(12)] == starts
    other = StreamBatches(torch.arange(N), B, T, seed=4)
    assert [int(other.batch(e, 0)[0][0, 0]) for e in range(12)] != starts


def test_stream_batches_accept_narrow_ids():
    ids = torch.arange(200).to(torch.uint8)
    X, Y = StreamBatches(ids, 3, 7, offsets="fixed").batch(0, 2)
    assert X.dtype == torch.int64
    assert X[1].tolist() == list(range(64 + 14, 64 + 21))


def test_stream_batches_too_short():
    with pytest.raises(CharrnnError) as info:
        StreamBatches(torch.arange(40), 4, 16)
    message = one_line(info)
    assert "--seq-len 16" in message and "80" in message


# ---------------------------------------------------------------- window batches


def all_window_starts(batches, epoch):
    starts = []
    for i in range(batches.batches_per_epoch):
        X, Y = batches.batch(epoch, i)
        assert torch.equal(Y, X + 1)
        for row in X:  # every row is a stride-1 window of the range
            assert row.tolist() == list(range(row[0].item(), row[0].item() + X.shape[1]))
        starts += X[:, 0].tolist()
    return starts


def test_window_batches_every_window_once_per_epoch():
    N, T, B = 50, 6, 7
    batches = WindowBatches(torch.arange(N), B, T, seed=3)
    assert batches.batches_per_epoch == 7  # 44 windows in batches of 7
    sizes = [len(batches.batch(0, i)[0]) for i in range(7)]
    assert sizes == [7] * 6 + [2]
    for epoch in range(3):
        starts = all_window_starts(batches, epoch)
        assert sorted(starts) == list(range(N - T))


def test_window_order_depends_on_seed_and_epoch_only():
    ids = torch.arange(60)
    a, b = WindowBatches(ids, 8, 5, seed=1), WindowBatches(ids, 8, 5, seed=1)
    e0, e1 = all_window_starts(a, 0), all_window_starts(a, 1)
    assert e0 != e1  # reshuffled each epoch
    assert all_window_starts(b, 1) == e1 and all_window_starts(b, 0) == e0  # same (seed, epoch), any order
    assert all_window_starts(WindowBatches(ids, 8, 5, seed=2), 0) != e0
    torch.manual_seed(123)  # the global RNG has no say
    assert all_window_starts(WindowBatches(ids, 8, 5, seed=1), 0) == e0


def test_window_batches_too_short():
    with pytest.raises(CharrnnError) as info:
        WindowBatches(torch.arange(10), 4, 10)
    assert "shorter than one training sequence" in one_line(info)


def test_make_batches():
    ids = torch.arange(100)
    assert isinstance(make_batches(ids, "sequential", 2, 4), StreamBatches)
    assert isinstance(make_batches(ids, "random", 2, 4), WindowBatches)
    with pytest.raises(CharrnnError):
        make_batches(ids, "shuffled", 2, 4)
