"""The persistent block cache, the only module that defines the on-disk layout.

Layout under the cache directory::

    blocks/    diskcache.Cache of unpinned blocks, evicted least recently used first
               (reads record their use in batches, not one transaction each)
    pinned/    diskcache.Cache of pinned blocks, never evicted
    records/   diskcache.Cache of metadata records and per-file states
    logs/      mount daemon logs

A block key names the server (its database UUID), the OriginalFile ID, the
block size and the block index, so two servers or two block sizes never
share an entry. Each stored block starts with a header that repeats that
identity and carries the length and a CRC-32 of the data; every read checks
it, and a block that fails the check is dropped and reported missing, so
the caller fetches it again instead of serving bad bytes.

diskcache writes a value's file before it commits the row that points to
it, so a crash can leave an orphan file but never a half-written entry that
a read would find.
"""

import logging
import shutil
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import diskcache

from .errors import CacheError

log = logging.getLogger(__name__)

# Magic, file ID, block index, data length, CRC-32 of the data.
_HEADER = struct.Struct("<8sQQII")
_MAGIC = b"OFSBLK01"

# Default size limit of the unpinned cache. Ten gigabytes hold a working set
# of a few large plates or many small images; users change it with
# --cache-size.
DEFAULT_SIZE_LIMIT = 10 * 1024 ** 3

# Writes stop evicting-and-adding and fail with CacheError when the disk
# holding the cache has less free space than this, so a full cache never
# fills the user's disk.
DEFAULT_FREE_SPACE_FLOOR = 1024 ** 3

# How often (seconds) the free-space floor is checked; statvfs on every
# write would cost more than the writes it guards.
_FREE_SPACE_CHECK_PERIOD = 2.0

# Reads of unpinned blocks whose access times are written in one transaction.
_USE_BATCH = 64

# Logs warnings about bad blocks at most this often (seconds).
_WARNING_PERIOD = 10.0


@dataclass(frozen=True)
class BlockKey:
    server: str
    file_id: int
    block_size: int
    index: int

    def __str__(self) -> str:
        return f"{self.server}/{self.file_id}/{self.block_size}/{self.index}"


class _Packed:
    """A block with its header, as the file object that diskcache copies into its file.

    diskcache writes each piece that ``read`` returns, so the header and the
    data go out as they are, without joining them into a new copy.
    """

    def __init__(self, key: BlockKey, data: bytes | memoryview):
        self._pieces = [_HEADER.pack(_MAGIC, key.file_id, key.index, len(data), zlib.crc32(data)), data]

    def read(self, size: int = -1) -> bytes | memoryview:
        return self._pieces.pop(0) if self._pieces else b""


def _unpack(key: BlockKey, stored: bytes) -> memoryview | None:
    """Return the block's data, a view of ``stored``, or None when its header does not match."""
    if len(stored) < _HEADER.size:
        return None
    magic, file_id, index, length, crc = _HEADER.unpack_from(stored)
    data = memoryview(stored)[_HEADER.size:]
    if magic != _MAGIC or file_id != key.file_id or index != key.index or length != len(data):
        return None
    if zlib.crc32(data) != crc:
        return None
    return data


