"""RawFileStore: reading the bytes of one original file at a time.

Behaviour copied from OMERO 5's RawFileBean and RepoRawFileStoreI:

- Every operation before `setFileId` raises `omero.ApiUsageException`.
- `setFileId` of a file the caller cannot see raises what `IQuery.get` raises.
  The binary-access restriction is checked at `read`, which then raises
  `omero.SecurityViolation`, while `size` still works.
- `read(position, length)` always returns `length` bytes: bytes past the end of
  the file are zeros, because OMERO fills a zeroed array of that length from the
  file. A length over 64,000,000 raises `omero.ApiUsageException("Too big: N")`.
  A negative position or length fails inside Java and reaches the client as
  `omero.InternalException`.
- The store is read-only: `write` and `truncate` raise `omero.SecurityViolation`.

The fault knobs act on `read`: a failed read, a dropped connection, corrupted
bytes and the bandwidth limit.
"""

from __future__ import annotations

import logging

import omero
import omero.api
from omero.rtypes import rlong

from .base import Servant, amd

log = logging.getLogger(__name__)

# RepoRawFileStoreI rejects reads longer than this many bytes.
MAX_READ_LENGTH = 64 * 1000 * 1000


class RawFileStoreI(Servant, omero.api.RawFileStore):
    """RawFileStore for one `createRawFileStore` call."""

    def __init__(self, factory):
        self.factory = factory
        self._file_id: int | None = None
        self._size = 0
        self._content = None
        # Raised at every read when the file's binary access is restricted.
        self._read_error: Exception | None = None

    def _require_file(self) -> None:
        if self._file_id is None:
            raise omero.ApiUsageException(
                message="This RawFileStore has not been properly initialized.\n"
                "Please set the file id before executing any other methods.\n"
            )

    @amd(void=True)
    def setFileId_async(self, file_id, current=None):
        repository = self.factory.server.repository
        viewer = self.factory.viewer(current)
        original_file = repository.get("OriginalFile", file_id, viewer)

        content = None
        read_error = None
        try:
            content = repository.original_file_bytes(file_id, viewer)
        except omero.SecurityViolation as exc:
            read_error = exc

        self._file_id = file_id
        self._content = content
        self._read_error = read_error
        if content is not None:
            self._size = content.size
        else:
            self._size = original_file.size.val if original_file.size is not None else 0
        log.debug("RawFileStore %s: file %d, %d bytes", self.identity.name, file_id, self._size)

    @amd
    def getFileId_async(self, current=None):
        return rlong(self._file_id) if self._file_id is not None else None

    @amd
    def size_async(self, current=None):
        self._require_file()
        return self._size

    @amd
    def exists_async(self, current=None):
        self._require_file()
        return True

    @amd
    def read_async(self, position, length, current=None):
        self._require_file()
        _check_read_arguments(position, length)
        if self._read_error is not None:
            raise self._read_error

        knobs = self.factory.server.knobs
        fault = knobs.take_read_fault()
        if fault == "fail":
            raise omero.ResourceError(
                message=f"Injected read failure for OriginalFile {self._file_id}"
            )
        if fault == "drop":
            log.info("dropping the connection at a read of OriginalFile %d", self._file_id)
            current.con.close(True)
            raise omero.ResourceError(message="connection dropped")

        data = self._content.read(position, length) if position < self._size else b""
        if len(data) < length:
            data = data + bytes(length - len(data))
        if knobs.corrupting_reads() and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        knobs.throttle(len(data))
        return data

    @amd(void=True)
    def write_async(self, buf, position, length, current=None):
        self._require_file()
        raise omero.SecurityViolation(message="File not writeable!")

    @amd
    def truncate_async(self, length, current=None):
        self._require_file()
        raise omero.SecurityViolation(message="File not writeable!")

    @amd
    def save_async(self, current=None):
        # Nothing was modified, so there is nothing to save.
        return None

    # StatefulServiceInterface

    @amd(void=True)
    def close_async(self, current=None):
        self.factory.remove_service(self)

    @amd(void=True)
    def activate_async(self, current=None):
        pass

    @amd(void=True)
    def passivate_async(self, current=None):
        pass

    @amd
    def getCurrentEventContext_async(self, current=None):
        session = self.factory.session
        context = self.factory.server.repository.event_context(session.user_id, session.group_id)
        context.sessionUuid = session.uuid
        context.sessionId = session.session_id
        return context


def _check_read_arguments(position: int, length: int) -> None:
    if length > MAX_READ_LENGTH:
        raise omero.ApiUsageException(message=f"Too big: {length}")
    if length < 0:
        raise omero.InternalException(
            serverExceptionClass="java.lang.NegativeArraySizeException",
            message=f"java.lang.NegativeArraySizeException: {length}",
        )
    if position < 0:
        raise omero.InternalException(
            serverExceptionClass="java.lang.IllegalArgumentException",
            message="Negative position",
        )
