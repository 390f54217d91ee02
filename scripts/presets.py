"""Re-run presets and print docs/presets.md's table of what they reach.

    python scripts/presets.py                       # every configs/*.toml
    python scripts/presets.py configs/tiny.toml     # some of them
    python scripts/presets.py --max-time 30s ...    # a shorter budget, to try it out

Each preset trains in its own run directory under runs/presets/; the table gives the final
train and validation perplexity (and loss in nats per character), the training time,
characters per second and the preset's sample (greedy for the d2l presets).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import torch

from charrnn.storage.checkpoint import load_checkpoint
from charrnn.config import read_preset
from charrnn.corpus.vocab import Vocab
from charrnn.model import ModelConfig, build_model
from charrnn.generation.sample import generate
from charrnn.training.train import TrainConfig, train
from charrnn.training.report import Reporter

ROOT = Path(__file__).resolve().parents[1]


class Progress(Reporter):
    def evaluation(self, r):
        print(f"    step {r['step']:>6}  {r['elapsed']:7.1f}s  val loss {r['val_loss']:.4f}", file=sys.stderr)


def sample_from(run: Path, settings: TrainConfig) -> str:
    ckpt = load_checkpoint(run / "best.pt")
    model = build_model(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    vocab = Vocab.from_dict(ckpt["vocab"])
    prefix = settings.sample_prefix or "\n"
    chars = generate(model, vocab, prefix, settings.sample_length if settings.sample_prefix else 120,
                     greedy=settings.sample_greedy, temperature=0.8, seed=0)
    return prefix + "".join(c[0] for c in chars)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", type=Path)
    parser.add_argument("--max-time", help="override every preset's time budget")
    args = parser.parse_args()
    presets = args.presets or sorted((ROOT / "configs").glob("*.toml"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}",
          file=sys.stderr)
    rows = []
    for preset in presets:
        values = read_preset(preset)
        values["out"] = str(Path("runs/presets") / preset.stem)
        if args.max_time:
            values["max_time"] = args.max_time
        settings = TrainConfig.from_dict(values, str(preset))
        print(f"{preset.name}:", file=sys.stderr)
        s = train(settings, Progress())
        run = Path(s["run"])
        best = load_checkpoint(run / "best.pt")["progress"]
        sample = sample_from(run, settings).replace("\n", "⏎").replace("|", "\\|")
        rows.append(
            f"| `{preset.name}` | {math.exp(s['train_loss']):.3f} | {s['val_ppl']:.3f} ({s['val_loss']:.3f}) "
            f"| {math.exp(best['best_val_loss']):.3f} ({best['best_val_loss']:.3f}) at step {best['step']} "
            f"| {s['steps']} | {s['elapsed']:.0f} s | {s['chars_per_s']:,.0f} | `{sample}` |"
        )
    print("| preset | train ppl | val ppl (loss) | best val ppl (loss) | steps | time | chars/s | sample |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