class BlockCache:
    """Blocks of original files and metadata records on local disk.

    Safe to share between threads and between processes (a mount and a
    pin on the same directory): diskcache keeps its index in SQLite.
    """

    def __init__(self, directory: Path, size_limit: int | None = None,
                 free_space_floor: int = DEFAULT_FREE_SPACE_FLOOR):
        """Open (or create) the cache in ``directory``.

        ``size_limit`` None keeps the limit the cache was last given, so that
        ``omerofs status`` or a pin does not undo a mount's --cache-size.
        """
        self.directory = Path(directory)
        self.free_space_floor = free_space_floor
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._blocks = diskcache.Cache(str(self.directory / "blocks"),
                                           eviction_policy="least-recently-used")
            # The same store again, for reads that leave access times to _note_use.
            # update=False changes this handle only, not the store's settings.
            self._blocks_reader = diskcache.Cache(str(self.directory / "blocks"))
            self._blocks_reader.reset("eviction_policy", "none", update=False)
            self._pinned = diskcache.Cache(str(self.directory / "pinned"), size_limit=2 ** 62,
                                           eviction_policy="none")
            self._records = diskcache.Cache(str(self.directory / "records"), size_limit=2 ** 62,
                                            eviction_policy="none")
            if size_limit is not None:
                self._blocks.reset("size_limit", size_limit)
                self._records.set("settings/size-limit", size_limit)
            elif self._records.get("settings/size-limit") is None:
                # diskcache's own default (1 GB) would apply otherwise.
                self._blocks.reset("size_limit", DEFAULT_SIZE_LIMIT)
                self._records.set("settings/size-limit", DEFAULT_SIZE_LIMIT)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            # A read-only directory fails here, in SQLite, even for status.
            raise CacheError(f"Cannot open the cache in {self.directory}: {error}; the cache directory must be "
                             "writable.") from error
        self._free_checked_at = 0.0
        self._free_ok = True
        self._last_warning = 0.0
        self._lock = threading.Lock()
        self._use_lock = threading.Lock()
        self._used: list[str] = []

    @property
    def log_directory(self) -> Path:
        path = self.directory / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        with self._lock:
            names, self._used = self._used, []
        if names:
            self._write_uses(names)
        for cache in (self._blocks, self._blocks_reader, self._pinned, self._records):
            cache.close()

    # Blocks

    def get(self, key: BlockKey) -> bytes | None:
        """Return a cached block's data, or None if it is missing or damaged."""
        name = str(key)
        for cache, reader in ((self._pinned, self._pinned), (self._blocks, self._blocks_reader)):
            stored = self._read(reader, name)
            if stored is None:
                continue
            data = _unpack(key, stored)
            if data is not None:
                if cache is self._blocks:
                    self._note_use(name)
                return data
            self.warn(f"dropping damaged cache block {name}")
            cache.delete(name)
        return None

    def _read(self, reader: diskcache.Cache, name: str) -> bytes | None:
        # read=True returns the value's file unread, so a block is read
        # straight from its file into one bytes object.
        try:
            value = reader.get(name, read=True)
            if value is None or isinstance(value, bytes):
                return value
            with value:
                return value.read()
        except (OSError, sqlite3.Error) as error:
            self.warn(f"cannot read cache block {name}: {error}")
            return None

    def _note_use(self, name: str) -> None:
        """Record a read of an unpinned block, for least-recently-used eviction.

        Each get() from the evictable store updates the entry's access time in
        a write transaction of its own, which made a warm read wait on SQLite
        once per block. Reads go through a second handle that does not update
        it, and the access times of ``_USE_BATCH`` blocks are written in one
        transaction instead.
        """
        with self._lock:
            self._used.append(name)
            if len(self._used) < _USE_BATCH:
                return
            names, self._used = self._used, []
        self._write_uses(names)

    def _write_uses(self, names: list[str]) -> None:
        try:
            with self._use_lock, self._blocks.transact():
                for name in names:
                    # get() in a transaction is the only public way to update an access time.
                    value = self._blocks.get(name, read=True)
                    if value is not None and not isinstance(value, bytes):
                        value.close()
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            # A full disk fails the update, so eviction uses the older access times.
            self.warn(f"cannot record the use of {len(names)} cache blocks: {error}")

    def contains(self, key: BlockKey) -> bool:
        """Return whether the cache holds a block. A failed look-up counts as missing, as in get()."""
        name = str(key)
        try:
            return name in self._pinned or name in self._blocks
        except sqlite3.Error as error:
            self.warn(f"cannot look up cache block {name}: {error}")
            return False

    def put(self, key: BlockKey, data: bytes, pinned: bool = False) -> None:
        """Store a whole, checked block."""
        self._check_free_space()
        cache = self._pinned if pinned else self._blocks
        try:
            # Given bytes, diskcache would iterate them line by line.
            cache.set(str(key), _Packed(key, data), read=True)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            raise CacheError(f"Cannot write to the cache in {self.directory}: {error}") from error

    def pin(self, key: BlockKey) -> bool:
        """Move a cached block into the pinned store; return False if it is missing."""
        name = str(key)
        if name in self._pinned:
            return True
        stored = self._blocks.get(name)
        if stored is None or _unpack(key, stored) is None:
            return False
        self._pinned.set(name, stored)
        self._blocks.delete(name)
        return True

    def unpin(self, key: BlockKey) -> None:
        """Move a pinned block back to the evictable store."""
        name = str(key)
        stored = self._pinned.get(name)
        if stored is None:
            return
        self._blocks.set(name, stored)
        self._pinned.delete(name)

    def discard(self, keys: Iterable[BlockKey]) -> None:
        for key in keys:
            self._pinned.delete(str(key))
            self._blocks.delete(str(key))

    def volume(self) -> dict[str, int]:
        """Return the bytes held by unpinned and pinned blocks."""
        return {"cached": self._blocks.volume(), "pinned": self._pinned.volume(),
                "limit": self._blocks.size_limit}

    def _check_free_space(self) -> None:
        now = time.monotonic()
        if now - self._free_checked_at > _FREE_SPACE_CHECK_PERIOD:
            self._free_checked_at = now
            self._free_ok = shutil.disk_usage(self.directory).free >= self.free_space_floor
        if not self._free_ok:
            raise CacheError(f"The disk holding {self.directory} has less than "
                             f"{self.free_space_floor // 1024 ** 2} MiB free; free some space or "
                             "lower --cache-size.")

    def warn(self, message: str) -> None:
        """Log a warning about the cache, at most one per period; the rest go to debug."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning < _WARNING_PERIOD:
                log.debug("%s", message)
                return
            self._last_warning = now
        log.warning("%s", message)

    # Records

    def get_record(self, key: str):
        return self._records.get(key)

    def set_record(self, key: str, value) -> None:
        try:
            self._records.set(key, value)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            raise CacheError(f"Cannot write to the cache in {self.directory}: {error}") from error

    def keep_record(self, key: str, value) -> None:
        """Persist a record that only later or offline mounts need, if the cache can take it.

        A full or read-only cache makes this a warning, so that it does not
        fail the listing or look-up that fetched the record.
        """
        try:
            self.set_record(key, value)
        except CacheError as error:
            self.warn(f"not keeping record {key}: {error}")

    def delete_record(self, key: str) -> None:
        self._records.delete(key)

    def record_keys(self, prefix: str) -> list[str]:
        return [key for key in self._records.iterkeys() if isinstance(key, str) and key.startswith(prefix)]
