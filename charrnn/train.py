"""The training loop, written by hand: forward, cross-entropy, backward, clipping by global
norm, optimizer step; evaluation on the validation split; checkpoints in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from charrnn import budget, cpu_bfloat16, cpu_matmul, cuda_graphs, streams
from charrnn.allocator import tune_allocator
from charrnn.checkpoint import LAST_FIRST, load_checkpoint, remove_stale_temporaries, resolve_checkpoint, save_checkpoint
from charrnn.config import DEVICES, TrainConfig, parse_duration
from charrnn.batches import make_batches
from charrnn.data import load_corpus, reload_corpus, save_encoded
from charrnn.distributed import (agree_to_stop, all_reduce, data_parallel, from_rank_zero, gather_rows,
                                 process_device, rank, world_size)
from charrnn.errors import CharrnnError
from charrnn.evaluation import evaluate
from charrnn.model import build_model, copy_state, detach_state, map_state, num_parameters

# Training stops as diverged when the mean training loss since the last evaluation is this many
# times the untrained model's: ln(vocabulary size), or the first step's loss if a custom
# init starts higher. Healthy training never climbs that far above where it started.
DIVERGENCE_FACTOR = 3.0


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise CharrnnError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharrnnError("--device cuda was asked for, but CUDA is not available here (try --device cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class cuda_precision:
    """TF32 for CUDA float32 matmuls while training with --tf32 (restored afterwards: the
    setting is process-wide). Nothing on a CPU."""

    def __init__(self, device: torch.device, tf32: bool):
        self.active = device.type == "cuda" and tf32

    def __enter__(self):
        if self.active:
            self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return self

    def __exit__(self, *exc):
        if self.active:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def clip_gradients(max_norm: float, params) -> torch.Tensor:
    """Clip by global norm: when the L2 norm of all gradients together exceeds max_norm,
    scale every gradient by max_norm / norm. Returns the norm before clipping. No host
    synchronisation: the scale is computed on the device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    torch._foreach_mul_(grads, scale)
    return norm


