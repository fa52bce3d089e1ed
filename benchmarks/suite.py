"""The benchmarks: what each one measures, against which anchor, with which target.

Each section runs at every latency of the plan on a repository that the
test server's generator writes, and appends rows to the table:

1. Cold sequential read of a big file through a fresh mount and cache
   (``cat > /dev/null``), against ``omero download`` and the ceiling client.
2. Warm read: the same file from the cache filled by (1), through a fresh
   mount with the kernel's page cache dropped, then again through the page
   cache, against a local copy of the same bytes read the same two ways.
3. Random 64 KiB reads, cold and warm, against single RawFileStore reads
   and against the local copy.
4. ``ls -l``, ``find`` and ``grep -r`` over a dataset's images through a
   mount scoped to the dataset: time and server calls.
5. ``omerofs pin`` of a dataset against the ``omero`` command downloading
   each of its filesets in turn.
6. Peak resident memory of the mount daemon streaming a large file
   (against the daemon that streamed the smaller file in 1), and of ``omerofs pin``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omerofs.testserver.process import OmeroServer

from .processes import OMEROFS, PASSWORD, USER, Mount, Mounter, OmeroCli, drop_caches, start_servers, wait4_timed
from .report import NO_VALUE, Row, latency_label, rate, size_label, verdict

log = logging.getLogger(__name__)

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    latencies_ms: tuple[float, ...]
    stream_bytes: int
    large_bytes: int
    metadata_images: int
    pin_images: int
    pin_file_bytes: int
    random_reads: int
    tune_bytes: int
    random_length: int = 64 * KIB


# The full run: the sizes the targets are stated for. It took 5 to 7 minutes on
# the 2-core machine that RESULTS.md describes.
FULL = Plan(latencies_ms=(0.0, 10.0), stream_bytes=GIB, large_bytes=4 * GIB, metadata_images=1000,
            pin_images=200, pin_file_bytes=2 * GIB // 200, random_reads=200, tune_bytes=128 * MIB)

# Tiny inputs that run every code path of the full run in about a minute.
QUICK = Plan(latencies_ms=(0.0, 10.0), stream_bytes=8 * MIB, large_bytes=32 * MIB, metadata_images=10,
             pin_images=4, pin_file_bytes=2 * MIB, random_reads=20, tune_bytes=8 * MIB)

# Targets, as ratios from the same run.
CEILING_TARGET = 0.8          # cold read at 10 ms, of the ceiling client's rate
DOWNLOAD_TARGET = 3.0         # cold read at 10 ms, times `omero download`
TARGET_LATENCY_MS = 10.0      # the latency the cold-read targets apply at
WARM_TARGET = 0.5             # first warm read, of the local file's rate
PAGE_CACHE_TARGET = 0.9       # second read through the page cache, of the local file's
CALLS_TARGET = 20             # server calls for each metadata command
PIN_TARGET = 3.0              # times the `omero download` loop
MEMORY_TARGET = 300 * MIB     # peak resident memory of the mount daemon
# Memory streaming the large file may exceed that of the smaller file by
# this factor and still count as not growing with file size.
MEMORY_GROWTH_LIMIT = 1.1

# The tag that the grep benchmark looks for; the generator gives it to every
# tenth image, starting with the fourth.
GREP_TAG = 3


@dataclass
class BigFile:
    image_id: int
    file_id: int
    size: int
    source: Path


@dataclass
class Dataset:
    id: int
    image_ids: list[int]
    fileset_ids: list[int]


def generate(out_dir: Path, *arguments: str) -> Path:
    """Write a repository with the test server's generator; return its directory."""
    subprocess.run([sys.executable, "-m", "omerofs.testserver.generate", str(out_dir), *arguments], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out_dir


def read_manifest(repository: Path) -> dict:
    # The generator writes its manifest as JSON.
    return json.loads((repository / "manifest.yaml").read_text())


def find_big_file(repository: Path) -> BigFile:
    manifest = read_manifest(repository)
    file_id = int(next(iter(json.loads((repository / "markers.json").read_text()))))
    for fileset in manifest["filesets"]:
        for entry in fileset["files"]:
            if entry["id"] == file_id:
                source = repository / entry["source"]
                image_id = next(i["id"] for i in manifest["images"] if i["fileset"] == fileset["id"])
                return BigFile(image_id, file_id, source.stat().st_size, source)
    raise RuntimeError(f"the manifest in {repository} has no OriginalFile {file_id}")


def find_dataset(repository: Path) -> Dataset:
    manifest = read_manifest(repository)
    dataset = manifest["datasets"][0]
    filesets = {image["id"]: image["fileset"] for image in manifest["images"]}
    return Dataset(dataset["id"], list(dataset["images"]), [filesets[i] for i in dataset["images"]])


def time_cat(path: Path) -> float:
    """Time ``cat PATH > /dev/null``."""
    started = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def time_preads(path: Path, offsets: list[int], length: int) -> list[float]:
    """Time one ``pread`` of ``length`` bytes at each offset, with the kernel's read-ahead off."""
    latencies = []
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        for offset in offsets:
            started = time.perf_counter()
            data = os.pread(descriptor, length, offset)
            latencies.append(time.perf_counter() - started)
            if len(data) != length:
                raise RuntimeError(f"read {len(data)} bytes of {path} at {offset}, expected {length}")
    finally:
        os.close(descriptor)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def latency_text(latencies: list[float]) -> str:
    return (f"median {statistics.median(latencies) * 1000:.2f} ms, "
            f"p95 {percentile(latencies, 0.95) * 1000:.2f} ms")


def mib(count: int) -> str:
    return f"{count / MIB:.0f} MiB"


def write_local_copy(source: Path, destination: Path) -> None:
    """Copy ``source`` byte by byte, holes written as zeros, so reading it reads the disk."""
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        while chunk := reader.read(8 * MIB):
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())


