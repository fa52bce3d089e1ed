"""Metadata records for OME-XML and the container directories, fetched in windows.

``MetaCatalog`` does for annotations, ROIs, image metadata and containers
what ``Catalog`` does for images and filesets: it answers from memory while
a record is younger than the catalog's time-to-live, asks the server
otherwise, persists every record in the block cache's record store, and
falls back to the persisted record when the server cannot be reached or
the mount is offline.

Batching: a directory listing such as ``ls Image/*/Annotation`` looks up
one object after another, so batching concurrent requests would not help.
Instead every listing of IDs is remembered as a neighbourhood
(``_note_listing``), and a record that is missing loads together with the
next ``WINDOW`` missing records of its neighbourhood, in one batch of
queries. Listing the annotations of the images of a 1,000-image dataset
then costs one batch, not a thousand.

Server calls go through ``Catalog._remote``, so they share the metadata
``CapacityLimiter`` and the catalog's call counter. Rendering OME-XML is
CPU work and runs in a worker thread; the bytes are kept per record, so
a document is rendered again only when its record changed.
"""

import dataclasses
import itertools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import trio

from . import metarecords as mr
from . import omexml
from .catalog import Catalog
from .errors import OfflineError, OmerofsError, ServerUnavailable

log = logging.getLogger(__name__)

# A missing record loads with up to this many missing neighbours. Equal to
# remote's ID batch (1,000), so one window is one batch of queries.
# NOTE: a window's ROI query returns every shape of up to 1,000 images in one
# reply, so images with hundreds of thousands of shapes between them could
# exceed Ice's 64 MiB message size limit. No test covers that case.
WINDOW = 1000

# Rendered documents kept in memory. An Export of a typical image is a
# few kilobytes to a few hundred; 2,000 of them stay well below 100 MiB.
MAX_DOCUMENTS = 2000

# Top-level container kinds, as the tree names their directories.
CONTAINER_KINDS = ("Project", "Dataset", "Screen", "Plate")

_MISSING = object()

_instances: "weakref.WeakKeyDictionary[Catalog, MetaCatalog]" = weakref.WeakKeyDictionary()