class TrainStep:
    """Forward, loss, backward and clipping of one batch; the caller then steps the optimizer
    (outside, so that its learning rate can change from step to step).

    `step(X, Y, state, divisor)` returns the loss (summed cross-entropy / divisor) and the
    final state, detached. With `graphs` (CUDA, one process) the step is captured once as a
    CUDA graph and replayed from then on: a step issues ~3 kernels per time step and layer
    each way, each launch costing the host more time than the GPU needs to run it, and a
    replay launches all of them at once. The first WARMUP steps run eagerly on a side
    stream (as CUDA graph capture requires); then the batch, the state and the divisor go
    into the graph's own tensors, which the replay reads, and the loss, the state and every
    gradient come out in its own tensors, which the next replay overwrites (the gradients
    are never set to None again). A batch of another shape or divisor (the short last batch
    of --sampling random) runs eagerly, adding into those same gradients after zeroing
    them; a capture that fails falls back to eager steps, and `note` says why."""

    WARMUP = 3

    def __init__(self, model, params, clip: float, amp: bool = False, graphs: bool = False):
        self.model, self.params, self.clip, self.amp, self.graphs = model, params, clip, amp, graphs
        self.steps, self.graph, self.note = 0, None, None

    def _compute(self, X, Y, state, divisor):
        # autocast's cache of casted weights would outlive a graph capture: off (graphs need that)
        with torch.autocast(X.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits, state = self.model(X, state)
            loss = F.cross_entropy(logits.flatten(0, 1), Y.flatten(), reduction="sum") / divisor
        loss.backward()
        clip_gradients(self.clip, self.params)
        return loss.detach(), detach_state(state)

    def __call__(self, X, Y, state, divisor: float):
        self.steps += 1
        if not self.graphs:
            for p in self.params:
                p.grad = None
            return self._compute(X, Y, state, divisor)
        key = (X.shape, Y.shape, divisor)
        if self.graph is None and self.steps > self.WARMUP:
            try:
                self._capture(X, Y, state, divisor)
            except Exception as e:  # noqa: BLE001 - an op that cannot be captured: go on eagerly
                self.note = f"CUDA graph capture failed, training goes on without ({type(e).__name__}: {e})"
                self.graphs, self.graph = False, None
                torch.cuda.synchronize()
                return self(X, Y, state, divisor)
        if self.graph is not None and key == self.key:
            self.static_X.copy_(X)
            self.static_Y.copy_(Y)
            if state is None:
                map_state(torch.Tensor.zero_, self.static_state)
            else:
                copy_state(self.static_state, state)
            self.graph.replay()
            return self.static_loss, self.static_new_state
        if self.graph is not None:  # eagerly into the graph's gradients
            for p in self.params:
                p.grad.zero_()
            return self._compute(X, Y, state, divisor)
        for p in self.params:
            p.grad = None
        with self._side_stream():
            return self._compute(X, Y, state, divisor)

    def _capture(self, X, Y, state, divisor):
        self.static_X, self.static_Y = X.clone(), Y.clone()
        self.static_state = map_state(torch.clone, state) if state is not None else self.model.zero_state(X.shape[0])
        for p in self.params:
            p.grad = None
        self.graph, (self.static_loss, self.static_new_state) = self._capture_graph(
            lambda: self._compute(self.static_X, self.static_Y, self.static_state, divisor))
        self.key = (X.shape, Y.shape, divisor)

    _side_stream = staticmethod(cuda_graphs.side_stream)  # (hooks the tests replace)
    _capture_graph = staticmethod(cuda_graphs.capture)


class Reporter:
    """What train() tells the outside world; the CLI draws it, the library stays quiet."""

    def start(self, info: dict) -> None: ...

    def note(self, text: str) -> None:
        """Something the user should know that is not an error (a byte-order mark removed)."""

    def progress(self, info: dict) -> None: ...

    def evaluation(self, record: dict) -> None: ...

    def finish(self, summary: dict) -> None: ...


def lr_at(config: TrainConfig, progress: float, step: int, plateau_scale: float = 1.0) -> float:
    """The learning rate at a point of the run: linear warm-up, then constant, cosine decay
    over the run's progress (0..1 of its step or time budget), or plateau: lr times
    `plateau_scale`, which `after_evaluation` lowers when validation stops improving."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        low = config.lr * config.min_lr_fraction
        return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if config.lr_schedule == "plateau":
        return config.lr * plateau_scale
    return config.lr


def step_limits(config: TrainConfig, batches_per_epoch: int) -> dict[str, int]:
    """The step counts that --max-steps and --epochs allow, by option (with no limit at all,
    10 epochs); --max-time's planned steps join them in train()."""
    epochs = config.epochs or (0 if (config.max_steps or config.max_time) else 10)
    limits = {"--max-steps": config.max_steps} if config.max_steps else {}
    if epochs:
        limits["--epochs"] = max(1, round(epochs * batches_per_epoch))
    return limits


def nothing_left(run: Path, step: int, limits: dict[str, int], config: TrainConfig) -> CharrnnError:
    """A resumed run whose budget is spent: which limits stop it, and which to raise."""
    spent = [option for option, steps in limits.items() if steps <= step]
    given = {"--max-steps": config.max_steps, "--epochs": f"{config.epochs or 10:g}", "--max-time": config.max_time}
    said = " and ".join(f"{option} {given[option]} ({limits[option]} steps)" if option != "--max-steps"
                        else f"{option} {given[option]}" for option in spent)
    allow = "allows" if len(spent) == 1 else "allow"
    return CharrnnError(f"nothing left to train: {run} has done {step} steps, all that {said} {allow}; "
                        f"resume with a larger {' and '.join(spent)} to train it further")


def after_evaluation(config: TrainConfig, progress: dict, val_loss: float) -> None:
    """Count evaluations without a new best validation loss; every `plateau_patience` of
    them the plateau schedule multiplies its scale by `plateau_factor`. The counters live in
    `progress`, which every checkpoint holds, so a resumed run continues them exactly."""
    if val_loss < progress["best_val_loss"]:
        progress["best_val_loss"] = val_loss
        progress["evals_since_best"] = 0
    else:
        progress["evals_since_best"] += 1
        if config.lr_schedule == "plateau" and progress["evals_since_best"] % config.plateau_patience == 0:
            progress["lr_scale"] *= config.plateau_factor


def make_optimizer(config: TrainConfig, params):
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def new_run_dir(out: str) -> Path:
    """A fresh run directory: --out, or runs/<timestamp> (with -2, -3, ... when runs start
    in the same second). A directory that already holds a run is refused, not overwritten."""
    if out:
        run = Path(out)
        if (run / "last.pt").exists() or (run / "best.pt").exists():
            raise CharrnnError(f"{run} already holds a run: continue it with --resume {run}, or pick another --out")
        candidates = [run]
    else:
        stamp = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        candidates = [stamp] + [stamp.with_name(f"{stamp.name}-{i}") for i in range(2, 1000)]
    try:
        for run in candidates:
            try:
                run.mkdir(parents=True, exist_ok=bool(out))
                break
            except FileExistsError:
                continue
    except OSError as e:
        raise CharrnnError(f"cannot create the run directory {run}: {e.strerror or e}") from None
    check_writable(run)
    return run


def check_writable(run: Path) -> None:
    """Fail before training, not at the first checkpoint, when the run directory cannot be
    written (read-only, full, not ours)."""
    probe = run / ".write-test"
    try:
        probe.write_bytes(b"charrnn")
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise CharrnnError(f"cannot write to the run directory {run}: {e.strerror or e}") from None


def point_latest(run: Path) -> None:
    """<runs>/latest -> the newest run: a relative symlink, replaced atomically; anything
    called `latest` there that is not such a link is the user's and left alone."""
    run = run.resolve()
    latest = run.parent / "latest"
    if latest.exists() and not latest.is_symlink():
        return
    tmp = run.parent / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run.name)
        os.replace(tmp, latest)
    except OSError:
        tmp.unlink(missing_ok=True)


