"""Every setting of a run, in one place: the model's (ModelConfig, stored in every
checkpoint), the training run's (TrainConfig, whose fields are the command line's
options and a preset's keys), generation's sampling defaults (SamplingConfig), dynamic
evaluation's (DynamicSettings, and the candidates its tuning tries), how a preset is read,
and what a resumed run may change.

Standard library only: the command line reads its defaults from here without importing torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from charrnn.cells import CELLS
from charrnn.errors import CharrnnError

INITS = ("book", "torch", "orthogonal")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "plateau")
DEVICES = ("auto", "cpu", "cuda")
UNKNOWN_CHOICES = ("error", "skip")  # what to do with validation characters outside the vocabulary
VOCAB_KINDS = ("chars", "bytes")  # a character vocabulary, or the 256 byte values (charrnn.corpus.byte_vocab)
# What the sizing rule chooses for a new --max-time run where no option gives it (charrnn.training.sizing)
SIZE_SETTINGS = ("hidden", "layers", "embedding", "dropout", "lr", "batch_size", "seq_len", "epochs")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model: stored in every checkpoint."""

    vocab_size: int
    cell: str = "rnn"
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    init_sigma: float = 0.01  # with init "book": every weight starts as N(0, sigma^2), biases as 0
    init: str = "book"  # book | torch | orthogonal (see init_weights)
    forget_bias: float = 0.0  # LSTM: the forget gate's bias starts here (1 keeps memory early on)
    weight_drop: float = 0.0  # DropConnect on W_hh: one mask per batch, in training only
    locked_dropout: bool = False  # dropout masks shared by every time step of a sequence
    embedding: int = 0  # > 0: the first layer's input table factorised as E (vocab, embedding) @ W_xh


@dataclass(frozen=True)
class SamplingConfig:
    """generate's sampling settings and their defaults: the command line's options,
    charrnn.generation.sample's GenerationStream and generate, and serve's requests all read them here."""

    length: int = 200  # characters to generate
    temperature: float = 1.0  # the logits are divided by it
    top_k: int = 0  # sample among the k most likely (0: all)
    top_p: float = 1.0  # nucleus sampling: the fewest most likely adding up to p (1: all)
    greedy: bool = False  # always the most likely
    samples: int = 1  # continuations at once
    seed: int | None = None  # None: a fresh random seed


SAMPLING = SamplingConfig()


# The annotations of TrainConfig's fields (strings, by `from __future__ import annotations`)
# and the values a preset may give them.
SETTING_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "str | None": (str, type(None)),
                 "str | list[str] | None": (str, list, type(None)), "list[str]": (list,)}


