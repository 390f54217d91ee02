"""A training run as the loop sees it (Run): its settings, data, model, optimizer and
progress, set up new or resumed exactly where it stopped (set_up).

    set_up()      the data, then (a new run's) run directory, the model, the optimizer,
                  what a resumed run restores, and the steps its limits allow
    read_data()   the corpus, its texts on the device, the batches
    restore()     weights, optimizer, progress, random streams and carried state
    plan_steps()  --max-steps, --epochs, and --max-time's plan (charrnn.training.budget)
    follow_plan() before each step: --max-time's revision, or a replay's recorded total
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from charrnn.kernels import cpu_bfloat16, cpu_matmul
from charrnn.training import budget, streams
from charrnn.kernels.allocator import tune_allocator
from charrnn.storage.checkpoint import LAST_FIRST, load_checkpoint, resolve_checkpoint
from charrnn.config import ModelConfig, TrainConfig, parse_duration
from charrnn.corpus.batches import StreamBatches, WindowBatches, make_batches
from charrnn.corpus.data import Corpus, load_corpus, reload_corpus
from charrnn.training.distributed import all_reduce, data_parallel, from_rank_zero, process_device, rank, world_size
from charrnn.errors import CharrnnError
from charrnn.scoring.evaluation import evaluate
from charrnn.training.finetune import load_trained, start_from
from charrnn.model import build_model, map_state, num_parameters
from charrnn.kernels.device import pick_device, set_threads
from charrnn.training.run_dir import check_writable, new_run_dir, prepare_run_dir
from charrnn.training.sizing import Sizing, measure_speed, size_model
from charrnn.training.schedule import change_total, make_optimizer, nothing_left, step_limits
from charrnn.training.progress import Progress
from charrnn.training.train_step import TrainStep, cuda_precision

if TYPE_CHECKING:
    from charrnn.training.report import Reporter


def set_up(config: TrainConfig, reporter: Reporter, resume: str | Path | None, replay: str | Path | None = None,
           clock: Callable[[], float] = time.perf_counter) -> Run:
    """A run ready for its first step: a new one, or `resume`'s exactly where it stopped;
    with `replay` (a run directory), a new run that follows that run's recorded step
    totals instead of the clock. `clock` times the run (tests give a simulated one)."""
    device = process_device(pick_device(config.device))
    if config.amp == "auto":  # settled once, so the run and its resumption compute alike
        config = replace(config, amp="bf16" if from_rank_zero(cpu_bfloat16.bfloat16_pays(device)) else "none")
    set_threads(config.threads)
    if device.type == "cpu":
        tune_allocator()  # recycle the large per-sequence buffers instead of faulting them in anew
    # all processes draw the same initial weights; streams.split then gives each its own
    # dropout masks
    torch.manual_seed(config.seed)
    resumed, replayed = Resumed.of(resume), Resumed.of(replay)
    if resumed and rank() == 0:  # (a replay writes a run directory of its own)
        check_writable(resumed.directory)
    trained = load_trained(config.init_from) if config.init_from and not resumed else None
    config, sizing, corpus, train_ids, val_ids, batches = read_data(
        config, resumed or replayed, device, reporter, trained[1].to_dict() if trained else None, clock)
    # the data are good: now a new run gets its directory
    directory = resumed.directory if resumed else from_rank_zero(new_run_dir(config.out) if rank() == 0 else None)
    model_config = config.model_config(len(corpus.vocab))
    model = build_model(model_config).to(device)
    fine_tune = start_from(model, model_config, corpus.vocab, *trained) if trained else None
    streams.split(config.seed)
    params = list(model.parameters())
    run = Run(config, reporter, device, directory, corpus, train_ids, val_ids, batches, model_config, model, params,
              make_optimizer(config, params), Progress(world_size=world_size(), elapsed=sizing.seconds if sizing else 0.0),
              clock=clock, sizing=asdict(sizing) if sizing else resumed and resumed.ckpt.get("sizing"))
    if resumed:
        restore(run, resumed)
    follow_replay(run, resumed, replayed)
    if rank() == 0:
        prepare_run_dir(directory, config, corpus)
    parallel_model = data_parallel(model, device)
    model.train()
    run.started = clock() - run.progress.elapsed  # (the time budget's measurement counts)
    amp = config.amp == "bf16"
    # CUDA graphs with one process only (DDP's gradient hooks are not captured here)
    run.train_step = TrainStep(parallel_model, params, config.clip, amp,
                               graphs=config.cuda_graphs and device.type == "cuda" and parallel_model is model)
    had = {"steps": run.total_steps if run.progress.totals else None, "seconds": run.progress.planned_for}
    limits, max_time, time_plan = plan_steps(run, resumed is not None)
    if run.progress.step >= run.total_steps and run.progress.script is not None:
        raise CharrnnError(f"nothing left to train: {directory} has done {run.progress.step} steps, all of the "
                           "plan it replays")
    if run.progress.step >= run.total_steps:
        raise nothing_left(directory, run.progress.step, limits, config)
    device_text = f"{world_size()} processes ({device.type})" if world_size() > 1 else str(device)
    if amp:
        device_text += " with bfloat16 matmuls" if device.type == "cpu" else " with bfloat16 autocast"
    reporter.start({"run": str(directory), "device": device_text, "parameters": num_parameters(model),
                    "vocab_size": len(corpus.vocab), "train_chars": len(train_ids), "val_chars": len(val_ids),
                    "total_steps": run.total_steps, "max_time": max_time, "time_plan": time_plan,
                    "limited_by": min(limits, key=limits.get), "had": had if resumed else None,
                    "step": run.progress.step, "best_val_loss": run.progress.best_val_loss,
                    "resumed_from": resumed.named if resumed else None,
                    "batches_per_epoch": batches.batches_per_epoch, "config": asdict(config), "init_from": fine_tune,
                    "sizing": sizing.reason if sizing else None})
    return run


def follow_replay(run: Run, resumed: Resumed | None, replayed: Resumed | None) -> None:
    """A replay follows the totals its run recorded; a resumed replay keeps following them,
    so its budget cannot change."""
    if replayed:
        run.progress.script = replayed_totals(replayed)
    elif resumed and run.progress.script is not None and any(
            resumed.ckpt["config"].get(name) != getattr(run.config, name) for name in ("max_steps", "epochs", "max_time")):
        raise CharrnnError(f"{run.directory} replays another run's plan: its --max-steps, --epochs and --max-time "
                           "cannot change")


def read_data(config: TrainConfig, resumed: Resumed | None, device: torch.device, reporter: Reporter,
              base_vocab: dict | None = None, clock: Callable[[], float] = time.perf_counter):
    """The corpus (a resumed or replayed run's own, checked against its sha256; a run
    --init-from a checkpoint's over that `base_vocab`), its texts on the device, and the
    batches over the training text; before them, the settings the sizing rule was left
    (config.auto_size) chosen for the text and the budget (charrnn.training.sizing). Returns
    the config (with that choice), the Sizing (None without one), the corpus, the texts and
    the batches."""
    if resumed:
        corpus = reload_corpus(resumed.ckpt["corpus"], cache_dir=resumed.directory)
    else:
        corpus = load_corpus(
            config.corpus, config.dataset, val_file=config.val_file, val_dir=config.val_dir,
            val_fraction=config.val_fraction, doc_sep=config.doc_sep, normalize_how=config.normalize,
            windows=(config.train_windows, config.val_windows, config.seq_len)
            if config.train_windows and config.val_windows else None,
            unknown=config.unknown, vocab_kind=config.vocab, base_vocab=base_vocab,
        )
    for note in corpus.notes:
        reporter.note(note)
    # the texts move to the device once: every batch is then a slice there, with no copy
    # from the host per step
    train_ids, val_ids = corpus.train_ids.to(device), corpus.val_ids.to(device)
    sizing = None
    if config.auto_size:
        sizing = size_run(config, len(corpus.vocab), train_ids, device, clock)
        config = replace(config, **sizing.chosen, auto_size=[])
    batches = make_batches(train_ids, config.sampling, config.batch_size * world_size(), config.seq_len,
                           config.seed, config.stream_offsets)
    if not batches.carries_state and len(val_ids) <= config.seq_len:
        raise CharrnnError(f"the validation text is shorter than one window of {config.seq_len + 1} characters")
    return config, sizing, corpus, train_ids, val_ids, batches


def size_run(config: TrainConfig, vocab_size: int, train_ids: torch.Tensor, device: torch.device,
             clock: Callable[[], float]) -> Sizing:
    """The sizing rule's choice for this run, rank 0's on every process; its seconds count in the budget."""
    started = clock()

    def measure(candidate: TrainConfig) -> tuple[float, int]:
        speed, parameters = measure_speed(candidate, vocab_size, train_ids, device, clock)
        return speed * world_size(), parameters  # the global batch's characters

    with cuda_precision(device, config.tf32):
        choice = size_model(config, vocab_size, len(train_ids), parse_duration(config.max_time), measure)
    choice = from_rank_zero(choice)
    choice.seconds = all_reduce([clock() - started], "max")[0]
    return choice


def restore(run: Run, resumed: Resumed) -> None:
    """Weights, optimizer, progress, random streams and carried state as the checkpoint
    saved them. With another global batch (other streams, or windows per batch) training
    goes on from the same point of the epoch, the carried state starting from zero."""
    ckpt, config = resumed.ckpt, run.config
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.progress = Progress.from_checkpoint(ckpt["progress"])
        streams.restore(ckpt["rng"], run.device, config.seed, run.progress.step)
        saved_batch = ckpt["config"]["batch_size"] * ckpt["progress"].get("world_size", 1)
        if saved_batch == run.global_batch:
            run.carried = map_state(lambda t: t[run.rows].to(run.device), ckpt["state"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CharrnnError(f"cannot resume from {resumed.path}: its training state is damaged or does not fit: "
                           f"{reason}") from None
    if saved_batch != run.global_batch:
        saved_batches = make_batches(run.train_ids, config.sampling, saved_batch, config.seq_len, config.seed,
                                     config.stream_offsets)
        run.progress.index = run.progress.index * run.batches.batches_per_epoch // saved_batches.batches_per_epoch
        processes = f"{world_size()} process" + ("es" if world_size() > 1 else "")
        run.reporter.note(f"the global batch is now {run.global_batch} sequences (--batch-size {config.batch_size} x "
                          f"{processes}), not {saved_batch}: training goes on from the same point of the "
                          "epoch" + (", with a zero hidden state" if run.batches.carries_state else ""))


def plan_steps(run: Run, resumed: bool) -> tuple[dict[str, int], float, budget.Plan | None]:
    """The steps each limit allows (--max-steps, --epochs, --max-time, or a replay's
    recorded plan), the time budget in seconds (inf: none) and the plan measured for it
    now: on a new run or a new --max-time (otherwise the run's progress keeps the plan it
    made). The run's total becomes the lowest of them."""
    config, progress = run.config, run.progress
    if progress.script is not None:  # a replay: the recorded totals, not the clock
        run.limits = {"the plan it replays": progress.script[-1][1]}
        if not progress.totals:
            change_total(progress, 0, progress.script[0][1])
        return run.limits, math.inf, None
    limits = step_limits(config, run.batches.batches_per_epoch)
    max_time, time_plan = parse_duration(config.max_time) if config.max_time else math.inf, None
    if config.max_time and progress.planned_for != max_time:  # a new run, or a new --max-time
        time_plan = plan_time(run, max_time - progress.elapsed)
        # a new run trains at least one step
        progress.planned_steps = progress.step + max(time_plan.steps, 0 if resumed else 1)
        progress.planned_for = max_time
        # the window starts on the clock all processes agree on (so they agree when to revise)
        since = all_reduce([run.clock() - run.started], "max")[0]
        progress.speed = budget.Speed(time_plan.step_seconds, time_plan.eval_seconds, since, progress.step,
                                      eval_step_seconds=time_plan.step_seconds)
    if config.max_time:
        limits["--max-time"] = progress.planned_steps
    run.limits = limits
    change_total(progress, progress.step, min(limits.values()))
    return limits, max_time, time_plan


def follow_plan(run: Run, elapsed: float) -> None:
    """Before each step: a replay's recorded change of the total at this step; or, when
    one is due, a revision of the --max-time plan from the steps since the last one.
    Under torchrun all processes measure (so all start the next window together) and
    all follow rank 0's plan."""
    config, progress = run.config, run.progress
    if progress.script is not None:
        following = len(progress.totals)  # the script's changes made so far
        if following < len(progress.script) and progress.script[following][0] == progress.step:
            change_total(progress, progress.step, progress.script[following][1])
        return
    speed = progress.speed
    if not (config.max_time and speed and budget.revision_due(speed, progress.step, elapsed, progress.planned_for,
                                                              config.eval_every)):
        return
    planned = budget.revise(speed, progress.step, elapsed, progress.planned_for, config.eval_every)
    progress.planned_steps = run.limits["--max-time"] = from_rank_zero(planned)
    change_total(progress, progress.step, min(run.limits.values()))


def replayed_totals(replayed: Resumed) -> list[list[int]]:
    """The step totals a run went through (the whole plan of a replay it was itself)."""
    saved = replayed.ckpt.get("progress", {})
    totals = saved.get("script") or saved.get("totals")
    if not totals:
        raise CharrnnError(f"{replayed.path} records no plan to replay (it was saved before runs recorded "
                           "their plans); --max-steps with its step count repeats a run that kept one plan")
    return [list(change) for change in totals]


def plan_time(run: Run, seconds: float) -> budget.Plan:
    """Time a training step (with an optimizer of its own, whose moments, twice the
    model's size, are freed on return) and an evaluation; plan the steps that fit."""

    def trial_step(i: int) -> None:
        X, Y = run.batches.batch(0, 0)
        run.train_step(X[run.rows], Y[run.rows], None, divisor=Y.numel() / world_size())
        trial_optimizer.step()

    trial_optimizer = make_optimizer(run.config, run.params)
    with cuda_precision(run.device, run.config.tf32):
        return budget.plan(seconds, run.config.eval_every, trial_step, run.validation_sums, run.params, run.device,
                           run.clock, run.progress.step)


@dataclass
class Resumed:
    """The checkpoint a resumed run goes on from, and the run directory it is in."""

    path: Path
    directory: Path
    ckpt: dict
    named: str  # as the user named it (runs/latest, say)

    @classmethod
    def open(cls, resume: str | Path) -> Resumed:
        path = resolve_checkpoint(resume, order=LAST_FIRST)
        directory = path.parent.resolve()  # runs/latest names the run itself
        ckpt = load_checkpoint(path)
        cpu_matmul.adopt_gemm_choices(ckpt.get("gemm", []))  # compute as the run did before
        return cls(path, directory, ckpt, str(resume))

    @classmethod
    def of(cls, where: str | Path | Resumed | None) -> Resumed | None:
        """`where` opened; one the caller opened already (the CLI, which read its settings:
        the checkpoint is read once) or None, as it is."""
        return where if where is None or isinstance(where, cls) else cls.open(where)


@dataclass
class Run:
    """A run being trained: what set_up makes, and what the loop's phases share."""

    config: TrainConfig
    reporter: Reporter
    device: torch.device
    directory: Path
    corpus: Corpus  # its vocabulary, and where it came from
    train_ids: torch.Tensor  # the texts, on the device
    val_ids: torch.Tensor
    batches: StreamBatches | WindowBatches  # over train_ids
    model_config: ModelConfig
    model: torch.nn.Module
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    progress: Progress
    carried: object = None  # the hidden state carried into the next batch (None: zero)
    train_step: TrainStep | None = None
    limits: dict[str, int] = field(default_factory=dict)  # the steps each limit allows
    clock: Callable[[], float] = time.perf_counter
    started: float = 0.0  # clock() at which progress.elapsed was 0
    sizing: dict | None = None  # what the sizing rule chose and why (charrnn.training.sizing.Sizing)

    @property
    def total_steps(self) -> int:
        """The steps the run is planned to reach now."""
        return self.progress.totals[-1][1]

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * world_size()

    @property
    def rows(self) -> slice:
        """This process's rows of the global batch."""
        return slice(rank() * self.config.batch_size, (rank() + 1) * self.config.batch_size)

    @property
    def eval_layout(self) -> dict:
        """How the validation loss is computed: recorded in every checkpoint, so that
        `charrnn eval` computes it the same way."""
        return {"batch_size": self.global_batch, "seq_len": self.config.seq_len,
                "carry_state": self.batches.carries_state}

    def validation_sums(self) -> tuple[float, int]:
        """This process's share of the validation loss: (sum, characters) of its streams."""
        return evaluate(self.model, self.val_ids, **self.eval_layout, device=self.device,
                        shard=(rank(), world_size()))
