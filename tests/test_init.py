"""How the weights start (charrnn.model.init_weights): each scheme for the gated cells and
the head, and the LSTM's forget-gate bias under every scheme."""

from __future__ import annotations

import pytest
import torch

from charrnn.model import ModelConfig, build_model

H = 16


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_book_init_draws_every_weight_of_the_gated_cells_and_the_head_from_one_normal(cell):
    torch.manual_seed(0)
    model = build_model(ModelConfig(60, cell, 64, 2, init="book", init_sigma=0.02))
    for layer in model.rnn.cells:
        for W in (layer.W_xh, layer.W_hh):
            assert 0.018 < W.std().item() < 0.022
    assert 0.018 < model.W_hq.std().item() < 0.022


@pytest.mark.parametrize("cell, gates", [("gru", 3), ("lstm", 4)])
def test_orthogonal_init_makes_every_gate_block_of_every_layer_orthogonal(cell, gates):
    torch.manual_seed(0)
    model = build_model(ModelConfig(10, cell, H, 2, init="orthogonal"))
    for layer in model.rnn.cells:
        blocks = layer.W_hh.detach().split(H, dim=1)
        assert len(blocks) == gates
        for block in blocks:
            assert torch.allclose(block.T @ block, torch.eye(H), atol=1e-5)
    # the rest as torch.nn starts it: the one-hot input table N(0, 1) (nn.Embedding), deeper
    # inputs and the head uniform in +-1/sqrt(H) (nn.LSTM, nn.Linear)
    first, second = model.rnn.cells
    assert 0.9 < first.W_xh.std().item() < 1.1
    bound = 1 / H ** 0.5
    for W in (second.W_xh, model.W_hq):
        assert W.abs().max().item() <= bound and W.std().item() > 0.8 * bound / 3 ** 0.5


@pytest.mark.parametrize("init", ["book", "torch", "orthogonal"])
def test_forget_bias_starts_the_lstms_forget_gate_alone_under_every_scheme(init):
    model = build_model(ModelConfig(10, "lstm", H, 2, init=init, forget_bias=1.5))
    for layer in model.rnn.cells:
        inputs, forget, cell_input, output = layer.b_h.detach().split(H)  # the gates' order in b_h
        assert torch.all(forget == 1.5)
        assert not any(b.any() for b in (inputs, cell_input, output))
    assert not model.b_q.any()


def test_forget_bias_leaves_a_gru_as_it_was():
    torch.manual_seed(0)
    with_bias = build_model(ModelConfig(10, "gru", H, 1, init="torch", forget_bias=1.0)).state_dict()
    torch.manual_seed(0)
    without = build_model(ModelConfig(10, "gru", H, 1, init="torch")).state_dict()
    assert all(torch.equal(with_bias[name], without[name]) for name in without)
