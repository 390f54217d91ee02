"""charrnn/kernels/cpu_matmul.py: the scans and `linear` on each CPU matmul backend (BLAS, oneDNN)
against float64 references; each float32 shape big enough is timed once through torch.mm and
oneDNN and goes to the faster; a run records the choices and adopts them when resumed."""

import pytest
import torch

from charrnn.kernels import cpu_matmul, fast_tanh
from charrnn.storage.checkpoint import load_checkpoint

from cell_references import CELLS, DT, loss_of, loss_weights, make_inputs
from conftest import TINY

needs_onednn = pytest.mark.skipif(not cpu_matmul.onednn_usable(), reason="oneDNN matmul not usable in this torch build")


@pytest.fixture(params=["blas", "onednn"])
def gemm(request):
    """Run a test with the scans' matmuls on each backend (oneDNN: CPU float32 only)."""
    if request.param == "onednn" and not cpu_matmul.onednn_usable():
        pytest.skip("oneDNN matmul not usable in this torch build")
    prev = cpu_matmul.set_gemm_backend(request.param)
    yield request.param
    cpu_matmul.set_gemm_backend(prev)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_float32_matches_float64_reference(cell, layout, gemm):
    """float32 results on either matmul backend agree with the float64 reference to float32
    rounding; "strided" feeds a transposed (batch-first) xp, a transposed W_hh view (as
    weight_hh_l0.T is), a non-contiguous h0 and expanded incoming gradients (loss = sum)."""
    scan, ref = CELLS[cell][:2]
    T, B, H = 5, 3, 8
    args64 = [a.detach() for a in make_inputs(cell, T, B, H, seed=7)]
    leaves = [a.float().clone().requires_grad_() for a in args64]
    if layout == "strided":
        xp_bf = args64[0].float().transpose(0, 1).contiguous().requires_grad_()
        W_t = args64[1 + CELLS[cell][3]].float().t().contiguous().requires_grad_()
        h0_wide = torch.cat([args64[1].float(), torch.zeros(B, 2)], 1).requires_grad_()
        leaves[0], leaves[1 + CELLS[cell][3]], leaves[1] = xp_bf, W_t, h0_wide
        inputs = list(leaves)
        inputs[0] = xp_bf.transpose(0, 1)
        inputs[1 + CELLS[cell][3]] = W_t.t()
        inputs[1] = h0_wide[:, :H]
        assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    else:
        inputs = leaves
    ref_args = [a.clone().requires_grad_() for a in args64]
    got = scan(*inputs)
    want = ref(*ref_args)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    if layout == "strided":
        loss, ref_loss = sum(r.sum() for r in got), sum(r.sum() for r in want)
    else:
        ws = loss_weights(want, seed=1)
        loss, ref_loss = loss_of(got, [w.float() for w in ws]), loss_of(want, ws)
    grads = torch.autograd.grad(loss, leaves)
    ref_grads = list(torch.autograd.grad(ref_loss, ref_args))
    if layout == "strided":
        ref_grads[0] = ref_grads[0].transpose(0, 1)
        ref_grads[1 + CELLS[cell][3]] = ref_grads[1 + CELLS[cell][3]].t()
        ref_grads[1] = torch.cat([ref_grads[1], torch.zeros(B, 2, dtype=DT)], 1)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_backends_agree_at_model_size(cell):
    """At a size where "auto" picks oneDNN for the matmuls, it agrees with BLAS (float32)."""
    if not cpu_matmul.onednn_usable():
        pytest.skip("oneDNN matmul not usable in this torch build")
    scan = CELLS[cell][0]
    args = [a.detach().float().requires_grad_() for a in make_inputs(cell, 4, 32, 128, seed=11)]
    results = {}
    for backend in ("blas", "auto"):
        prev = cpu_matmul.set_gemm_backend(backend)
        try:
            res = scan(*args)
            ws = loss_weights(res, seed=3)
            grads = torch.autograd.grad(loss_of(res, ws), args)
        finally:
            cpu_matmul.set_gemm_backend(prev)
        results[backend] = [r.detach() for r in res] + list(grads)
    for a, b in zip(results["blas"], results["auto"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_fast_path_matches_float64_reference(cell):
    """At a size where the scans take their fast CPU float32 path (tanh as 2 sigmoid(2x) - 1,
    oneDNN matmuls with packed weights when available), results and gradients agree with the
    float64 reference to float32 accuracy."""
    scan, ref = CELLS[cell][:2]
    T, B, H = 6, 32, 96
    assert B * H >= fast_tanh.FAST_TANH_MIN
    args64 = [a.detach() for a in make_inputs(cell, T, B, H, seed=21)]
    leaves = [a.float().requires_grad_() for a in args64]
    ref_args = [a.clone().requires_grad_() for a in args64]
    got, want = scan(*leaves), ref(*ref_args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=2e-6)
    ws = loss_weights(want, seed=4)
    grads = torch.autograd.grad(loss_of(got, [w.float() for w in ws]), leaves)
    ref_grads = torch.autograd.grad(loss_of(want, ws), ref_args)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias, gemm):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 6, generator=g, requires_grad=True)
    W = torch.randn(6, 5, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True) if bias else None
    y = cpu_matmul.linear(x, W, b)
    want = x @ W + (b if bias else 0)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    gy = torch.randn(y.shape, generator=g)
    leaves = [x, W] + ([b] if bias else [])
    for a, r in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(want, leaves, gy)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(cpu_matmul.linear(x, W, b), want, rtol=1e-5, atol=1e-5)


