"""charrnn's performance in one run: training, sampling and evaluation speed, achieved
GFLOP/s against the measured matmul peak, and the memory of a training step, printed as
Markdown tables (ready for docs/performance.md).

    python scripts/bench.py                      # this machine's CPU, the default sizes
    python scripts/bench.py --device cuda        # the same on a GPU
    python scripts/bench.py --quick --sizes 32,4,8   # a smoke run at tiny sizes (seconds)

What is measured, and how:

* Matmul peak, measured first: fp32 GEMMs of the workload's shapes, (B x H) @ (H x 4H) (the
  LSTM's per-step recurrent product, the bulk of the work) and (T*B x H) @ (H x 4H) (a whole
  sequence at once: the weight gradients, the input side), through torch.mm and (CPU) oneDNN,
  the backend charrnn.bptt routes to. "Peak" for a hidden size is the best of all of them.
* Training: chars/s of a whole step (forward, cross-entropy, backward, clip by global norm
  with charrnn.train_step.clip_gradients through charrnn.train_step.TrainStep, SGD step; the hidden
  state is carried, detached, from step to step as in training) for charrnn's model
  (charrnn.model.build_model, its real forward) and for the PyTorch modules, each at
  (hidden, batch, seq) from --sizes. On CUDA, charrnn's step is replayed as a CUDA graph
  (TrainStep's default there, as in `charrnn train`), the built-in modules run as usually
  called (cuDNN, eager), and a second table adds charrnn eager and cuDNN graphed; float32
  means float32 for both (cuDNN's TF32 default is switched off), --tf32 allows it for both. The
  PyTorch model is what one would write with the built-in modules for the same function:
  F.one_hot(X) (the vocabulary of 65 as input size, the narrowest input the built-in
  modules can take; their input projection is then one (T*B x 65) @ (65 x G) matmul inside
  the module) -> torch.nn.RNN / GRU / LSTM (one layer, tanh, seq-first) -> nn.Linear head.
  Rounds are PAIRED: each round times every implementation of a size back to back, so load
  from elsewhere hits all of them alike; ratios are the median over rounds of the per-round
  ratio t_torch / t_charrnn (> 1: charrnn is faster), chars/s the median (and best) round.
* FLOPs (matmul only), per training step with N = batch * seq characters, G = gates * H
  (gates: RNN 1, GRU 3, LSTM 4), V = vocabulary (65):
      forward = 2 N (H G  +  I G  +  H V)    recurrent + input projection + head
      training = 3 x forward                 (backward = 2 x forward)
  where I G counts only where the input projection is a matmul: I = V for the PyTorch
  modules, 0 for charrnn's first layer (a row gather). Eval counts the forward only.
* Sampling: chars/s through charrnn.sample.generate at hidden 512 (a random model of 65
  characters): 1 sequence with torch.set_num_threads(1) as the CLI does, and 16 sequences
  with 1 and with 2 threads (the better is reported, and which).
* Eval: chars/s of charrnn.evaluation.evaluate (carried state) over the validation split of
  tinyshakespeare (the last 10% of ../shared/data/tinyshakespeare.txt, or --data), hidden
  512, GFLOP/s and fraction of the peak.
* Memory (CPU): the growth of the resident set during the first two training steps, each
  implementation in a fresh process (a fork of a helper process that has imported torch and
  charrnn and computed nothing): the high-water mark (VmHWM, what getrusage's ru_maxrss reports; reset before the
  step where Linux allows) minus the RSS before the step. CUDA: max_memory_allocated minus
  the memory allocated before the step.

Timings are medians over --repeats rounds after --warmup rounds; --quick uses few of both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from charrnn import bptt  # noqa: E402
from charrnn.model import ModelConfig, build_model  # noqa: E402
from charrnn.train_step import TrainStep  # noqa: E402

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
VOCAB = 65  # tinyshakespeare's
DEFAULT_SIZES = ((256, 32, 64), (512, 64, 128), (1024, 64, 128))
CUDA_SIZES = DEFAULT_SIZES + ((1024, 256, 128),)
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


# ------------------------------------------------------------------------------ timing


class Clock:
    """Wall time of a callable on the chosen device (CUDA: events, synchronised)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def paired_rounds(clock: Clock, fns: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Times of every fn per round; within a round the fns run back to back."""
    for _ in range(warmup):
        for fn in fns.values():
            clock(fn)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(clock(fn))
    return times


def med(xs):
    return statistics.median(xs)


# ------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


# ------------------------------------------------------------------------------ matmul peak


def onednn_mm():
    """oneDNN's fp32 GEMM as charrnn.bptt calls it, or None where it is not used."""
    if not bptt._onednn_ok():
        return None
    lp = torch.ops.mkldnn._linear_pointwise
    return lambda a, w_t: lp(a, w_t, None, "none", [], "")


def gemm_peak(shapes, device, clock, repeats) -> list[dict]:
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


# ------------------------------------------------------------------------------ models


class TorchLM(nn.Module):
    """The same language model with PyTorch's built-in recurrent modules (see the top)."""

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
    """A closure running one training step as charrnn.train does, through TrainStep
    (see the top); with graphs (CUDA), replayed as a CUDA graph after TrainStep's warm-up."""
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


def implementations(device) -> dict[str, tuple[str, bool]]:
    """Name -> (model, replayed as a CUDA graph?): what each column of the training table times.
    On CUDA charrnn trains with graphs by default; the built-in modules are timed as people
    run them (eager) and graphed too, and charrnn eager as well."""
    if device.type != "cuda":
        return {"charrnn": ("charrnn", False), "torch": ("torch", False)}
    return {"charrnn": ("charrnn", True), "torch": ("torch", False), "charrnn eager": ("charrnn", False),
            "torch graphed": ("torch", True)}


# ------------------------------------------------------------------------------ memory


def memory_probe_main(specs: list[str]) -> None:
    """Helper process: for each spec (impl,cell,H,B,T) fork a fresh child that runs two
    training steps and reports the growth of its resident set; print one JSON line."""
    # an optimizer's first step imports a lot lazily (~0.7 s): do that once here, where it
    # computes nothing (no grad), so that no child pays for it and no thread pool exists yet
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1).step()
    results = {}
    for spec in specs:
        impl, cell, H, B, T = spec.split(",")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report, exit without cleanup
            os.close(read)
            try:
                value = _rss_growth(impl, cell, int(H), int(B), int(T))
            except Exception:  # noqa: BLE001 - reported as missing
                value = -1
            os.write(write, str(value).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            text = f.read()
        os.waitpid(pid, 0)
        results[spec] = int(text) if text.strip().lstrip("-").isdigit() else -1
    print(json.dumps(results))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _rss_growth(impl, cell, H, B, T) -> int:
    """Bytes the resident set grows by during the first two training steps."""
    import resource

    bptt.tune_allocator()  # as training does
    step = make_train_step(impl, cell, H, B, T, torch.device("cpu"))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    except OSError:
        pass
    try:
        before = _status_kb("VmRSS")
    except (OSError, KeyError):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    try:
        peak = _status_kb("VmHWM")
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak - before) * 1024


