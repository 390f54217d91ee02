"""charrnn/kernels/fast_tanh.py: tanh through sigmoid for CPU float32 blocks, torch.tanh elsewhere."""

import torch

from charrnn.kernels import fast_tanh


def test_fast_tanh_is_within_2e_7_of_tanh():
    x = torch.linspace(-12, 12, 4 * fast_tanh.FAST_TANH_MIN)
    assert fast_tanh.applies(x)
    want = torch.tanh(x.double())
    for got in (fast_tanh.tanh(x), fast_tanh.tanh_into(x.clone(), out=torch.empty_like(x))):
        assert got.dtype == torch.float32
        assert (got.double() - want).abs().max().item() <= 2e-7


def test_small_blocks_and_other_dtypes_take_torch_tanh():
    x = torch.linspace(-3, 3, fast_tanh.FAST_TANH_MIN - 1)
    big64 = torch.linspace(-3, 3, 2 * fast_tanh.FAST_TANH_MIN, dtype=torch.float64)
    for t in (x, big64):
        assert not fast_tanh.applies(t)
        assert torch.equal(fast_tanh.tanh(t), torch.tanh(t))
