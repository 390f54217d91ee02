"""scripts/sizing_grid.py's table (docs/presets.md, "Sizing"): the grid's best per corpus and
budget, the rule's run standing for its own width where the grid has no run of it (the
15-minute column grids only the widths beside the rule's choice)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import sizing_grid  # noqa: E402


def result(label, hidden, loss, budget=900):
    return {"corpus": "timemachine", "budget": budget, "label": label, "hidden": hidden, "val_loss": loss,
            "chars_seen": 1000 * hidden, "parameters": hidden}


def test_the_widths_beside_a_choice_stop_at_the_ends_of_the_sizing_widths():
    assert sizing_grid.beside(768) == [512, 1024]
    assert sizing_grid.beside(128) == [192]
    assert sizing_grid.beside(1024) == [768]


def test_the_rule_stands_for_its_width_and_can_be_the_grids_best():
    row = sizing_grid.table([result("rule", 512, 1.40), result("hidden 384", 384, 1.45),
                             result("hidden 768", 768, 1.50), result("fixed", 256, 2.00)]).splitlines()[-1]
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[2] == "384 (1.450, 1e+03), 512* (1.400, 1e+03), 768 (1.500, 1e+03)"
    assert cells[3:] == ["512: 1.4000", "2.0000", "512: 1.4000", "+0.000", "-0.600"]


def test_a_grid_run_of_the_rules_width_is_the_grids_own():
    row = sizing_grid.table([result("rule", 256, 1.30, 60), result("hidden 256", 256, 1.32, 60),
                             result("hidden 192", 192, 1.35, 60)]).splitlines()[-1]
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert "*" not in cells[2] and cells[3] == "256: 1.3200" and cells[6] == "-0.020"