def measure_memory(specs, device, threads) -> dict[str, int]:
    if device.type == "cuda":
        out = {}
        for spec in specs:
            impl, cell, H, B, T = spec.split(",")
            step = make_train_step(impl, cell, int(H), int(B), int(T), device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            step()
            torch.cuda.synchronize()
            out[spec] = torch.cuda.max_memory_allocated() - before
            del step
            torch.cuda.empty_cache()
        return out
    if not hasattr(os, "fork") or not Path("/proc/self/status").exists():
        return {}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--memory-probe", *specs], capture_output=True, text=True,
                          env=env, timeout=600)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"(memory probe failed: {proc.stderr.strip()[-300:]})")
        return {}


# ------------------------------------------------------------------------------ sampling, eval


def bench_sampling(H, device, clock, quick, repeats, cells=CELLS) -> list[dict]:
    from charrnn.data import Vocab
    from charrnn.sample import generate

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
            ts = paired_rounds(clock, {"one": run(1, length1)}, 1, repeats)["one"]
            row["one"] = length1 / med(ts), length1 / min(ts)
            fns = {}
            for n in thread_choices:
                fns[n] = run(16, length16)
            best = None
            for n in thread_choices:
                torch.set_num_threads(n)
                ts = paired_rounds(clock, {n: fns[n]}, 1, repeats)[n]
                rate = (16 * length16 / med(ts), 16 * length16 / min(ts), n)
                if best is None or rate[0] > best[0]:
                    best = rate
            row["sixteen"] = best
        finally:
            torch.set_num_threads(threads0)
        rows.append(row)
    return rows


def read_val_ids(path: Path):
    from charrnn.data import Vocab

    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, val = text[:cut], text[cut:]
    vocab = Vocab.from_text(train)
    return vocab.encode(val), len(vocab)


def bench_eval(H, B, T, ids, vocab_size, device, clock, repeats, peak, cells=CELLS) -> list[dict]:
    from charrnn.evaluation import evaluate

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


