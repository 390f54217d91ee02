"""Sample from an exported model.onnx with onnxruntime and numpy only (no torch, no charrnn).

    python scripts/onnx_sample.py FOLDER [--prefix TEXT] [--length N] [--temperature T]
                                         [--greedy] [--seed S]

FOLDER is what `charrnn export RUN --out FOLDER --onnx` wrote: model.onnx (one step:
input_id int64 [batch], state float32 [layers, parts, batch, hidden] -> logits [batch,
vocab], next_state) and vocab.json (the tokens in id order). docs/export.md shows it.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime


def sample(folder, prefix="", length=200, temperature=1.0, greedy=False, seed=0):
    folder = Path(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    tokens, as_bytes = vocab["tokens"], vocab["kind"] == "bytes"
    ids_of = {token: i for i, token in enumerate(tokens)}
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    layers, parts, _, hidden = session.get_inputs()[1].shape  # the state: [layers, parts, batch, hidden]
    state = np.zeros((layers, parts, 1, hidden), dtype=np.float32)
    prompt = list(prefix.encode("utf-8")) if as_bytes else [ids_of[c] for c in prefix]
    rng, out, logits = np.random.default_rng(seed), [], None
    for token in prompt:  # warm the state up on the prefix
        logits, state = session.run(None, {"input_id": np.array([token], dtype=np.int64), "state": state})
    if logits is None:  # no prefix: start from a uniform guess
        logits = np.zeros((1, len(tokens)), dtype=np.float32)
    for _ in range(length):
        if greedy:
            token = int(logits[0].argmax())
        else:
            p = np.exp((logits[0] - logits[0].max()) / temperature)
            token = int(rng.choice(len(p), p=p / p.sum()))
        out.append(token)
        logits, state = session.run(None, {"input_id": np.array([token], dtype=np.int64), "state": state})
    if as_bytes:
        return prefix + bytes(out).decode("utf-8", "replace")
    return prefix + "".join(tokens[i] for i in out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Sample from an exported model.onnx with onnxruntime.")
    parser.add_argument("folder")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(sample(a.folder, a.prefix, a.length, a.temperature, a.greedy, a.seed))
