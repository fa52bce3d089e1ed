"""Block reads of original files: cache first, then the server, one download per block.

Design:

- A read is cut into fixed-size blocks. Blocks held in memory or in the
  block cache are served in the trio thread without a thread hop; the
  cache is local disk and a hop would cost more than the read.
- Missing blocks download in worker threads under the data
  ``CapacityLimiter``. Reads, read-ahead and pins fetch runs of
  consecutive blocks (``RUN_BYTES``) in one server read, and the runs of
  one read in parallel.
- A pin hashes each file from its blocks as they arrive, in file order,
  so it does not read the file back from the cache to check it.
- A block that is already downloading is awaited, never downloaded again,
  so sixteen readers of one block cause one server read (``_inflight``).
- Each open file handle keeps a ``Stream``. A read that starts where the
  previous one ended doubles the read-ahead window, up to
  ``MAX_READAHEAD_BLOCKS``; any other read resets it to nothing, so a
  reader jumping through a large TIFF pays only for what it touches.
- Read-ahead runs in a background nursery and its failures are only
  logged: the reader gets the error when it reaches that block itself.
  It starts each block once per stream (``Stream.ahead``) and also loads
  blocks that the cache holds, in a worker thread, so a warm sequential
  read finds its blocks in memory instead of waiting for the disk and
  the block checks in the trio thread.
- When every block of a file has been seen, the whole file is checked
  against the server's checksum once, in a thread; a mismatch drops the
  file's blocks so they are fetched again.

Alternatives rejected: fetching whole files on open (a 4 GiB plate for
one tile), and read-ahead on every read (random readers pay for nothing).
"""

