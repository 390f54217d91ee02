"""The README's quick start is what CI runs: keep the two in step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    """The last command of .ci/run is the README's test command (the lines before it may
    install what the tests need, such as Chromium for the browser test)."""
    ci_commands = [line for line in (ROOT / ".ci/run").read_text().splitlines()
                   if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_commands[-1] in (ROOT / "README.md").read_text()
    assert "pytest" in ci_commands[-1]
