"""What the bench times (see scripts/bench.py's docstring for how): GEMM peaks, a training
step of charrnn and of torch.nn, the matmuls alone of charrnn's step, sampling and its
matrix-vector bound, evaluation."""

from __future__ import annotations

import string
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench_lib.internals import charrnn_internals
from bench_lib.timing import Clock, med, paired_rounds
from charrnn.model import ModelConfig, build_model
from charrnn.training.train_step import TrainStep

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
VOCAB = 65  # tinyshakespeare's


# ------------------------------------------------------------------------------ matmul peak


def onednn_mm():
    """oneDNN's fp32 GEMM as charrnn calls it, or None where charrnn does not use it."""
    if not charrnn_internals().onednn_usable():
        return None
    lp = torch.ops.mkldnn._linear_pointwise
    return lambda a, w_t: lp(a, w_t, None, "none", [], "")


def gemm_peak(shapes, device, clock, repeats) -> list[dict]:
    """Per (M, K, N): the best round's GFLOP/s of each backend (torch.mm, oneDNN on a CPU)."""
    rows = []
    dnn = onednn_mm() if device.type == "cpu" else None
    for M, K, N in shapes:
        a = torch.randn(M, K, device=device)
        b = torch.randn(K, N, device=device)
        w_t = b.t().contiguous()
        fns = {"torch.mm": lambda: torch.mm(a, b)}
        if dnn:
            fns["oneDNN"] = lambda: dnn(a, w_t)
        # above timer noise and launch latency: ~0.2 GFLOP per timing on a CPU, ~20 on a GPU
        inner = max(1, int((2e10 if device.type == "cuda" else 2e8) // (2 * M * K * N)))

        def repeat(f):
            return lambda: [f() for _ in range(inner)]

        times = paired_rounds(clock, {k: repeat(f) for k, f in fns.items()}, warmup=2, repeats=repeats)
        flop = 2 * M * K * N * inner
        row = {"shape": (M, K, N)}
        for name, ts in times.items():
            row[name] = flop / min(ts) / 1e9  # a peak: the best round
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ training


class TorchLM(nn.Module):
    """The same language model with PyTorch's built-in recurrent modules (see bench.py)."""

    def __init__(self, cell: str, vocab: int, hidden: int):
        super().__init__()
        self.vocab = vocab
        self.rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell](vocab, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, X, state=None):
        x = F.one_hot(X.T, self.vocab).to(self.head.weight.dtype)
        out, state = self.rnn(x, state)
        return self.head(out).transpose(0, 1), state


def make_model(impl: str, cell: str, hidden: int, device) -> nn.Module:
    if impl == "charrnn":
        return build_model(ModelConfig(vocab_size=VOCAB, cell=cell, hidden=hidden)).to(device)
    return TorchLM(cell, VOCAB, hidden).to(device)


def train_flops(impl: str, cell: str, H: int, B: int, T: int) -> float:
    G = GATES[cell] * H
    input_side = VOCAB * G if impl == "torch" else 0
    return 3 * 2 * B * T * (H * G + input_side + H * VOCAB)


def make_train_step(impl: str, cell: str, H: int, B: int, T: int, device, seed: int = 0, graphs: bool = False):
    """A closure running one training step as charrnn.training.train does, through its TrainStep
    (see bench.py); with graphs (CUDA), replayed as a CUDA graph after TrainStep's warm-up."""
    torch.manual_seed(seed)
    model = make_model(impl, cell, H, device).train()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01)
    train_step = TrainStep(model, params, clip=1.0, graphs=graphs)
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, VOCAB, (B, T + 1), generator=g).to(device)
    X, Y = text[:, :-1], text[:, 1:]
    box = {"state": None}

    def step():
        _, box["state"] = train_step(X, Y, box["state"], divisor=float(Y.numel()))
        optimizer.step()
        if train_step.note:
            print(f"({impl} {cell} H={H}: {train_step.note})")
            train_step.note = None

    return step


def make_matmul_step(cell: str, H: int, B: int, T: int, device, seed: int = 0):
    """A closure running only the matmuls of one charrnn training step of the bench's model
    (one layer, whose input side is a gather, no matmul), with the shapes, the backend
    choices and the fused additions of charrnn's scans and output layer; random operands
    (values do not change the time). What a step takes beyond this is elementwise work,
    allocation, Python."""
    ops = charrnn_internals()
    G, N = GATES[cell] * H, T * B
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    W_hh, W_hq, b_q, h0 = rand(H, G), rand(H, VOCAB), rand(VOCAB), rand(B, H)
    outs = rand(T, B, H)  # the layer's outputs H_t
    dA = rand(T, B, G)  # the gradient w.r.t. each step's pre-activations
    g_out = rand(T, B, H)  # the gradient from the output layer, added into each backward step
    g_logits = rand(N, VOCAB)
    step_in = rand(G) if cell == "gru" else rand(B, G)  # GRU: + b_hh; RNN, LSTM: + the gathered input
    forward_out = torch.empty(B, G, device=device)
    backward_out = torch.empty(B, H, device=device)
    x2 = outs.view(N, H)
    head_dnn = ops.use_onednn((N, H, VOCAB), x2, W_hq, b_q)

    def step():
        forward = ops.Matmul(W_hh, B, h0)  # (B x H) @ (H x G) per step, the weight packed once per scan
        for t in range(T):
            forward(outs[t - 1] if t else h0, add=step_in, out=forward_out)
        ops.matmul(x2, W_hq, add=b_q, onednn=head_dnn)  # the head: (T*B x H) @ (H x 65)
        if head_dnn:  # its gradients, each product through the backend chosen for its shape
            ops.product(g_logits, W_hq.t())  # input: (T*B x 65) @ (65 x H)
            ops.product(g_logits.t(), x2)  # weight: (g^T x)^T, the narrow side first
        else:
            ops.matmul(g_logits, W_hq.t())
            ops.matmul(x2.t(), g_logits)
        backward = ops.Matmul(W_hh.t(), B, outs)  # (B x G) @ (G x H) per step
        for t in range(T - 1, -1, -1):
            backward(dA[t], add=g_out[t], out=backward_out)
        ops.weight_grad(h0, outs, dA)  # (T*B x H)^T @ (T*B x G)

    return step


