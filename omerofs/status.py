"""``omerofs status``: the cache, its pinned targets and the mounts using it."""

import json
import os
from pathlib import Path

from .blocks import DEFAULT_SIZE_LIMIT, BlockCache
from .catalog import Catalog
from .fetch import Fetcher
from .mount import runtime_dir
from .pin import format_bytes


def _pins(cache: BlockCache) -> list[dict]:
    pins = []
    catalogs: dict[str, tuple[Catalog, Fetcher]] = {}
    for key in sorted(cache.record_keys("pin/")):
        record = cache.get_record(key)
        server = key.split("/")[1]
        if server not in catalogs:
            catalogs[server] = (Catalog(None, cache, server), Fetcher(cache, server, None))
        catalog, fetcher = catalogs[server]
        files = [catalog.known_file(i) for i in record["file_ids"]]
        local = sum(fetcher.local_bytes(f) for f in files if f is not None)
        verified = sum(1 for f in files if f is not None and fetcher.is_pinned(f))
        pins.append({"server": server, "target": record["target"], "images": len(record["image_ids"]),
                     "files": len(record["file_ids"]), "verified_files": verified, "bytes": record["bytes"],
                     "local_bytes": local})
    return pins


def _running(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mounts(cache_dir: Path) -> list[dict]:
    mounts = []
    for path in sorted(runtime_dir().glob("mount-*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if Path(content.get("cache_dir", "")).resolve() != cache_dir.resolve():
            continue
        if not _running(content.get("pid")):
            # A daemon that was killed could not remove its registration.
            path.unlink(missing_ok=True)
            continue
        statistics = content.get("statistics", {})
        reads = statistics.get("hits", 0) + statistics.get("misses", 0)
        content["hit_ratio"] = statistics.get("hits", 0) / reads if reads else None
        mounts.append(content)
    return mounts


def cache_status(cache_dir: Path) -> dict:
    """Return sizes, pins and mounts of one cache directory as plain data."""
    if not cache_dir.exists():
        # Opening a BlockCache would create the directory (for a mistyped
        # --cache-dir too), so report an empty cache without one.
        return {"cache_dir": str(cache_dir), "cached": 0, "pinned": 0, "limit": DEFAULT_SIZE_LIMIT, "pins": [],
                "mounts": []}
    cache = BlockCache(cache_dir)
    try:
        return {"cache_dir": str(cache_dir), **cache.volume(), "pins": _pins(cache), "mounts": _mounts(cache_dir)}
    finally:
        cache.close()


def status_text(status: dict) -> str:
    lines = [f"cache {status['cache_dir']}: {format_bytes(status['cached'])} cached of "
             f"{format_bytes(status['limit'])} limit, {format_bytes(status['pinned'])} pinned"]
    if status["pins"]:
        lines.append("pinned:")
        for pin in status["pins"]:
            lines.append(f"  {pin['target']}: {pin['images']} images, {pin['files']} files "
                         f"({pin['verified_files']} verified), {format_bytes(pin['local_bytes'])} of "
                         f"{format_bytes(pin['bytes'])} local")
    else:
        lines.append("pinned: nothing")
    for mount in status["mounts"]:
        statistics = mount.get("statistics", {})
        ratio = mount["hit_ratio"]
        lines.append(f"mount {mount['mountpoint']}: {mount['server']} "
                     f"{'offline' if mount.get('offline') else 'online'}, pid {mount['pid']}, "
                     f"hit ratio {'-' if ratio is None else f'{ratio:.0%}'}, "
                     f"{format_bytes(statistics.get('bytes_fetched', 0))} fetched")
    return "\n".join(lines)
