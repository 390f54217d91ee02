"""scripts/bench.py at tiny sizes (a smoke test: no timing is checked, only that each table
and column is there and adds up): a section per instruction set, where a training step's
time goes, the sampling bound, and --write, which puts the tables into a page between
marker comments and leaves the prose alone."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_lib.pages import markers, replace_sections  # noqa: E402

PAGE = ROOT / "docs" / "performance.md"


def run_bench(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run with both sections, written into a copy of docs/performance.md."""
    page = tmp_path_factory.mktemp("docs") / "performance.md"
    shutil.copy(PAGE, page)
    proc = run_bench("--quick", "--sizes", "32,4,8", "--threads", "1", "--isa", "native,avx2", "--write", str(page))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, page


def sections(out: str) -> dict[str, str]:
    """The run's output by section: "native" and "avx2"."""
    parts = re.split(r"^### ", out, flags=re.M)[1:]
    return {("avx2" if part.startswith("CPU capped at AVX2") else "native"): part for part in parts}


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_a_section_per_instruction_set_each_with_its_peak(quick_run):
    out, _ = quick_run
    got = sections(out)
    assert list(got) == ["native", "avx2"]
    for text in got.values():
        assert "torch " in text and "threads" in text  # the machine line
        assert "#### float32 matmul peak" in text and "| 4 x 32 x 128 |" in text
    # the capped process says what its cap did, against the native section's peak
    cap = next(line for line in got["avx2"].splitlines() if line.startswith("- the cap:"))
    assert "torch's CPU capability AVX2 (native: " in cap and "x; " in cap


def test_training_rows_split_the_step_into_matmuls_and_the_rest(quick_run):
    out, _ = quick_run
    for text in sections(out).values():
        rows = [cells(line) for line in text.splitlines() if line.startswith("| 32 | 4 | 8 |")]
        assert [row[3] for row in rows] == ["RNN", "GRU", "LSTM"]
        for row in rows:
            assert len(row) == 15 and row[11].endswith(" MB")  # memory measured too
            step, matmuls = float(row[12]), float(row[13])
            rest, share = re.fullmatch(r"(-?[\d.]+) \((-?\d+)%\)", row[14]).groups()
            assert step > 0 and matmuls > 0
            # each printed to 0.01 ms below 10 ms, to 0.1 above
            assert abs(float(rest) - (step - matmuls)) <= (0.16 if step >= 10 else 0.016)
            assert abs(int(share) - 100 * float(rest) / step) <= 1 + 10 / step


def test_sampling_rows_put_the_matrix_vector_bound_beside_the_rate(quick_run):
    out, _ = quick_run
    for text in sections(out).values():
        assert "#### Sampling" in text and "#### Evaluation" in text  # an eval table, or why it was skipped
        rows = [cells(line) for line in text.splitlines() if re.match(r"\| (RNN|GRU|LSTM) \| [\d,]+ \(", line)]
        rows = [row for row in rows if len(row) == 5]
        assert [row[0] for row in rows] == ["RNN", "GRU", "LSTM"]
        for row in rows:
            rate, bound = (float(row[i].split()[0].replace(",", "")) for i in (1, 2))
            assert abs(int(row[3].rstrip("%")) - 100 * rate / bound) <= 1


def test_write_replaces_each_sections_tables_and_keeps_the_prose(quick_run):
    out, page = quick_run
    old, new = PAGE.read_text(), page.read_text()
    for key, text in sections(out).items():
        begin, end = markers(key)
        written = new[new.index(begin) + len(begin) : new.index(end)]
        text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("(wrote "))
        assert written.strip() == ("### " + text).strip()
    outside = {key: "" for key in ("native", "avx2")}
    assert replace_sections(new, outside) == replace_sections(old, outside)  # everything else as it was


def test_replace_sections_needs_the_pair_of_markers():
    text = "prose\n<!-- bench:native -->\nold\n<!-- /bench:native -->\nmore prose\n"
    assert replace_sections(text, {"native": "new\n"}) == (
        "prose\n<!-- bench:native -->\n\nnew\n\n<!-- /bench:native -->\nmore prose\n")
    with pytest.raises(ValueError, match="bench:avx2"):
        replace_sections(text, {"avx2": "new"})


def test_write_to_a_page_without_the_markers_stops_before_measuring(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("# no markers here\n")
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--quick", "--isa", "native,avx2", "--write", str(page)])
    assert stop.value.code == (f"--write {page}: the page needs <!-- bench:native --> ... <!-- /bench:native -->; "
                               "<!-- bench:avx2 --> ... <!-- /bench:avx2 -->")
    assert capsys.readouterr().out == "" and page.read_text() == "# no markers here\n"
