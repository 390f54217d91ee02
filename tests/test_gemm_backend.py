"""The CPU matmul backend: each float32 shape big enough is timed once through torch.mm and
oneDNN and goes to the faster; a run records the choices and adopts them when resumed."""

import pytest
import torch

from charrnn import bptt
from charrnn.checkpoint import load_checkpoint

from conftest import TINY

needs_onednn = pytest.mark.skipif(not bptt._onednn_ok(), reason="oneDNN matmul not usable in this torch build")


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.setattr(bptt, "_choices", {})
    return bptt._choices


@needs_onednn
def test_each_shape_is_timed_once_and_remembered(fresh_choices, monkeypatch):
    timed = []

    def fake_timing(M, K, N, packed):
        timed.append((M, K, N, packed))
        return M == 64  # pretend oneDNN wins at 64 rows only

    monkeypatch.setattr(bptt, "_time_backends", fake_timing)
    a, W = torch.randn(64, 512), torch.randn(512, 1024)
    assert bptt._use_onednn((64, 512, 1024), a, W, packed=True)
    assert bptt._use_onednn((64, 512, 1024), a, W, packed=True)
    assert not bptt._use_onednn((32, 512, 1024), a, W, packed=True)
    assert timed == [(64, 512, 1024, True), (32, 512, 1024, True)]
    threads = torch.get_num_threads()
    assert sorted(bptt.gemm_choices()) == sorted([[64, 512, 1024, True, threads, True],
                                                  [32, 512, 1024, True, threads, False]])


@needs_onednn
def test_small_products_and_other_dtypes_stay_on_blas_untimed(fresh_choices, monkeypatch):
    monkeypatch.setattr(bptt, "_time_backends", lambda *shape: pytest.fail(f"timed {shape}"))
    small = torch.randn(4, 16)
    assert not bptt._use_onednn((4, 16, 64), small, torch.randn(16, 64))
    big = torch.randn(64, 512, dtype=torch.float64)
    assert not bptt._use_onednn((64, 512, 2048), big, torch.randn(512, 2048, dtype=torch.float64))
    assert bptt.gemm_choices() == []


@needs_onednn
def test_pinned_backends_are_not_timed(fresh_choices, monkeypatch):
    monkeypatch.setattr(bptt, "_time_backends", lambda *shape: pytest.fail(f"timed {shape}"))
    a, W = torch.randn(64, 512), torch.randn(512, 2048)
    for backend, want in (("onednn", True), ("blas", False)):
        previous = bptt.set_gemm_backend(backend)
        try:
            assert bptt._use_onednn((64, 512, 2048), a, W) is want
        finally:
            bptt.set_gemm_backend(previous)


@needs_onednn
def test_the_real_timing_answers_and_both_backends_agree(fresh_choices):
    a, W = torch.randn(64, 256), torch.randn(256, 1024)
    assert isinstance(bptt._time_backends(64, 256, 1024, True), bool)
    for onednn in (True, False):
        torch.testing.assert_close(bptt._mm(onednn, a, W), a @ W, rtol=1e-4, atol=1e-4)


def test_a_run_records_its_choices_and_a_resumed_run_adopts_them(cli, corpus_file, tmp_path, fresh_choices):
    fresh_choices[(99, 98, 97, True, 1)] = True  # as if timed earlier in this process
    run = tmp_path / "run"
    cli("train", corpus_file, "--max-steps", "4", "--out", run, *TINY).assert_ok()
    assert [99, 98, 97, True, 1, True] in load_checkpoint(run / "last.pt")["gemm"]
    fresh_choices.clear()
    cli("train", "--resume", run, "--max-steps", "6", "--quiet").assert_ok()
    assert fresh_choices[(99, 98, 97, True, 1)] is True


def test_threads_option_sets_torch_threads_for_the_run(cli, corpus_file, tmp_path):
    before = torch.get_num_threads()
    try:
        cli("train", corpus_file, "--max-steps", "2", "--threads", "1", "--out", tmp_path / "run", *TINY).assert_ok()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    cli("train", corpus_file, "--threads", "-1", *TINY).assert_one_line_error("--threads")