class MetaCatalog:
    """Annotations, ROIs, image metadata, people and containers of one catalog's server."""

    def __init__(self, catalog: Catalog, queries=None):
        self.catalog = catalog
        self._queries = queries
        self._fresh: dict[tuple[str, int], tuple[float, object]] = {}
        self._inflight: dict[tuple[str, int], trio.Event] = {}
        self._neighbourhoods: dict[str, dict[int, tuple[int, ...]]] = {}
        self._documents: OrderedDict[tuple, tuple[object, bytes]] = OrderedDict()
        # One render at a time: rendering holds the GIL anyway, and omexml
        # silences ome-types' warnings with warnings.catch_warnings, which
        # is not thread-safe.
        self._render_limiter = trio.CapacityLimiter(1)

    @classmethod
    def of(cls, catalog: Catalog, queries=None) -> "MetaCatalog":
        """Return the one MetaCatalog of ``catalog``, made on first use (with ``queries``, if given)."""
        instance = _instances.get(catalog)
        if instance is None:
            instance = _instances[catalog] = cls(catalog, queries)
        return instance

    @property
    def connection(self):
        return self.catalog.connection

    @property
    def queries(self):
        """The query functions: ``remote.metadata`` unless the caller gave a stand-in."""
        if self._queries is None:
            # Imported on first use, so an offline mount never loads omero-py.
            from .remote import metadata
            self._queries = metadata
        return self._queries

    # Records by kind and ID

    def _record_key(self, kind: str, object_id) -> str:
        return self.catalog._record_key(f"meta-{kind}", object_id)

    def _fresh_value(self, kind: str, object_id: int):
        entry = self._fresh.get((kind, object_id))
        if entry is None or trio.current_time() - entry[0] >= self.catalog.ttl:
            return _MISSING
        return entry[1]

    def _store(self, kind: str, object_id: int, value) -> None:
        self._fresh[(kind, object_id)] = (trio.current_time(), value)
        if value is not None:
            self.catalog.cache.keep_record(self._record_key(kind, object_id), value)

    def _store_all(self, kind: str, found: dict[int, object]) -> None:
        for object_id, value in found.items():
            self._store(kind, object_id, value)

    def _store_if_missing(self, kind: str, object_id: int, value) -> None:
        """Store a record that another load brought along, unless it is fresh or being loaded."""
        if self._fresh_value(kind, object_id) is _MISSING and (kind, object_id) not in self._inflight:
            self._store(kind, object_id, value)

    def known(self, kind: str) -> list:
        """Return the records of ``kind`` loaded so far, fresh or not."""
        return [entry[1] for (entry_kind, _), entry in self._fresh.items()
                if entry_kind == kind and entry[1] is not None]

    def _note_listing(self, kind: str, object_ids: Sequence[int]) -> None:
        """Remember IDs listed together, so a later look-up of one loads its neighbours too."""
        listing = tuple(object_ids)
        by_id = self._neighbourhoods.setdefault(kind, {})
        for object_id in listing:
            by_id[object_id] = listing

    def _window(self, kind: str, object_id: int, size: int) -> list[int]:
        """Return ``object_id`` and the nearest missing IDs of its neighbourhood, up to ``size``.

        Neighbours after ``object_id`` come first, then those before it:
        bash expands a glob such as ``Image/*/Annotation/*`` from the last
        directory to the first, and a window that only looked ahead would
        then load one image per batch.
        """
        listing = self._neighbourhoods.get(kind, {}).get(object_id)
        if listing is None and kind.startswith("image"):
            listing = self._image_listing()
        wanted = [object_id]
        if listing is None or object_id not in listing:
            return wanted
        start = listing.index(object_id)
        for neighbour in itertools.chain(listing[start + 1:], reversed(listing[:start])):
            if len(wanted) >= size:
                break
            if (self._fresh_value(kind, neighbour) is _MISSING
                    and (kind, neighbour) not in self._inflight):
                wanted.append(neighbour)
        return wanted

    def _image_listing(self) -> tuple[int, ...] | None:
        # The catalog's ``Image/`` listing, when it is in memory; listing it
        # here would cost a server call that the caller did not ask for.
        entry = self.catalog._fresh.get(self.catalog._listing_key)
        return tuple(entry[1]) if entry is not None else None

    async def _get(self, kind: str, object_id: int, load: Callable[[list[int]], Awaitable[dict[int, object]]],
                   window: int = WINDOW):
        """Return one record, loading it with its neighbourhood's window when it is not fresh."""
        value = self._fresh_value(kind, object_id)
        if value is not _MISSING:
            return value
        found = await self._get_many(kind, self._window(kind, object_id, window), load, required=(object_id,))
        return found.get(object_id)

    async def _get_nearby(self, kind: str, object_ids: Sequence[int],
                          load: Callable[[list[int]], Awaitable[dict[int, object]]]) -> dict[int, object]:
        """Return records for ``object_ids``, loading the first missing one's window along with them."""
        wanted = list(dict.fromkeys(object_ids))
        first_missing = next((i for i in wanted if self._fresh_value(kind, i) is _MISSING), None)
        if first_missing is not None:
            wanted.extend(i for i in self._window(kind, first_missing, WINDOW) if i not in wanted)
        found = await self._get_many(kind, wanted, load, required=object_ids)
        return {i: found.get(i) for i in object_ids}

    async def _get_many(self, kind: str, object_ids: Sequence[int],
                        load: Callable[[list[int]], Awaitable[dict[int, object]]],
                        required: Sequence[int] | None = None) -> dict[int, object]:
        """Return records for ``object_ids`` (None for missing ones), loading the stale ones in one batch.

        ``load`` returns the records it found; it may store records of other
        kinds it came across. IDs that another task is loading are awaited.
        Raises ServerUnavailable when the server could not be asked about an
        ID of ``required`` (default: all) and the cache holds no copy, so an
        outage is an error rather than an object that seems not to exist.
        """
        started = trio.current_time()
        found: dict[int, object] = {}
        missing: list[int] = []
        waiting: list[int] = []
        for object_id in dict.fromkeys(object_ids):
            value = self._fresh_value(kind, object_id)
            if value is not _MISSING:
                found[object_id] = value
            elif (kind, object_id) in self._inflight:
                waiting.append(object_id)
            else:
                missing.append(object_id)

        failure = None
        if missing:
            for object_id in missing:
                self._inflight[(kind, object_id)] = trio.Event()
            try:
                failure = await self._load(kind, missing, load)
            finally:
                for object_id in missing:
                    self._inflight.pop((kind, object_id)).set()
        for object_id in waiting:
            await self._inflight.get((kind, object_id), _SET).wait()

        # Read what the loads stored now, whatever the time-to-live: a load
        # slower than the time-to-live (or --ttl 0) must still be used.
        unavailable = []
        for object_id in missing + waiting:
            entry = self._fresh.get((kind, object_id))
            if entry is None or entry[0] < started:
                unavailable.append(object_id)
                found[object_id] = None
            else:
                found[object_id] = entry[1]
        required_ids = set(object_ids if required is None else required)
        if self.connection is not None and required_ids.intersection(unavailable):
            if failure is not None:
                raise failure
            raise ServerUnavailable(f"Reading {kind} {sorted(required_ids.intersection(unavailable))[0]}: the "
                                    "server did not answer and the cache holds no copy")
        return found

    async def _load(self, kind: str, object_ids: list[int],
                    load: Callable[[list[int]], Awaitable[dict[int, object]]]) -> OmerofsError | None:
        """Load records, or their persisted copies; return the error that made copies necessary."""
        try:
            loaded = await load(object_ids)
        except (OfflineError, ServerUnavailable) as error:
            log.debug("using cached %s records for %d IDs: %s", kind, len(object_ids), error)
            now = trio.current_time()
            for object_id in object_ids:
                persisted = self.catalog.cache.get_record(self._record_key(kind, object_id))
                if persisted is not None:
                    self._fresh[(kind, object_id)] = (now, persisted)
            return error
        for object_id in object_ids:
            self._store(kind, object_id, loaded.get(object_id))
        return None

    async def _remote(self, what: str, query: str, *args):
        """Run the query function named ``query`` with the connection and ``args`` in a worker thread."""
        if self.connection is None:
            raise OfflineError(f"{what}: the mount is offline")
        return await self.catalog._remote(what, getattr(self.queries, query), self.connection, *args)

    # Annotations

    async def annotation(self, annotation_id: int) -> mr.Annotation | None:
        """Return an annotation, or None if it does not exist or is not readable."""
        return await self._get("annotation", annotation_id, self._load_annotations)

    async def annotations(self, annotation_ids: Sequence[int]) -> dict[int, mr.Annotation]:
        found = await self._get_nearby("annotation", annotation_ids, self._load_annotations)
        return {i: a for i, a in found.items() if a is not None}

    async def _load_annotations(self, annotation_ids: list[int]) -> dict[int, mr.Annotation]:
        found = await self._remote(f"Reading {len(annotation_ids)} annotations", "annotations", annotation_ids)
        for annotation in found.values():
            self._note_listing("annotation", annotation.annotation_ids)
        return found

    def note_annotations(self, annotation_ids: Sequence[int]) -> None:
        """Remember annotation IDs listed together, e.g. those linked to one ROI."""
        self._note_listing("annotation", annotation_ids)

    async def image_annotation_ids(self, image_id: int) -> tuple[int, ...]:
        """Return the IDs of the annotations linked to an image, loading their records too."""
        found = await self._get("image-annotations", image_id, self._load_image_annotations)
        return found or ()

    async def _load_image_annotations(self, image_ids: list[int]) -> dict[int, tuple[int, ...]]:
        links, records, owners = await self._remote(f"Reading the annotations of {len(image_ids)} images",
                                                    "linked_annotations", "Image", image_ids)
        self._store_all("experimenter", owners)
        self._note_listing("experimenter", sorted({a.owner_id for a in records.values() if a.owner_id is not None}))
        for annotation in records.values():
            self._store("annotation", annotation.id, annotation)
            self._note_listing("annotation", annotation.annotation_ids)
        for annotation_ids in links.values():
            self._note_listing("annotation", annotation_ids)
        return {image_id: links.get(image_id, ()) for image_id in image_ids}

    async def annotation_closure(self, annotation_ids: Sequence[int]) -> dict[int, mr.Annotation]:
        """Return the given annotations and every annotation linked from them, level by level."""
        found: dict[int, mr.Annotation] = {}
        pending = list(dict.fromkeys(annotation_ids))
        while pending:
            loaded = await self.annotations(pending)
            found.update(loaded)
            pending = list(dict.fromkeys(child for a in loaded.values() for child in a.annotation_ids
                                         if child not in found))
        return found

    # ROIs

    async def image_roi_ids(self, image_id: int) -> tuple[int, ...]:
        """Return the IDs of an image's ROIs, loading the ROIs of its neighbours too."""
        found = await self._get("image-rois", image_id, self._load_image_rois)
        return found or ()

    async def _load_image_rois(self, image_ids: list[int]) -> dict[int, tuple[int, ...]]:
        rois = await self._remote(f"Reading the ROIs of {len(image_ids)} images", "image_rois", image_ids)
        by_image: dict[int, list[int]] = {image_id: [] for image_id in image_ids}
        for roi in sorted(rois.values(), key=lambda r: r.id):
            self._store("roi", roi.id, roi)
            self._note_listing("annotation", roi.annotation_ids)
            if roi.image_id in by_image:
                by_image[roi.image_id].append(roi.id)
        for roi_ids in by_image.values():
            self._note_listing("roi", roi_ids)
        return {image_id: tuple(roi_ids) for image_id, roi_ids in by_image.items()}

    async def roi(self, roi_id: int) -> mr.Roi | None:
        """Return a ROI with its shapes, or None if it does not exist or is not readable."""
        return await self._get("roi", roi_id, self._load_rois)

    async def rois(self, roi_ids: Sequence[int]) -> dict[int, mr.Roi]:
        found = await self._get_nearby("roi", roi_ids, self._load_rois)
        return {i: r for i, r in found.items() if r is not None}

    async def _load_rois(self, roi_ids: list[int]) -> dict[int, mr.Roi]:
        found = await self._remote(f"Reading {len(roi_ids)} ROIs", "rois", roi_ids)
        for roi in found.values():
            self._note_listing("annotation", roi.annotation_ids)
        return found

    # Images

    def note_images(self, image_ids: Sequence[int]) -> None:
        """Remember image IDs listed together, e.g. the images of one dataset."""
        self._note_listing("image", image_ids)
        for kind in ("image-annotations", "image-rois", "image-metadata"):
            self._note_listing(kind, image_ids)

    async def image_metadata(self, image_id: int) -> mr.ImageMetadata | None:
        """Return an image's full metadata, or None if it does not exist or is not readable."""
        return await self._get("image-metadata", image_id, self._load_image_metadata)

    async def _load_image_metadata(self, image_ids: list[int]) -> dict[int, mr.ImageMetadata]:
        found, owners, groups = await self._remote(f"Reading the metadata of {len(image_ids)} images",
                                                   "image_metadata", image_ids)
        self._store_all("experimenter", owners)
        self._store_all("group", groups)
        for kind, ids in (("experimenter", (m.owner_id for m in found.values())),
                          ("group", (m.group_id for m in found.values())),
                          ("dataset", (i for m in found.values() for i in m.dataset_ids)),
                          ("plate", (i for m in found.values() for i in m.plate_ids))):
            self._note_listing(kind, sorted(set(ids) - {None}))
        # An image without ROIs in this load needs no ROI query of its own.
        for metadata in found.values():
            if not metadata.roi_ids:
                self._store_if_missing("image-rois", metadata.id, ())
        # The links to image annotations come with the annotations themselves.
        annotation_ids = await self._get_many("image-annotations", list(found), self._load_image_annotations)
        return {image_id: dataclasses.replace(metadata, annotation_ids=annotation_ids.get(image_id) or ())
                for image_id, metadata in found.items()}

    # People

    async def experimenters(self, experimenter_ids: Sequence[int]) -> dict[int, mr.Experimenter]:
        async def load(ids):
            return await self._remote(f"Reading {len(ids)} experimenters", "experimenters", ids)

        found = await self._get_nearby("experimenter", experimenter_ids, load)
        return {i: e for i, e in found.items() if e is not None}

    async def groups(self, group_ids: Sequence[int]) -> dict[int, mr.ExperimenterGroup]:
        async def load(ids):
            return await self._remote(f"Reading {len(ids)} groups", "groups", ids)

        found = await self._get_nearby("group", group_ids, load)
        return {i: g for i, g in found.items() if g is not None}

    # Containers

    async def container(self, kind: str, object_id: int):
        """Return a Project, Dataset, Screen or Plate record, or None."""
        return await self._get(kind.lower(), object_id, self._container_loader(kind))

    async def containers(self, kind: str, object_ids: Sequence[int]) -> dict[int, object]:
        found = await self._get_nearby(kind.lower(), object_ids, self._container_loader(kind))
        return {i: c for i, c in found.items() if c is not None}

    def _container_loader(self, kind: str) -> Callable[[list[int]], Awaitable[dict[int, object]]]:
        async def load(object_ids: list[int]) -> dict[int, object]:
            found = await self._remote(f"Reading {len(object_ids)} {kind} objects", kind.lower() + "s", object_ids)
            for record in found.values():
                self._note_children(kind, record)
            return found

        return load

    def _note_children(self, kind: str, record) -> None:
        if kind == "Project":
            self._note_listing("dataset", record.dataset_ids)
        elif kind == "Dataset":
            self.note_images(record.image_ids)
        elif kind == "Screen":
            self._note_listing("plate", record.plate_ids)
        elif kind == "Plate":
            self.note_images([s.image_id for w in record.wells for s in w.samples if s.image_id is not None])

    async def container_ids(self, kind: str) -> list[int]:
        """Return the IDs that ``<kind>/`` lists: the mount's targets of that kind, or all readable ones.

        With targets, Dataset/ also lists the datasets of target projects
        and Plate/ the plates of target screens.
        """
        key = self.catalog._record_key("meta-listing", f"{kind};" + ";".join(str(t) for t in self.catalog.targets))

        async def load() -> list[int]:
            if self.catalog.offline:
                # What an earlier online mount listed, else what was pinned.
                persisted = self.catalog.cache.get_record(key)
                if persisted is not None:
                    return persisted
                return self.catalog.pinned_target_ids(kind)
            if self.catalog.targets:
                return await self._target_container_ids(kind)
            object_ids: list[int] = []
            while True:
                page = await self._remote(f"Listing {kind} objects", "object_ids", kind, len(object_ids), WINDOW)
                object_ids.extend(page)
                if len(page) < WINDOW:
                    return object_ids

        object_ids = await self.catalog._cached(key, load, self.catalog.ttl)
        self._note_listing(kind.lower(), object_ids)
        return object_ids

    async def _target_container_ids(self, kind: str) -> list[int]:
        object_ids = {i for t in self.catalog.targets if t.kind == kind for i in t.ids}
        parent_kind = {"Dataset": "Project", "Plate": "Screen"}.get(kind)
        parent_ids = [i for t in self.catalog.targets if t.kind == parent_kind for i in t.ids]
        if parent_ids:
            for parent in (await self.containers(parent_kind, parent_ids)).values():
                object_ids.update(parent.dataset_ids if parent_kind == "Project" else parent.plate_ids)
        return sorted(object_ids)

    # Documents

    async def document(self, key: tuple, record, render: Callable[..., bytes], *args) -> bytes:
        """Return ``render(*args)``, rendered again only when ``record`` changed since the last call."""
        cached = self._documents.get(key)
        if cached is not None and cached[0] == record:
            self._documents.move_to_end(key)
            return cached[1]
        content = await trio.to_thread.run_sync(render, *args, limiter=self._render_limiter)
        self._documents[key] = (record, content)
        self._documents.move_to_end(key)
        while len(self._documents) > MAX_DOCUMENTS:
            self._documents.popitem(last=False)
        return content

    async def export_document(self, image: mr.ImageMetadata,
                              file_href: Callable[[mr.Annotation], str]) -> bytes:
        """Return the Export document of an image, gathering everything it refers to."""
        roi_ids = await self.image_roi_ids(image.id)
        rois = await self.rois(roi_ids)
        image_annotation_ids = await self.image_annotation_ids(image.id)
        wanted = list(image_annotation_ids) + list(image.annotation_ids)
        for channel in image.channels:
            wanted.extend(channel.annotation_ids)
        for roi in rois.values():
            wanted.extend(roi.annotation_ids)
            for shape in roi.shapes:
                wanted.extend(shape.annotation_ids)
        annotations = await self.annotation_closure(wanted)

        person_ids = sorted({i for i in [image.owner_id, *(a.owner_id for a in annotations.values())]
                             if i is not None})
        experimenters = await self.experimenters(person_ids)
        groups = await self.groups([image.group_id] if image.group_id is not None else [])
        datasets = await self.containers("Dataset", image.dataset_ids)
        plates = await self.containers("Plate", image.plate_ids)

        # The image's own links may be newer than its metadata record.
        image = _with_links(image, image_annotation_ids, tuple(sorted(rois)))
        inputs = (image, tuple(sorted(annotations.items())), tuple(rois[i] for i in sorted(rois)),
                  tuple(experimenters.values()), tuple(groups.values()), tuple(datasets.values()),
                  tuple(plates.values()))
        return await self.document(("export", image.id), inputs, _render_export, inputs, file_href)


class _SetEvent:
    async def wait(self) -> None:
        return None


# Waiting on an ID whose load finished between two checks returns at once.
_SET = _SetEvent()


def _with_links(image: mr.ImageMetadata, annotation_ids: tuple[int, ...], roi_ids: tuple[int, ...]):
    merged = tuple(dict.fromkeys(image.annotation_ids + annotation_ids))
    return dataclasses.replace(image, annotation_ids=merged, roi_ids=roi_ids)


def _render_export(inputs: tuple, file_href: Callable[[mr.Annotation], str]) -> bytes:
    image, annotations, rois, experimenters, groups, datasets, plates = inputs
    return omexml.export_document(image, dict(annotations), rois, experimenters, groups, datasets, plates,
                                  file_href=file_href)