@dataclass
class TrainConfig:
    """Every setting of a training run. A preset (configs/*.toml) uses these names as keys;
    the command line overrides the preset, which overrides these defaults."""

    # data
    # a UTF-8 file, or a list of paths (files, folders, globs) read as documents (charrnn.corpus.sources);
    # with no corpus and no dataset: the built-in corpus
    corpus: str | list[str] | None = None
    dataset: str | None = None  # timemachine | tinyshakespeare (downloaded once, cached)
    val_file: str | None = None
    val_dir: str | None = None  # validation documents: a folder or a glob
    val_fraction: float = 0.1
    normalize: str = "none"  # none | letters (the d2l book's preprocessing)
    vocab: str = "chars"  # chars | bytes (the 256 byte values: any file; see charrnn.corpus.byte_vocab)
    sampling: str = "sequential"  # sequential (carried state) | random (d2l windows, zero state)
    stream_offsets: str = "random"  # sequential: a new start offset every epoch (random) or none (fixed)
    train_windows: int = 0  # with both windows > 0: the d2l split by windows instead of val_fraction
    val_windows: int = 0
    unknown: str = "error"  # validation characters the training text lacks: error | skip (drop them)
    # with init_from: characters outside the checkpoint's vocabulary: extend (new rows) | error | skip
    init_from: str | None = None  # a checkpoint, run or exported folder whose weights this run starts from
    doc_sep: str | None = None  # ends each document of a many-file corpus; None: "\n\n", with bytes "\x03"
    # model
    cell: str = "lstm"
    hidden: int = 256
    layers: int = 1
    embedding: int = 0  # > 0: a factorised input table, E (vocab, embedding) @ W_xh (charrnn.model)
    dropout: float = 0.0
    locked_dropout: bool = False  # one dropout mask per sequence instead of per step
    weight_drop: float = 0.0  # DropConnect on the recurrent matrices W_hh
    init: str = "orthogonal"  # book | torch | orthogonal (charrnn.model.init_weights)
    init_sigma: float = 0.01  # init book: every weight starts as N(0, sigma^2)
    forget_bias: float = 0.0  # LSTM: the forget gate's bias starts here
    # optimisation
    optimizer: str = "adam"
    lr: float = 5e-3  # chosen on the quick start's minute with the default model (docs/presets.md)
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_fraction: float = 0.05  # cosine decays to lr * min_lr_fraction
    plateau_factor: float = 0.5  # plateau multiplies lr by this ...
    plateau_patience: int = 2  # ... after this many evaluations without a new best validation loss
    weight_decay: float = 0.0
    clip: float = 1.0
    batch_size: int = 32
    seq_len: int = 64
    # when to stop: whichever comes first; with none of the three, 10 epochs
    max_steps: int = 0
    epochs: float = 0.0
    max_time: str = ""  # 90s, 10m, 1h
    patience: int = 0  # early stopping: stop after this many evaluations without a new best (0: off)
    # bookkeeping
    eval_every: int = 200
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0: torch's default)
    tf32: bool = False  # CUDA: TF32 matmuls (10-bit mantissa products, float32 accumulation)
    amp: str = "none"  # none | bf16 | auto: autocast to bfloat16 (CPU: bfloat16 matmuls, float32 state); auto: bf16 where it pays
    cuda_graphs: bool = True  # CUDA, one process: replay each training step as a CUDA graph
    # the SIZE_SETTINGS the sizing rule chooses when the run starts (the command line leaves it
    # those of a new --max-time run that neither it nor a preset gives); the run then records
    # its choice here, with this emptied
    auto_size: list[str] = field(default_factory=list)
    out: str = ""  # run directory; default runs/<timestamp>
    # a sample printed after training
    sample_prefix: str = ""
    sample_length: int = 200
    sample_greedy: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        positive = ("hidden", "layers", "batch_size", "seq_len", "eval_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise CharrnnError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise CharrnnError(f"--lr must be a positive number, got {self.lr}")
        if not self.clip > 0:
            raise CharrnnError(f"--clip must be positive, got {self.clip}")
        for name in ("dropout", "weight_drop"):
            if not 0 <= getattr(self, name) < 1:
                raise CharrnnError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.plateau_factor < 1:
            raise CharrnnError(f"--plateau-factor must be between 0 and 1, got {self.plateau_factor}")
        if self.plateau_patience < 1:
            raise CharrnnError(f"--plateau-patience must be at least 1, got {self.plateau_patience}")
        for name in ("max_steps", "epochs", "warmup_steps", "train_windows", "val_windows", "sample_length",
                     "patience", "threads", "embedding"):
            if getattr(self, name) < 0:
                raise CharrnnError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        choices = {"cell": CELLS, "optimizer": OPTIMIZERS, "lr_schedule": SCHEDULES,
                   "sampling": ("sequential", "random"), "stream_offsets": ("random", "fixed"),
                   "init": INITS, "device": DEVICES,
                   "unknown": UNKNOWN_CHOICES + (("extend",) if self.init_from else ()), "amp": ("none", "bf16", "auto"), "vocab": VOCAB_KINDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise CharrnnError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.corpus, list) and not (self.corpus and all(isinstance(p, str) for p in self.corpus)):
            raise CharrnnError(f"corpus must be a path or a non-empty list of paths, got {self.corpus!r}")
        if self.max_time:
            parse_duration(self.max_time)
        if not set(self.auto_size) <= set(SIZE_SETTINGS) or (self.auto_size and not self.max_time):
            raise CharrnnError(f"auto_size must name settings of {', '.join(SIZE_SETTINGS)} and needs max_time, "
                               f"got {self.auto_size!r}")

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "TrainConfig":
        known = {f.name: f.type for f in fields(cls)}
        unknown_names = sorted(set(values) - set(known))
        if unknown_names:
            raise CharrnnError(f"{where}: unknown setting(s) {', '.join(unknown_names)}")
        for name, value in values.items():
            allowed = SETTING_TYPES[known[name]]
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise CharrnnError(f"{where}: {name} must be {known[name].replace(' | None', '')}, got {value!r}")
        return cls(**values)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size, self.cell, self.hidden, self.layers, self.dropout, self.init_sigma, self.init,
                           self.forget_bias, self.weight_drop, self.locked_dropout, self.embedding)


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' or a plain number of seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise CharrnnError(f"--max-time takes a duration like 90s, 10m or 1h, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# Dynamic evaluation (charrnn.scoring.dynamic): the rates `eval --dynamic` tries on the tail of the
# checkpoint's training text, in this order, the first decay with each rate and then the
# other decays with the best rate; at most TUNE_CHARS characters of that tail, and no new
# candidate once TUNE_SECONDS have gone (docs/dynamic-evaluation.md).
DYNAMIC_LRS = (1e-4, 3e-5, 3e-4, 1e-5, 1e-3)
DYNAMIC_DECAYS = (1e-3, 0.0, 1e-2)
TUNE_CHARS = 5000
TUNE_SECONDS = 90.0


