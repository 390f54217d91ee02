"""The run directory: where a run's checkpoints, settings, metrics and curve go.

    runs/
      latest -> 20250101-120000      the newest run (a relative symlink)
      20250101-120000/
        best.pt, last.pt             checkpoints (charrnn.storage.checkpoint)
        config.toml                  the run's settings, usable again as --config
        metrics.jsonl                one record per evaluation
        encoded-<sha256>.pt          the corpus as ids, so that a resume skips encoding it
        curve.png                    drawn by `charrnn train` (with matplotlib)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from charrnn.storage.atomic import remove_stale_temporaries, write_text
from charrnn.config import TrainConfig
from charrnn.corpus.data import Corpus, save_encoded
from charrnn.errors import CharrnnError


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


def prepare_run_dir(run: Path, config: TrainConfig, corpus: Corpus) -> None:
    """Ready a run directory, new or resumed, for this session: the temporary files of
    saves killed midway removed, the encoded corpus kept, config.toml written, and
    runs/latest pointed at it."""
    remove_stale_temporaries(run)
    save_encoded(corpus, run)
    write_config(config, run / "config.toml")
    point_latest(run)


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
    write_text(path, "\n".join(lines) + "\n")  # a kill mid-write leaves the old file whole


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters (a --doc-sep of
    \\x03) escaped."""
    named = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return '"' + "".join(named.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in value) + '"'