def test_linear_float64_gradcheck():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=DT, requires_grad=True) for s in ((2, 3, 4), (4, 5), (5,))]
    assert torch.autograd.gradcheck(cpu_matmul.linear, args)


def test_set_gemm_backend_validates():
    with pytest.raises(ValueError):
        cpu_matmul.set_gemm_backend("cublas")
    prev = cpu_matmul.set_gemm_backend("blas")
    assert cpu_matmul.set_gemm_backend(prev) == "blas"


# ------------------------------------------------------------ choosing a backend per shape


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "_choices", {})
    return cpu_matmul._choices


@needs_onednn
def test_each_shape_is_timed_once_and_remembered(fresh_choices, monkeypatch):
    timed = []

    def fake_timing(M, K, N, packed):
        timed.append((M, K, N, packed))
        return M == 64  # pretend oneDNN wins at 64 rows only

    monkeypatch.setattr(cpu_matmul, "_time_backends", fake_timing)
    a, W = torch.randn(64, 512), torch.randn(512, 1024)
    assert cpu_matmul.use_onednn((64, 512, 1024), a, W, packed=True)
    assert cpu_matmul.use_onednn((64, 512, 1024), a, W, packed=True)
    assert not cpu_matmul.use_onednn((32, 512, 1024), a, W, packed=True)
    assert timed == [(64, 512, 1024, True), (32, 512, 1024, True)]
    threads = torch.get_num_threads()
    assert sorted(cpu_matmul.gemm_choices()) == sorted([[64, 512, 1024, True, threads, True],
                                                        [32, 512, 1024, True, threads, False]])


@needs_onednn
def test_small_products_and_other_dtypes_stay_on_blas_untimed(fresh_choices, monkeypatch):
    monkeypatch.setattr(cpu_matmul, "_time_backends", lambda *shape: pytest.fail(f"timed {shape}"))
    small = torch.randn(4, 16)
    assert not cpu_matmul.use_onednn((4, 16, 64), small, torch.randn(16, 64))
    big = torch.randn(64, 512, dtype=torch.float64)
    assert not cpu_matmul.use_onednn((64, 512, 2048), big, torch.randn(512, 2048, dtype=torch.float64))
    assert cpu_matmul.gemm_choices() == []


@needs_onednn
def test_pinned_backends_are_not_timed(fresh_choices, monkeypatch):
    monkeypatch.setattr(cpu_matmul, "_time_backends", lambda *shape: pytest.fail(f"timed {shape}"))
    a, W = torch.randn(64, 512), torch.randn(512, 2048)
    for backend, want in (("onednn", True), ("blas", False)):
        previous = cpu_matmul.set_gemm_backend(backend)
        try:
            assert cpu_matmul.use_onednn((64, 512, 2048), a, W) is want
        finally:
            cpu_matmul.set_gemm_backend(previous)


@needs_onednn
def test_the_real_timing_answers_and_both_backends_agree(fresh_choices):
    a, W = torch.randn(64, 256), torch.randn(256, 1024)
    assert isinstance(cpu_matmul._time_backends(64, 256, 1024, True), bool)
    for onednn in (True, False):
        torch.testing.assert_close(cpu_matmul.matmul(a, W, onednn=onednn), a @ W, rtol=1e-4, atol=1e-4)


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
