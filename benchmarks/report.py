"""The results table: rows, their markdown rendering, and parsing it back.

Every row compares omerofs with an anchor measured in the same run. A
ratio above 1 always favours omerofs: a throughput ratio is omerofs /
anchor, and a time or latency ratio is anchor / omerofs. Rows without an
anchor (server calls, the memory of `omerofs pin`) have an absolute target or none.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass

NO_VALUE = "—"
COLUMNS = ("#", "Measure", "Latency", "omerofs", "Anchor", "Ratio", "Target", "Result")
MET = "met"
MISSED = "missed"


@dataclass
class Row:
    key: str
    measure: str
    latency: str
    omerofs: str
    anchor: str = NO_VALUE
    ratio: float | None = None
    target: str = NO_VALUE
    result: str = NO_VALUE

    def cells(self) -> list[str]:
        ratio = NO_VALUE if self.ratio is None else f"{self.ratio:.2f}"
        return [self.key, self.measure, self.latency, self.omerofs, self.anchor, ratio, self.target, self.result]


def verdict(passed: bool) -> str:
    return MET if passed else MISSED


def latency_label(latency_ms: float | None) -> str:
    return NO_VALUE if latency_ms is None else f"{latency_ms:g} ms"


def size_label(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:.0f} MB/s ({seconds:.2f} s)"


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines.extend("| " + " | ".join(row.cells()) + " |" for row in rows)
    return "\n".join(lines)


def parse_table(text: str) -> list[dict[str, str]]:
    """Return the rows of the first results table in ``text`` as dicts keyed by column."""
    rows = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| " + " | ".join(COLUMNS)):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-"):
            continue
        rows.append(dict(zip(COLUMNS, cells)))
    return rows


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers(cell: str) -> list[float]:
    """Return every number in a table cell."""
    return [float(match) for match in NUMBER.findall(cell)]


def machine() -> dict[str, str]:
    """Describe the machine the run measured."""
    memory = "unknown"
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "memory": memory,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }
