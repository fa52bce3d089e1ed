"""Block reads: cache hits, one download per block, read-ahead and checks."""

import hashlib
import os
import sqlite3
import threading
import time

import diskcache
import pytest
import trio
import trio.testing

from omerofs import fetch, records
from omerofs.blocks import BlockCache, BlockKey
from omerofs.errors import IntegrityError, OfflineError, ServerFailure, ServerUnavailable
from omerofs.fetch import Fetcher, Stream

BLOCK = 4096


class FakeServer:
    """A download function over in-memory files that counts block reads."""

    def __init__(self, contents, delay=0.0):
        self.contents = contents
        self.delay = delay
        self.reads = []
        self._lock = threading.Lock()

    def __call__(self, file_id, offset, length):
        with self._lock:
            self.reads.append((file_id, offset))
        if self.delay:
            time.sleep(self.delay)
        return self.contents[file_id][offset:offset + length]


def make_file(file_id, data, good_hash=True):
    digest = hashlib.sha1(data if good_hash else b"other").hexdigest()
    return records.OriginalFile(id=file_id, name=f"f{file_id}", path="p/", size=len(data), mtime=0.0,
                                hash=digest, hasher=records.SHA1)


def run_with_fetcher(tmp_path, server, body):
    async def main():
        fetcher = Fetcher(BlockCache(tmp_path), "srv", server, block_size=BLOCK)
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            result = await body(fetcher)
            nursery.cancel_scope.cancel()
        return result
    return trio.run(main)


def test_reads_return_right_bytes_at_any_offset(tmp_path):
    data = os.urandom(10 * BLOCK + 123)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        for offset, length in [(0, 10), (BLOCK - 5, 10), (3 * BLOCK, 2 * BLOCK + 7), (len(data) - 3, 100),
                               (len(data), 10), (len(data) + 100, 10), (0, len(data) + 50)]:
            assert await fetcher.read(file, offset, length) == data[offset:offset + length]

    run_with_fetcher(tmp_path, server, body)


