"""`charrnn export`: a trained model written out as an exported folder (the format is
charrnn.storage.exported's), optionally with one step of it as ONNX."""

from __future__ import annotations

import json
import math
from pathlib import Path

from charrnn import __version__
from charrnn.errors import CharrnnError
from charrnn.storage.exported import (CARD, CONFIG, FILES, FORMAT, FORMAT_VERSION, TRAINING, VOCAB, WEIGHTS,
                                      safetensors_torch)


def export_model(where, out: str | Path, onnx: bool = False) -> dict:
    """Write the model of `where` (a checkpoint, run directory or exported folder; None:
    runs/latest) into the folder `out`, with `onnx` model.onnx too, checked against the
    model (charrnn.storage.onnx_export); returns the folder, the files and that check's result."""
    from charrnn.storage.checkpoint import resolve_checkpoint
    from charrnn.storage.load import load_model
    from charrnn.scoring.evaluation import recorded_layout

    source = resolve_checkpoint(where)
    model, vocab, ckpt = load_model(source, "cpu")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharrnnError(f"cannot create {out}: {e.strerror or e}") from None
    progress = ckpt.get("progress") if isinstance(ckpt.get("progress"), dict) else {}
    training = {k: finite_or_none(progress.get(k)) for k in TRAINING if k in progress}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "charrnn_version": __version__,
              "model": dict(ckpt["model_config"]), "training": training, "corpus": ckpt.get("corpus") or {},
              "evaluation": recorded_layout(ckpt)}
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    safetensors_torch().save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / VOCAB).write_text(json.dumps(vocab_json(vocab), ensure_ascii=False) + "\n", encoding="utf-8")
    (out / CARD).write_text(model_card(config, vocab, source, onnx), encoding="utf-8")
    from charrnn.storage.onnx_export import ONNX_FILE, write_onnx

    files, check = [*FILES, CARD], None
    (out / ONNX_FILE).unlink(missing_ok=True)  # an earlier export's would be another model's
    if onnx:
        check = write_onnx(model, out / ONNX_FILE)
        files.append(ONNX_FILE)
    return {"source": source, "out": out, "files": files, "onnx_check": check}


def finite_or_none(value):
    """JSON has no infinity: a loss not yet measured is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def vocab_json(vocab) -> dict:
    if vocab.kind == "bytes":
        return {"kind": "bytes", "tokens": list(range(256))}
    return {"kind": "chars", "tokens": list(vocab.idx_to_token)}


def model_card(config: dict, vocab, source: Path, onnx: bool) -> str:
    """README.md: what the model is, what it was trained on and how far, and how to load it."""
    m, t, corpus = config["model"], config["training"], config["corpus"]
    where = corpus.get("path") or corpus.get("name") or (f"{len(corpus['files'])} files" if corpus.get("files")
                                                         else corpus.get("kind", "unknown"))
    loss = t.get("best_val_loss")
    loss_text = f"{loss:.4f} nats per {'byte' if vocab.kind == 'bytes' else 'character'}" if loss is not None else "not measured"
    embedding = f", an embedding of {m['embedding']}" if m.get("embedding") else ""
    return f"""# charrnn model: {m['layers']}-layer {m['cell'].upper()}, {m['hidden']} hidden

A character-level language model trained with charrnn {config['charrnn_version']}, exported from `{source}`.

- model: {m['cell']}, {m['layers']} layer(s) of {m['hidden']} units{embedding}; vocabulary: {len(vocab)} {vocab.kind}
- corpus: {where} (sha256 {corpus.get('sha256', 'unknown')})
- training: {t.get('step', 0)} steps, {t.get('chars_seen', 0):,} characters seen
- validation loss (best): {loss_text}

## Files

`model.safetensors` (the weights), `config.json` (the model's settings), `vocab.json` (the
tokens in id order){', `model.onnx` (one step of the model)' if onnx else ''}.

## Loading

    charrnn generate --checkpoint THIS_FOLDER --prefix "The "
    charrnn eval --checkpoint THIS_FOLDER FILE

In Python, `charrnn.storage.load.load_model("THIS_FOLDER")` gives `(model, vocab, checkpoint)`.
With `model.onnx`, onnxruntime and numpy are enough: see charrnn's docs/export.md.
"""