@dataclass
class DynamicSettings:
    """One dynamic evaluation's settings. seq_len is in the paper's range for characters;
    lr and decay here are what an option given alone is paired with (`--dyn-lr` alone takes
    this decay), the first candidates of the tuning."""

    seq_len: int = 50
    lr: float = DYNAMIC_LRS[0]
    decay: float = DYNAMIC_DECAYS[0]
    # ε as a fraction of the mean rms: a weight whose gradient the statistics never saw
    # moves at most ~10x as far as an average one, not without bound
    epsilon_fraction: float = 0.1

    def __post_init__(self):
        if self.seq_len < 1:
            raise CharrnnError(f"--dyn-seq-len must be positive, got {self.seq_len}")
        if not self.lr >= 0:
            raise CharrnnError(f"--dyn-lr must be a number >= 0, got {self.lr}")
        if not 0 <= self.decay <= 1:
            raise CharrnnError(f"--dyn-decay must be in [0, 1], got {self.decay}")


def read_preset(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CharrnnError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise CharrnnError(f"config file {path} is not valid TOML: {e}") from None


# Settings that a checkpoint written before they existed ran with (where today's default
# differs), so that resuming it continues exactly as it began.
BEFORE_THEY_EXISTED = {"stream_offsets": "fixed", "init": "book"}


# What may change when a run resumes: how long it goes on and where; not the model or data.
# The batch size may, so that a run resumed on another number of processes can keep its
# global batch (--batch-size x processes).
RESUMABLE = {"max_steps", "epochs", "max_time", "patience", "eval_every", "device", "threads", "batch_size", "tf32", "amp",
             "cuda_graphs", "sample_prefix", "sample_length", "sample_greedy"}


# What a run started --init-from a checkpoint takes from it: its model's shape and how its
# weights were started (its new vocabulary rows start the same way), and its vocabulary's kind.
FROM_CHECKPOINT = ("cell", "hidden", "layers", "embedding", "init", "init_sigma", "forget_bias")


def fine_tune_config(values: dict, ckpt: dict) -> dict:
    """The settings `values` (a preset's and the command line's) of a run --init-from the
    checkpoint `ckpt`, with the model settings that checkpoint fixes; one set otherwise is
    refused. --unknown is extend unless set: the vocabulary grows by the new text's characters."""
    try:  # (a checkpoint from before a setting existed has its default)
        model = ModelConfig(**ckpt["model_config"])
    except TypeError as e:
        raise CharrnnError(f"{values['init_from']} has a damaged model config: {e}") from None
    fixed = {name: getattr(model, name) for name in FROM_CHECKPOINT}
    fixed["vocab"] = ckpt["vocab"].get("kind", "chars")
    for name, value in fixed.items():
        if name in values and values[name] != value:
            raise CharrnnError(f"--{name.replace('_', '-')} {values[name]} differs from the checkpoint's {value} "
                               f"({values['init_from']}): a run --init-from it keeps its model")
    return {"unknown": "extend", **values, **fixed}


# What may change when a run is replayed (--replay): where and how fast it runs.
REPLAYABLE = {"out", "device", "threads", "tf32", "cuda_graphs", "sample_prefix", "sample_length", "sample_greedy"}


def resumed_config(ckpt: dict, path: Path, given: dict, replay: bool = False) -> dict:
    """The settings of the run whose checkpoint `ckpt` (read from `path`) is, with the
    options `given` on the command line; an option that may not change is refused. On a
    resume, --max-steps +N and --max-time +D add to the run's budget (budget_given); a
    replay is a new run (its own run directory)."""
    values = ckpt.get("config")
    if not isinstance(values, dict):
        raise CharrnnError(f"{path} records no training settings, so it cannot be {'replayed' if replay else 'resumed'}")
    values = {**BEFORE_THEY_EXISTED, **values}
    if replay:
        values["out"] = ""
    else:
        given = budget_given(given, ckpt.get("progress") or {})
    allowed, doing = (REPLAYABLE, "replaying") if replay else (RESUMABLE, "resuming")
    unchangeable = sorted(k for k in given if k not in allowed and given[k] != values.get(k))
    if unchangeable:
        names = ", ".join("--" + k.replace("_", "-") for k in unchangeable)
        raise CharrnnError(f"{names} cannot change when {doing} a run (start a new run instead)")
    return {**values, **given}


def budget_given(given: dict, progress: dict | None = None) -> dict:
    """--max-steps and --max-time as typed: a whole budget (500, 10m), or on a resumed run
    (its checkpoint's `progress`) +N / +D, added to what the run had: its step total, its
    time budget (without one, its training time so far)."""
    given = dict(given)
    steps = given.get("max_steps")
    if isinstance(steps, str):
        adds = steps.strip().startswith("+")
        if adds and progress is None:
            raise CharrnnError(f"--max-steps {steps} adds to a resumed run's steps; a new run takes a number")
        try:
            count = int(steps.strip().lstrip("+"))
        except ValueError:
            raise CharrnnError(f"--max-steps takes a number of steps (or +N on --resume), got {steps!r}") from None
        saved = progress or {}
        totals = saved.get("totals") or [[0, saved.get("planned_steps") or saved.get("step", 0)]]
        given["max_steps"] = totals[-1][1] + count if adds else count
    duration = given.get("max_time")
    if isinstance(duration, str) and duration.strip().startswith("+"):
        if progress is None:
            raise CharrnnError(f"--max-time {duration} adds to a resumed run's budget; a new run takes a duration")
        had = progress.get("planned_for") or progress.get("elapsed", 0.0)
        given["max_time"] = f"{had + parse_duration(duration.strip()[1:]):g}s"
    return given


@dataclass
class ServeLimits:
    """What one request to `charrnn serve` may ask for (the `--max-*` options' defaults)."""

    max_length: int = 2000  # characters one generate request may ask for
    max_text: int = 10_000  # characters of a prefix or of a text to evaluate

    def __post_init__(self):
        if self.max_length < 1 or self.max_text < 1:
            raise CharrnnError("--max-length and --max-text must be positive")
