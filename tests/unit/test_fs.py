"""FUSE handlers without a kernel: what they ask of pyfuse3 and from which thread."""

import hashlib
import os
import threading

import pyfuse3
import pytest
import trio

from omerofs import records, tree
from omerofs.blocks import BlockCache
from omerofs.fetch import Fetcher
from omerofs.fs import Operations

BLOCK = 4096


class KernelInvalidation:
    """Stands in for pyfuse3.invalidate_inode and waits, as the kernel does, for the read under way.

    The kernel locks a page while the daemon reads it, and invalidating the
    inode waits for that lock. Only the trio thread replies to the read, so an
    invalidation that blocks the trio thread never returns.
    """

    def __init__(self):
        self.started = threading.Event()
        self.read_answered = threading.Event()
        self.invalidated = []
        self.deadlocked = False

    def __call__(self, inode, attr_only=False):
        self.started.set()
        # A hang guard, not a time limit: a working mount replies at once.
        if not self.read_answered.wait(timeout=10):
            self.deadlocked = True
        self.invalidated.append(inode)


@pytest.mark.allow_warnings
def test_mismatch_invalidation_lets_reads_finish(tmp_path, monkeypatch):
    kernel = KernelInvalidation()
    monkeypatch.setattr(pyfuse3, "invalidate_inode", kernel)
    data = os.urandom(3 * BLOCK)
    file = records.OriginalFile(id=1, name="a.tif", path="p/", size=len(data), mtime=0.0,
                                hash=hashlib.sha1(b"other bytes").hexdigest(), hasher=records.SHA1)

    def download(file_id, offset, length):
        return data[offset:offset + length]

    async def main():
        fetcher = Fetcher(BlockCache(tmp_path), "srv", download, block_size=BLOCK)
        # Any node serves as the root here; a file of its own keeps it out of the invalidation.
        other = records.OriginalFile(id=2, name="b.tif", path="p/", size=0, mtime=0.0, hash=None, hasher=None)
        operations = Operations(tree.File(("root",), other), fetcher, ttl=60.0)
        inode = operations._inode_for(tree.File(("file", 1), file))
        # The same hook as the mount daemon's.
        fetcher.on_mismatch = lambda mismatched: operations.invalidate_file(mismatched.id)
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            # Reading every block starts the whole-file check, which fails.
            await fetcher.read(file, 0, len(data))
            while not kernel.started.is_set():
                await trio.sleep(0.01)
            # The trio thread is free to reply to the read that the kernel waits for.
            kernel.read_answered.set()
            while not kernel.invalidated:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return inode

    inode = trio.run(main)
    assert kernel.invalidated == [inode]
    assert not kernel.deadlocked
