"""pyfuse3 request handlers: inodes, attributes, listings and reads.

The handlers translate between the kernel's inodes and the namespace's
nodes (``tree``); they hold no OMERO logic. Every handler goes through
``handler``, which maps omerofs errors to their errno and turns anything
unexpected into EIO with a logged traceback: pyfuse3 only expects
``FUSEError``, and any other exception would end the main loop and with it
the mount.

Inodes: each node key gets one inode on first sight. The kernel's lookup
count (lookups plus entries returned by readdir, which pyfuse3 sends as
READDIRPLUS) is tracked, and ``forget`` drops the inode when it reaches
zero, so memory follows what the kernel still holds.
"""

import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

from . import tree
from .errors import AccessDenied, NotFound, OmerofsError, errno_for
from .fetch import Fetcher, Stream

log = logging.getLogger(__name__)

# Nodes that never change (a fileset's files, links into the repository)
# stay in the kernel's caches this long (seconds). Original files in OMERO
# filesets are immutable, so the only cost of a long time-out is memory.
IMMUTABLE_TIMEOUT = 3600.0

# Logs a repeated warning for the same errno at most this often (seconds).
_WARNING_PERIOD = 10.0

# Forgets warnings older than the period once this many are remembered.
_WARNING_KEYS = 1024


def handler(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """Wrap a pyfuse3 handler so that a failure fails one request, not the mount."""

    @functools.wraps(method)
    async def wrapper(self: "Operations", *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OmerofsError as error:
            number = errno_for(error)
            self.error_counts[type(error).__name__] += 1
            self._log_error(method.__name__, error)
            raise pyfuse3.FUSEError(number) from None
        except Exception:
            self.error_counts["bug"] += 1
            log.exception("%s%r failed unexpectedly; returning EIO", method.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class _Inode:
    node: tree.Node
    lookups: int = 0


@dataclass
class _OpenFile:
    node: tree.File | tree.Document
    stream: Stream = field(default_factory=Stream)


class Operations(pyfuse3.Operations):
    """The read-only filesystem over a ``tree.Root``."""

    def __init__(self, root: tree.Root, fetcher: Fetcher, ttl: float):
        super().__init__()
        self.fetcher = fetcher
        self.ttl = ttl
        self._inodes: dict[int, _Inode] = {pyfuse3.ROOT_INODE: _Inode(root, 1)}
        self._by_key: dict[tuple, int] = {root.key: pyfuse3.ROOT_INODE}
        self._next_inode = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._next_fh = itertools.count(1)
        self._open_files: dict[int, _OpenFile] = {}
        self._listings: dict[int, list[tuple[str, tree.Node]]] = {}
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._mounted_at = time.time()
        self._last_warning: dict[str, float] = {}
        self.error_counts: Counter[str] = Counter()

    # Inode table

    def _inode_for(self, node: tree.Node) -> int:
        inode = self._by_key.get(node.key)
        if inode is None:
            inode = next(self._next_inode)
            self._by_key[node.key] = inode
            self._inodes[inode] = _Inode(node)
        else:
            # A newer lookup carries newer metadata for the same node.
            self._inodes[inode].node = node
        return inode

    async def invalidate_file(self, file_id: int) -> None:
        """Drop the kernel's cached pages of every inode that shows OriginalFile ``file_id``.

        ``keep_cache`` lets the kernel keep an immutable file's pages across
        opens, so without this, bytes that failed the checksum would still be
        served from the page cache after the fetcher dropped its own copies.
        The kernel waits for the reads of those pages that are under way, and
        only this event loop replies to them, so the invalidation runs in a worker.
        """
        inodes = [inode for inode, entry in self._inodes.items()
                  if isinstance(entry.node, tree.File) and entry.node.file.id == file_id]
        await trio.to_thread.run_sync(_invalidate_inodes, inodes, file_id)

    def _node(self, inode: int) -> tree.Node:
        entry = self._inodes.get(inode)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry.node

    def _attributes(self, inode: int, node: tree.Node) -> pyfuse3.EntryAttributes:
        described = node.attributes()
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        if described.kind == "dir":
            attributes.st_mode = stat.S_IFDIR | 0o555
            attributes.st_nlink = 2
        elif described.kind == "link":
            attributes.st_mode = stat.S_IFLNK | 0o777
            attributes.st_nlink = 1
        else:
            # A file the server forbids downloading shows no read permission,
            # so `ls -l` shows it before a read fails with EACCES.
            restricted = isinstance(node, tree.File) and node.file.restricted
            attributes.st_mode = stat.S_IFREG | (0o000 if restricted else 0o444)
            attributes.st_nlink = 1
        attributes.st_size = described.size
        attributes.st_blksize = self.fetcher.block_size
        attributes.st_blocks = (described.size + 511) // 512
        mtime_ns = int((described.mtime or self._mounted_at) * 1e9)
        attributes.st_mtime_ns = attributes.st_ctime_ns = attributes.st_atime_ns = mtime_ns
        attributes.st_uid = self._uid
        attributes.st_gid = self._gid
        timeout = IMMUTABLE_TIMEOUT if described.immutable else self.ttl
        attributes.entry_timeout = timeout
        attributes.attr_timeout = timeout
        return attributes

    def _log_error(self, operation: str, error: OmerofsError) -> None:
        if isinstance(error, NotFound):
            log.debug("%s: %s", operation, error)
            return
        if isinstance(error, AccessDenied):
            # Keyed by the message, which names the file, so each file gets its
            # own line but the kernel's retry of a failed read adds none.
            key = str(error)
        else:
            key = type(error).__name__
        now = time.monotonic()
        if now - self._last_warning.get(key, 0.0) < _WARNING_PERIOD:
            log.debug("%s: %s", operation, error)
            return
        if len(self._last_warning) > _WARNING_KEYS:
            self._last_warning = {k: v for k, v in self._last_warning.items() if now - v < _WARNING_PERIOD}
        self._last_warning[key] = now
        log.warning("%s: %s", operation, error)

    # Name space

    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not isinstance(parent, tree.Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        node = await parent.lookup(os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        inode = self._inode_for(node)
        self._inodes[inode].lookups += 1
        return self._attributes(inode, node)

    @handler
    async def forget(self, inode_list):
        for inode, count in inode_list:
            entry = self._inodes.get(inode)
            if entry is None or inode == pyfuse3.ROOT_INODE:
                continue
            entry.lookups -= count
            if entry.lookups <= 0:
                del self._inodes[inode]
                self._by_key.pop(entry.node.key, None)

    @handler
    async def getattr(self, inode, ctx=None):
        return self._attributes(inode, self._node(inode))

    @handler
    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, tree.Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @handler
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, tree.Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        children = await node.children()
        fh = next(self._next_fh)
        self._listings[fh] = sorted(children.items(), key=lambda item: _listing_order(item[0]))
        return fh

    @handler
    async def readdir(self, fh, start_id, token):
        listing = self._listings.get(fh)
        if listing is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for position in range(start_id, len(listing)):
            name, node = listing[position]
            inode = self._inode_for(node)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attributes(inode, node), position + 1):
                return
            self._inodes[inode].lookups += 1

    @handler
    async def releasedir(self, fh):
        self._listings.pop(fh, None)

    # Files

    @handler
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        if not isinstance(node, (tree.File, tree.Document)):
            raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, tree.Directory) else errno.EINVAL)
        fh = next(self._next_fh)
        self._open_files[fh] = _OpenFile(node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=node.immutable)

    @handler
    async def read(self, fh, offset, size):
        opened = self._open_files.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if isinstance(opened.node, tree.Document):
            # Generated bytes: the node opened keeps them, so a newer lookup cannot change an open file.
            return opened.node.content[offset:offset + size]
        return await self.fetcher.read(opened.node.file, offset, size, opened.stream)

    @handler
    async def release(self, fh):
        self._open_files.pop(fh, None)

    @handler
    async def access(self, inode, mode, ctx):
        self._node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)

    @handler
    async def statfs(self, ctx):
        result = pyfuse3.StatvfsData()
        result.f_bsize = self.fetcher.block_size
        result.f_frsize = self.fetcher.block_size
        result.f_namemax = tree.NAME_MAX
        return result

    # Every change is refused: the mount is read-only. The kernel already
    # refuses most of these for an "ro" mount; these cover the rest.

    async def _read_only(self, *args):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    write = create = setxattr = removexattr = _read_only


def _listing_order(name: str) -> tuple:
    """Sort numeric names (object IDs) numerically, before other names."""
    # Names from the server may hold digits such as "²" that int() rejects.
    return (0, int(name), "") if name.isascii() and name.isdigit() else (1, 0, name)


def _invalidate_inodes(inodes: list[int], file_id: int) -> None:
    """Worker thread: drop the kernel's cached pages of ``inodes``, which show OriginalFile ``file_id``."""
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(inode)
        except OSError as error:
            log.debug("could not invalidate inode %d of OriginalFile %d: %s", inode, file_id, error)
