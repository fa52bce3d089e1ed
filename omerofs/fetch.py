"""Block reads of original files: cache first, then the server, one download per block.

Design:

- A read is cut into fixed-size blocks. Blocks held in memory or in the
  block cache are served in the trio thread without a thread hop; the
  cache is local disk and a hop would cost more than the read.
- Missing blocks download in worker threads under the data
  ``CapacityLimiter``, all blocks of one read in parallel.
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

import hashlib
import logging
import math
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
# cache, and read-ahead runs up to 16 blocks: 16 MiB blocks keep that near
# 256 MiB, and a larger block (--block-size 1T) would read a whole file
# into memory at once.
MAX_BLOCK_SIZE = 16 * 1024 * 1024

# Sequential readers get up to this many blocks ahead (16 MiB at the default
# block size): enough to cover 10 ms of latency at several hundred MB/s with
# the data limiter's parallel downloads.
MAX_READAHEAD_BLOCKS = 16

# Parallel downloads. More than this mostly queues behind the server's own
# thread pool; fewer leaves the link idle at 10 ms latency.
DATA_CONCURRENCY = 8

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
        self._limiter = trio.CapacityLimiter(concurrency)
        self._inflight: dict[tuple[int, int], _Download] = {}
        self._memory: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._memory_bytes = 0
        self._present: OrderedDict[int, set[int]] = OrderedDict()
        self._verifying: set[int] = set()
        self._nursery: trio.Nursery | None = None
        self.bytes_fetched = 0
        self.blocks_fetched = 0
        self.hits = 0
        self.misses = 0
        # Called with a file whose cached bytes failed the checksum, so that
        # copies outside the fetcher (the kernel's page cache) go too.
        self.on_mismatch: Callable[[records.OriginalFile], None] | None = None

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

        if stream is not None:
            self._advance(file, stream, offset, end, last)

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
            self._memory_bytes += len(data)
        while self._memory_bytes > MEMORY_CACHE_BYTES and self._memory:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped)
        self._note_present(file, index)

    async def _fetch_all(self, file: records.OriginalFile, indexes: list[int], blocks: dict[int, bytes]) -> None:
        # Blocks under way (read-ahead loading them from the cache) need no download.
        if any((file.id, index) not in self._inflight for index in indexes):
            if self.offline:
                raise OfflineError(f"OriginalFile {file.id} ({file.name}) is not in the cache and the mount is offline")
            if file.restricted:
                raise AccessDenied(f"The server restricts downloads of OriginalFile {file.id} ({file.name})")

        async def fetch_one(index: int) -> None:
            blocks[index] = await self._fetch(file, index)

        if len(indexes) == 1:
            await fetch_one(indexes[0])
            return
        await run_all(fetch_one, indexes)

    async def _fetch(self, file: records.OriginalFile, index: int, pinned: bool = False) -> bytes:
        """Load one block from the cache or the server in a worker, or wait for the load under way."""
        memory_key = (file.id, index)
        download = self._inflight.get(memory_key)
        if download is not None:
            await download.done.wait()
            if download.error is not None:
                raise download.error
            return download.data

        download = _Download()
        self._inflight[memory_key] = download
        try:
            data = await trio.to_thread.run_sync(self._download_and_store, file, index, pinned,
                                                 limiter=self._limiter)
            download.data = data
            self._remember(file, index, data)
            return data
        except BaseException as error:
            download.error = error
            raise
        finally:
            del self._inflight[memory_key]
            download.done.set()

    def _download_and_store(self, file: records.OriginalFile, index: int, pinned: bool) -> bytes:
        """Worker thread: return a cached block, or read it from the server, check it and store it."""
        key = self._key(file.id, index)
        if pinned and self.cache.pin(key):
            return self.cache.get(key)
        expected = self._block_length(file, index)
        # Read-ahead requests cached blocks, and another process (a pin on the
        # same cache) may have stored one meanwhile. The look-up comes first
        # because a miss in get() costs a write transaction in diskcache.
        if self.cache.contains(key):
            cached = self.cache.get(key)
            if cached is not None and len(cached) == expected:
                return cached
        if self._download_block is None:
            raise OfflineError(f"OriginalFile {file.id} ({file.name}) is not in the cache and the mount is offline")

        data = self._download_block(file.id, index * self.block_size, expected)
        if len(data) != expected:
            raise ServerFailure(f"The server returned {len(data)} bytes of OriginalFile {file.id} at offset "
                                f"{index * self.block_size}, expected {expected}")
        try:
            self.cache.put(key, data, pinned=pinned)
        except CacheError as error:
            if pinned:
                raise
            # A full or read-only cache must not fail the read: the block is
            # served, and kept in memory, without a copy on disk.
            self.cache.warn(f"reading OriginalFile {file.id} without caching it: {error}")
        self.bytes_fetched += len(data)
        self.blocks_fetched += 1
        return data

    def _advance(self, file: records.OriginalFile, stream: Stream, offset: int, end: int, last: int) -> None:
        """Update the stream's read-ahead window and start read-ahead if sequential."""
        sequential = offset == stream.next_offset and offset > 0
        stream.next_offset = end
        if not sequential:
            stream.window = 0
            stream.ahead = 0
            return
        stream.window = min(max(2, stream.window * 2), MAX_READAHEAD_BLOCKS)
        if self._nursery is None or file.restricted:
            return
        start = max(last + 1, stream.ahead)
        stop = min(last + 1 + stream.window, self.block_count(file))
        for index in range(start, stop):
            if (file.id, index) in self._inflight or (file.id, index) in self._memory:
                continue
            self._nursery.start_soon(self._read_ahead, file, index)
        stream.ahead = max(stream.ahead, stop)

    async def _read_ahead(self, file: records.OriginalFile, index: int) -> None:
        try:
            await self._fetch(file, index)
        except OmerofsError as error:
            log.debug("read-ahead of OriginalFile %d block %d failed: %s", file.id, index, error)

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

        async def pin_block(index: int) -> None:
            key = self._key(file.id, index)
            local = await trio.to_thread.run_sync(self.cache.pin, key, limiter=self._limiter)
            if not local:
                await self._fetch(file, index, pinned=True)
            progress(self._block_length(file, index), local)

        # The pin checks the file itself; a background check racing it could
        # drop the blocks between the two.
        self._verifying.add(file.id)
        try:
            await run_all(pin_block, range(self.block_count(file)))
            complete = await trio.to_thread.run_sync(self.verify, file, limiter=self._limiter)
        except IntegrityError:
            self._forget_mismatch(file)
            raise
        finally:
            self._verifying.discard(file.id)
        if not complete:
            raise ServerFailure(f"OriginalFile {file.id} ({file.name}) lost blocks while it was pinned; run pin again")
        self.cache.set_record(self._pinned_key(file), file.hash or "")
        return False

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
            self._forget_mismatch(file)
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
        if digest.hexdigest().lower() != (file.hash or "").lower():
            self.cache.discard(self._key(file.id, i) for i in range(self.block_count(file)))
            raise IntegrityError(f"OriginalFile {file.id} ({file.name}) does not match the server's "
                                 f"{file.hasher} checksum; its cached blocks were dropped")
        self.cache.set_record(self._verified_key(file), file.hash)
        return True

    def _forget_mismatch(self, file: records.OriginalFile) -> None:
        for index in range(self.block_count(file)):
            self._memory_drop(file.id, index)
        if self.on_mismatch is not None:
            self.on_mismatch(file)

    def _memory_drop(self, file_id: int, index: int) -> None:
        data = self._memory.pop((file_id, index), None)
        if data is not None:
            self._memory_bytes -= len(data)


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