# ------------------------------------------------------------------------------ main


def parse_sizes(values) -> list[tuple[int, int, int]]:
    sizes = []
    for value in values:
        for part in value.replace(";", " ").split():
            h, b, t = (int(x) for x in part.split(","))
            sizes.append((h, b, t))
    return sizes


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="a smoke run: few repeats, short sampling")
    ap.add_argument("--sizes", nargs="+", help="hidden,batch,seq triples (default 256,32,64 512,64,128 1024,64,128; "
                    "CUDA: and 1024,256,128)")
    ap.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls for charrnn and cuDNN alike (default: "
                    "both full float32; cuDNN's own default would be TF32)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=0, help="timed rounds (default 7; --quick 2)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed rounds first (default 2; --quick 1)")
    ap.add_argument("--sample-hidden", type=int, default=0, help="hidden size for sampling and eval (default 512)")
    ap.add_argument("--data", type=Path, default=DATA, help="tinyshakespeare.txt for the eval benchmark")
    ap.add_argument("--cells", default="rnn,gru,lstm", help="comma-separated cells to run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: train, memory, sample, eval")
    ap.add_argument("--memory-probe", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        return memory_probe_main(args.memory_probe)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        bptt.tune_allocator()  # as charrnn train does; it serves the built-in modules alike
    else:  # the same precision for both (torch's default lets cuDNN, not torch.mm, use TF32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    precision = "TF32 matmuls" if device.type == "cuda" and args.tf32 else "float32"
    sizes = parse_sizes(args.sizes) if args.sizes else list(CUDA_SIZES if device.type == "cuda" else DEFAULT_SIZES)
    repeats = args.repeats or (2 if args.quick else 7)
    warmup = args.warmup or (1 if args.quick else 2)
    skip = set(filter(None, args.skip.split(",")))
    cells = [c for c in CELLS if c in args.cells.split(",")]
    clock = Clock(device)
    started = time.perf_counter()

    print("## charrnn benchmark\n")
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host CPU {cpu_model()}"
    else:
        where = f"{cpu_model()}, {cores()} cores"
    print(f"- machine: {where}; {platform.python_implementation()} {platform.python_version()}")
    if device.type == "cuda":
        fused = bptt._use_fused(torch.zeros(1, device=device))
        backend = f"fused CUDA cells in charrnn: {'yes' if fused else 'no'}; cuDNN {torch.backends.cudnn.version()}"
    else:
        backend = f"oneDNN matmul in charrnn: {'yes' if bptt._onednn_ok() else 'no'}"
    print(f"- torch {torch.__version__}, {torch.get_num_threads()} threads, {precision}; {backend}")
    print(f"- {load()} at the start; medians of {repeats} paired rounds after {warmup} warm-up\n")

    # --- the matmul peak, first
    hiddens = sorted({h for h, _, _ in sizes})
    shapes = []
    for h, b, t in sizes:
        shapes += [(b, h, 4 * h), (b * t, h, 4 * h)]
    shapes = list(dict.fromkeys(shapes))
    peak_rows = gemm_peak(shapes, device, clock, max(3, repeats))
    peak = {h: max(max(v for k, v in r.items() if k != "shape") for r in peak_rows if r["shape"][1] == h)
            for h in hiddens}
    backends = [k for k in peak_rows[0] if k != "shape"]
    print(f"### {precision} matmul peak (GFLOP/s, best round)\n")
    print("| M x K x N | " + " | ".join(backends) + " |")
    print("|---|" + "---:|" * len(backends))
    for r in peak_rows:
        print(f"| {' x '.join(map(str, r['shape']))} | " + " | ".join(f"{r[k]:.0f}" for k in backends) + " |")
    print("\npeak (best of the above per hidden size): " + ", ".join(f"H={h}: {peak[h]:.0f} GFLOP/s" for h in hiddens)
          + "\n", flush=True)

    # --- training
    if "train" not in skip:
        mem = {}
        if "memory" not in skip:
            specs = [f"{impl},{cell},{h},{b},{t}" for h, b, t in sizes for cell in cells for impl in ("charrnn", "torch")]
            mem = measure_memory(specs, device, torch.get_num_threads())
        print("### Training (forward, cross-entropy, backward, clip, SGD step)\n")
        print("| hidden | batch | seq | cell | charrnn chars/s (best) | torch.nn chars/s (best) | charrnn / torch.nn "
              "(bests) | charrnn GFLOP/s | % of peak | torch.nn GFLOP/s | % of peak | step memory charrnn / torch.nn |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        impls = implementations(device)
        others = []  # CUDA: the rows of the eager-and-graphed table
        for h, b, t in sizes:
            for cell in cells:
                fns = {name: make_train_step(impl, cell, h, b, t, device, graphs=graphs)
                       for name, (impl, graphs) in impls.items()}
                # TrainStep's eager warm-up before its capture does not count
                times = paired_rounds(clock, fns, max(warmup, TrainStep.WARMUP + 1), repeats)
                if len(impls) > 2:
                    others.append((h, b, t, cell, {name: b * t / med(ts) for name, ts in times.items()}))
                ratio = med([tt / tc for tc, tt in zip(times["charrnn"], times["torch"])])
                best_ratio = min(times["torch"]) / min(times["charrnn"])
                cols = []
                for impl in ("charrnn", "torch"):
                    tm = med(times[impl])
                    cols.append((b * t / tm, b * t / min(times[impl]), train_flops(impl, cell, h, b, t) / tm / 1e9))
                (rc, bc, gc), (rt, bt, gt) = cols
                mc, mt = (mem.get(f"{impl},{cell},{h},{b},{t}", -1) for impl in ("charrnn", "torch"))
                memory = f"{mc / 2**20:.0f} / {mt / 2**20:.0f} MB" if mc >= 0 and mt >= 0 else "n/a"
                print(f"| {h} | {b} | {t} | {cell.upper()} | {fmt_rate(rc)} ({fmt_rate(bc)}) | {fmt_rate(rt)} "
                      f"({fmt_rate(bt)}) | {ratio:.2f}x ({best_ratio:.2f}x) | {gc:.0f} | {100 * gc / peak[h]:.0f}% | {gt:.0f} | "
                      f"{100 * gt / peak[h]:.0f}% | {memory} |", flush=True)
                del fns
        print()
        if others:
            print("### Training on CUDA, eager and replayed as a CUDA graph (chars/s, medians)\n")
            print("| hidden | batch | seq | cell | charrnn graphed (default) | charrnn eager | torch.nn eager | "
                  "torch.nn graphed | charrnn graphed / torch.nn graphed |")
            print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
            for h, b, t, cell, r in others:
                print(f"| {h} | {b} | {t} | {cell.upper()} | {fmt_rate(r['charrnn'])} | {fmt_rate(r['charrnn eager'])} | "
                      f"{fmt_rate(r['torch'])} | {fmt_rate(r['torch graphed'])} | "
                      f"{r['charrnn'] / r['torch graphed']:.2f}x |")
            print()

    # --- sampling and evaluation at hidden 512 (or the largest size asked for in --quick)
    hs = args.sample_hidden or (512 if not args.quick else max(hiddens))
    if "sample" not in skip:
        print(f"### Sampling (charrnn.sample.generate, hidden {hs})\n")
        print("| cell | 1 sequence, 1 thread: chars/s (best) | 16 sequences: chars/s (best), threads |")
        print("|---|---:|---:|")
        for r in bench_sampling(hs, device, clock, args.quick, max(3, repeats // 2) if not args.quick else 2,
                                cells):
            one, six = r["one"], r["sixteen"]
            print(f"| {r['cell'].upper()} | {fmt_rate(one[0])} ({fmt_rate(one[1])}) | {fmt_rate(six[0])} "
                  f"({fmt_rate(six[1])}), {six[2]} thread{'s' if six[2] > 1 else ''} |", flush=True)
        print()

    if "eval" not in skip:
        if not args.data.is_file():
            print(f"### Evaluation: skipped, {args.data} is absent (give --data PATH to tinyshakespeare.txt)\n")
        else:
            ids, vsize = read_val_ids(args.data)
            eb, et = next(((b, t) for h, b, t in sizes if h == hs), (64, 128))
            if args.quick:
                ids = ids[: 20 * eb * et + 1]
            hp = peak.get(hs) or max(peak.values())
            print(f"### Evaluation (charrnn.evaluation.evaluate, hidden {hs}, {eb} streams of {et}; "
                  f"{len(ids) - 1:,} characters of tinyshakespeare's validation split)\n")
            print("| cell | chars/s (best) | GFLOP/s | % of peak |")
            print("|---|---:|---:|---:|")
            for r in bench_eval(hs, eb, et, ids, vsize, device, clock, 2 if args.quick else 3, hp, cells):
                print(f"| {r['cell'].upper()} | {fmt_rate(r['chars'])} ({fmt_rate(r['best'])}) | {r['gflops']:.0f} | "
                      f"{100 * r['gflops'] / r['peak']:.0f}% |", flush=True)
            print()
    print(f"{load()} at the end; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
