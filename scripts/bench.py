"""charrnn's performance in one run: training, sampling and evaluation speed, achieved
GFLOP/s against the measured matmul peak, where a training step's time goes, and the memory
of a training step, printed as Markdown tables (--write puts them into docs/performance.md).

    python scripts/bench.py                      # this machine's CPU, the default sizes
    python scripts/bench.py --write docs/performance.md   # the same, written into the page
    python scripts/bench.py --device cuda        # the same on a GPU
    python scripts/bench.py --quick --sizes 32,4,8   # a smoke run at tiny sizes (seconds)

What is measured, and how:

* Instruction sets: a section of tables for the CPU's own (native) instruction set and,
  where the CPU has AVX-512, a second for AVX2: the bench runs itself again in a process
  whose environment caps oneDNN, MKL and PyTorch's own kernels at AVX2 before torch is
  imported (ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2),
  so one run shows both the machines with AVX-512 and the many without. The AVX2 section
  says whether the cap took effect: torch's CPU capability, and each matmul library's best
  GFLOP/s against the native section's. --isa chooses the sections.
* Matmul peak, measured first in each section: fp32 GEMMs of the workload's shapes,
  (B x H) @ (H x 4H) (the LSTM's per-step recurrent product, the bulk of the work) and
  (T*B x H) @ (H x 4H) (a whole sequence at once: the weight gradients, the input side),
  through torch.mm and (CPU) oneDNN, the backend charrnn's scans route to. "Peak" for a
  hidden size is the best of all of them.
* Training: chars/s of a whole step (forward, cross-entropy, backward, clip by global norm
  with charrnn.training.train_step.clip_gradients through charrnn.training.train_step.TrainStep, SGD step; the hidden
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
* Where charrnn's step goes: in the same rounds, the step's matmuls alone, through charrnn's
  backend with its choices (oneDNN or BLAS, weights packed per scan, additions fused into
  the product): T products (B x H) @ (H x G) forward and T (B x G) @ (G x H) backward, the
  weight gradient (T*B x H)^T @ (T*B x G), the head's (T*B x H) @ (H x 65) and its two
  gradients. The step's median time minus theirs is what is not matmul: the elementwise
  gate passes, allocation, Python (on CUDA the step is graphed, the matmuls eager).
* FLOPs (matmul only), per training step with N = batch * seq characters, G = gates * H
  (gates: RNN 1, GRU 3, LSTM 4), V = vocabulary (65):
      forward = 2 N (H G  +  I G  +  H V)    recurrent + input projection + head
      training = 3 x forward                 (backward = 2 x forward)
  where I G counts only where the input projection is a matmul: I = V for the PyTorch
  modules, 0 for charrnn's first layer (a row gather). Eval counts the forward only.
* Sampling: chars/s through charrnn.generation.sample.generate at hidden 512 (a random model of 65
  characters): 1 sequence with torch.set_num_threads(1) as the CLI does, and 16 sequences
  with 1 and with 2 threads (the better is reported, and which). Beside the 1-sequence
  figure, its bound: the chars/s if a step were only its recurrent (1 x H) @ (H x G)
  matrix-vector product through charrnn's backend, W_hh read from whichever cache holds
  it, timed in the same rounds; and the sampling rate as a share of that bound.
* Eval: chars/s of charrnn.scoring.evaluation.evaluate (carried state) over the validation split of
  tinyshakespeare (the last 10% of ../shared/data/tinyshakespeare.txt, or --data), hidden
  512, GFLOP/s and fraction of the peak.
* Memory (CPU): the growth of the resident set during the first two training steps, each
  implementation in a fresh process (a fork of a helper process that has imported torch and
  charrnn and computed nothing): the high-water mark (VmHWM, what getrusage's ru_maxrss
  reports; reset before the step where Linux allows) minus the RSS before the step. CUDA:
  max_memory_allocated minus the memory allocated before the step.

Timings are medians over --repeats rounds after --warmup rounds; --quick uses few of both.
With --write PAGE each section's tables replace what stands between the page's
`<!-- bench:KEY -->` and `<!-- /bench:KEY -->` (KEY: native, avx2, cuda or cuda-tf32).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench_lib import AVX2_CAP  # noqa: E402
from bench_lib.internals import charrnn_internals  # noqa: E402
from bench_lib.memory import memory_probe_main  # noqa: E402
from bench_lib.pages import markers, missing_markers, write_sections  # noqa: E402
from bench_lib.report import Setup, cap_check, eval_part, peak_part, sampling_part, training_part  # noqa: E402
from bench_lib.timing import cores, cpu_capability, cpu_model, has_avx512, load  # noqa: E402
from bench_lib.workloads import CELLS  # noqa: E402

DEFAULT_SIZES = ((256, 32, 64), (512, 64, 128), (1024, 64, 128))
CUDA_SIZES = DEFAULT_SIZES + ((1024, 256, 128),)
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
ISAS = ("native", "avx2")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.memory_probe:
        return memory_probe_main(args.memory_probe)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    if args.capped:  # the AVX2 section, run by the parent in a capped environment
        run_section(args, "avx2", json.loads(args.native) if args.native else None)
        return
    keys = section_keys(args)
    if args.write and not args.write.is_file():
        sys.exit(f"--write {args.write}: no such file")
    if args.write and missing_markers(args.write, keys):
        wanted = "; ".join(" ... ".join(markers(k)) for k in missing_markers(args.write, keys))
        sys.exit(f"--write {args.write}: the page needs {wanted}")
    print("## charrnn benchmark\n")
    texts, native = {}, None
    for key in keys:
        with captured() as out:
            if key == "avx2":
                run_capped(argv, native)
            else:
                native = run_section(args, key, None)
        texts[key] = out.getvalue()
    if args.write:
        write_sections(args.write, texts)
        print(f"(wrote the {', '.join(keys)} section{'s' if len(keys) > 1 else ''} into {args.write})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--isa", metavar="SECTIONS", help="CPU sections, comma-separated: native (this CPU's own "
                    "instruction set), avx2 (capped at AVX2 in a subprocess); default native,avx2 where the CPU "
                    "has AVX-512, else native")
    ap.add_argument("--write", type=Path, metavar="PAGE", help="put each section's tables into this page, between "
                    "its markers <!-- bench:KEY --> and <!-- /bench:KEY --> (KEY: native, avx2, cuda, cuda-tf32)")
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
    ap.add_argument("--capped", action="store_true", help=argparse.SUPPRESS)  # the AVX2 section's own process
    ap.add_argument("--native", help=argparse.SUPPRESS)  # the native section's peaks, JSON, for the AVX2 one
    args = ap.parse_args(argv)
    if args.isa and args.device == "cuda":
        ap.error("--isa chooses CPU sections; --device cuda has one")
    if args.isa and not set(args.isa.split(",")) <= set(ISAS):
        ap.error(f"--isa takes a comma-separated list of {', '.join(ISAS)}, got {args.isa!r}")
    return args


def section_keys(args) -> list[str]:
    """The sections this run prints, in order (each a marker key for --write)."""
    if args.device == "cuda":
        return ["cuda-tf32" if args.tf32 else "cuda"]
    if args.isa:
        return [isa for isa in ISAS if isa in args.isa.split(",")]
    return list(ISAS) if has_avx512() else ["native"]


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def captured():
    """What is printed inside, printed and kept: yields the StringIO that keeps it."""
    kept = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, kept)):
        yield kept


def run_capped(argv: list[str], native: dict | None) -> None:
    """The AVX2 section: this script again, in a process whose environment sets the caps before
    torch is imported; its output is printed as it comes."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--capped"]
    if native:
        cmd += ["--native", json.dumps(native)]
    with subprocess.Popen(cmd, env=dict(os.environ, **AVX2_CAP), stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
    if proc.returncode:
        sys.exit(f"the AVX2 section's process failed (exit code {proc.returncode})")


def run_section(args, key: str, native: dict | None) -> dict:
    """Measure and print one section's tables; return its best matmul GFLOP/s per backend and
    torch's CPU capability (what an AVX2 section compares itself with)."""
    started = time.perf_counter()
    setup = configure(args)
    print(f"### {section_title(key, args.tf32)}\n")
    print_machine(setup)
    peak, best = peak_part(setup)
    if key == "avx2":
        print(f"- {cap_check(best, native)}\n")
    skip = set(filter(None, args.skip.split(",")))
    if "train" not in skip:
        training_part(setup, peak, memory="memory" not in skip)
    hs = args.sample_hidden or (512 if not args.quick else max(setup.hiddens))  # tiny sizes in --quick
    if "sample" not in skip:
        sampling_part(setup, hs)
    if "eval" not in skip:
        eval_part(setup, hs, args.data, peak)
    print(f"{load()} at the end; {time.perf_counter() - started:.0f} s in all\n", flush=True)
    return {"best": best, "capability": cpu_capability()}


def section_title(key: str, tf32: bool) -> str:
    if key == "native":
        return f"CPU, its own instruction set (torch's CPU capability: {cpu_capability()})"
    if key == "avx2":
        return "CPU capped at AVX2 (" + " ".join(f"{k}={v}" for k, v in AVX2_CAP.items()) + ")"
    return "CUDA, TF32 matmuls" if tf32 else "CUDA, float32"


def configure(args) -> Setup:
    """Set torch up as training does and gather what every part measures with."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        charrnn_internals().tune_allocator()  # as charrnn train does; it serves the built-in modules alike
    else:  # the same precision for both (torch's default lets cuDNN, not torch.mm, use TF32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    sizes = parse_sizes(args.sizes) if args.sizes else list(CUDA_SIZES if device.type == "cuda" else DEFAULT_SIZES)
    return Setup(device=device, sizes=sizes, cells=[c for c in CELLS if c in args.cells.split(",")],
                 repeats=args.repeats or (2 if args.quick else 7), warmup=args.warmup or (1 if args.quick else 2),
                 quick=args.quick, precision="TF32 matmuls" if device.type == "cuda" and args.tf32 else "float32")


def print_machine(setup: Setup) -> None:
    device, internals = setup.device, charrnn_internals()
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host CPU {cpu_model()}"
        fused = internals.fused_cuda_cells(torch.zeros(1, device=device))
        backend = f"fused CUDA cells in charrnn: {'yes' if fused else 'no'}; cuDNN {torch.backends.cudnn.version()}"
    else:
        where = f"{cpu_model()}, {cores()} cores"
        backend = f"oneDNN matmul in charrnn: {'yes' if internals.onednn_usable() else 'no'}"
    print(f"- machine: {where}; {platform.python_implementation()} {platform.python_version()}")
    print(f"- torch {torch.__version__}, {torch.get_num_threads()} threads, {setup.precision}; {backend}")
    print(f"- {load()} at the start; medians of {setup.repeats} paired rounds after {setup.warmup} warm-up\n")


def parse_sizes(values) -> list[tuple[int, int, int]]:
    sizes = []
    for value in values:
        for part in value.replace(";", " ").split():
            h, b, t = (int(x) for x in part.split(","))
            sizes.append((h, b, t))
    return sizes


if __name__ == "__main__":
    main()
