"""The benchmark suite runs end to end on tiny inputs and prints a complete table.

This checks that `make bench` works, not how fast omerofs is: no timing is
asserted, only that every row is there and every figure parses.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = ["#", "Measure", "Latency", "omerofs", "Anchor", "Ratio", "Target", "Result"]
NO_VALUE = "—"

# (row, latency) of every row the quick run prints.
EXPECTED_ROWS = {
    ("1a", "0 ms"), ("1a", "10 ms"), ("1b", "0 ms"), ("1b", "10 ms"),
    ("2a", NO_VALUE), ("2b", NO_VALUE),
    ("3a", "0 ms"), ("3a", "10 ms"), ("3b", NO_VALUE),
    ("4a", "0 ms"), ("4a", "10 ms"), ("4b", "0 ms"), ("4b", "10 ms"), ("4c", "0 ms"), ("4c", "10 ms"),
    ("5", "0 ms"), ("5", "10 ms"),
    ("6a", "0 ms"), ("6b", NO_VALUE),
}

# Rows compared with an anchor measured in the same run; the others have an absolute target or none.
ANCHORED = {"1a", "1b", "2a", "2b", "3a", "3b", "5", "6a"}

NUMBER = re.compile(r"\d+(?:\.\d+)?")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="the benchmarks need root and /dev/fuse")


def table_rows(output: str) -> list[dict[str, str]]:
    lines = output.splitlines()
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in lines, output
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        rows.append(dict(zip(COLUMNS, cells)))
    return rows


@pytest.fixture(scope="module")
def quick_run():
    # The run works in its default directory, /var/tmp, not in pytest's: every
    # pytest session makes /tmp/pytest-of-root private again, and the `omero`
    # command runs as another user that must reach the run's files.
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def test_quick_run_prints_every_row(quick_run):
    rows = table_rows(quick_run.stdout)
    found = [(row["#"], row["Latency"]) for row in rows]

    assert sorted(found) == sorted(EXPECTED_ROWS)


def test_quick_run_figures_parse(quick_run):
    for row in table_rows(quick_run.stdout):
        label = f"{row['#']} at {row['Latency']}"
        assert NUMBER.search(row["omerofs"]), label
        assert row["Result"] in ("met", "missed", NO_VALUE), label
        if row["#"] in ANCHORED:
            assert NUMBER.search(row["Anchor"]), label
            assert float(row["Ratio"]) > 0, label
        if row["Target"] != NO_VALUE:
            assert row["Result"] in ("met", "missed"), label


def test_quick_run_warm_reads_stay_local(quick_run):
    assert "2: the warm reads made 0 RawFileStore.read calls." in quick_run.stdout
    assert "3: the warm random reads made 0 RawFileStore.read calls." in quick_run.stdout


def test_quick_run_leaves_no_mount(quick_run):
    mounted = Path("/proc/mounts").read_text()

    assert "omerofs-bench-" not in mounted
