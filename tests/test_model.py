"""The scratch cells compute the same function as PyTorch's, the fast token path computes
the same as the book's literal one-hot path, and the sampler's step-by-step path agrees
with the whole-sequence forward. All comparisons in float64 to 1e-9."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from charrnn.corpus.vocab import Vocab
from charrnn.model import (
    GRUScratch,
    LSTMScratch,
    ModelConfig,
    RNNLMScratch,
    RNNScratch,
    StackedScratch,
    build_model,
    copy_state,
    detach_state,
)
from charrnn.cells import CELLS
from charrnn.generation.sample import generate, warm_up

TOL = dict(rtol=1e-9, atol=1e-9)
SCRATCH = {"rnn": RNNScratch, "gru": GRUScratch, "lstm": LSTMScratch}
SHAPES = [(1, 1), (1, 3), (5, 2), (9, 4)]  # (seq_len, batch), seq 1 included


def torch_module(kind: str, n_in: int, n_h: int, layers: int = 1, seed: int = 0) -> nn.RNNBase:
    """A float64 torch.nn.RNN/GRU/LSTM with weights large enough that the nonlinearities
    (and a wrong gate order) matter, and non-zero biases on both sides."""
    torch.manual_seed(seed)
    if kind == "rnn":
        module = nn.RNN(n_in, n_h, num_layers=layers, nonlinearity="tanh")
    else:
        module = {"gru": nn.GRU, "lstm": nn.LSTM}[kind](n_in, n_h, num_layers=layers)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)
    return module


def one_layer_of(module: nn.RNNBase, layer: int) -> nn.RNNBase:
    """Layer `layer` of a stacked torch module as a one-layer module of its own."""
    kind = {nn.RNN: "rnn", nn.GRU: "gru", nn.LSTM: "lstm"}[type(module)]
    n_in = module.input_size if layer == 0 else module.hidden_size
    single = torch_module(kind, n_in, module.hidden_size)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{name}_l0").copy_(getattr(module, f"{name}_l{layer}"))
    return single


def random_state(kind, layers, batch, n_h, seed=1):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(layers, batch, n_h, generator=g, dtype=torch.float64)
    if kind == "lstm":
        return H, torch.randn(layers, batch, n_h, generator=g, dtype=torch.float64)
    return H


def to_scratch_state(kind, torch_state, layer=0):
    if torch_state is None:
        return None
    if kind == "lstm":
        return torch_state[0][layer], torch_state[1][layer]
    return torch_state[layer]


def final_parts(kind, state):
    """Final state as a list of tensors (H, or H and C), each (batch, H)."""
    return list(state) if kind == "lstm" else [state]


def torch_final_parts(kind, state, layer=0):
    return [s[layer] for s in state] if kind == "lstm" else [state[layer]]


def paired_grads(kind, scratch: nn.Module, module: nn.RNNBase):
    """(scratch gradient, the torch gradient it must equal) for every scratch parameter."""
    pairs = [(scratch.W_xh.grad, module.weight_ih_l0.grad.T), (scratch.W_hh.grad, module.weight_hh_l0.grad.T)]
    if kind == "gru":
        pairs += [(scratch.b_xh.grad, module.bias_ih_l0.grad), (scratch.b_hh.grad, module.bias_hh_l0.grad)]
    else:  # one folded bias: its gradient is that of either torch bias
        pairs += [(scratch.b_h.grad, module.bias_ih_l0.grad), (scratch.b_h.grad, module.bias_hh_l0.grad)]
    return pairs


def assert_close(a, b):
    torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------- one cell vs torch.nn


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("seq_len,batch", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("one_hot", [False, True])
def test_cell_matches_torch(kind, seq_len, batch, with_state, one_hot):
    n_in, n_h = 5, 4
    module = torch_module(kind, n_in, n_h)
    cell = SCRATCH[kind].from_torch(module)
    assert cell.W_xh.dtype == torch.float64

    g = torch.Generator().manual_seed(seq_len * 10 + batch)
    if one_hot:
        ids = torch.randint(0, n_in, (seq_len, batch), generator=g)
        x = nn.functional.one_hot(ids, n_in).double()
    else:
        x = torch.randn(seq_len, batch, n_in, generator=g, dtype=torch.float64)
    x_torch, x_scratch = x.clone().requires_grad_(), x.clone().requires_grad_()
    state = random_state(kind, 1, batch, n_h) if with_state else None
    if state is not None:
        state_torch = tuple(s.clone().requires_grad_() for s in state) if kind == "lstm" else state.clone().requires_grad_()
        state_scratch_src = tuple(s.clone().requires_grad_() for s in state) if kind == "lstm" else state.clone().requires_grad_()
    else:
        state_torch = state_scratch_src = None

    out_t, final_t = module(x_torch, state_torch)
    out_s, final_s = cell(x_scratch, to_scratch_state(kind, state_scratch_src))

    assert out_s.shape == (seq_len, batch, n_h)
    assert_close(out_s, out_t)
    parts_s, parts_t = final_parts(kind, final_s), torch_final_parts(kind, final_t)
    assert len(parts_s) == len(parts_t)
    for a, b in zip(parts_s, parts_t):
        assert_close(a, b)

    # the same scalar function of outputs and final state on both sides
    weights = torch.randn(out_t.shape, generator=g, dtype=torch.float64)
    state_weights = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in parts_t]
    loss_t = (out_t * weights).sum() + sum((p * w).sum() for p, w in zip(parts_t, state_weights))
    loss_s = (out_s * weights).sum() + sum((p * w).sum() for p, w in zip(parts_s, state_weights))
    loss_t.backward()
    loss_s.backward()
    for got, want in paired_grads(kind, cell, module):
        assert_close(got, want)
    assert_close(x_scratch.grad, x_torch.grad)
    if state is not None:
        src_s = state_scratch_src if kind == "lstm" else (state_scratch_src,)
        src_t = state_torch if kind == "lstm" else (state_torch,)
        for a, b in zip(src_s, src_t):
            assert_close(a.grad, b.grad)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_from_torch_rejects_modules_it_cannot_copy(kind):
    cls = SCRATCH[kind]
    with pytest.raises(ValueError):
        cls.from_torch(torch_module(kind, 3, 4, layers=2))
    make = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind]
    with pytest.raises(ValueError):
        cls.from_torch(make(3, 4, bidirectional=True))
    with pytest.raises(ValueError):
        cls.from_torch(make(3, 4, batch_first=True))


# ---------------------------------------------------------------- stacked layers vs torch.nn


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("with_state", [False, True])
def test_two_layer_stack_matches_torch(kind, with_state):
    vocab, n_h, seq_len, batch = 6, 4, 7, 3
    module = torch_module(kind, vocab, n_h, layers=2)  # dropout 0
    stack = StackedScratch([SCRATCH[kind].from_torch(one_layer_of(module, l)) for l in range(2)])
    lm = RNNLMScratch(stack, vocab).double()
    with torch.no_grad():
        lm.W_hq.normal_()
        lm.b_q.normal_()

    X = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(3))
    state = random_state(kind, 2, batch, n_h) if with_state else None
    scratch_state = None if state is None else [to_scratch_state(kind, state, l) for l in range(2)]

    out_t, final_t = module(lm.one_hot(X), state)
    logits, final_s = lm(X, scratch_state)
    assert logits.shape == (batch, seq_len, vocab)
    assert_close(logits, out_t.transpose(0, 1) @ lm.W_hq + lm.b_q)
    for layer in range(2):
        for a, b in zip(final_parts(kind, final_s[layer]), torch_final_parts(kind, final_t, layer)):
            assert_close(a, b)

    # gradients of a loss through both layers and the head reach the same numbers
    Y = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(4))
    nn.functional.cross_entropy(logits.flatten(0, 1), Y.flatten()).backward()
    head_t = out_t.transpose(0, 1) @ lm.W_hq.detach() + lm.b_q.detach()
    nn.functional.cross_entropy(head_t.flatten(0, 1), Y.flatten()).backward()
    for layer in range(2):
        single = one_layer_of(module, layer)
        with torch.no_grad():  # carry the stacked module's gradients over to compare
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{name}_l0").grad = getattr(module, f"{name}_l{layer}").grad
        for got, want in paired_grads(kind, stack.cells[layer], single):
            assert_close(got, want)


# ---------------------------------------------------------------- the book's API


def test_book_api_shapes():
    vocab_size, n_h, batch, steps = 28, 32, 2, 5
    rnn = RNNScratch(num_inputs=vocab_size, num_hiddens=n_h, sigma=0.01)
    assert rnn.W_xh.shape == (vocab_size, n_h)
    assert rnn.W_hh.shape == (n_h, n_h)
    assert rnn.b_h.shape == (n_h,)
    assert torch.equal(rnn.b_h, torch.zeros(n_h))
    lm = RNNLMScratch(rnn, vocab_size=vocab_size)
    assert lm.W_hq.shape == (n_h, vocab_size)
    assert lm.b_q.shape == (vocab_size,)
    X = torch.randint(0, vocab_size, (batch, steps))
    one_hot = lm.one_hot(X)
    assert one_hot.shape == (steps, batch, vocab_size)
    assert torch.equal(one_hot.argmax(-1), X.T)
    assert torch.equal(one_hot.sum(-1), torch.ones(steps, batch))
    logits, state = lm(X)
    assert logits.shape == (batch, steps, vocab_size)
    assert len(state) == 1 and state[0].shape == (batch, n_h)  # one entry per layer
    outputs, H = rnn(lm.one_hot(X))
    assert outputs.shape == (steps, batch, n_h)
    assert H.shape == (batch, n_h)
    assert torch.equal(H, outputs[-1])


def test_init_sigma_scales_the_weights():
    torch.manual_seed(0)
    cell = RNNScratch(200, 100, sigma=0.01)
    assert 0.009 < cell.W_xh.std().item() < 0.011
    assert 0.009 < cell.W_hh.std().item() < 0.011
    lstm = LSTMScratch(7, 5)
    assert lstm.W_xh.shape == (7, 20) and lstm.W_hh.shape == (5, 20) and lstm.b_h.shape == (20,)
    gru = GRUScratch(7, 5)
    assert gru.W_xh.shape == (7, 15) and gru.b_xh.shape == (15,) and gru.b_hh.shape == (15,)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_torch_init_starts_as_torch_nn_does(cell):
    torch.manual_seed(0)
    model = build_model(ModelConfig(60, cell, 64, 2, init="torch", forget_bias=1.0))
    bound = 1 / 64 ** 0.5
    first, second = model.rnn.cells
    assert 0.9 < first.W_xh.std().item() < 1.1  # the one-hot table, as nn.Embedding starts
    for W in (first.W_hh, second.W_xh, second.W_hh, model.W_hq):
        assert W.abs().max().item() <= bound and W.std().item() > 0.8 * bound / 3 ** 0.5
    if cell == "lstm":
        assert torch.all(first.b_h[64:128] == 1) and torch.all(first.b_h[:64] == 0)  # the forget gate only


def test_an_embedding_starts_as_nn_embedding_before_torch_nn_lstm():
    torch.manual_seed(0)
    model = build_model(ModelConfig(60, "lstm", 64, 1, init="torch", embedding=32))
    E, W_xh = model.rnn.E, model.rnn.cells[0].W_xh
    assert E.shape == (60, 32) and W_xh.shape == (32, 256) and model.rnn.num_inputs == 60
    assert 0.9 < E.std().item() < 1.1
    assert W_xh.abs().max().item() <= 1 / 8 and W_xh.std().item() > 0.8 / 8 / 3 ** 0.5
    book = build_model(ModelConfig(60, "lstm", 64, 1, init="book", init_sigma=0.02, embedding=32))
    assert 0.015 < book.rnn.E.std().item() < 0.025  # the book's scheme: every weight N(0, sigma^2)


def test_orthogonal_init_makes_every_recurrent_gate_block_orthogonal():
    model = build_model(ModelConfig(10, "gru", 16, 1, init="orthogonal"))
    for block in model.rnn.cells[0].W_hh.detach().split(16, dim=1):
        assert torch.allclose(block.T @ block, torch.eye(16), atol=1e-5)


def test_book_init_is_the_books_whatever_else_is_set():
    torch.manual_seed(0)
    model = build_model(ModelConfig(60, "lstm", 64, 1, init="book", init_sigma=0.02))
    assert 0.018 < model.rnn.cells[0].W_hh.std().item() < 0.022 and 0.018 < model.W_hq.std().item() < 0.022
    assert torch.all(model.rnn.cells[0].b_h == 0)


def test_weight_drop_masks_the_recurrent_matrix_once_per_batch_in_training(monkeypatch):
    from charrnn.cells import lstm as lstm_cell

    torch.manual_seed(0)
    model = build_model(ModelConfig(9, "lstm", 16, 1, weight_drop=0.5, init="torch"))
    seen = []
    real_scan = lstm_cell.lstm_scan
    monkeypatch.setattr(lstm_cell, "lstm_scan", lambda xp, h, c, W: seen.append(W) or real_scan(xp, h, c, W))
    X = torch.randint(0, 9, (3, 5))
    W_hh = model.rnn.cells[0].W_hh
    model.train()
    logits, _ = model(X)
    logits.sum().backward()
    kept = seen[0] != 0
    assert 0.35 < kept.float().mean().item() < 0.65
    assert torch.allclose(seen[0][kept], 2 * W_hh[kept])  # the rest scaled by 1 / (1 - p)
    assert torch.all(W_hh.grad[~kept] == 0) and W_hh.grad[kept].abs().sum() > 0  # dropped entries learn nothing
    model(X)
    assert not torch.equal(seen[1] != 0, kept)  # a fresh mask for the next batch
    model.eval()
    model(X)
    assert seen[2] is W_hh  # never in evaluation


@pytest.mark.parametrize("locked", [False, True])
def test_dropout_masks_outputs_in_training_only_and_locked_masks_hold_for_a_sequence(locked):
    torch.manual_seed(0)
    stack = StackedScratch([RNNScratch(4, 6)], dropout=0.5, locked=locked)
    ones = torch.ones(20, 3, 6)
    stack.train()
    first, second = stack.dropout(ones), stack.dropout(ones)
    assert set(first.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(first, second)  # fresh masks for every batch
    same_over_time = all(torch.equal(first[t], first[0]) for t in range(20))
    assert same_over_time == locked
    stack.eval()
    assert torch.equal(stack.dropout(ones), ones)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_dropout_never_touches_the_carried_state(cell):
    torch.manual_seed(0)
    model = build_model(ModelConfig(9, cell, 16, 1, dropout=0.5, locked_dropout=True, init="torch")).double()
    X = torch.randint(0, 9, (3, 7))
    model.train()
    logits_train, state_train = model(X)
    model.eval()
    logits_eval, state_eval = model(X)
    assert not torch.allclose(logits_train, logits_eval)  # the outputs were dropped ...
    for a, b in zip(torch.utils._pytree.tree_leaves(state_train), torch.utils._pytree.tree_leaves(state_eval)):
        assert torch.allclose(a, b)  # ... the state was not


def test_build_model_rejects_unknown_cells():
    with pytest.raises(ValueError, match="unknown cell"):
        build_model(ModelConfig(vocab_size=5, cell="transformer"))


# ---------------------------------------------------------------- fast path == literal path


def double_model(cell, layers, vocab=11, hidden=8, seed=0, embedding=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab, cell, hidden, layers, 0.0, init_sigma=0.4, embedding=embedding)).double()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers,embedding", [(1, 0), (2, 0), (1, 5), (2, 5)])
def test_forward_equals_book_one_hot_path(cell, layers, embedding):
    """The rows gathered from the input table (E @ W_xh + b with an embedding) and the
    book's one-hot products (one_hot(X) @ E, then @ W_xh) give the same logits, states
    and gradients, E's included."""
    vocab = 11
    fast, literal = (double_model(cell, layers, embedding=embedding) for _ in range(2))
    literal.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(5)
    X1 = torch.randint(0, vocab, (3, 6), generator=g)
    X2 = torch.randint(0, vocab, (3, 4), generator=g)
    Y = torch.randint(0, vocab, (3, 4), generator=g)
    with torch.no_grad():  # a non-zero carried state
        _, carried = fast(X1)

    losses = []
    for model, method in ((fast, fast.forward), (literal, literal.forward_one_hot)):
        for state in (None, carried):
            logits, final = method(X2, state)
            assert logits.shape == (3, 4, vocab)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), Y.flatten())
            loss.backward()
            losses.append((logits.detach(), final, loss.detach()))
    for (la, fa, lossa), (lb, fb, lossb) in zip(losses[:2], losses[2:]):
        assert_close(la, lb)
        assert_close(lossa, lossb)
        for a, b in zip(fa, fb):
            for ta, tb in zip(*(final_parts(cell, s) for s in (a, b))):
                assert_close(ta, tb)
    grads_fast = dict((n, p.grad) for n, p in fast.named_parameters())
    for name, p in literal.named_parameters():
        assert_close(grads_fast[name], p.grad)


