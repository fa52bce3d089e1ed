"""The metadata part of the namespace: OME-XML documents, annotations, ROIs, containers.

::

    Image/<id>/Metadata/image-<id>.ome.xml     the <Image> element on one line
    Image/<id>/Export/image-<id>.ome.xml       a complete OME document
    Image/<id>/Annotation/<id>                 -> ../../../Annotation/<id>
    Image/<id>/Roi/<id>                        -> ../../../Roi/<id>
    Annotation/<id>/Metadata/annotation-<id>.ome.xml
    Annotation/<id>/Annotation/<id>            -> ../../../Annotation/<id>
    Annotation/<id>/File/<name>                a file attachment's bytes
    Roi/<id>/Metadata/roi-<id>.ome.xml
    Roi/<id>/Annotation/<id>                   -> ../../../Annotation/<id>
    Project/<id>/Dataset/<id>                  -> ../../../Dataset/<id>
    Dataset/<id>/Image/<id>                    -> ../../../Image/<id>
    Screen/<id>/Plate/<id>                     -> ../../../Plate/<id>
    Plate/<id>/Well/<id>/Image/<id>            -> ../../../../../Image/<id>

Documents are ``tree.Document`` nodes: their bytes are rendered when the
node is made, so getattr and read agree, and ``MetaCatalog`` keeps the
rendered bytes until the record behind them changes.

Limitation: ``Annotation/`` and ``Roi/`` list only the objects this mount
has met so far, through images, ROIs or other annotations. Any of them
resolves by ID on lookup. Like ``Image/``, the container directories list
the mount's targets of their kind, or without targets every readable one.
"""

import logging
from collections.abc import Sequence

from . import metarecords as mr
from . import omexml, records
from .catalog import Catalog
from .metacatalog import CONTAINER_KINDS, MetaCatalog
from .tree import Directory, Document, File, Node, Symlink, climb, parse_id, safe_name

log = logging.getLogger(__name__)

# The directories that Annotation/<id>/, Image/<id>/Export/ and
# Annotation/<id>/Metadata/ are in are all three levels deep, so one
# relative reference to an attachment's bytes works from each document.
_DOCUMENT_DEPTH = 3


def top_level(catalog: Catalog) -> dict[str, Node]:
    """Return the top-level directories this module adds to the mount's root."""
    meta = MetaCatalog.of(catalog)
    children: dict[str, Node] = {"Annotation": AnnotationList(meta), "Roi": RoiList(meta)}
    for kind in CONTAINER_KINDS:
        children[kind] = ContainerList(meta, kind)
    return children


def image_children(catalog: Catalog, image: records.Image) -> dict[str, Node]:
    """Return the metadata entries of ``Image/<id>/``."""
    meta = MetaCatalog.of(catalog)
    return {
        "Metadata": ImageDocumentDir(meta, image, "Metadata"),
        "Export": ImageDocumentDir(meta, image, "Export"),
        "Annotation": ImageLinks(meta, image, "Annotation"),
        "Roi": ImageLinks(meta, image, "Roi"),
    }


def attachment_href(annotation: mr.Annotation) -> str:
    """Return the path of an attachment's bytes relative to a document three levels deep."""
    name = safe_name(annotation.file.name) if annotation.file is not None else ""
    return climb(_DOCUMENT_DEPTH) + f"Annotation/{annotation.id}/File/{name}"


class LinkList(Directory):
    """A directory of symlinks named by ID, each to ``<top>/<id>`` at the mount's root.

    Every key here names the directory's path component by component
    (``("plate", 3, "Well", 7, "Image")``), so its length is the depth.
    """

    def __init__(self, key: tuple, top: str, object_ids: Sequence[int], mtime: float = 0.0):
        self.key = key
        self.top = top
        self.object_ids = tuple(object_ids)
        self.mtime = mtime

    async def children(self) -> dict[str, Node]:
        up = climb(len(self.key))
        return {str(i): Symlink(self.key + (str(i),), f"{up}{self.top}/{i}", self.mtime) for i in self.object_ids}


# Image/<id>/