@dataclass
class Bench:
    plan: Plan
    work_dir: Path
    stack: contextlib.ExitStack
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def run(self) -> None:
        started = time.monotonic()
        load_before = os.getloadavg()[0]
        self._prepare()
        self.sequential_reads()
        self.warm_reads()
        self.random_reads()
        self.large_file_memory()
        self.metadata()
        self.pin()
        self.rows.sort(key=lambda row: (row.key, row.latency != NO_VALUE, _latency_order(row.latency)))
        self.details.append(f"The run took {time.monotonic() - started:.0f} s. The 1-minute load average was "
                            f"{load_before:.2f} at its start, from other work on the machine, and "
                            f"{os.getloadavg()[0]:.2f} at its end, this run's own work included.")

    # Set-up

    def _prepare(self) -> None:
        plan = self.plan
        data = self.work_dir / "repositories"
        log.info("writing the repositories under %s", data)
        repositories = {
            "stream": generate(data / "stream", "--images", "0", "--big-files", "1",
                               "--big-file-gib", repr(plan.stream_bytes / GIB)),
            "large": generate(data / "large", "--images", "0", "--big-files", "1",
                              "--big-file-gib", repr(plan.large_bytes / GIB)),
            "metadata": generate(data / "metadata", "--images", str(plan.metadata_images), "--big-files", "0"),
            "pin": generate(data / "pin", "--images", str(plan.pin_images), "--file-bytes",
                            str(plan.pin_file_bytes), "--big-files", "0"),
        }
        self.stream_file = find_big_file(repositories["stream"])
        self.large_file = find_big_file(repositories["large"])
        self.metadata_dataset = find_dataset(repositories["metadata"])
        self.pin_dataset = find_dataset(repositories["pin"])
        # Idle servers cost nothing, and starting them together saves seconds.
        self.servers = start_servers(repositories, self.work_dir, self.stack)
        self.mounter = Mounter(self.work_dir, self.stack)
        self.cli = OmeroCli(self.work_dir)

    def _set_latency(self, server: OmeroServer, latency_ms: float) -> None:
        server.control.set(latency_ms=latency_ms)

    def _file_path(self, mount: Mount, big: BigFile) -> Path:
        """Return the file's path in the mount's repository directory, where a reader ends up."""
        binary = mount.path / "Image" / str(big.image_id) / "Binary"
        names = os.listdir(binary)
        if len(names) != 1:
            raise RuntimeError(f"{binary} lists {names}, expected one file")
        path = Path(os.path.realpath(binary / names[0]))
        size = path.stat().st_size
        if size != big.size:
            raise RuntimeError(f"{path} has {size} bytes, expected {big.size}")
        return path

    def _cache_dir(self, name: str) -> Path:
        path = self.work_dir / "caches" / name
        if path.exists():
            shutil.rmtree(path)
        return path

    # 1. Cold sequential read

    def sequential_reads(self) -> None:
        server = self.servers["stream"]
        big = self.stream_file
        size = size_label(big.size)
        for latency_ms in self.plan.latencies_ms:
            log.info("cold sequential read of %s at %g ms", size, latency_ms)
            self._set_latency(server, latency_ms)
            first = latency_ms == self.plan.latencies_ms[0]
            cache = self._cache_dir("warm" if first else f"cold-{latency_ms:g}")
            mount = self.mounter.mount(server, cache)
            path = self._file_path(mount, big)
            drop_caches()
            server.control.reset()
            seconds = time_cat(path)
            reads = server.control.counters().get("RawFileStore.read", 0)
            if first:
                # The warm read reuses this cache; the memory row compares with this daemon.
                self.small_file_peak = mount.peak_rss()
            mount.unmount()
            if not first:
                shutil.rmtree(cache)

            download_seconds = self._omero_download(server, big)
            ceiling = self._ceiling_sequential(server, big)
            ceiling_seconds = ceiling["seconds"]

            latency = latency_label(latency_ms)
            targeted = latency_ms == TARGET_LATENCY_MS
            ceiling_ratio = ceiling_seconds / seconds
            download_ratio = download_seconds / seconds
            self.rows.append(Row(
                "1a", f"Cold sequential read of {size} vs ceiling client", latency, rate(big.size, seconds),
                f"{rate(big.size, ceiling_seconds)}, {ceiling['streams']} × {size_label(ceiling['chunk'])}",
                ceiling_ratio, f"≥ {CEILING_TARGET}" if targeted else NO_VALUE,
                verdict(ceiling_ratio >= CEILING_TARGET) if targeted else NO_VALUE))
            self.rows.append(Row(
                "1b", f"Cold sequential read of {size} vs omero download", latency, rate(big.size, seconds),
                rate(big.size, download_seconds), download_ratio,
                f"≥ {DOWNLOAD_TARGET:g}" if targeted else NO_VALUE,
                verdict(download_ratio >= DOWNLOAD_TARGET) if targeted else NO_VALUE))
            trials = ", ".join(f"{t['streams']}×{size_label(t['chunk'])}: {t['bytes_per_s'] / 1e6:.0f}"
                               for t in ceiling["trials"])
            self.details.append(f"1 at {latency}: omerofs made {reads} RawFileStore.read calls. Ceiling tuning "
                                f"(MB/s over {size_label(min(big.size, self.plan.tune_bytes))}): {trials}.")

    def _omero_download(self, server: OmeroServer, big: BigFile) -> float:
        self.cli.login(server)
        directory = self.cli.directory(f"download-{time.monotonic_ns()}")
        target = directory / "file"
        try:
            seconds = self.cli.run("download", f"OriginalFile:{big.file_id}", str(target))
            if target.stat().st_size != big.size:
                raise RuntimeError(f"omero download wrote {target.stat().st_size} bytes, expected {big.size}")
        finally:
            shutil.rmtree(directory)
        return seconds

    def _ceiling(self, *arguments: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "benchmarks.ceiling", *arguments], capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parents[1], timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(f"the ceiling client failed: {result.stderr[-3000:]}")
        return json.loads(result.stdout.splitlines()[-1])

    def _ceiling_sequential(self, server: OmeroServer, big: BigFile) -> dict:
        return self._ceiling("sequential", "--host", server.host, "--file-id", str(big.file_id),
                             "--size", str(big.size), "--tune-bytes", str(self.plan.tune_bytes))

    # 2. Warm read

    def warm_reads(self) -> None:
        server = self.servers["stream"]
        big = self.stream_file
        size = size_label(big.size)
        log.info("warm read of %s", size)
        self.local_copy = self.work_dir / "local-copy.bin"
        write_local_copy(big.source, self.local_copy)

        mount = self.mounter.mount(server, self._existing_cache("warm"))
        path = self._file_path(mount, big)
        drop_caches()
        server.control.reset()
        first = time_cat(path)
        second = time_cat(path)
        reads = server.control.counters().get("RawFileStore.read", 0)
        mount.unmount()

        drop_caches()
        local_first = time_cat(self.local_copy)
        local_second = time_cat(self.local_copy)

        first_ratio = local_first / first
        second_ratio = local_second / second
        self.rows.append(Row("2a", f"Warm read of {size}, page cache dropped, vs local file", NO_VALUE,
                             rate(big.size, first), rate(big.size, local_first), first_ratio,
                             f"≥ {WARM_TARGET}", verdict(first_ratio >= WARM_TARGET)))
        self.rows.append(Row("2b", f"Second read of {size} through the page cache vs local file", NO_VALUE,
                             rate(big.size, second), rate(big.size, local_second), second_ratio,
                             f"≥ {PAGE_CACHE_TARGET}", verdict(second_ratio >= PAGE_CACHE_TARGET)))
        self.details.append(f"2: the warm reads made {reads} RawFileStore.read calls.")

    def _existing_cache(self, name: str) -> Path:
        return self.work_dir / "caches" / name

    # 3. Random reads

    def random_reads(self) -> None:
        server = self.servers["stream"]
        big = self.stream_file
        length = self.plan.random_length
        picker = random.Random(20240501)
        offsets = [picker.randrange(0, big.size - length) for _ in range(self.plan.random_reads)]
        label = f"{self.plan.random_reads} reads of {size_label(length)} at random offsets of {size_label(big.size)}"

        for latency_ms in self.plan.latencies_ms:
            log.info("random reads at %g ms", latency_ms)
            self._set_latency(server, latency_ms)
            cache = self._cache_dir("random")
            mount = self.mounter.mount(server, cache)
            path = self._file_path(mount, big)
            drop_caches()
            cold = time_preads(path, offsets, length)
            mount.unmount()

            if latency_ms == self.plan.latencies_ms[0]:
                # Warm reads never reach the server, so one latency is enough.
                mount = self.mounter.mount(server, cache)
                path = self._file_path(mount, big)
                drop_caches()
                server.control.reset()
                warm = time_preads(path, offsets, length)
                warm_reads = server.control.counters().get("RawFileStore.read", 0)
                mount.unmount()
                drop_caches()
                local = time_preads(self.local_copy, offsets, length)
                self.rows.append(Row("3b", f"Warm: {label}, page cache dropped, vs local file", NO_VALUE,
                                     latency_text(warm), latency_text(local),
                                     statistics.median(local) / statistics.median(warm)))
                self.details.append(f"3: the warm random reads made {warm_reads} RawFileStore.read calls.")
            shutil.rmtree(cache)

            direct = self._ceiling("random", "--host", server.host, "--file-id", str(big.file_id),
                                   "--length", str(length), "--offsets", ",".join(map(str, offsets)))["latencies"]
            self.rows.append(Row("3a", f"Cold: {label} vs one RawFileStore.read each", latency_label(latency_ms),
                                 latency_text(cold), latency_text(direct),
                                 statistics.median(direct) / statistics.median(cold)))

        self.local_copy.unlink()
        shutil.rmtree(self._existing_cache("warm"))

    # 6a. Memory of the daemon streaming a large file

    def large_file_memory(self) -> None:
        server = self.servers["large"]
        big = self.large_file
        log.info("streaming %s for the daemon's memory", size_label(big.size))
        self._set_latency(server, self.plan.latencies_ms[0])
        cache = self._cache_dir("large")
        mount = self.mounter.mount(server, cache)
        path = self._file_path(mount, big)
        drop_caches()
        seconds = time_cat(path)
        peak = mount.peak_rss()
        mount.unmount()
        shutil.rmtree(cache)

        growth = self.small_file_peak / peak
        passed = peak <= MEMORY_TARGET and growth >= 1 / MEMORY_GROWTH_LIMIT
        self.rows.append(Row(
            "6a", f"Mount daemon peak memory streaming {size_label(big.size)}",
            latency_label(self.plan.latencies_ms[0]), f"{mib(peak)} ({rate(big.size, seconds)})",
            f"{mib(self.small_file_peak)} streaming {size_label(self.stream_file.size)}", growth,
            f"≤ {mib(MEMORY_TARGET)}, ratio ≥ {1 / MEMORY_GROWTH_LIMIT:.2f}", verdict(passed)))

    # 4. Metadata

    def metadata(self) -> None:
        server = self.servers["metadata"]
        dataset = self.metadata_dataset
        count = len(dataset.image_ids)
        tagged = len(range(GREP_TAG, count, 10))
        commands = [
            ("4a", "ls -l Image/", "ls -l Image/", count),
            ("4b", "find Image/ -maxdepth 3", "find Image/ -maxdepth 3", None),
            ("4c", "grep -lr over tag annotations",
             f"grep -lr '^<Tag.*<Value>batch-{GREP_TAG}<' Image/*/Annotation/*/Metadata/", tagged),
        ]
        for latency_ms in self.plan.latencies_ms:
            self._set_latency(server, latency_ms)
            for key, label, command, expected in commands:
                log.info("%s at %g ms", command, latency_ms)
                cache = self._cache_dir("metadata")
                mount = self.mounter.mount(server, cache, f"Dataset:{dataset.id}")
                server.control.reset()
                started = time.perf_counter()
                result = subprocess.run(["bash", "-c", command], cwd=mount.path, capture_output=True, text=True)
                seconds = time.perf_counter() - started
                counters = server.control.counters()
                mount.unmount()
                shutil.rmtree(cache)

                lines = [line for line in result.stdout.splitlines() if line and not line.startswith("total ")]
                if result.returncode != 0 or (expected is not None and len(lines) != expected):
                    raise RuntimeError(f"{command} returned {result.returncode} with {len(lines)} lines "
                                       f"(expected {expected}): {result.stderr[-2000:]}")
                calls = sum(counters.values())
                self.rows.append(Row(key, f"{label} ({count} images)", latency_label(latency_ms),
                                     f"{seconds:.2f} s, {calls} calls", target=f"≤ {CALLS_TARGET} calls",
                                     result=verdict(calls <= CALLS_TARGET)))
                self.details.append(f"4 `{command}` at {latency_label(latency_ms)}: {len(lines)} lines; "
                                    f"server calls: {_call_breakdown(counters)}.")

    # 5. Pin

    def pin(self) -> None:
        server = self.servers["pin"]
        dataset = self.pin_dataset
        total = len(dataset.image_ids) * self.plan.pin_file_bytes
        label = f"{len(dataset.image_ids)} images, {size_label(total)}"
        pin_peak = 0
        for latency_ms in self.plan.latencies_ms:
            log.info("pin of %s at %g ms", label, latency_ms)
            self._set_latency(server, latency_ms)
            cache = self._cache_dir("pin")
            env = dict(os.environ, OMERO_PASSWORD=PASSWORD,
                       OMERO_SESSIONDIR=str(self.work_dir / "run" / "no-sessions"))
            server.control.reset()
            seconds, peak, status, out, err = wait4_timed(
                [str(OMEROFS), "pin", f"Dataset:{dataset.id}", "-s", server.host, "-u", USER,
                 "--cache-dir", str(cache), "--json"], env=env)
            self.details.append(f"5 pin at {latency_label(latency_ms)}: server calls: "
                                f"{_call_breakdown(server.control.counters())}.")
            if status != 0:
                raise RuntimeError(f"omerofs pin failed ({status}): {err.decode()[-2000:]}")
            summary = json.loads(out)
            if summary["bytes"] != total:
                raise RuntimeError(f"omerofs pin pinned {summary['bytes']} bytes, expected {total}")
            pin_peak = max(pin_peak, peak)
            shutil.rmtree(cache)

            loop_seconds = self._download_filesets(server, dataset, total)
            ratio = loop_seconds / seconds
            self.rows.append(Row("5", f"omerofs pin Dataset ({label}) vs omero download of each fileset",
                                 latency_label(latency_ms), f"{seconds:.2f} s", f"{loop_seconds:.2f} s", ratio,
                                 f"≥ {PIN_TARGET:g}", verdict(ratio >= PIN_TARGET)))
        self.rows.append(Row("6b", f"omerofs pin peak memory ({label})", NO_VALUE, mib(pin_peak)))

    def _download_filesets(self, server: OmeroServer, dataset: Dataset, total: int) -> float:
        """Time the `omero` command downloading each fileset in turn, in one process and session."""
        self.cli.login(server)
        directory = self.cli.directory(f"filesets-{time.monotonic_ns()}")
        script = directory / "downloads.omero"
        script.write_text("".join(f"download Fileset:{fileset_id} {directory / str(fileset_id)}\n"
                                  for fileset_id in dataset.fileset_ids))
        try:
            seconds = self.cli.run("load", str(script))
            written = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) \
                - script.stat().st_size
            if written != total:
                raise RuntimeError(f"the omero download loop wrote {written} bytes, expected {total}")
        finally:
            shutil.rmtree(directory)
        return seconds


def _call_breakdown(counters: dict[str, int]) -> str:
    """Return the server's call counters as text, the most frequent operation first."""
    calls = sorted(counters.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {number}" for name, number in calls) or "none"


def _latency_order(latency: str) -> float:
    return float(latency.split()[0]) if latency != NO_VALUE else -1.0