def test_second_read_and_new_fetcher_make_no_server_reads(tmp_path):
    data = os.urandom(5 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        await fetcher.read(file, 0, len(data))
        first = len(server.reads)
        assert await fetcher.read(file, 0, len(data)) == data
        assert len(server.reads) == first

    run_with_fetcher(tmp_path, server, body)
    reads_before = len(server.reads)

    async def again(fetcher):
        assert await fetcher.read(file, 0, len(data)) == data

    run_with_fetcher(tmp_path, server, again)
    assert len(server.reads) == reads_before


def test_concurrent_readers_share_one_download_per_block(tmp_path):
    data = os.urandom(4 * BLOCK)
    server = FakeServer({1: data}, delay=0.05)
    file = make_file(1, data)

    async def body(fetcher):
        results = []

        async def reader():
            results.append(await fetcher.read(file, 0, len(data)))

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(reader)
        assert all(r == data for r in results)

    run_with_fetcher(tmp_path, server, body)
    # The first reader loads the four blocks with one server read; the others wait for it.
    assert server.reads == [(1, 0)]


def test_sequential_reads_trigger_read_ahead(tmp_path):
    data = os.urandom(64 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        stream = Stream()
        for offset in range(0, 4 * BLOCK, BLOCK):
            await fetcher.read(file, offset, BLOCK, stream)
        await trio.sleep(0.2)
        reads = len(server.reads)
        # The next blocks came ahead of the reader.
        assert await fetcher.read(file, 4 * BLOCK, 4 * BLOCK) == data[4 * BLOCK:8 * BLOCK]
        return reads, len(server.reads), fetcher.blocks_fetched

    reads_before, reads_after, blocks = run_with_fetcher(tmp_path, server, body)
    assert reads_after == reads_before
    # Consecutive blocks ahead come in one server read, not one read each.
    assert blocks >= 8
    assert reads_before < blocks


class OutOfOrderServer(FakeServer):
    """Returns reads of the file's start last, so later blocks arrive first."""

    def __call__(self, file_id, offset, length):
        time.sleep(0.1 if offset == 0 else 0.0)
        return super().__call__(file_id, offset, length)


@pytest.mark.parametrize("good_hash", [True, False])
def test_pin_checks_blocks_arriving_out_of_order(tmp_path, monkeypatch, good_hash):
    monkeypatch.setattr(fetch, "PIN_RUN_BYTES", 2 * BLOCK)
    data = os.urandom(9 * BLOCK + 5)
    server = OutOfOrderServer({1: data})
    file = make_file(1, data, good_hash=good_hash)
    cache = BlockCache(tmp_path)

    async def body(fetcher):
        if not good_hash:
            with pytest.raises(IntegrityError):
                await fetcher.pin(file, lambda count, local: None)
            return
        assert await fetcher.pin(file, lambda count, local: None) is False
        assert fetcher.is_pinned(file)

    run_with_fetcher(tmp_path, server, body)
    # Five reads of two blocks, not ten of one.
    assert len(server.reads) == 5
    stored = [cache.get(BlockKey("srv", 1, BLOCK, index)) for index in range(10)]
    if good_hash:
        assert b"".join(stored) == data
    else:
        assert stored == [None] * 10


def test_random_reads_do_not_read_ahead(tmp_path):
    data = os.urandom(64 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        stream = Stream()
        for index in (40, 3, 17, 60, 9):
            await fetcher.read(file, index * BLOCK + 100, 200, stream)
        await trio.sleep(0.2)

    run_with_fetcher(tmp_path, server, body)
    assert len(server.reads) == 5


def test_offline_read_of_missing_block_fails_at_once(tmp_path):
    data = os.urandom(2 * BLOCK)
    file = make_file(1, data)

    async def body(fetcher):
        with pytest.raises(OfflineError):
            await fetcher.read(file, 0, 10)

    run_with_fetcher(tmp_path, None, body)


def test_short_server_read_is_not_cached(tmp_path):
    data = os.urandom(2 * BLOCK)
    server = FakeServer({1: data[:BLOCK + 10]})
    file = make_file(1, data)

    async def body(fetcher):
        with pytest.raises(ServerFailure):
            await fetcher.read(file, BLOCK, 100)
        assert not fetcher.cache.contains(BlockKey("srv", 1, BLOCK, 1))

    run_with_fetcher(tmp_path, server, body)


@pytest.mark.allow_warnings
def test_checksum_mismatch_drops_blocks(tmp_path):
    data = os.urandom(3 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data, good_hash=False)

    async def body(fetcher):
        await fetcher.read(file, 0, len(data))
        await trio.sleep(0.3)
        return [fetcher.cache.contains(BlockKey("srv", 1, BLOCK, i)) for i in range(3)]

    assert run_with_fetcher(tmp_path, server, body) == [False, False, False]


@pytest.mark.allow_warnings
def test_checksum_mismatch_calls_on_mismatch(tmp_path):
    data = os.urandom(2 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data, good_hash=False)
    mismatched = []

    async def note_mismatch(file):
        mismatched.append(file)

    async def body(fetcher):
        fetcher.on_mismatch = note_mismatch
        await fetcher.read(file, 0, len(data))
        # The check runs in a worker thread; a loaded machine may take a while.
        with trio.move_on_after(10):
            while not mismatched:
                await trio.sleep(0.05)

    run_with_fetcher(tmp_path, server, body)
    assert mismatched == [file]


@pytest.mark.allow_warnings
def test_damaged_block_is_refetched(tmp_path):
    data = os.urandom(2 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        await fetcher.read(file, 0, len(data))

    run_with_fetcher(tmp_path, server, body)
    cache = BlockCache(tmp_path)
    name = str(BlockKey("srv", 1, BLOCK, 0))
    stored = bytearray(cache._blocks.get(name) or cache._pinned.get(name))
    stored[-1] ^= 0xFF
    cache._blocks.set(name, bytes(stored))
    cache.close()
    before = len(server.reads)

    async def again(fetcher):
        assert await fetcher.read(file, 0, len(data)) == data

    run_with_fetcher(tmp_path, server, again)
    assert server.reads[before:] == [(1, 0)]


def test_offline_sequential_read_loads_cached_blocks_ahead(tmp_path):
    data = os.urandom(16 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def fill(fetcher):
        await fetcher.read(file, 0, len(data))

    run_with_fetcher(tmp_path, server, fill)
    reads_before = len(server.reads)

    async def main():
        fetcher = Fetcher(BlockCache(tmp_path), "srv", None, block_size=BLOCK)
        stream = Stream()
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            for offset in range(0, 4 * BLOCK, BLOCK):
                assert await fetcher.read(file, offset, BLOCK, stream) == data[offset:offset + BLOCK]
            await trio.sleep(0.2)
            ahead = sorted(index for file_id, index in fetcher._memory if index >= 4)
            nursery.cancel_scope.cancel()
        return ahead

    assert trio.run(main)
    assert len(server.reads) == reads_before


class FailingServer(FakeServer):
    """Fails every read that covers one offset with a server error."""

    def __init__(self, contents, failing_offset):
        super().__init__(contents)
        self.failing_offset = failing_offset

    def __call__(self, file_id, offset, length):
        if offset <= self.failing_offset < offset + length:
            raise ServerUnavailable(f"Reading OriginalFile {file_id} at {offset}: cannot reach the server")
        return super().__call__(file_id, offset, length)


def test_failed_block_of_many_raises_its_own_error(tmp_path):
    data = os.urandom(4 * BLOCK)
    server = FailingServer({1: data}, failing_offset=2 * BLOCK)
    file = make_file(1, data)

    async def body(fetcher):
        # Not an ExceptionGroup: the FUSE handler maps omerofs errors to their errno.
        with pytest.raises(ServerUnavailable):
            await fetcher.read(file, 0, len(data))

    run_with_fetcher(tmp_path, server, body)


def test_failed_block_fails_the_pin_with_its_own_error(tmp_path):
    data = os.urandom(4 * BLOCK)
    server = FailingServer({1: data}, failing_offset=BLOCK)
    file = make_file(1, data)

    async def body(fetcher):
        with pytest.raises(ServerUnavailable):
            await fetcher.pin(file, lambda count, local: None)

    run_with_fetcher(tmp_path, server, body)


class GatedServer(FakeServer):
    """Holds each read of one offset until the test opens the gate, then fails it."""

    def __init__(self, contents, failing_offset):
        super().__init__(contents)
        self.failing_offset = failing_offset
        self.gate = threading.Event()

    def __call__(self, file_id, offset, length):
        if offset == self.failing_offset:
            self.gate.wait()
            raise ServerUnavailable(f"Reading OriginalFile {file_id} at {offset}: cannot reach the server")
        return super().__call__(file_id, offset, length)


def test_cancelled_load_serves_other_readers(tmp_path):
    data = os.urandom(4 * BLOCK)
    server = GatedServer({1: data}, failing_offset=0)
    file = make_file(1, data)

    async def main():
        # With one worker, the first read's blocks 1 to 3 wait for the worker
        # that reads block 0 for another reader. Block 0 fails, one of them
        # gets the worker and the first read cancels the other two.
        fetcher = Fetcher(BlockCache(tmp_path), "srv", server, block_size=BLOCK, concurrency=1)
        last_blocks = []

        async def read_first_block():
            with pytest.raises(ServerUnavailable):
                await fetcher.read(file, 0, 100)

        async def read_all():
            with pytest.raises(ServerUnavailable):
                await fetcher.read(file, 0, len(data))

        async def read_last_blocks():
            last_blocks.append(await fetcher.read(file, BLOCK, 3 * BLOCK))

        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            for reader in (read_first_block, read_all, read_last_blocks):
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
            server.gate.set()
            while not last_blocks:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return last_blocks

    # The last read gets its blocks, not the cancellation of another read.
    assert trio.run(main) == [data[BLOCK:]]


@pytest.mark.allow_warnings
def test_locked_cache_still_serves_sequential_reads(tmp_path):
    data = os.urandom(64 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    def locked(*args, **kwargs):
        # What diskcache raises when SQLite stays locked past its busy timeout.
        raise diskcache.Timeout

    async def body(fetcher):
        fetcher.cache._blocks.set = locked
        stream = Stream()
        # Each read starts read-ahead, whose blocks cannot be stored either.
        for offset in range(0, len(data), BLOCK):
            assert await fetcher.read(file, offset, BLOCK, stream) == data[offset:offset + BLOCK]
        while fetcher._inflight:
            await trio.sleep(0.01)
        assert not fetcher.cache.contains(BlockKey("srv", 1, BLOCK, 0))

    run_with_fetcher(tmp_path, server, body)


class FailingLookups:
    """A diskcache.Cache whose membership test fails as SQLite does on a disk I/O error."""

    def __init__(self, cache):
        self._cache = cache

    def __contains__(self, name):
        raise sqlite3.OperationalError("disk I/O error")

    def __getattr__(self, name):
        return getattr(self._cache, name)


@pytest.mark.allow_warnings
def test_failed_cache_lookups_still_serve_reads(tmp_path):
    data = os.urandom(64 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        fetcher.cache._pinned = FailingLookups(fetcher.cache._pinned)
        stream = Stream()
        # Read-ahead looks its blocks up in the cache before it downloads them.
        for offset in range(0, len(data), BLOCK):
            assert await fetcher.read(file, offset, BLOCK, stream) == data[offset:offset + BLOCK]
        while fetcher._inflight:
            await trio.sleep(0.01)

    run_with_fetcher(tmp_path, server, body)


class BuggyServer(FakeServer):
    """Raises an error that is no omerofs error, as a bug would, for reads from block 2 on."""

    def __call__(self, file_id, offset, length):
        if offset >= 2 * BLOCK:
            raise RuntimeError("a bug in the download")
        return super().__call__(file_id, offset, length)


@pytest.mark.allow_warnings
def test_unexpected_read_ahead_error_keeps_the_fetcher(tmp_path):
    data = os.urandom(64 * BLOCK)
    server = BuggyServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        stream = Stream()
        # The second read starts read-ahead of blocks 2 and 3, which fails.
        for offset in (0, BLOCK):
            assert await fetcher.read(file, offset, BLOCK, stream) == data[offset:offset + BLOCK]
        while fetcher._inflight:
            await trio.sleep(0.01)
        # The background nursery still runs, so reads go on.
        assert await fetcher.read(file, 0, BLOCK) == data[:BLOCK]

    run_with_fetcher(tmp_path, server, body)


def test_large_read_of_small_blocks_reads_runs(tmp_path):
    data = os.urandom(300 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        # A 1 MiB request, the kernel's largest, covers 256 blocks of 4 KiB.
        assert await fetcher.read(file, BLOCK + 5, 256 * BLOCK) == data[BLOCK + 5:257 * BLOCK + 5]
        assert fetcher.blocks_fetched == 257

    run_with_fetcher(tmp_path, server, body)
    assert server.reads == [(1, BLOCK)]


def test_memory_cache_counts_shared_run_buffers(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "RUN_BYTES", 4 * BLOCK)
    monkeypatch.setattr(fetch, "MEMORY_CACHE_BYTES", 8 * BLOCK)
    data = os.urandom(64 * BLOCK)
    server = FakeServer({1: data})
    file = make_file(1, data)

    async def body(fetcher):
        stream = Stream()
        for offset in range(0, len(data), BLOCK):
            assert await fetcher.read(file, offset, BLOCK, stream) == data[offset:offset + BLOCK]
        await trio.sleep(0.2)
        # One block of each run read again keeps that run's whole buffer alive.
        for index in range(0, 64, 4):
            assert await fetcher.read(file, index * BLOCK, 10) == data[index * BLOCK:index * BLOCK + 10]
        buffers = {id(block.obj): len(block.obj) for block in fetcher._memory.values()
                   if isinstance(block, memoryview)}
        plain = sum(len(block) for block in fetcher._memory.values() if not isinstance(block, memoryview))
        return sum(buffers.values()) + plain

    assert run_with_fetcher(tmp_path, server, body) <= 8 * BLOCK
