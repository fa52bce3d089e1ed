"""``omerofs pin`` and ``unpin``: verified local copies that survive eviction.

A pin resolves its targets to images, their filesets and every original
file of those filesets, stores the records the mount needs offline, and
brings every block of every file into the cache's pinned store. A file
counts as pinned only once its bytes match the server's checksum. Files
already pinned cost nothing, and blocks already cached move without a
download, so an interrupted pin continues where it stopped.

Transfers run in parallel, files bounded by ``FILE_CONCURRENCY`` and
blocks by the fetcher's data limiter.
"""

import json
import logging
import posixpath
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import trio

from . import records, tree
from .blocks import BlockCache
from .catalog import Catalog
from .errors import AccessDenied, IntegrityError, OmerofsError, first_error
from .fetch import Fetcher

log = logging.getLogger(__name__)

# Files pinned at once. Each file's blocks download in parallel as well,
# so a few files keep the data limiter busy. More would only scatter the
# progress across many half-done files.
FILE_CONCURRENCY = 4

# Plain progress lines (when the output is not a terminal) come at most
# this often (seconds), so logs of long pins stay readable.
PROGRESS_LINE_PERIOD = 10.0

# A terminal progress display is redrawn at most this often (seconds).
PROGRESS_REDRAW_PERIOD = 0.25


@dataclass
class PinSummary:
    files: int = 0
    bytes: int = 0
    already_local_files: int = 0
    already_local_bytes: int = 0
    fetched_bytes: int = 0
    failed: list[dict] = field(default_factory=list)
    restricted: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # Every OriginalFile the targets cover, pinned or not.
    file_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.restricted


def pin_record_key(server: str, target: records.ImageTarget) -> str:
    return f"pin/{server}/{target}"


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


class Progress:
    """Files, bytes, rate and time left, on a terminal or as plain lines."""

    def __init__(self, total_files: int, total_bytes: int, stream=sys.stderr):
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.stream = stream
        self.terminal = stream.isatty()
        self.files_done = 0
        self.bytes_done = 0
        self.started = time.monotonic()
        self._last_output = 0.0

    def add_bytes(self, count: int) -> None:
        self.bytes_done += count
        self._maybe_show()

    def file_done(self) -> None:
        self.files_done += 1
        self._maybe_show()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes_done / elapsed
        left = (self.total_bytes - self.bytes_done) / rate if rate > 0 else float("inf")
        left_text = f"{left:.0f} s left" if left != float("inf") else "time left unknown"
        return (f"files {self.files_done}/{self.total_files}, {format_bytes(self.bytes_done)} of "
                f"{format_bytes(self.total_bytes)}, {format_bytes(rate)}/s, {left_text}")

    def _maybe_show(self, force: bool = False) -> None:
        now = time.monotonic()
        period = PROGRESS_REDRAW_PERIOD if self.terminal else PROGRESS_LINE_PERIOD
        if not force and now - self._last_output < period:
            return
        self._last_output = now
        if self.terminal:
            self.stream.write("\r\033[K" + self._line())
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self._maybe_show(force=True)
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()


async def collect_files(catalog: Catalog, targets: Sequence[records.ImageTarget]
                        ) -> dict[records.ImageTarget, list[records.OriginalFile]]:
    """Return every original file of every image under each target, fetching their records."""
    found: dict[records.ImageTarget, list[records.OriginalFile]] = {}
    # An offline mount needs the repositories to place the files.
    await catalog.repositories()
    for target in targets:
        image_ids = await catalog.target_image_ids(target)
        images = await catalog.images(image_ids)
        files: dict[int, records.OriginalFile] = {}
        fileset_ids = sorted({i.fileset_id for i in images.values() if i.fileset_id is not None})
        await catalog.load_filesets(fileset_ids)
        for fileset_id in fileset_ids:
            fileset = await catalog.fileset(fileset_id)
            if fileset is not None:
                files.update((f.id, f) for f in fileset.files)
        files.update(await collect_metadata(catalog, sorted(images), target))
        found[target] = [files[i] for i in sorted(files)]
        catalog.cache.set_record(pin_record_key(catalog.server, target), {
            "target": str(target), "image_ids": sorted(images), "file_ids": sorted(files),
            "bytes": sum(f.size for f in files.values()), "pinned_at": time.time(),
        })
    return found


# The parts of an image directory that hold metadata. Walking them makes
# the catalog fetch and persist every record an offline mount needs there.
_METADATA_ENTRIES = ("Metadata", "Export", "Annotation", "Roi")

# Targets that have a directory of their own at the mount's root.
_CONTAINER_KINDS = ("Project", "Dataset", "Screen", "Plate")