def write_config(config: TrainConfig, path: Path) -> None:
    """The run's settings as TOML, usable again as `--config`."""
    lines = []
    for key, value in asdict(config).items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, str):
            lines.append(f"{key} = {toml_string(value)}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(map(toml_string, value))}]")
    # written aside and renamed, so that a kill mid-write leaves the old file whole
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters (a --doc-sep of
    \\x03) escaped."""
    named = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return '"' + "".join(named.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in value) + '"'


class StopRequest:
    """Ctrl-C or SIGTERM during training asks the loop to stop after the current step and
    save; a second Ctrl-C abandons at once (saves are atomic, so no file is corrupted)."""

    def __init__(self):
        self.requested = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, reporter: Reporter | None = None, resume: str | Path | None = None) -> dict:
    """Train a model as `config` says; returns a summary dict (run directory, steps, losses,
    `interrupted` when Ctrl-C or SIGTERM stopped it, `stopped_early` when --patience did).

    With `resume` (a run directory or a checkpoint file), continue that run exactly where
    it stopped: weights, optimizer, step, position in the data, hidden state and random
    number generator; `config` is then that run's settings with any changes to how long
    it trains (its model and data settings must be the run's own).

    In a torch.distributed process group (charrnn.distributed), every process trains on
    its own `batch_size` rows of a global batch of batch_size x world_size, and only rank
    0 reports and writes files."""
    reporter = (reporter or Reporter()) if rank() == 0 else Reporter()
    n_processes = world_size()
    global_batch = config.batch_size * n_processes
    my_rows = slice(rank() * config.batch_size, (rank() + 1) * config.batch_size)  # this process's rows
    device = process_device(pick_device(config.device))
    if config.amp == "auto":  # settled once, so the run and its resumption compute alike
        config = replace(config, amp="bf16" if from_rank_zero(cpu_bfloat16.bfloat16_pays(device)) else "none")
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        tune_allocator()  # recycle the large per-sequence buffers instead of faulting them in anew
    # all processes draw the same initial weights; streams.split then gives each its own
    # dropout masks
    torch.manual_seed(config.seed)
    ckpt = None
    if resume:
        resume = resolve_checkpoint(resume, order=LAST_FIRST)
        run = resume.parent.resolve()  # runs/latest names the run itself
        ckpt = load_checkpoint(resume)
        cpu_matmul.adopt_gemm_choices(ckpt.get("gemm", []))  # compute as the run did before
        if rank() == 0:
            check_writable(run)
        corpus = reload_corpus(ckpt["corpus"], cache_dir=run)
    else:
        corpus = load_corpus(
            config.corpus, config.dataset, val_file=config.val_file, val_dir=config.val_dir,
            val_fraction=config.val_fraction, doc_sep=config.doc_sep, normalize_how=config.normalize,
            windows=(config.train_windows, config.val_windows, config.seq_len)
            if config.train_windows and config.val_windows else None,
            unknown=config.unknown, vocab_kind=config.vocab,
        )
    for note in corpus.notes:
        reporter.note(note)
    # the texts move to the device once: every batch is then a slice there, with no copy
    # from the host per step
    vocab, train_ids, val_ids = corpus.vocab, corpus.train_ids.to(device), corpus.val_ids.to(device)
    batches = make_batches(train_ids, config.sampling, global_batch, config.seq_len, config.seed, config.stream_offsets)
    if not batches.carries_state and len(val_ids) <= config.seq_len:
        raise CharrnnError(f"the validation text is shorter than one window of {config.seq_len + 1} characters")

    model_config = config.model_config(len(vocab))
    model = build_model(model_config).to(device)
    # how the validation loss is computed: recorded in every checkpoint, so that `charrnn
    # eval` computes it the same way; each process evaluates its share of the streams
    eval_layout = {"batch_size": global_batch, "seq_len": config.seq_len, "carry_state": batches.carries_state}

    def validation_sums() -> tuple[float, int]:
        return evaluate(model, val_ids, **eval_layout, device=device, shard=(rank(), world_size()))

    streams.split(config.seed)
    params = list(model.parameters())
    optimizer = make_optimizer(config, params)
    progress = {"step": 0, "epoch": 0, "index": 0, "chars_seen": 0, "elapsed": 0.0,
                "best_val_loss": math.inf, "last_val_loss": math.inf, "evals_since_best": 0, "lr_scale": 1.0,
                "world_size": world_size()}
    state = None
    if ckpt:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            progress.update(ckpt["progress"], world_size=world_size())
            streams.restore(ckpt["rng"], device, config.seed, progress["step"])
            saved_batch = ckpt["config"]["batch_size"] * ckpt["progress"].get("world_size", 1)
            if saved_batch == global_batch:
                state = map_state(lambda t: t[my_rows].to(device), ckpt["state"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CharrnnError(f"cannot resume from {resume}: its training state is damaged or does not fit: {reason}") from None
        if saved_batch != global_batch:  # other streams (or windows per batch): the same point of the epoch
            saved_batches = make_batches(train_ids, config.sampling, saved_batch, config.seq_len, config.seed,
                                         config.stream_offsets)
            progress["index"] = progress["index"] * batches.batches_per_epoch // saved_batches.batches_per_epoch
            processes = f"{world_size()} process" + ("es" if world_size() > 1 else "")
            reporter.note(f"the global batch is now {global_batch} sequences (--batch-size {config.batch_size} x "
                          f"{processes}), not {saved_batch}: training goes on from the same point of the "
                          "epoch" + (", with a zero hidden state" if batches.carries_state else ""))
    else:
        run = from_rank_zero(new_run_dir(config.out) if rank() == 0 else None)
    if rank() == 0:
        remove_stale_temporaries(run)
        save_encoded(corpus, run)
        write_config(config, run / "config.toml")
        point_latest(run)
    parallel_model = data_parallel(model, device)

    model.train()
    started = time.perf_counter() - progress["elapsed"]  # (the time budget's measurement counts)
    amp = config.amp == "bf16"
    # CUDA graphs with one process only (DDP's gradient hooks are not captured here)
    train_step = TrainStep(parallel_model, params, config.clip, amp,
                           graphs=config.cuda_graphs and device.type == "cuda" and parallel_model is model)
    limits = step_limits(config, batches.batches_per_epoch)
    max_time, time_plan = parse_duration(config.max_time) if config.max_time else math.inf, None
    if config.max_time and progress.get("planned_for") != max_time:  # a new run, or a new --max-time

        def trial_step(i: int) -> None:
            X, Y = batches.batch(0, 0)
            train_step(X[my_rows], Y[my_rows], None, divisor=Y.numel() / n_processes)
            trial_optimizer.step()

        trial_optimizer = make_optimizer(config, params)
        with cuda_precision(device, config.tf32):
            time_plan = budget.plan(max_time - progress["elapsed"], config.eval_every, trial_step,
                                    validation_sums, params, device)
        del trial_optimizer  # its moments: twice the model's size
        # a new run trains at least one step
        progress["planned_steps"] = progress["step"] + max(time_plan.steps, 0 if ckpt else 1)
        progress["planned_for"] = max_time
    if config.max_time:
        limits["--max-time"] = progress["planned_steps"]
    total_steps = min(limits.values())
    if progress["step"] >= total_steps:
        raise nothing_left(run, progress["step"], limits, config)
    device_text = f"{world_size()} processes ({device.type})" if world_size() > 1 else str(device)
    reporter.start({"run": str(run), "device": device_text, "parameters": num_parameters(model),
                    "vocab_size": len(vocab), "train_chars": len(train_ids), "val_chars": len(val_ids),
                    "total_steps": total_steps, "max_time": max_time, "time_plan": time_plan,
                    "limited_by": min(limits, key=limits.get),
                    "step": progress["step"], "best_val_loss": progress["best_val_loss"],
                    "batches_per_epoch": batches.batches_per_epoch, "config": asdict(config)})

    def stop_diverged(what: str) -> CharrnnError:
        kept = f"the last good checkpoint is kept in {run}" if (run / "last.pt").exists() else "no checkpoint was saved"
        return CharrnnError(f"training diverged at step {progress['step']}: {what}; {kept} "
                            f"(lower --lr, now {config.lr:g}, or --clip, now {config.clip:g})")

    loss_limit = math.inf  # DIVERGENCE_FACTOR times the untrained model's loss, set at the first step

    def check_train_loss(train_loss: float) -> None:
        if not math.isfinite(train_loss):
            raise stop_diverged(f"the training loss became {train_loss}")
        if train_loss > loss_limit:
            raise stop_diverged(f"the training loss reached {train_loss:.4g}, over {DIVERGENCE_FACTOR:g}x "
                                f"the untrained model's {loss_limit / DIVERGENCE_FACTOR:.4g}")

    def save(name: str) -> None:
        # Never replace a good checkpoint with a broken model.
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise stop_diverged("the weights became NaN or infinite")
        # the state carried into the next batch, of every process's streams (so every
        # process calls save); windows start from a zero state
        carried = map_state(gather_rows, detach_state(state)) if batches.carries_state else None
        rng = streams.gather(device)
        if rank() != 0:
            return
        save_checkpoint({
            "model_config": asdict(model_config), "vocab": vocab.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "config": asdict(config), "progress": dict(progress),
            "gemm": cpu_matmul.gemm_choices(),
            "corpus": corpus.source, "rng": rng,
            "state": carried,
            # how the validation loss was computed, for `charrnn eval` to compute it the same way
            "evaluation": eval_layout,
        }, run / name)

    def run_evaluation(train_loss: float) -> dict:
        # each process evaluates its share of the global batch's streams; all get the same
        # sums, so all agree on the best checkpoint
        loss_sum, count = validation_sums()
        loss_sum, count, train_loss = all_reduce([loss_sum, count, train_loss / world_size()])
        val_loss = loss_sum / count
        if not math.isfinite(val_loss):
            raise stop_diverged(f"the validation loss became {val_loss}")
        progress["last_val_loss"] = val_loss
        record = {"step": progress["step"], "epoch": progress["epoch"], "elapsed": progress["elapsed"],
                  "chars_seen": progress["chars_seen"], "train_loss": train_loss,
                  "train_ppl": math.exp(min(train_loss, 50)), "val_loss": val_loss,
                  "val_ppl": math.exp(min(val_loss, 50)), "lr": optimizer.param_groups[0]["lr"],
                  "chars_per_s": chars_per_s, "best": val_loss < progress["best_val_loss"]}
        after_evaluation(config, progress, val_loss)
        if record["best"]:
            save("best.pt")
        save("last.pt")
        if rank() == 0:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        reporter.evaluation(record)
        return record

    # train loss: the mean since the last evaluation (summed on the device: no per-step sync);
    # chars/s: over the last half second or so
    loss_sum, loss_steps = torch.zeros((), device=device), 0
    window_chars, window_start = 0, time.perf_counter()
    train_loss, chars_per_s, last_record, stopped_early = math.nan, 0.0, None, False
    with StopRequest() as stop, cuda_precision(device, config.tf32):
        while True:
            # all processes leave the loop at the same step (nothing to agree on alone)
            progress["elapsed"], stopped_by = agree_to_stop(time.perf_counter() - started, stop.requested)
            if stopped_by or progress["step"] >= total_steps:
                break
            lr = lr_at(config, progress["step"] / total_steps, progress["step"], progress["lr_scale"])
            for group in optimizer.param_groups:
                group["lr"] = lr

            X, Y = batches.batch(progress["epoch"], progress["index"])  # slices of the text, on the device
            batch_chars = Y.numel()
            X, Y = X[my_rows], Y[my_rows]
            if not batches.carries_state or progress["index"] == 0:
                state = None
            # the mean over the global batch: the processes' gradients are averaged, so each
            # divides its sum by its fair share (a short last batch of windows can leave some
            # processes fewer rows, or none)
            loss, state = train_step(X, Y, state, divisor=batch_chars / n_processes)
            if loss_limit == math.inf:
                loss_limit = DIVERGENCE_FACTOR * max(math.log(len(vocab)), loss.item())
            optimizer.step()
            if train_step.note:
                reporter.note(train_step.note)
                train_step.note = None

            loss_sum += loss
            loss_steps += 1
            window_chars += batch_chars
            progress["step"] += 1
            progress["chars_seen"] += batch_chars
            progress["index"] += 1
            if progress["index"] == batches.batches_per_epoch:
                progress["epoch"], progress["index"] = progress["epoch"] + 1, 0

            now = time.perf_counter()
            at_eval = progress["step"] % config.eval_every == 0
            if at_eval or now - window_start > 0.5:
                train_loss = loss_sum.item() / loss_steps
                chars_per_s = window_chars / max(now - window_start, 1e-9)
                check_train_loss(train_loss)
                progress["elapsed"] = now - started
                reporter.progress({"step": progress["step"], "total_steps": total_steps, "loss": train_loss,
                                   "lr": lr, "chars_per_s": chars_per_s, "elapsed": progress["elapsed"],
                                   "max_time": math.inf, "epoch": progress["epoch"]})  # steps, not the clock
                window_chars, window_start = 0, now
            if at_eval:
                last_record = run_evaluation(train_loss)
                loss_sum.zero_()
                loss_steps = 0
                if config.patience and progress["evals_since_best"] >= config.patience:
                    stopped_early = True
                    break

        if loss_steps:
            train_loss = all_reduce([loss_sum.item() / loss_steps])[0] / world_size()
            check_train_loss(train_loss)
        if stopped_by:
            progress["elapsed"] = time.perf_counter() - started
            save("last.pt")
        elif last_record is None or last_record["step"] != progress["step"]:
            last_record = run_evaluation(train_loss)
    last_val = last_record["val_loss"] if last_record else math.nan
    summary = {"run": str(run), "steps": progress["step"], "elapsed": progress["elapsed"],
               "chars_seen": progress["chars_seen"], "train_loss": train_loss,
               "val_loss": last_val, "val_ppl": math.exp(min(last_val, 50)),
               "best_val_loss": progress["best_val_loss"],
               "best_val_ppl": math.exp(min(progress["best_val_loss"], 50)),
               "chars_per_s": progress["chars_seen"] / max(progress["elapsed"], 1e-9),
               "interrupted": stopped_by, "stopped_early": stopped_early}
    reporter.finish(summary)
    return summary