# ---------------------------------------------------------------- carried state


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_carried_state_makes_split_processing_equal_to_the_whole(cell, layers):
    model = double_model(cell, layers)
    X = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(7))
    whole, whole_state = model(X)
    first, state = model(X[:, :5])
    second, final = model(X[:, 5:], detach_state(state))
    assert_close(torch.cat([first, second], 1), whole)
    for a, b in zip(final, whole_state):
        for ta, tb in zip(final_parts(cell, a), final_parts(cell, b)):
            assert_close(ta, tb)
    # and without the carried state the second half is a different computation
    fresh, _ = model(X[:, 5:])
    assert not torch.allclose(fresh, whole[:, 5:])


# ---------------------------------------------------------------- the sampler's step path


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_generation_is_the_books_predict(cell):
    """generate(greedy) steps one token at a time through the Sampler; the book's predict
    reruns the whole text through forward and takes the argmax of the last logits."""
    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ")
    model = build_model(ModelConfig(len(vocab), cell, 8, 2, 0.0, init_sigma=0.5)).double().eval()
    prefix = "bad cafe"
    got = "".join(c[0] for c in generate(model, vocab, prefix, 12, greedy=True))
    text = prefix
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(vocab.encode(text).long()[None])
            text += vocab.idx_to_token[logits[0, -1].argmax().item()]
    assert prefix + got == text


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_warm_up_state_is_the_forward_state(cell):
    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ")
    model = build_model(ModelConfig(len(vocab), cell, 8, 2, 0.0, init_sigma=0.5)).double().eval()
    ids = vocab.encode("a bad egg")
    state, logits = warm_up(model, ids, batch_size=3)
    with torch.no_grad():
        full_logits, full_state = model(ids.long()[None])
    for row in range(3):
        assert_close(logits[row], full_logits[0, -1])
    for a, b in zip(state, full_state):
        for ta, tb in zip(final_parts(cell, a), final_parts(cell, b)):
            assert_close(ta[0], tb[0])


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ")
    model = build_model(ModelConfig(len(vocab), "gru", 8, 1, 0.0, init_sigma=0.5)).eval()

    def run(length=30, **kw):
        return ["".join(col) for col in zip(*generate(model, vocab, "abc", length, **kw))]

    assert run(seed=1, samples=2) == run(seed=1, samples=2)
    assert run(seed=1) != run(seed=2)
    assert run(top_k=1, seed=5) == run(greedy=True) == run(temperature=0, seed=9)
    three = run(samples=3, greedy=True)
    assert len(three) == 3 and len(set(three)) == 1 and len(three[0]) == 30
    assert run(length=0) == []