async def collect_metadata(catalog: Catalog, image_ids: Sequence[int],
                           target: records.ImageTarget | None = None) -> dict[int, records.OriginalFile]:
    """Walk the images' metadata in the namespace; return the file attachments met there.

    Following every link from ``Image/<id>/Annotation`` and ``Roi`` reaches
    annotations on annotations and the ROIs' own annotations, so all of them
    are generated once and their records persisted in the cache.
    """
    root = tree.Root(catalog)
    seen: set[tuple] = set()
    attachments: dict[int, records.OriginalFile] = {}

    async def resolve(path: tuple[str, ...]) -> tree.Node | None:
        node: tree.Node | None = root
        for name in path:
            if not isinstance(node, tree.Directory):
                return None
            node = await node.lookup(name)
        return node

    async def visit(path: tuple[str, ...]) -> None:
        node = await resolve(path)
        if node is None or node.key in seen:
            return
        seen.add(node.key)
        if isinstance(node, tree.Symlink):
            target = posixpath.normpath(posixpath.join(*path[:-1], node.target))
            await visit(tuple(target.split("/")))
        elif isinstance(node, tree.Directory):
            for name in sorted(await node.children()):
                await visit(path + (name,))
        elif isinstance(node, tree.File):
            attachments[node.file.id] = node.file
            catalog.remember_file(node.file)

    for image_id in image_ids:
        for entry in _METADATA_ENTRIES:
            await visit(("Image", str(image_id), entry))
    if target is not None and target.kind in _CONTAINER_KINDS:
        # The container's own directory, so an offline mount can list it.
        for object_id in target.ids:
            await visit((target.kind, str(object_id)))
    return attachments


async def pin_files(fetcher: Fetcher, files: Sequence[records.OriginalFile], progress: Progress,
                    summary: PinSummary) -> None:
    limiter = trio.CapacityLimiter(FILE_CONCURRENCY)

    async def pin_one(file: records.OriginalFile) -> None:
        async with limiter:
            fetched = 0

            def on_block(count: int, local: bool) -> None:
                nonlocal fetched
                if not local:
                    fetched += count
                progress.add_bytes(count)

            try:
                already = await fetcher.pin(file, on_block)
            except AccessDenied as error:
                summary.restricted.append({"id": file.id, "name": file.name, "error": str(error)})
                log.warning("not pinned, the server restricts it: OriginalFile %d (%s)", file.id, file.name)
            except (IntegrityError, OmerofsError) as error:
                summary.failed.append({"id": file.id, "name": file.name, "error": str(error)})
                log.error("failed to pin OriginalFile %d (%s): %s", file.id, file.name, error)
            else:
                summary.files += 1
                summary.bytes += file.size
                summary.fetched_bytes += fetched
                if already:
                    summary.already_local_files += 1
                    summary.already_local_bytes += file.size
            progress.file_done()

    async with trio.open_nursery() as nursery:
        for file in files:
            nursery.start_soon(pin_one, file)


async def run_pin(connection, cache: BlockCache, server: str, targets: Sequence[records.ImageTarget],
                  progress_stream=sys.stderr) -> PinSummary:
    """Pin every file under ``targets``; returns the summary."""
    started = time.monotonic()
    catalog = Catalog(connection, cache, server, targets)
    fetcher = Fetcher(cache, server, connection.read)
    summary = PinSummary()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            by_target = await collect_files(catalog, targets)
            unique = {f.id: f for files in by_target.values() for f in files}
            files = [unique[i] for i in sorted(unique)]
            summary.file_ids = sorted(unique)
            progress = Progress(len(files), sum(f.size for f in files), progress_stream)
            await pin_files(fetcher, files, progress, summary)
            progress.finish()
            nursery.cancel_scope.cancel()
    except* OmerofsError as group:
        # The command line reports one omerofs error with its exit code.
        raise first_error(group) from None
    summary.seconds = time.monotonic() - started
    return summary


def unpin(cache: BlockCache, server: str, targets: Sequence[records.ImageTarget]) -> list[str]:
    """Make the targets' files evictable again, except files another pin still holds."""
    fetcher = Fetcher(cache, server, None)
    released: set[int] = set()
    removed = []
    for target in targets:
        key = pin_record_key(server, target)
        record = cache.get_record(key)
        if record is None:
            continue
        cache.delete_record(key)
        removed.append(str(target))
        released.update(record["file_ids"])
    for key in cache.record_keys(f"pin/{server}/"):
        released.difference_update(cache.get_record(key)["file_ids"])
    catalog = Catalog(None, cache, server)
    for file_id in released:
        file = catalog.known_file(file_id)
        if file is not None:
            fetcher.unpin(file)
    return removed


def summary_text(summary: PinSummary) -> str:
    lines = [f"pinned {summary.files} files, {format_bytes(summary.bytes)} "
             f"({summary.already_local_files} files already local, {format_bytes(summary.fetched_bytes)} fetched) "
             f"in {summary.seconds:.1f} s"]
    if summary.restricted:
        lines.append(f"{len(summary.restricted)} files not pinned because the server restricts their download:")
        lines.extend(f"  OriginalFile {f['id']}: {f['name']}" for f in summary.restricted)
    if summary.failed:
        lines.append(f"{len(summary.failed)} files failed:")
        lines.extend(f"  {f['error']}" for f in summary.failed)
    return "\n".join(lines)


def summary_json(summary: PinSummary) -> str:
    content = asdict(summary)
    content["ok"] = summary.ok
    return json.dumps(content, indent=2)
