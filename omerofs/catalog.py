"""Metadata records by object, fetched in batches and kept for offline use.

The catalog sits between the namespace (``tree``) and the server
(``remote.Connection``). It returns records from memory when they are
fresh, from the server otherwise, and falls back to the records persisted
in the block cache when the server cannot be reached or the mount is
offline.

What may change on the server (image names, listings) lives in memory for
``ttl`` seconds. What never changes (a fileset's files and their roles)
lives for the life of the mount and is persisted on first fetch.

Every server call runs in a worker thread under the metadata
``CapacityLimiter``, so file reads, which use their own limiter, can never
starve a listing. Concurrent requests for the same key share one call.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from . import records
from .blocks import BlockCache
from .errors import NotFound, OfflineError, ServerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Metadata that may change on the server is reused for this long (seconds)
# before the server is asked again; --ttl changes it.
DEFAULT_TTL = 60.0

# Parallel metadata calls. Listings are cheap per call but come in bursts
# (ls -l of a dataset), so four threads keep them moving without crowding
# out the data downloads' threads.
METADATA_CONCURRENCY = 4

# A listing of all readable images is fetched in pages of this many IDs.
LIST_PAGE = 1000

# When one fileset is needed and the image belongs to the current listing,
# the filesets of up to this many neighbouring images load in the same
# batch, so `find` over a 1,000-image dataset costs one batch of queries
# and one used-files command instead of one each.
FILESET_PREFETCH = 1000


class Catalog:
    """Records of images, filesets, repositories and original files.

    ``connection`` is a ``remote.Connection`` or None when offline.
    """

    def __init__(self, connection, cache: BlockCache, server: str,
                 targets: Sequence[records.ImageTarget] = (), ttl: float = DEFAULT_TTL):
        self.connection = connection
        self.cache = cache
        self.server = server
        self.targets = tuple(targets)
        self.ttl = ttl
        self._limiter = trio.CapacityLimiter(METADATA_CONCURRENCY)
        self._fresh: dict[str, tuple[float, object]] = {}
        self._inflight: dict[str, trio.Event] = {}
        self._filesets: dict[int, records.Fileset] = {}
        self._files: dict[int, records.OriginalFile] = {}
        self._repo_files: dict[str | None, dict[int, records.OriginalFile]] = {}
        self.repo_version = 0
        self.calls = 0
        self._load_persisted_filesets()

    @property
    def offline(self) -> bool:
        return self.connection is None

    # Persistence and freshness

    def _record_key(self, kind: str, key) -> str:
        return f"{kind}/{self.server}/{key}"

    def _load_persisted_filesets(self) -> None:
        for key in self.cache.record_keys(self._record_key("fileset", "")):
            fileset = self.cache.get_record(key)
            if isinstance(fileset, records.Fileset):
                self._add_fileset(fileset)

    async def _server(self, what: str, method: str, *args):
        """Call ``Connection.<method>(*args)`` in a worker thread; OfflineError when offline."""
        if self.connection is None:
            raise OfflineError(f"{what}: the mount is offline")
        return await self._remote(what, getattr(self.connection, method), *args)

    async def _remote(self, what: str, function: Callable[..., T], *args) -> T:
        if self.connection is None:
            raise OfflineError(f"{what}: the mount is offline")
        self.calls += 1
        log.debug("%s", what)
        return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def _cached(self, key: str, load: Callable[[], Awaitable[T]], ttl: float | None,
                      persist: bool = True) -> T:
        """Return a value fresh in memory, else load it once for all waiters.

        ``ttl`` None means the value never changes. A value that cannot be
        loaded because the server is unreachable or the mount is offline
        comes from the persisted copy when there is one.
        """
        while True:
            now = trio.current_time()
            entry = self._fresh.get(key)
            if entry is not None and (ttl is None or now - entry[0] < ttl):
                return entry[1]
            waiting = self._inflight.get(key)
            if waiting is None:
                break
            await waiting.wait()

        done = self._inflight[key] = trio.Event()
        try:
            try:
                value = await load()
            except (OfflineError, ServerUnavailable) as error:
                persisted = self.cache.get_record(key) if persist else None
                if persisted is None:
                    raise
                log.debug("using the cached copy of %s: %s", key, error)
                value = persisted
            else:
                if persist:
                    self.cache.keep_record(key, value)
            self._fresh[key] = (trio.current_time(), value)
            return value
        finally:
            del self._inflight[key]
            done.set()

    # Images

    async def listed_image_ids(self) -> list[int]:
        """Return the images ``Image/`` lists: the targets' or all readable ones."""
        return await self._cached(self._listing_key, self._load_listing, self.ttl)

    @property
    def _listing_key(self) -> str:
        return self._record_key("listing", ";".join(str(t) for t in self.targets) or "all")

    async def _load_listing(self) -> list[int]:
        if self.targets:
            image_ids: set[int] = set()
            for target in self.targets:
                image_ids.update(await self.target_image_ids(target))
            return sorted(image_ids)
        if self.connection is None:
            listed = self.cache.get_record(self._listing_key) or []
            return sorted(set(listed) | set(self.pinned_image_ids()))
        image_ids = []
        while True:
            page = await self._server("Listing images", "image_ids", len(image_ids), LIST_PAGE)
            image_ids.extend(page)
            if len(page) < LIST_PAGE:
                return image_ids

    async def target_image_ids(self, target: records.ImageTarget) -> list[int]:
        """Return the IDs of the images under a target, from the server or the cache."""
        return await self._cached(self._record_key("target", target), lambda: self._server(
            f"Resolving {target}", "target_image_ids", target), self.ttl)

    def pinned_image_ids(self) -> list[int]:
        """Return the images of every pin of this server: what an offline mount lists."""
        image_ids: set[int] = set()
        for key in self.cache.record_keys(f"pin/{self.server}/"):
            image_ids.update(self.cache.get_record(key)["image_ids"])
        return sorted(image_ids)

    def pinned_target_ids(self, kind: str) -> list[int]:
        """Return the IDs of the pinned targets of one kind, such as the pinned datasets."""
        object_ids: set[int] = set()
        for key in self.cache.record_keys(f"pin/{self.server}/"):
            target = records.parse_target(self.cache.get_record(key)["target"])
            if target.kind == kind:
                object_ids.update(target.ids)
        return sorted(object_ids)

    async def image(self, image_id: int) -> records.Image | None:
        """Return an image's record, or None if it does not exist or is not readable."""
        key = self._record_key("image", image_id)
        entry = self._fresh.get(key)
        if entry is not None and trio.current_time() - entry[0] < self.ttl:
            return entry[1]
        found = await self.images([image_id])
        return found.get(image_id)

    async def images(self, image_ids: Sequence[int]) -> dict[int, records.Image]:
        """Return the records of many images with one query per batch."""
        now = trio.current_time()
        found: dict[int, records.Image] = {}
        missing = []
        for image_id in image_ids:
            entry = self._fresh.get(self._record_key("image", image_id))
            if entry is not None and now - entry[0] < self.ttl:
                if entry[1] is not None:
                    found[image_id] = entry[1]
            else:
                missing.append(image_id)
        if not missing:
            return found

        try:
            loaded = await self._server(f"Reading {len(missing)} images", "images", missing)
        except (OfflineError, ServerUnavailable):
            unavailable = False
            for image_id in missing:
                persisted = self.cache.get_record(self._record_key("image", image_id))
                if persisted is not None:
                    found[image_id] = persisted
                else:
                    unavailable = True
            # Online, an image the server could not be asked about is an
            # error: leaving it out would show it as one that does not exist.
            if unavailable and not self.offline:
                raise
            return found

        now = trio.current_time()
        for image_id in missing:
            image = loaded.get(image_id)
            key = self._record_key("image", image_id)
            self._fresh[key] = (now, image)
            if image is not None:
                self.cache.keep_record(key, image)
                found[image_id] = image
        return found

    # Filesets

    async def fileset(self, fileset_id: int, near_image: int | None = None) -> records.Fileset | None:
        """Return a fileset with its files and roles, None if it is not readable.

        ``near_image`` names the image that led here; when it is part of the
        current listing, the filesets of its neighbours load in the same batch.
        """
        fileset = self._filesets.get(fileset_id)
        if fileset is not None:
            return fileset
        wanted = [fileset_id]
        if near_image is not None:
            wanted.extend(await self._neighbour_filesets(near_image))
        await self._cached(self._record_key("filesets-batch", fileset_id),
                           lambda: self._load_filesets(wanted), None, persist=False)
        return self._filesets.get(fileset_id)

    async def _neighbour_filesets(self, image_id: int) -> list[int]:
        listing = self._fresh.get(self._listing_key)
        if listing is None or image_id not in listing[1]:
            return []
        image_ids = listing[1]
        position = image_ids.index(image_id)
        # The images after this one come first, then those before it, because
        # bash expands a glob such as Image/*/Binary/* from the last directory.
        window = image_ids[position:position + FILESET_PREFETCH]
        window += image_ids[max(0, position - (FILESET_PREFETCH - len(window))):position]
        images = await self.images(window)
        return [i.fileset_id for i in images.values()
                if i.fileset_id is not None and i.fileset_id not in self._filesets]

    async def load_filesets(self, fileset_ids: Sequence[int]) -> None:
        """Load many filesets with one batch of queries."""
        wanted = [i for i in fileset_ids if i not in self._filesets]
        for start in range(0, len(wanted), FILESET_PREFETCH):
            await self._load_filesets(wanted[start:start + FILESET_PREFETCH])

    async def _load_filesets(self, fileset_ids: list[int]) -> bool:
        wanted = sorted({i for i in fileset_ids if i not in self._filesets})
        if not wanted:
            return True
        loaded = await self._server(f"Reading {len(wanted)} filesets", "filesets", wanted)
        for fileset in loaded.values():
            self.cache.keep_record(self._record_key("fileset", fileset.id), fileset)
            self._add_fileset(fileset)
        return True

    def _add_fileset(self, fileset: records.Fileset) -> None:
        self._filesets[fileset.id] = fileset
        for file in fileset.files:
            self._add_file(file)

    def _add_file(self, file: records.OriginalFile) -> None:
        self._files[file.id] = file
        by_id = self._repo_files.setdefault(file.repo_uuid, {})
        if by_id.get(file.id) != file:
            by_id[file.id] = file
            self.repo_version += 1

    # Repositories and original files

    async def repositories(self) -> list[records.Repository]:
        return await self._cached(self._record_key("repositories", "all"), self._load_repositories, self.ttl)

    async def _load_repositories(self) -> list[records.Repository]:
        return await self._server("Listing repositories", "repositories")

    async def repository(self, repository_id: int) -> records.Repository | None:
        for repository in await self.repositories():
            if repository.id == repository_id:
                return repository
        return None

    async def repository_by_uuid(self, uuid: str) -> records.Repository | None:
        for repository in await self.repositories():
            if repository.uuid == uuid:
                return repository
        return None

    def known_file(self, file_id: int) -> records.OriginalFile | None:
        """Return a file's record if a loaded or persisted fileset contains it, or it was remembered."""
        file = self._files.get(file_id)
        if file is None:
            file = self.cache.get_record(self._record_key("original-file", file_id))
        return file

    def remember_file(self, file: records.OriginalFile) -> None:
        """Persist the record of a file outside any fileset, such as a file attachment."""
        self.cache.set_record(self._record_key("original-file", file.id), file)

    def repository_files(self, uuid: str | None) -> dict[int, records.OriginalFile]:
        """Return the files known so far in one repository (None: legacy files)."""
        return self._repo_files.get(uuid, {})

    async def original_file(self, file_id: int) -> records.OriginalFile | None:
        """Return one original file's record, None if it does not exist or is not readable."""
        file = self._files.get(file_id)
        if file is not None:
            return file

        async def load():
            found = await self._server(f"Reading OriginalFile {file_id}", "original_files", [file_id])
            return found.get(file_id)

        try:
            file = await self._cached(self._record_key("original-file", file_id), load, None)
        except NotFound:
            return None
        if file is not None:
            self._add_file(file)
        return file