def test_generate_leaves_the_thread_count_alone_between_steps():
    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ")
    model = build_model(ModelConfig(len(vocab), "rnn", 8, 1)).eval()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        steps = generate(model, vocab, "abc", 10, seed=0)
        next(steps)
        assert torch.get_num_threads() == 2
    finally:
        steps.close()
        torch.set_num_threads(before)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("samples", [1, 16])
@pytest.mark.parametrize("embedding", [0, 24])
def test_sampler_steps_match_the_forward_in_float32(cell, samples, embedding):
    """The Sampler's fast steps (at this size: packed oneDNN matmuls where available, tanh
    through sigmoid for 16 sequences) give the logits the whole-sequence forward gives."""
    from charrnn.generation.sample import Sampler

    torch.manual_seed(0)
    model = build_model(ModelConfig(40, cell, 256, 2, 0.0, init_sigma=0.1, embedding=embedding)).eval()
    ids = torch.randint(0, 40, (samples, 12))
    ids[:, 0] = ids[0, 0]  # warm_up gives every row the same prefix
    with torch.no_grad():
        state, logits = warm_up(model, ids[0, :1], samples)
        sampler = Sampler(model)
        state = list(state)
        steps = [logits]
        for t in range(1, 12):
            step_ids = ids[:, t]
            logits, state = sampler.step(step_ids.tolist() if samples == 1 else step_ids, state)
            steps.append(logits)
        full, _ = model(ids)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-5)


