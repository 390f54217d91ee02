"""An exported folder: the format `charrnn export` writes (charrnn.storage.export) and
charrnn.storage.checkpoint reads wherever it reads a checkpoint.

A trained model taken out of charrnn, in the layout the Hugging Face Hub uses: a folder
of plain files that any tool can read, with no pickle in it.

    model.safetensors  the weights (the model's state_dict), float tensors only
    config.json        {"format": FORMAT, "format_version": FORMAT_VERSION, "model": the
                       ModelConfig, "training": steps and losses, "corpus": where the text
                       came from, "evaluation": how the validation loss was computed}
    vocab.json         {"kind": "chars" or "bytes", "tokens": [...]} in id order: characters
                       (<unk> for the book's unknown token), or the byte values 0..255
    README.md          a model card: corpus, steps, validation loss, how to load it
    model.onnx         with --onnx: one step of the model (charrnn.storage.onnx_export)

charrnn.storage.checkpoint reads such a folder wherever it reads a checkpoint (`read_export`), so
`--checkpoint DIR` works for every command, with the run's own results. A folder that
disagrees with itself (a missing file, an unknown format version, shapes that are not the
ones config.json describes, a vocab.json of another form) is a one-line CharrnnError.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path

import torch

from charrnn.errors import CharrnnError

FORMAT = "charrnn-export"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, VOCAB, CARD = "model.safetensors", "config.json", "vocab.json", "README.md"
FILES = (WEIGHTS, CONFIG, VOCAB)  # what a folder must hold to be read back
TRAINING = ("step", "chars_seen", "elapsed", "best_val_loss", "last_val_loss")  # of the run's Progress


def safetensors_torch():
    try:
        import safetensors.torch
    except ModuleNotFoundError:
        raise CharrnnError("exported models are safetensors files: pip install 'charrnn-scratch[export]'") from None
    return safetensors.torch


def is_export(folder: Path) -> bool:
    """Whether a folder is (or claims to be) an exported model."""
    return any((folder / name).exists() for name in FILES)


def read_export(folder: Path, map_location="cpu") -> dict:
    """An exported folder as the checkpoint dict charrnn.storage.load.load_model reads (model
    config, vocabulary, weights, progress, corpus, evaluation layout)."""
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise CharrnnError(f"{folder} is an incomplete exported model: {', '.join(missing)} missing")
    config = read_json(folder / CONFIG)
    check_version(folder / CONFIG, config)
    model_config = model_settings(folder / CONFIG, config.get("model"))
    vocab = vocab_from_json(folder / VOCAB, read_json(folder / VOCAB))
    if len(vocab) != model_config["vocab_size"]:
        raise CharrnnError(f"{folder / VOCAB} has {len(vocab)} tokens but {CONFIG}'s model {model_config['vocab_size']}")
    weights = read_weights(folder / WEIGHTS, model_config)
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    progress = {k: (math.inf if v is None and k.endswith("loss") else v) for k, v in training.items() if k in TRAINING}
    ckpt = {"model_config": model_config, "vocab": vocab.to_dict(),
            "model": {k: t.to(map_location) for k, t in weights.items()}, "progress": progress}
    for section in ("corpus", "evaluation"):
        if isinstance(config.get(section), dict):
            ckpt[section] = config[section]
    return ckpt


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CharrnnError(f"{path} is not readable JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise CharrnnError(f"{path} should hold a JSON object")
    return value


def check_version(path: Path, config: dict) -> None:
    if config.get("format") != FORMAT:
        raise CharrnnError(f"{path} is not a charrnn export (format {str(config.get('format'))[:40]!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        if type(version) is not int:
            raise CharrnnError(f"{path} has no valid format version (found {repr(version)[:40]})")
        advice = "upgrade charrnn" if version > FORMAT_VERSION else "use the charrnn that wrote it"
        raise CharrnnError(f"{path} has export format {version}; this charrnn reads format {FORMAT_VERSION} ({advice})")


def model_settings(path: Path, model) -> dict:
    """config.json's "model": ModelConfig's fields, of their types."""
    from charrnn.config import ModelConfig

    types = {f.name: f.type for f in fields(ModelConfig)}
    if not isinstance(model, dict) or set(model) - set(types) or "vocab_size" not in model:
        raise CharrnnError(f"{path}: \"model\" should be a table of {', '.join(types)}")
    for name, value in model.items():
        wanted = {"int": int, "float": (int, float), "str": str, "bool": bool}[types[name]]
        if not isinstance(value, wanted) or (isinstance(value, bool) and types[name] != "bool"):
            raise CharrnnError(f"{path}: model {name} should be {types[name]}, got {repr(value)[:40]}")
    if model["vocab_size"] < 1:
        raise CharrnnError(f"{path}: model vocab_size should be positive, got {model['vocab_size']}")
    return asdict(ModelConfig(**model))


def vocab_from_json(path: Path, data: dict):
    """vocab.json as a Vocab or ByteVocab; the tokens must be in the ids charrnn gives them."""
    from charrnn.corpus.byte_vocab import ByteVocab
    from charrnn.corpus.vocab import UNK, Vocab

    kind, tokens = data.get("kind"), data.get("tokens")
    if kind == "bytes":
        if tokens != list(range(256)):
            raise CharrnnError(f"{path}: a bytes vocabulary's tokens are the byte values 0 to 255 in order")
        return ByteVocab()
    if kind != "chars":
        raise CharrnnError(f"{path}: \"kind\" should be \"chars\" or \"bytes\", got {repr(kind)[:40]}")
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) and (len(t) == 1 or t == UNK) for t in tokens)):
        raise CharrnnError(f"{path}: \"tokens\" should be a list of single characters (and {UNK})")
    vocab = Vocab([t for t in tokens if t != UNK], unk=UNK in tokens)
    if vocab.idx_to_token != tokens:
        raise CharrnnError(f"{path}: the tokens should be distinct and sorted (their ids are their places)")
    return vocab


def read_weights(path: Path, model_config: dict) -> dict:
    """model.safetensors' tensors, each the shape and kind that config.json's model has."""
    from charrnn.config import ModelConfig
    from charrnn.model import build_model

    reader = safetensors_torch()
    try:
        weights = reader.load_file(str(path))
    except Exception as e:  # a damaged file fails in the reader's own ways
        raise CharrnnError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    try:
        with torch.device("meta"):  # the shapes only: nothing is allocated for what a hostile file claims
            wanted = build_model(ModelConfig(**model_config)).state_dict()
    except (ValueError, RuntimeError) as e:
        raise CharrnnError(f"{path.parent / CONFIG}: its model cannot be built: {str(e).splitlines()[0]}") from None
    missing, unexpected = sorted(wanted.keys() - weights.keys()), sorted(weights.keys() - wanted.keys())
    if missing or unexpected:
        what = f"lacks {', '.join(missing)}" if missing else f"has tensors the model does not: {', '.join(unexpected)}"
        raise CharrnnError(f"{path} {what} (for {CONFIG}'s model)")
    for name, tensor in weights.items():
        if tensor.shape != wanted[name].shape or not tensor.is_floating_point():
            raise CharrnnError(f"{path}: {name} is {tensor.dtype} {list(tensor.shape)} but {CONFIG}'s model has "
                               f"{wanted[name].dtype} {list(wanted[name].shape)}")
    return weights
