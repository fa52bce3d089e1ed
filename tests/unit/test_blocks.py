"""The block cache when its disk is full or read-only: reads go on, without copies on disk."""

import os
import sqlite3

import pytest
import trio

from omerofs import blocks
from omerofs.blocks import BlockCache, BlockKey
from omerofs.errors import CacheError
from omerofs.fetch import Fetcher

from test_fetch import BLOCK, FakeServer, make_file


def fail(*args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")


@pytest.mark.allow_warnings
def test_reads_go_on_when_the_disk_is_below_the_free_space_floor(tmp_path):
    data = os.urandom(3 * BLOCK)
    cache = BlockCache(tmp_path, free_space_floor=2 ** 62)

    async def main():
        fetcher = Fetcher(cache, "srv", FakeServer({1: data}), block_size=BLOCK)
        return await fetcher.read(make_file(1, data), 0, len(data))

    assert trio.run(main) == data
    assert not cache.contains(BlockKey("srv", 1, BLOCK, 0))


@pytest.mark.allow_warnings
def test_full_database_is_a_cache_error_or_a_miss(tmp_path, monkeypatch):
    cache = BlockCache(tmp_path)
    key = BlockKey("srv", 1, BLOCK, 0)
    cache.put(key, b"x" * BLOCK)
    for store in (cache._blocks, cache._pinned, cache._records):
        monkeypatch.setattr(store, "set", fail)
        monkeypatch.setattr(store, "get", fail)

    with pytest.raises(CacheError):
        cache.put(BlockKey("srv", 1, BLOCK, 1), b"y" * BLOCK)
    with pytest.raises(CacheError):
        cache.set_record("pin/srv/Image:1", {})
    # Records that only offline use needs, and reads, must not fail the request.
    cache.keep_record("image/srv/1", "record")
    # Reading needs no write: the block is still served, and its use,
    # recorded in batches, is dropped with a warning.
    for _ in range(2 * blocks._USE_BATCH):
        assert cache.get(key) == b"x" * BLOCK


def test_recently_read_block_outlives_unread_ones(tmp_path):
    cache = BlockCache(tmp_path)
    old = [BlockKey("srv", 1, BLOCK, index) for index in range(20)]
    for index, key in enumerate(old + [BlockKey("srv", 2, BLOCK, index) for index in range(60)]):
        cache.put(key, os.urandom(BLOCK))
    # Uses are written in batches: enough reads of the first block to write one.
    for _ in range(blocks._USE_BATCH):
        assert cache.get(old[0]) is not None
    cache.close()

    # At its limit, the cache makes room for 40 more blocks by evicting the
    # least recently used: the other old blocks, then the first of file 2.
    cache = BlockCache(tmp_path, size_limit=cache.volume()["cached"])
    for index in range(40):
        cache.put(BlockKey("srv", 3, BLOCK, index), os.urandom(BLOCK))

    assert cache.get(old[0]) is not None
    assert not any(cache.contains(key) for key in old[1:])