class StandInGraph:
    """A CUDA graph's behaviour without CUDA: replay runs the recorded function again and
    writes its results into the tensors the capture returned."""

    def __init__(self, fn):
        self.fn, self.outputs = fn, fn()
        self.replays = 0

    def replay(self):
        self.replays += 1
        logits, state = self.fn()
        self.outputs[0].copy_(logits)
        copy_state(self.outputs[1], state)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("samples", [1, 3])
def test_sampling_through_a_replayed_step_gives_the_same_text(cell, samples, monkeypatch):
    """The Sampler's CUDA-graph path (ids and state copied in, logits and state read out of
    the graph's tensors), with a stand-in for the graph on the CPU, samples exactly what the
    eager steps sample."""
    from charrnn.generation.sample import Sampler

    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ")
    model = build_model(ModelConfig(len(vocab), cell, 8, 2, 0.0, init_sigma=0.5)).eval()

    def run():
        return ["".join(col) for col in zip(*generate(model, vocab, "abc", 40, seed=3, samples=samples))]

    eager = run()
    graphs = []

    def capture(fn):
        graphs.append(StandInGraph(fn))
        return graphs[-1], graphs[-1].outputs

    monkeypatch.setattr(Sampler, "GRAPH_DEVICES", ("cpu",))
    monkeypatch.setattr(Sampler, "_capture_graph", staticmethod(capture))
    assert run() == eager
    assert len(graphs) == 1 and graphs[0].replays == 39  # 40 steps: the first eager, then captured and replayed


def test_sampling_goes_on_eagerly_when_the_capture_fails(monkeypatch):
    from charrnn.generation.sample import Sampler

    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ")
    model = build_model(ModelConfig(len(vocab), "gru", 8, 1, 0.0, init_sigma=0.5)).eval()
    eager = list(generate(model, vocab, "abc", 20, seed=3))

    def fail(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(Sampler, "GRAPH_DEVICES", ("cpu",))
    monkeypatch.setattr(Sampler, "_capture_graph", staticmethod(fail))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    assert list(generate(model, vocab, "abc", 20, seed=3)) == eager
