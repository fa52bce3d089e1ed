"""Run the benchmarks and print the results table: ``python -m benchmarks [--quick]``.

Needs root: it mounts FUSE filesystems, empties the kernel's page cache
between runs, and runs the ``omero`` command as an unprivileged user.
Everything runs on 127.0.0.1 against test servers that the run starts and
stops itself.
"""

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from . import report
from .suite import FULL, QUICK, Bench

log = logging.getLogger("benchmarks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs (a few MiB, ten images): checks that every benchmark runs")
    parser.add_argument("--work-dir", type=Path, default=Path("/var/tmp"),
                        help="directory for the run's repositories, caches and mounts; use one on the local "
                             "disk, which the warm-read anchor reads (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the run's working directory")
    parser.add_argument("--output", type=Path, help="also write the report (markdown) to this file")
    parser.add_argument("--json", type=Path, help="also write the rows and details as JSON to this file")
    return parser


def render(bench: Bench, quick: bool) -> str:
    machine = report.machine()
    command = "make bench" + (" (python -m benchmarks --quick)" if quick else " (python -m benchmarks)")
    lines = [report.table(bench.rows), "", "Details:", ""]
    lines.extend(f"- {detail}" for detail in bench.details)
    lines.extend(["", "Machine: " + ", ".join(f"{name} {value}" for name, value in machine.items()) + ".",
                  f"Command: `{command}`."])
    return "\n".join(lines)


def check_environment() -> None:
    if os.geteuid() != 0:
        sys.exit("python -m benchmarks: run it as root: it mounts FUSE filesystems, drops the page cache "
                 "and runs `omero` as another user.")
    if not os.path.exists("/dev/fuse"):
        sys.exit("python -m benchmarks: /dev/fuse is missing; load the fuse module first.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    check_environment()

    args.work_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="omerofs-bench-", dir=args.work_dir))
    bench = Bench(QUICK if args.quick else FULL, work_dir, contextlib.ExitStack())
    try:
        with bench.stack:
            bench.run()
    finally:
        mounted = [path for path in work_dir.glob("mnt*") if os.path.ismount(path)]
        if args.keep or mounted:
            log.info("kept %s%s", work_dir, f" (still mounted: {mounted})" if mounted else "")
        else:
            shutil.rmtree(work_dir)

    text = render(bench, args.quick)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in bench.rows], "details": bench.details,
                                         "machine": report.machine(), "time": time.time()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
