"""Bytes of the test server's original files, and their SHA-1 checksums.

A file's content comes from a local file (the sample data, or a sparse file that
`generate` wrote) or from a synthetic description: a size, zero fill, and marker
bytes at given offsets. Markers at known offsets, some past 4 GiB, make offset
arithmetic bugs in a client visible.

Hashing a multi-GiB file takes seconds, so `HashCache` keeps each computed SHA-1
in a JSON sidecar keyed by the file's absolute path, size and modification time
(or by the synthetic description), and a file is hashed once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# 8 MiB per read keeps hashing near hashlib's throughput without large buffers.
HASH_CHUNK_BYTES = 8 * 1024 * 1024

HASHER = "SHA1-160"


class FileContent(Protocol):
    """The bytes of one original file."""

    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Return up to `length` bytes from `offset`; fewer at the end of the file."""

    def cache_key(self) -> str:
        """Return a string that changes whenever the content may have changed."""


@dataclasses.dataclass(frozen=True)
class LocalFile:
    """Content read from a file on the server's disk."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def open(cls, path: Path) -> "LocalFile":
        status = path.stat()
        return cls(path.resolve(), status.st_size, status.st_mtime_ns)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid read of {length} bytes at offset {offset}")
        if offset >= self.size or length == 0:
            return b""
        with open(self.path, "rb") as handle:
            return os.pread(handle.fileno(), min(length, self.size - offset), offset)

    def cache_key(self) -> str:
        return f"file:{self.path}:{self.size}:{self.mtime_ns}"


@dataclasses.dataclass(frozen=True)
class SyntheticFile:
    """Content made of `fill` bytes with `markers` (offset -> bytes) laid over them."""

    size: int
    markers: tuple[tuple[int, bytes], ...] = ()
    fill: int = 0

    def __post_init__(self) -> None:
        for offset, data in self.markers:
            if offset < 0 or offset + len(data) > self.size:
                raise ValueError(f"marker at offset {offset} ({len(data)} bytes) lies outside {self.size} bytes")

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid read of {length} bytes at offset {offset}")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        buffer = bytearray([self.fill]) * (end - offset)
        for marker_offset, data in self.markers:
            start = max(marker_offset, offset)
            stop = min(marker_offset + len(data), end)
            if start < stop:
                buffer[start - offset:stop - offset] = data[start - marker_offset:stop - marker_offset]
        return bytes(buffer)

    def cache_key(self) -> str:
        description = json.dumps(
            [self.size, self.fill, [[offset, data.hex()] for offset, data in self.markers]]
        )
        return "synthetic:" + hashlib.sha1(description.encode()).hexdigest()


def iter_chunks(content: FileContent, chunk_bytes: int = HASH_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the content from start to end in chunks."""
    offset = 0
    while offset < content.size:
        chunk = content.read(offset, chunk_bytes)
        if not chunk:
            raise OSError(f"content ended at {offset} of {content.size} bytes")
        yield chunk
        offset += len(chunk)


def sha1_hex(content: FileContent) -> str:
    """Compute the SHA-1 of the content as lower-case hex, as OMERO stores `OriginalFile.hash`."""
    digest = hashlib.sha1()
    for chunk in iter_chunks(content):
        digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """SHA-1 checksums by content cache key, persisted in a JSON sidecar file.

    The sidecar is written atomically (temporary file, then rename). When it cannot
    be written, as for a read-only installation, the cache stays in memory.
    """

    def __init__(self, sidecar: Path | None):
        self.sidecar = sidecar
        self._lock = threading.Lock()
        self._entries: dict[str, str] = {}
        self._dirty = False
        if sidecar is not None and sidecar.exists():
            try:
                self._entries = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                log.warning("ignoring unreadable hash cache %s: %s", sidecar, error)

    def sha1(self, content: FileContent) -> str:
        """Return the content's SHA-1, computing it only when no cached value matches."""
        key = content.cache_key()
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None:
            return cached

        log.info("computing SHA-1 of %s (%d bytes)", key, content.size)
        value = sha1_hex(content)
        with self._lock:
            self._entries[key] = value
            self._dirty = True
        return value

    def save(self) -> None:
        """Write new entries to the sidecar, if there is one and it is writable."""
        with self._lock:
            if not self._dirty or self.sidecar is None:
                return
            entries = dict(self._entries)
            self._dirty = False
        try:
            self.sidecar.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.sidecar.parent, prefix=self.sidecar.name, suffix=".tmp",
                delete=False, encoding="utf-8",
            ) as handle:
                json.dump(entries, handle, indent=0, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, self.sidecar)
        except OSError as error:
            log.warning("could not save hash cache %s: %s", self.sidecar, error)