class ImageDocumentDir(Directory):
    """``Image/<id>/Metadata`` or ``Image/<id>/Export``: one OME-XML document."""

    def __init__(self, meta: MetaCatalog, image: records.Image, role: str):
        self.meta = meta
        self.image = image
        self.role = role
        self.key = ("image", image.id, role)
        self.mtime = image.mtime

    @property
    def name(self) -> str:
        return f"image-{self.image.id}.ome.xml"

    async def children(self) -> dict[str, Node]:
        document = await self._document()
        return {self.name: document} if document is not None else {}

    async def lookup(self, name: str) -> Node | None:
        if name != self.name:
            return None
        return await self._document()

    async def _document(self) -> Document | None:
        metadata = await self.meta.image_metadata(self.image.id)
        if metadata is None:
            return None
        if self.role == "Metadata":
            content = await self.meta.document(("image-element", self.image.id), metadata, omexml.image_element,
                                               metadata)
        else:
            content = await self.meta.export_document(metadata, attachment_href)
        return Document(self.key + (self.name,), content, self.mtime)


class ImageLinks(Directory):
    """``Image/<id>/Annotation`` and ``Image/<id>/Roi``: links to the objects linked to the image."""

    def __init__(self, meta: MetaCatalog, image: records.Image, top: str):
        self.meta = meta
        self.image = image
        self.top = top
        self.key = ("image", image.id, top)
        self.mtime = image.mtime

    async def children(self) -> dict[str, Node]:
        if self.top == "Annotation":
            object_ids = await self.meta.image_annotation_ids(self.image.id)
        else:
            object_ids = await self.meta.image_roi_ids(self.image.id)
        return await LinkList(self.key, self.top, object_ids, self.mtime).children()


# Annotation/


class AnnotationList(Directory):
    key = ("Annotation",)

    def __init__(self, meta: MetaCatalog):
        self.meta = meta

    async def children(self) -> dict[str, Node]:
        return {str(a.id): AnnotationDir(self.meta, a) for a in self.meta.known("annotation")}

    async def lookup(self, name: str) -> Node | None:
        annotation_id = parse_id(name)
        if annotation_id is None:
            return None
        annotation = await self.meta.annotation(annotation_id)
        return AnnotationDir(self.meta, annotation) if annotation is not None else None


class AnnotationDir(Directory):
    def __init__(self, meta: MetaCatalog, annotation: mr.Annotation):
        self.meta = meta
        self.annotation = annotation
        self.key = ("annotation", annotation.id)

    async def children(self) -> dict[str, Node]:
        children: dict[str, Node] = {
            "Metadata": AnnotationDocumentDir(self.meta, self.annotation),
            "Annotation": LinkList(self.key + ("Annotation",), "Annotation", self.annotation.annotation_ids),
        }
        if self.annotation.kind == "FileAnnotation":
            children["File"] = AttachmentDir(self.annotation)
        return children


class AnnotationDocumentDir(Directory):
    def __init__(self, meta: MetaCatalog, annotation: mr.Annotation):
        self.meta = meta
        self.annotation = annotation
        self.key = ("annotation", annotation.id, "Metadata")

    async def children(self) -> dict[str, Node]:
        name = f"annotation-{self.annotation.id}.ome.xml"
        content = await self.meta.document(("annotation-element", self.annotation.id), self.annotation,
                                           omexml.annotation_element, self.annotation, attachment_href)
        return {name: Document(self.key + (name,), content)}


class AttachmentDir(Directory):
    """``Annotation/<id>/File``: the attached file, read lazily like any original file."""

    immutable = True

    def __init__(self, annotation: mr.Annotation):
        self.annotation = annotation
        self.key = ("annotation", annotation.id, "File")

    async def children(self) -> dict[str, Node]:
        file = self.annotation.file
        if file is None:
            return {}
        self.mtime = file.mtime
        name = safe_name(file.name)
        return {name: File(self.key + (name,), file)}


# Roi/


class RoiList(Directory):
    key = ("Roi",)

    def __init__(self, meta: MetaCatalog):
        self.meta = meta

    async def children(self) -> dict[str, Node]:
        return {str(r.id): RoiDir(self.meta, r) for r in self.meta.known("roi")}

    async def lookup(self, name: str) -> Node | None:
        roi_id = parse_id(name)
        if roi_id is None:
            return None
        roi = await self.meta.roi(roi_id)
        return RoiDir(self.meta, roi) if roi is not None else None


