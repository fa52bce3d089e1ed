"""The ceiling client: the fastest reads omero-py gets from the server, for comparison.

    python -m benchmarks.ceiling sequential --host tcp://127.0.0.1:PORT --file-id N --size BYTES
    python -m benchmarks.ceiling random --host ... --file-id N --length 65536 --offsets 0,4096,...

``sequential`` reads a whole original file with several RawFileStores in
parallel, one per thread, each taking the next chunk as it finishes the
last. It first tries every chunk size and thread count of a small grid on
the file's first bytes and reads the whole file with the fastest pair, so
the figure is what this server allows, not what one guess allows.
``random`` reads ``length`` bytes at each offset, one call each, with one
store: what a single random read costs without any cache.

Sessions and stores are opened before the clock starts: the figures are
the reads alone. The result is one JSON object on standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator

import omero
import omero.clients

from .processes import PASSWORD, USER

MIB = 1 << 20

# The grid the sequential read is tuned over. In trial runs on loopback the
# fastest pairs used 1 MiB calls with 1 to 32 threads, and the grid adds 4 and
# 16 MiB calls. 16 MiB stays well below OMERO's 64 MB read limit, and 32
# threads keep 32 MiB in flight, more than 10 ms of latency needs at 1 GB/s.
CHUNK_SIZES = (1 * MIB, 4 * MIB, 16 * MIB)
STREAM_COUNTS = (1, 2, 4, 8, 16, 32)

# Bytes each tuning trial reads: enough for a steady rate at 1 GB/s (about
# 0.1 s), small enough that the 18 trials cost seconds.
TUNE_BYTES = 128 * MIB


class _Session:
    """One logged-in omero-py client with ``streams`` RawFileStores on one file."""

    def __init__(self, host: str, file_id: int, streams: int):
        self.client = omero.client(host=host)
        self.context = {"omero.group": "-1"}
        self.stores: list = []
        try:
            self.factory = self.client.createSession(USER, PASSWORD)
            # Opened in parallel: at 10 ms a call, 32 stores opened one by one take 0.7 s.
            threads = [threading.Thread(target=self._open_store, args=(file_id,)) for _ in range(streams)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if len(self.stores) != streams:
                raise RuntimeError(f"opened {len(self.stores)} of {streams} RawFileStores")
        except BaseException:
            self.client.__del__()
            raise

    def _open_store(self, file_id: int) -> None:
        store = self.factory.createRawFileStore(self.context)
        store.setFileId(file_id, self.context)
        self.stores.append(store)

    def close(self) -> None:
        try:
            for store in self.stores:
                store.close()
        finally:
            self.client.__del__()


def read_parallel(stores: list, size: int, chunk: int) -> tuple[float, int]:
    """Read ``size`` bytes in ``chunk``-sized calls, one thread per store; return (seconds, bytes)."""
    offsets: Iterator[int] = iter(range(0, size, chunk))
    lock = threading.Lock()
    received = [0]
    failures: list[BaseException] = []

    def work(store) -> None:
        try:
            while True:
                with lock:
                    offset = next(offsets, None)
                if offset is None:
                    return
                data = store.read(offset, min(chunk, size - offset))
                with lock:
                    received[0] += len(data)
        except BaseException as error:  # reported after the join
            failures.append(error)

    threads = [threading.Thread(target=work, args=(store,)) for store in stores]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    return seconds, received[0]


def sequential(host: str, file_id: int, size: int, tune_bytes: int) -> dict:
    session = _Session(host, file_id, max(STREAM_COUNTS))
    try:
        trials = []
        sample = min(size, tune_bytes)
        for chunk in CHUNK_SIZES:
            if chunk > sample and chunk != CHUNK_SIZES[0]:
                continue
            for streams in STREAM_COUNTS:
                seconds, count = read_parallel(session.stores[:streams], sample, chunk)
                trials.append({"chunk": chunk, "streams": streams, "bytes_per_s": count / seconds})
        best = max(trials, key=lambda trial: trial["bytes_per_s"])
        seconds, count = read_parallel(session.stores[:best["streams"]], size, best["chunk"])
    finally:
        session.close()
    if count != size:
        raise RuntimeError(f"read {count} bytes of OriginalFile {file_id}, expected {size}")
    return {"seconds": seconds, "bytes": count, "chunk": best["chunk"], "streams": best["streams"],
            "trials": trials}


def random_reads(host: str, file_id: int, length: int, offsets: list[int]) -> dict:
    session = _Session(host, file_id, 1)
    store = session.stores[0]
    latencies = []
    try:
        for offset in offsets:
            started = time.perf_counter()
            store.read(offset, length)
            latencies.append(time.perf_counter() - started)
    finally:
        session.close()
    return {"latencies": latencies}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("sequential", "random"):
        mode = modes.add_parser(name)
        mode.add_argument("--host", required=True, help="server as tcp://HOST:PORT")
        mode.add_argument("--file-id", type=int, required=True, help="OriginalFile ID")
    modes.choices["sequential"].add_argument("--size", type=int, required=True, help="file size in bytes")
    modes.choices["sequential"].add_argument("--tune-bytes", type=int, default=TUNE_BYTES,
                                             help="bytes read by each tuning trial")
    modes.choices["random"].add_argument("--length", type=int, required=True, help="bytes per read")
    modes.choices["random"].add_argument("--offsets", required=True, help="comma-separated byte offsets")
    args = parser.parse_args(argv)

    if args.mode == "sequential":
        result = sequential(args.host, args.file_id, args.size, args.tune_bytes)
    else:
        offsets = [int(text) for text in args.offsets.split(",")]
        result = random_reads(args.host, args.file_id, args.length, offsets)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