def implementations(device) -> dict[str, tuple[str, bool]]:
    """Name -> (model, replayed as a CUDA graph?): what each column of the training table times.
    On CUDA charrnn trains with graphs by default; the built-in modules are timed as people
    run them (eager) and graphed too, and charrnn eager as well."""
    if device.type != "cuda":
        return {"charrnn": ("charrnn", False), "torch": ("torch", False)}
    return {"charrnn": ("charrnn", True), "torch": ("torch", False), "charrnn eager": ("charrnn", False),
            "torch graphed": ("torch", True)}


# ------------------------------------------------------------------------------ sampling, eval


def bench_sampling(H, device, clock: Clock, quick, repeats, cells=CELLS) -> list[dict]:
    """Per cell: chars/s of 1 sequence (1 thread), of 16 (the best thread count), and the
    bound the 1-sequence step's recurrent product sets."""
    from charrnn.corpus.data import Vocab
    from charrnn.generation.sample import generate

    vocab = Vocab(string.ascii_letters + " \n!$&',-.3:;?")  # tinyshakespeare's 65 characters
    rows = []
    threads0 = torch.get_num_threads()
    length1, length16 = (200, 100) if quick else (4000, 1000)
    thread_choices = [1] if device.type == "cuda" else sorted({1, threads0, 2} & set(range(1, threads0 + 1)))
    for cell in cells:
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=VOCAB, cell=cell, hidden=H)).to(device).eval()

        def run(samples, length):
            return lambda: sum(1 for _ in generate(model, vocab, "The ", length, samples=samples, seed=0))

        row = {"cell": cell}
        try:
            torch.set_num_threads(1)
            ts = paired_rounds(clock, {"one": run(1, length1), "bound": product_per_char(cell, H, device, length1)},
                               1, repeats)
            row["one"] = length1 / med(ts["one"]), length1 / min(ts["one"])
            row["bound"] = length1 / med(ts["bound"])
            best = None
            for n in thread_choices:
                torch.set_num_threads(n)
                ts = paired_rounds(clock, {n: run(16, length16)}, 1, repeats)[n]
                rate = (16 * length16 / med(ts), 16 * length16 / min(ts), n)
                if best is None or rate[0] > best[0]:
                    best = rate
            row["sixteen"] = best
        finally:
            torch.set_num_threads(threads0)
        rows.append(row)
    return rows


def product_per_char(cell: str, H: int, device, chars: int):
    """A closure doing what one sequence's sampling step cannot do without, `chars` times: the
    recurrent (1 x H) @ (H x G) product with the step's addition, through charrnn's backend as
    the sampler calls it (for one row, BLAS's matrix-vector product). W_hh stays in whichever
    cache holds it, so chars / time is an upper bound on the sampling rate."""
    G = GATES[cell] * H
    W_hh, h = torch.randn(H, G, device=device), torch.randn(1, H, device=device)
    add = torch.randn(G, device=device) if cell == "gru" else torch.randn(1, G, device=device)
    product = charrnn_internals().Matmul(W_hh, 1, h)
    return lambda: [product(h, add=add) for _ in range(chars)]


def read_val_ids(path: Path):
    from charrnn.corpus.data import Vocab

    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, val = text[:cut], text[cut:]
    vocab = Vocab.from_text(train)
    return vocab.encode(val), len(vocab)


def bench_eval(H, B, T, ids, vocab_size, device, clock, repeats, peak, cells=CELLS) -> list[dict]:
    from charrnn.scoring.evaluation import evaluate

    models = {}
    for cell in cells:
        torch.manual_seed(0)
        models[cell] = build_model(ModelConfig(vocab_size=vocab_size, cell=cell, hidden=H)).to(device)
    ids = ids.to(device)
    fns = {cell: (lambda m=m: evaluate(m, ids, batch_size=B, seq_len=T)) for cell, m in models.items()}
    times = paired_rounds(clock, fns, 1, repeats)
    n = len(ids) - 1
    rows = []
    for cell in cells:
        G = GATES[cell] * H
        flop = 2 * n * (H * G + H * vocab_size)
        t = med(times[cell])
        rows.append({"cell": cell, "chars": n / t, "best": n / min(times[cell]), "gflops": flop / t / 1e9,
                     "peak": peak})
    return rows