class RoiDir(Directory):
    def __init__(self, meta: MetaCatalog, roi: mr.Roi):
        self.meta = meta
        self.roi = roi
        self.key = ("roi", roi.id)

    async def children(self) -> dict[str, Node]:
        self.meta.note_annotations(self.roi.annotation_ids)
        return {
            "Metadata": RoiDocumentDir(self.meta, self.roi),
            "Annotation": LinkList(self.key + ("Annotation",), "Annotation", self.roi.annotation_ids),
        }


class RoiDocumentDir(Directory):
    def __init__(self, meta: MetaCatalog, roi: mr.Roi):
        self.meta = meta
        self.roi = roi
        self.key = ("roi", roi.id, "Metadata")

    async def children(self) -> dict[str, Node]:
        name = f"roi-{self.roi.id}.ome.xml"
        content = await self.meta.document(("roi-element", self.roi.id), self.roi, omexml.roi_element, self.roi)
        return {name: Document(self.key + (name,), content)}


# Containers: Project/, Dataset/, Screen/, Plate/


class ContainerList(Directory):
    def __init__(self, meta: MetaCatalog, kind: str):
        self.meta = meta
        self.kind = kind
        self.key = (kind,)

    async def children(self) -> dict[str, Node]:
        object_ids = await self.meta.container_ids(self.kind)
        found = await self.meta.containers(self.kind, object_ids)
        return {str(i): ContainerDir(self.meta, self.kind, found[i]) for i in object_ids if i in found}

    async def lookup(self, name: str) -> Node | None:
        object_id = parse_id(name)
        if object_id is None:
            return None
        record = await self.meta.container(self.kind, object_id)
        return ContainerDir(self.meta, self.kind, record) if record is not None else None


class ContainerDir(Directory):
    """``Project/<id>``, ``Dataset/<id>``, ``Screen/<id>`` or ``Plate/<id>``."""

    def __init__(self, meta: MetaCatalog, kind: str, record):
        self.meta = meta
        self.kind = kind
        self.record = record
        self.key = (kind.lower(), record.id)

    async def children(self) -> dict[str, Node]:
        if self.kind == "Project":
            return {"Dataset": LinkList(self.key + ("Dataset",), "Dataset", self.record.dataset_ids)}
        if self.kind == "Dataset":
            return {"Image": DatasetImages(self.meta, self.record)}
        if self.kind == "Screen":
            return {"Plate": LinkList(self.key + ("Plate",), "Plate", self.record.plate_ids)}
        return {"Well": WellList(self.meta, self.record)}


class DatasetImages(LinkList):
    """``Dataset/<id>/Image``: links to the dataset's images."""

    def __init__(self, meta: MetaCatalog, dataset: mr.Dataset):
        super().__init__(("dataset", dataset.id, "Image"), "Image", dataset.image_ids)
        self.meta = meta

    async def children(self) -> dict[str, Node]:
        await _load_images(self.meta, self.object_ids)
        return await super().children()


async def _load_images(meta: MetaCatalog, image_ids: Sequence[int]) -> None:
    """Load the records of images listed together, so following each link costs no query."""
    meta.note_images(image_ids)
    await meta.catalog.images(image_ids)


class WellList(Directory):
    def __init__(self, meta: MetaCatalog, plate: mr.Plate):
        self.meta = meta
        self.plate = plate
        self.key = ("plate", plate.id, "Well")

    async def children(self) -> dict[str, Node]:
        await _load_images(self.meta, [s.image_id for w in self.plate.wells for s in w.samples
                                       if s.image_id is not None])
        return {str(w.id): WellDir(self.plate, w) for w in self.plate.wells}


class WellDir(Directory):
    def __init__(self, plate: mr.Plate, well: mr.Well):
        self.well = well
        self.key = ("plate", plate.id, "Well", well.id)

    async def children(self) -> dict[str, Node]:
        image_ids = [s.image_id for s in self.well.samples if s.image_id is not None]
        return {"Image": LinkList(self.key + ("Image",), "Image", image_ids)}
