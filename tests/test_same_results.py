"""scripts/same_results.py counts as the same only equal structures of bit-equal tensors.
(Its runs are `charrnn train` and `generate` processes, too slow for the suite.)"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import same_results  # noqa: E402


def test_same_tensors_is_exact_and_structural():
    a = {"w": torch.tensor([1.0, 2.0]), "state": [1, (torch.zeros(2),)]}
    assert same_results.same_tensors(a, {"w": torch.tensor([1.0, 2.0]), "state": [1, (torch.zeros(2),)]})
    assert not same_results.same_tensors(a, {"w": torch.tensor([1.0, 2.001]), "state": [1, (torch.zeros(2),)]})
    assert not same_results.same_tensors(a, {"w": torch.tensor([1.0, 2.0], dtype=torch.float64),
                                             "state": [1, (torch.zeros(2),)]})
    assert not same_results.same_tensors(a, {"w": torch.tensor([1.0, 2.0]), "state": [1, [torch.zeros(2)]]})