import functools
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from . import records
from .blocks import BlockCache, BlockKey
from .errors import (
    AccessDenied,
    CacheError,
    IntegrityError,
    OfflineError,
    OmerofsError,
    ServerFailure,
    first_error,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# 1 MiB blocks: a 64 KiB random read costs one 1 MiB download (about 1 ms on
# a 1 GB/s link, less than one 10 ms round trip), while a sequential 1 GiB
# read costs 1024 calls that read-ahead overlaps. Changing it keeps old
# blocks under their own key; they are simply not found.
DEFAULT_BLOCK_SIZE = 1024 * 1024

# Blocks are held whole in memory while they download and in the memory
# cache. The limit keeps a block's memory bounded, where a larger block
# (--block-size 1T) would read a whole file into memory at once.
MAX_BLOCK_SIZE = 16 * 1024 * 1024

# Sequential readers get up to this many blocks ahead (32 MiB at the default
# block size): 8 runs of 4 blocks, one for each of the data limiter's
# parallel downloads.
MAX_READAHEAD_BLOCKS = 32

# Reads and read-ahead fetch up to this many bytes of consecutive blocks in
# one server read. At 10 ms per call, 8 parallel reads of 1 MiB cap a stream
# near 800 MB/s, and reads of 4 MiB leave the limit to the link and the CPU.
# A RawFileStore also stays on one file for several blocks.
RUN_BYTES = 4 * 1024 * 1024

# A pin reads up to this many bytes per server read: a file of up to 16 MiB
# in one read, so that each file costs one RawFileStore.setFileId and one
# read. It stays below Ice's message size limit (see remote.connection).
PIN_RUN_BYTES = 16 * 1024 * 1024

# A pin hashes blocks in file order as they arrive, so blocks that arrive
# ahead of a slow one wait in memory, up to this many bytes. Past it the pin
# checks the file by reading it back from the cache instead.
MAX_HASH_BACKLOG = 64 * 1024 * 1024

# Parallel downloads. More than this mostly queues behind the server's own
# thread pool; fewer leaves the link idle at 10 ms latency.
DATA_CONCURRENCY = 8

# A read that starts this many blocks or less before or after the end of
# the previous reads of its file handle continues the stream. The mount's
# kernel read-ahead (4 MiB) keeps up to 4 requests of 1 MiB in flight.
SEQUENTIAL_SLACK_BLOCKS = 4

# Recently used blocks stay in memory, so a sequential reader that the
# kernel feeds in 128 KiB pieces reads and checks each block from disk once.
MEMORY_CACHE_BYTES = 64 * 1024 * 1024

# Limits the in-memory record of which blocks of a file are present.
_TRACKED_FILES = 4096


@dataclass
class Stream:
    """Read pattern of one open file handle."""

    next_offset: int = 0
    window: int = 0
    # Read-ahead has been started for every block below this index.
    ahead: int = 0


@dataclass
class _Download:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None


class Fetcher:
    """Serves byte ranges of original files from the cache or the server.

    ``download(file_id, offset, length)`` is the blocking server read
    (``Connection.read``); None means offline.
    """

    def __init__(self, cache: BlockCache, server: str, download: Callable[[int, int, int], bytes] | None,
                 block_size: int = DEFAULT_BLOCK_SIZE, concurrency: int = DATA_CONCURRENCY):
        if block_size < 4096 or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two from 4096 to {MAX_BLOCK_SIZE}")
        self.cache = cache
        self.server = server
        self.block_size = block_size
        self._download_block = download
        self._run_blocks = max(1, RUN_BYTES // block_size)
        self._pin_run_blocks = max(1, PIN_RUN_BYTES // block_size)
        self._limiter = trio.CapacityLimiter(concurrency)
        self._inflight: dict[tuple[int, int], _Download] = {}
        self._memory: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._memory_bytes = 0
        # Buffers behind the memory cache's blocks: id -> [buffer, blocks held].
        self._buffers: dict[int, list] = {}
        self._present: OrderedDict[int, set[int]] = OrderedDict()
        self._verifying: set[int] = set()
        self._nursery: trio.Nursery | None = None
        self.bytes_fetched = 0
        self.blocks_fetched = 0
        self.hits = 0
        self.misses = 0
        # Awaited with a file whose cached bytes failed the checksum, so that
        # copies outside the fetcher (the kernel's page cache) go too.
        self.on_mismatch: Callable[[records.OriginalFile], Awaitable[None]] | None = None

    @property
    def offline(self) -> bool:
        return self._download_block is None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the background nursery for read-ahead and checks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _key(self, file_id: int, index: int) -> BlockKey:
        return BlockKey(self.server, file_id, self.block_size, index)

    def _block_length(self, file: records.OriginalFile, index: int) -> int:
        return min(self.block_size, file.size - index * self.block_size)

    def block_count(self, file: records.OriginalFile) -> int:
        return math.ceil(file.size / self.block_size)

    async def read(self, file: records.OriginalFile, offset: int, length: int,
                   stream: Stream | None = None) -> bytes | memoryview:
        """Return ``length`` bytes of ``file`` from ``offset``, fewer at its end."""
        if offset >= file.size or length <= 0:
            return b""
        end = min(offset + length, file.size)
        first = offset // self.block_size
        last = (end - 1) // self.block_size
        if stream is not None:
            # Before the wait: the read-ahead it starts overlaps with this read.
            self._advance(file, stream, offset, end)

        blocks: dict[int, bytes] = {}
        missing = []
        for index in range(first, last + 1):
            data = self._memory_block(file, index)
            if data is None and (file.id, index) not in self._inflight:
                data = self._cached(file, index)
            if data is None:
                missing.append(index)
            else:
                blocks[index] = data
        if missing:
            self.misses += 1
            await self._fetch_all(file, missing, blocks)
        else:
            self.hits += 1

        start = offset - first * self.block_size
        joined = blocks[first] if first == last else b"".join(blocks[i] for i in range(first, last + 1))
        # A view, not a copy: the kernel requests each block in several pieces,
        # and pyfuse3 replies from any buffer.
        return memoryview(joined)[start:start + end - offset]

    def _memory_block(self, file: records.OriginalFile, index: int) -> bytes | None:
        memory_key = (file.id, index)
        data = self._memory.get(memory_key)
        if data is not None:
            self._memory.move_to_end(memory_key)
        return data

    def _cached(self, file: records.OriginalFile, index: int) -> bytes | None:
        """Return a block from the block cache (in this thread), or None."""
        data = self.cache.get(self._key(file.id, index))
        if data is None:
            return None
        if len(data) != self._block_length(file, index):
            # A block of another length belongs to another version of the file.
            self.cache.discard([self._key(file.id, index)])
            return None
        self._remember(file, index, data)
        return data

    def _remember(self, file: records.OriginalFile, index: int, data: bytes) -> None:
        memory_key = (file.id, index)
        if memory_key not in self._memory:
            self._memory[memory_key] = data
            self._memory_bytes += self._hold(data)
        while self._memory_bytes > MEMORY_CACHE_BYTES and self._memory:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= self._release(dropped)
        self._note_present(file, index)

    def _hold(self, data: bytes | memoryview) -> int:
        """Count a block's buffer into the memory cache; return the bytes it adds.

        A block of a run is a view of the whole run's buffer, which stays
        alive while any of its blocks does. The cache counts each buffer
        whole, once, so it stays within its limit whatever the blocks share.
        """
        owner = data.obj if isinstance(data, memoryview) else data
        entry = self._buffers.get(id(owner))
        if entry is not None:
            entry[1] += 1
            return 0
        self._buffers[id(owner)] = [owner, 1]
        return len(owner)

    def _release(self, data: bytes | memoryview) -> int:
        """Count a block out of the memory cache; return the bytes that go with it."""
        owner = data.obj if isinstance(data, memoryview) else data
        entry = self._buffers[id(owner)]
        entry[1] -= 1
        if entry[1]:
            return 0
        del self._buffers[id(owner)]
        return len(owner)

    async def _fetch_all(self, file: records.OriginalFile, indexes: list[int], blocks: dict[int, bytes]) -> None:
        # Blocks under way (read-ahead loading them from the cache) need no download.
        unclaimed = [index for index in indexes if (file.id, index) not in self._inflight]
        if unclaimed:
            if self.offline:
                raise OfflineError(f"OriginalFile {file.id} ({file.name}) is not in the cache and the mount is offline")
            if file.restricted:
                raise AccessDenied(f"The server restricts downloads of OriginalFile {file.id} ({file.name})")

        # Consecutive missing blocks load with one server read, as read-ahead's
        # do: with small blocks, a 1 MiB request would otherwise cost hundreds
        # of reads. They are claimed before any task starts, so that another
        # reader waits for them instead of loading them too.
        runs = [(first, self._claim_run(file, first, count))
                for first, count in consecutive_runs(unclaimed, self._run_blocks)]
        claimed_here = set(unclaimed)
        awaited = [index for index in indexes if index not in claimed_here]

        async def load(run: tuple[int, list[_Download]]) -> None:
            first, downloads = run
            for offset, data in enumerate(await self._complete_run(file, first, downloads)):
                blocks[first + offset] = data

        async def wait(index: int) -> None:
            blocks[index] = await self._fetch(file, index)

        if len(runs) == 1 and not awaited:
            await load(runs[0])
            return
        jobs = [functools.partial(load, run) for run in runs] + [functools.partial(wait, index) for index in awaited]
        await run_all(lambda job: job(), jobs)

    async def _fetch(self, file: records.OriginalFile, index: int) -> bytes:
        """Load one block from the cache or the server in a worker, or wait for the load under way."""
        while True:
            download = self._inflight.get((file.id, index))
            if download is None:
                return (await self._load_run(file, index, 1))[0]
            await download.done.wait()
            if download.error is not None:
                raise download.error
            if download.data is not None:
                return download.data
            # The load was cancelled with the request that started it, before
            # its worker ran, so this reader loads the block itself.

    async def _load_run(self, file: records.OriginalFile, first: int, count: int) -> list[bytes]:
        """Load blocks ``first`` to ``first + count - 1``, none of them under way, in one worker."""
        return await self._complete_run(file, first, self._claim_run(file, first, count))

    def _claim_run(self, file: records.OriginalFile, first: int, count: int) -> list[_Download]:
        """Mark a run of blocks as under way, so that readers wait for it instead of loading them too."""
        downloads = [_Download() for _ in range(count)]
        for offset, download in enumerate(downloads):
            self._inflight[(file.id, first + offset)] = download
        return downloads

    async def _complete_run(self, file: records.OriginalFile, first: int, downloads: list[_Download]) -> list[bytes]:
        try:
            blocks = await trio.to_thread.run_sync(self._load_blocks, file, first, len(downloads),
                                                   limiter=self._limiter)
            for offset, (download, data) in enumerate(zip(downloads, blocks)):
                download.data = data
                self._remember(file, first + offset, data)
            return blocks
        except Exception as error:
            for download in downloads:
                download.error = error
            raise
        finally:
            for offset, download in enumerate(downloads):
                del self._inflight[(file.id, first + offset)]
                download.done.set()

    def _load_blocks(self, file: records.OriginalFile, first: int, count: int) -> list[bytes]:
        """Worker thread: return blocks from the cache, downloading the missing ones in one read."""
        found = [self._cached_in_thread(file, index) for index in range(first, first + count)]
        self._download_missing(file, first, found, pinned=False)
        return found

    def _cached_in_thread(self, file: records.OriginalFile, index: int) -> bytes | None:
        """Worker thread: return a block the cache holds, or None."""
        # Read-ahead requests cached blocks, and another process (a pin on the
        # same cache) may have stored one meanwhile.
        cached = self.cache.get(self._key(file.id, index))
        if cached is not None and len(cached) == self._block_length(file, index):
            return cached
        return None

    def _download_missing(self, file: records.OriginalFile, first: int, found: list, pinned: bool) -> None:
        """Worker thread: download the missing blocks of ``found`` in one read, store them and fill them in.

        ``found[i]`` is block ``first + i``, None when missing. Blocks between
        the missing ones come along in the read, but ``found`` keeps its own.
        """
        missing = [offset for offset, data in enumerate(found) if data is None]
        if not missing:
            return
        for index, data in self._download_span(file, first + missing[0], first + missing[-1] + 1):
            if found[index - first] is None:
                found[index - first] = data
                self._store(file, index, data, pinned)

    def _download_span(self, file: records.OriginalFile, start: int, stop: int) -> list[tuple[int, bytes]]:
        """Worker thread: read blocks ``start`` to ``stop - 1`` from the server in one read."""
        if self._download_block is None:
            raise OfflineError(f"OriginalFile {file.id} ({file.name}) is not in the cache and the mount is offline")
        offset = start * self.block_size
        expected = min(file.size, stop * self.block_size) - offset
        data = self._download_block(file.id, offset, expected)
        if len(data) != expected:
            raise ServerFailure(f"The server returned {len(data)} bytes of OriginalFile {file.id} at offset "
                                f"{offset}, expected {expected}")
        self.bytes_fetched += len(data)
        self.blocks_fetched += stop - start
        if stop - start == 1:
            return [(start, data)]
        view = memoryview(data)
        return [(index, view[(index - start) * self.block_size:][:self._block_length(file, index)])
                for index in range(start, stop)]

    def _store(self, file: records.OriginalFile, index: int, data: bytes, pinned: bool) -> None:
        try:
            self.cache.put(self._key(file.id, index), data, pinned=pinned)
        except CacheError as error:
            if pinned:
                raise
            # A full or read-only cache must not fail the read: the block is
            # served, and kept in memory, without a copy on disk.
            self.cache.warn(f"reading OriginalFile {file.id} without caching it: {error}")

    def _advance(self, file: records.OriginalFile, stream: Stream, offset: int, end: int) -> None:
        """Update the stream's read-ahead window and start read-ahead if sequential."""
        # The kernel's read-ahead sends several requests of one reader at once,
        # and trio runs their tasks in any order, so a read counts as
        # sequential when it starts a few blocks or less from the stream's end.
        slack = SEQUENTIAL_SLACK_BLOCKS * self.block_size
        sequential = offset > 0 and abs(offset - stream.next_offset) <= slack
        if not sequential:
            stream.next_offset = end
            stream.window = 0
            stream.ahead = 0
            return
        stream.next_offset = max(stream.next_offset, end)
        last = (stream.next_offset - 1) // self.block_size
        stream.window = min(max(2, stream.window * 2), MAX_READAHEAD_BLOCKS)
        if self._nursery is None or file.restricted:
            return
        start = max(last + 1, stream.ahead)
        stop = min(last + 1 + stream.window, self.block_count(file))
        if stop - start < min(self._run_blocks, stream.window) and stop < self.block_count(file):
            # The window moves a block at a time; waiting for a whole run
            # makes one server read of several blocks instead of several reads.
            return
        unloaded = [index for index in range(start, stop)
                    if (file.id, index) not in self._inflight and (file.id, index) not in self._memory]
        for first, count in consecutive_runs(unloaded, self._run_blocks):
            # Claimed now, not when the task starts, so a read in between waits for it.
            self._nursery.start_soon(self._read_ahead, file, first, self._claim_run(file, first, count))
        stream.ahead = max(stream.ahead, stop)

    async def _read_ahead(self, file: records.OriginalFile, first: int, downloads: list[_Download]) -> None:
        try:
            await self._complete_run(file, first, downloads)
        except OmerofsError as error:
            count = len(downloads)
            log.debug("read-ahead of OriginalFile %d blocks %d-%d failed: %s", file.id, first,
                      first + count - 1, error)
        except Exception:
            # A bug, but raising it here would end the background nursery and
            # with it the mount. A reader of these blocks gets the error itself.
            log.exception("read-ahead of OriginalFile %d from block %d failed unexpectedly", file.id, first)

    # Pinning

    def _pinned_key(self, file: records.OriginalFile) -> str:
        return f"pinned/{self.server}/{file.id}"

    def is_pinned(self, file: records.OriginalFile) -> bool:
        return self.cache.get_record(self._pinned_key(file)) == (file.hash or "")

    async def pin(self, file: records.OriginalFile, progress: Callable[[int, bool], None]) -> bool:
        """Bring every block of ``file`` into the pinned store and check the whole file.

        ``progress(bytes, was_local)`` is called once per block. Returns True
        when the file was already pinned and verified, so nothing was done.
        Blocks already cached move to the pinned store without a download, so
        an interrupted pin continues where it stopped.
        """
        if self.is_pinned(file):
            progress(file.size, True)
            return True
        if self.offline:
            raise OfflineError(f"OriginalFile {file.id} ({file.name}) cannot be pinned offline")
        if file.restricted:
            raise AccessDenied(f"The server restricts downloads of OriginalFile {file.id} ({file.name})")

        # A file that a mount has read whole and checked needs no new hash.
        digest = None
        if self.cache.get_record(self._verified_key(file)) != file.hash:
            digest = new_hasher(file.hasher)
        ordered = _OrderedDigest(digest) if digest is not None else None

        async def pin_run(run: tuple[int, int]) -> None:
            found = await trio.to_thread.run_sync(self._pin_blocks, file, *run, ordered, limiter=self._limiter)
            for length, local in found:
                progress(length, local)

        # The pin checks the file itself; a background check racing it could
        # drop the blocks between the two.
        self._verifying.add(file.id)
        try:
            await run_all(pin_run, consecutive_runs(range(self.block_count(file)), self._pin_run_blocks))
            if ordered is not None and ordered.hexdigest() is not None:
                self._check_digest(file, ordered.hexdigest())
                complete = True
            else:
                complete = await trio.to_thread.run_sync(self.verify, file, limiter=self._limiter)
        except IntegrityError:
            await self._forget_mismatch(file)
            raise
        finally:
            self._verifying.discard(file.id)
        if not complete:
            raise ServerFailure(f"OriginalFile {file.id} ({file.name}) lost blocks while it was pinned; run pin again")
        self.cache.set_record(self._pinned_key(file), file.hash or "")
        return False

    def _pin_blocks(self, file: records.OriginalFile, first: int, count: int,
                    ordered: "_OrderedDigest | None") -> list[tuple[int, bool]]:
        """Worker thread: pin a run of blocks, downloading the missing ones in one read.

        Returns (length, was_local) of each block, and feeds ``ordered``
        every block, so the file is hashed without reading it back.
        """
        found: list[bytes | None] = []
        for index in range(first, first + count):
            key = self._key(file.id, index)
            if not self.cache.pin(key):
                found.append(None)
            elif ordered is None:
                # Moved to the pinned store; with no hash to feed, its bytes are not needed.
                found.append(b"")
            else:
                found.append(self.cache.get(key))
        local = [data is not None for data in found]
        self._download_missing(file, first, found, pinned=True)
        if ordered is not None:
            for offset, data in enumerate(found):
                ordered.add(first + offset, data)
        return [(self._block_length(file, first + offset), was_local) for offset, was_local in enumerate(local)]

    def unpin(self, file: records.OriginalFile) -> None:
        """Make a file's blocks evictable again."""
        for index in range(self.block_count(file)):
            self.cache.unpin(self._key(file.id, index))
        self.cache.delete_record(self._pinned_key(file))

    def local_bytes(self, file: records.OriginalFile) -> int:
        """Return how many bytes of ``file`` the cache holds."""
        return sum(self._block_length(file, i) for i in range(self.block_count(file))
                   if self.cache.contains(self._key(file.id, i)))

    # Whole-file check against the server's checksum

    def _note_present(self, file: records.OriginalFile, index: int) -> None:
        if not file.hash or file.id in self._verifying:
            return
        present = self._present.get(file.id)
        if present is None:
            if self.cache.get_record(self._verified_key(file)) == file.hash:
                return
            present = self._present[file.id] = set()
            while len(self._present) > _TRACKED_FILES:
                self._present.popitem(last=False)
        present.add(index)
        if len(present) == self.block_count(file) and self._nursery is not None:
            del self._present[file.id]
            self._verifying.add(file.id)
            self._nursery.start_soon(self._verify_in_thread, file)

    def _verified_key(self, file: records.OriginalFile) -> str:
        return f"verified/{self.server}/{file.id}"

    async def _verify_in_thread(self, file: records.OriginalFile) -> None:
        try:
            await trio.to_thread.run_sync(self.verify, file)
        except IntegrityError as error:
            await self._forget_mismatch(file)
            log.error("%s", error)
        except OmerofsError as error:
            log.warning("could not check OriginalFile %d: %s", file.id, error)
        finally:
            self._verifying.discard(file.id)

    def verify(self, file: records.OriginalFile) -> bool:
        """Check a fully cached file against the server's checksum.

        Returns False when a block is missing. Raises IntegrityError, after
        dropping every block of the file, when the checksum differs.
        """
        if self.cache.get_record(self._verified_key(file)) == file.hash:
            return True
        digest = new_hasher(file.hasher)
        if digest is None:
            log.debug("OriginalFile %d has no checksum omerofs can check (%s)", file.id, file.hasher)
            return True
        for index in range(self.block_count(file)):
            data = self.cache.get(self._key(file.id, index))
            if data is None:
                return False
            digest.update(data)
        self._check_digest(file, digest.hexdigest())
        return True

    def _check_digest(self, file: records.OriginalFile, hexdigest: str) -> None:
        """Record a file as checked, or drop its blocks and raise IntegrityError if the hash differs."""
        if hexdigest.lower() != (file.hash or "").lower():
            self.cache.discard(self._key(file.id, i) for i in range(self.block_count(file)))
            raise IntegrityError(f"OriginalFile {file.id} ({file.name}) does not match the server's "
                                 f"{file.hasher} checksum; its cached blocks were dropped")
        self.cache.set_record(self._verified_key(file), file.hash)

    async def _forget_mismatch(self, file: records.OriginalFile) -> None:
        for index in range(self.block_count(file)):
            self._memory_drop(file.id, index)
        if self.on_mismatch is not None:
            await self.on_mismatch(file)

    def _memory_drop(self, file_id: int, index: int) -> None:
        data = self._memory.pop((file_id, index), None)
        if data is not None:
            self._memory_bytes -= self._release(data)


class _OrderedDigest:
    """A hash fed from worker threads with blocks in any order, hashed in file order.

    Blocks that arrive ahead of the next one wait in memory, up to
    ``MAX_HASH_BACKLOG`` bytes; past that the digest gives up and
    ``hexdigest`` returns None.
    """

    def __init__(self, digest):
        self._digest = digest
        self._next = 0
        self._waiting: dict[int, bytes] = {}
        self._waiting_bytes = 0
        self._gave_up = False
        self._lock = threading.Lock()

    def add(self, index: int, data: bytes) -> None:
        with self._lock:
            if self._gave_up:
                return
            self._waiting[index] = data
            self._waiting_bytes += len(data)
            while self._next in self._waiting:
                block = self._waiting.pop(self._next)
                self._waiting_bytes -= len(block)
                self._digest.update(block)
                self._next += 1
            if self._waiting_bytes > MAX_HASH_BACKLOG:
                self._gave_up = True
                self._waiting.clear()

    def hexdigest(self) -> str | None:
        with self._lock:
            if self._gave_up or self._waiting:
                return None
            return self._digest.hexdigest()


def consecutive_runs(indexes: Iterable[int], longest: int) -> list[tuple[int, int]]:
    """Group sorted indexes into (first, count) runs of consecutive ones, at most ``longest`` long."""
    runs: list[tuple[int, int]] = []
    for index in indexes:
        if runs and runs[-1][0] + runs[-1][1] == index and runs[-1][1] < longest:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


async def run_all(function: Callable[[T], Awaitable[None]], items: Iterable[T]) -> None:
    """Run ``function(item)`` for every item in parallel; raise the first omerofs error as itself.

    A failed download then fails a read with its own error and errno, not
    with the ExceptionGroup of a trio nursery, which the FUSE handlers and
    the command line would take for a bug.
    """
    try:
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(function, item)
    except* OmerofsError as group:
        raise first_error(group) from None


def new_hasher(hasher: str | None):
    """Return a hashlib object for an OMERO checksum algorithm, or None if unsupported."""
    if hasher == records.SHA1:
        return hashlib.sha1()
    if hasher == records.MD5:
        return hashlib.md5()
    return None
