"""The namespace: which nodes exist, their children, link targets and files.

No FUSE and no OMERO here: nodes ask the catalog for records and describe
themselves with plain values, and ``fs`` turns them into inodes.

Each node has a ``key``, a tuple that names it for the life of the mount
(``("image", 12, "Binary", "sub")``). Two lookups that reach the same node
give equal keys, so ``fs`` maps keys to inodes without keeping node objects
alive twice.

Every symlink is relative and climbs exactly as many levels as its own
directory is deep, so no link resolves outside the mount, whatever the
server's names: every name goes through ``safe_name`` first.
"""

import hashlib
import logging
import posixpath
import re
from dataclasses import dataclass

from . import records
from .catalog import Catalog

log = logging.getLogger(__name__)

# Linux NAME_MAX, in bytes of the encoded name.
NAME_MAX = 255

# The longest symlink target the kernel takes from a FUSE readlink reply, in
# bytes: PATH_MAX (4096) less the terminating NUL. A longer reply fails, so
# the link would neither resolve nor read.
SYMLINK_MAX = 4095

# The mount's top-level directories, in listing order.
TOP_LEVEL = ("Image", "Fileset", "Repository")

LEGACY = "Legacy"

# The end of every name that safe_name changed: a hash, then the extension.
_CHANGED_NAME = re.compile(r"~[0-9a-f]{12}(\.[^.]+)?\Z")


def safe_name(name: str, directory: bool = False) -> str:
    """Return ``name`` made safe as one path component, deterministically.

    The result is never empty, ``.`` or ``..``, contains no ``/`` or NUL,
    and encodes to at most NAME_MAX bytes (UTF-8, with undecodable bytes
    kept by surrogate escapes). A name that must change keeps its start
    and its extension and gets a hash of the original name, so names that
    clean up alike (``a/b`` and ``a_b``, two long names that differ only at
    the end) stay distinct. A name that already looks like such a result
    gets a hash too, so no unchanged name can take a changed one's place.
    Directory names (``directory``) hash differently from file names, so a
    directory ``..`` and a file ``..`` side by side stay distinct.
    """
    cleaned = name.replace("/", "_").replace("\x00", "_")
    if cleaned in ("", ".", ".."):
        cleaned = "_" + cleaned
    encoded = cleaned.encode("utf-8", "surrogateescape")
    if cleaned == name and len(encoded) <= NAME_MAX and not _CHANGED_NAME.search(name):
        return name

    kind = "d" if directory else "f"
    digest = hashlib.sha1((kind + name).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem, extension = posixpath.splitext(cleaned)
    if len(extension) < 2 or len(extension.encode("utf-8", "surrogateescape")) > 32:
        stem, extension = cleaned, ""
    budget = NAME_MAX - len(extension.encode("utf-8", "surrogateescape")) - len(digest) - 1
    head = stem.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore")
    return f"{head}~{digest}{extension}"


def path_components(path: str) -> tuple[str, ...]:
    """Split an OriginalFile path on ``/`` into safe, non-empty components."""
    return tuple(safe_name(part, directory=True) for part in path.split("/") if part not in ("", "."))


def parse_id(name: str) -> int | None:
    """Return the object ID a directory entry name stands for, or None."""
    # str.isdigit also accepts digits such as "²" that int() rejects.
    if not (name.isascii() and name.isdigit()) or name.startswith("0"):
        return None
    object_id = int(name)
    return object_id if object_id <= records.MAX_ID else None


@dataclass(frozen=True)
class Entry:
    """One file of a fileset as the tree places it."""

    role: str
    sub: tuple[str, ...]
    name: str
    file: records.OriginalFile


def fileset_layout(fileset: records.Fileset) -> tuple[Entry, ...]:
    """Place a fileset's files: role, subdirectory below the shared prefix, safe name.

    The shared prefix is the longest directory path that every file's path
    starts with, so a fileset in one directory has no subdirectories. Two
    files that end up with the same name in one place keep the name of the
    lower ID and the other gets its ID appended.
    """
    paths = [path_components(f.path) for f in fileset.files]
    prefix_length = 0
    if paths:
        shortest = min(len(p) for p in paths)
        while prefix_length < shortest and len({p[prefix_length] for p in paths}) == 1:
            prefix_length += 1

    entries = []
    taken: set[tuple[str, tuple[str, ...], str]] = set()
    for file, path in sorted(zip(fileset.files, paths), key=lambda pair: pair[0].id):
        role = fileset.role_of(file.id)
        sub = path[prefix_length:]
        name = safe_name(file.name)
        if (role, sub, name) in taken:
            name = safe_name(f"{name}~{file.id}")
        taken.add((role, sub, name))
        entries.append(Entry(role, sub, name, file))
    return tuple(entries)


def climb(depth: int) -> str:
    """Return the relative path from a directory ``depth`` levels deep to the mount's root."""
    return "../" * depth


@dataclass(frozen=True)
class Attributes:
    """Node description for ``fs``: kind, size, time and cacheability."""

    kind: str  # "dir", "link" or "file"
    size: int = 0
    mtime: float = 0.0
    # True when the node never changes, so the kernel may cache it for long.
    immutable: bool = False


class Node:
    key = ()
    immutable = False

    def attributes(self) -> Attributes:
        raise NotImplementedError


class Directory(Node):
    mtime = 0.0

    def attributes(self) -> Attributes:
        return Attributes("dir", mtime=self.mtime, immutable=self.immutable)

    async def children(self) -> dict[str, Node]:
        raise NotImplementedError

    async def lookup(self, name: str) -> Node | None:
        return (await self.children()).get(name)


class Symlink(Node):
    immutable = True

    def __init__(self, key: tuple, target: str, mtime: float = 0.0):
        self.key = key
        self.target = target
        self.mtime = mtime

    def attributes(self) -> Attributes:
        return Attributes("link", size=len(self.target.encode("utf-8", "surrogateescape")), mtime=self.mtime,
                          immutable=self.immutable)


class File(Node):
    """A regular file holding an original file's bytes."""

    immutable = True

    def __init__(self, key: tuple, file: records.OriginalFile):
        self.key = key
        self.file = file

    def attributes(self) -> Attributes:
        return Attributes("file", size=self.file.size, mtime=self.file.mtime, immutable=True)


class Document(Node):
    """A regular file whose bytes omerofs generated, such as an OME-XML document.

    The bytes are made when the node is made (at lookup), so the size that
    getattr reports is always the length that reads of this node return.
    """

    def __init__(self, key: tuple, content: bytes, mtime: float = 0.0):
        self.key = key
        self.content = content
        self.mtime = mtime

    def attributes(self) -> Attributes:
        return Attributes("file", size=len(self.content), mtime=self.mtime)


def link_or_file(key: tuple, target: str, file: records.OriginalFile) -> Node:
    """Return a symlink to ``target``, or the file itself where the target is too long for the kernel.

    Limitation: such a file does not resolve into the repository directory,
    so multi-file formats whose paths are that deep must be opened there.
    """
    if len(target.encode("utf-8", "surrogateescape")) > SYMLINK_MAX:
        return File(key, file)
    return Symlink(key, target, file.mtime)


class Root(Directory):
    key = ("root",)

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    async def children(self) -> dict[str, Node]:
        # Imported here because metatree builds on this module's node classes.
        from . import metatree

        return {
            "Image": ImageList(self.catalog),
            "Fileset": FilesetList(self.catalog),
            "Repository": RepositoryList(self.catalog),
            **metatree.top_level(self.catalog),
        }


# Image/

class ImageList(Directory):
    key = ("Image",)

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    async def children(self) -> dict[str, Node]:
        image_ids = await self.catalog.listed_image_ids()
        images = await self.catalog.images(image_ids)
        return {str(i): ImageDir(self.catalog, images[i]) for i in image_ids if i in images}

    async def lookup(self, name: str) -> Node | None:
        image_id = parse_id(name)
        if image_id is None:
            return None
        image = await self.catalog.image(image_id)
        return ImageDir(self.catalog, image) if image is not None else None


class ImageDir(Directory):
    def __init__(self, catalog: Catalog, image: records.Image):
        self.catalog = catalog
        self.image = image
        self.key = ("image", image.id)
        self.mtime = image.mtime

    async def children(self) -> dict[str, Node]:
        children: dict[str, Node] = {
            "Binary": ImageFiles(self.catalog, self.image, "Binary", ()),
            "Companion": ImageFiles(self.catalog, self.image, "Companion", ()),
        }
        if self.image.fileset_id is not None:
            children["Fileset"] = Symlink(self.key + ("Fileset",), f"../../Fileset/{self.image.fileset_id}",
                                          self.mtime)
        from . import metatree

        children.update(metatree.image_children(self.catalog, self.image))
        return children


class _FilesetFiles(Directory):
    """Files of one role of a fileset below one subdirectory; shared by Image/ and Fileset/."""

    immutable = True

    def __init__(self, catalog: Catalog, fileset_id: int | None, role: str, sub: tuple[str, ...],
                 near_image: int | None):
        self.catalog = catalog
        self.fileset_id = fileset_id
        self.role = role
        self.sub = sub
        self.near_image = near_image

    def _subdirectory(self, name: str) -> "Directory":
        raise NotImplementedError

    def _link(self, entry: Entry) -> Node:
        raise NotImplementedError

    async def _entries(self) -> tuple[Entry, ...]:
        if self.fileset_id is None:
            return ()
        fileset = await self.catalog.fileset(self.fileset_id, near_image=self.near_image)
        if fileset is None:
            return ()
        self.mtime = fileset.mtime
        return fileset_layout(fileset)

    async def children(self) -> dict[str, Node]:
        children: dict[str, Node] = {}
        depth = len(self.sub)
        for entry in await self._entries():
            if entry.role != self.role or entry.sub[:depth] != self.sub:
                continue
            if len(entry.sub) > depth:
                name = entry.sub[depth]
                if name not in children:
                    children[name] = self._subdirectory(name)
            else:
                children[entry.name] = self._link(entry)
        return children


class ImageFiles(_FilesetFiles):
    """``Image/<id>/Binary/<sub>`` and ``Companion/<sub>``: links into the fileset."""

    def __init__(self, catalog: Catalog, image: records.Image, role: str, sub: tuple[str, ...]):
        super().__init__(catalog, image.fileset_id, role, sub, near_image=image.id)
        self.image = image
        self.key = ("image", image.id, role) + sub

    def _subdirectory(self, name: str) -> Directory:
        return ImageFiles(self.catalog, self.image, self.role, self.sub + (name,))

    def _link(self, entry: Entry) -> Node:
        target = climb(3 + len(self.sub)) + "/".join(
            ("Fileset", str(self.fileset_id), self.role) + entry.sub + (entry.name,))
        return link_or_file(self.key + (entry.name,), target, entry.file)


# Fileset/

class FilesetList(Directory):
    key = ("Fileset",)

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    async def children(self) -> dict[str, Node]:
        images = await self.catalog.images(await self.catalog.listed_image_ids())
        fileset_ids = sorted({i.fileset_id for i in images.values() if i.fileset_id is not None})
        await self.catalog.load_filesets(fileset_ids)
        children: dict[str, Node] = {}
        for fileset_id in fileset_ids:
            fileset = await self.catalog.fileset(fileset_id)
            if fileset is not None:
                children[str(fileset_id)] = FilesetDir(self.catalog, fileset)
        return children

    async def lookup(self, name: str) -> Node | None:
        fileset_id = parse_id(name)
        if fileset_id is None:
            return None
        fileset = await self.catalog.fileset(fileset_id)
        return FilesetDir(self.catalog, fileset) if fileset is not None else None


class FilesetDir(Directory):
    immutable = True

    def __init__(self, catalog: Catalog, fileset: records.Fileset):
        self.catalog = catalog
        self.fileset = fileset
        self.key = ("fileset", fileset.id)
        self.mtime = fileset.mtime

    async def children(self) -> dict[str, Node]:
        return {
            "Binary": FilesetFiles(self.catalog, self.fileset, "Binary", ()),
            "Companion": FilesetFiles(self.catalog, self.fileset, "Companion", ()),
            "Image": FilesetImages(self.catalog, self.fileset),
        }


class FilesetFiles(_FilesetFiles):
    """``Fileset/<id>/Binary/<sub>`` and ``Companion/<sub>``: links into the repository."""

    def __init__(self, catalog: Catalog, fileset: records.Fileset, role: str, sub: tuple[str, ...]):
        super().__init__(catalog, fileset.id, role, sub, near_image=None)
        self.fileset = fileset
        self.key = ("fileset", fileset.id, role) + sub
        self._repository_ids: dict[str | None, int | None] = {}

    async def children(self) -> dict[str, Node]:
        for file in self.fileset.files:
            if file.repo_uuid not in self._repository_ids and file.repo_uuid is not None:
                repository = await self.catalog.repository_by_uuid(file.repo_uuid)
                self._repository_ids[file.repo_uuid] = repository.id if repository else None
        return await super().children()

    def _subdirectory(self, name: str) -> Directory:
        return FilesetFiles(self.catalog, self.fileset, self.role, self.sub + (name,))

    def _link(self, entry: Entry) -> Symlink:
        repository_id = self._repository_ids.get(entry.file.repo_uuid)
        if repository_id is None:
            target_parts = ("Repository", LEGACY, str(entry.file.id))
        else:
            target_parts = ("Repository", str(repository_id)) + path_components(entry.file.path) + (
                safe_name(entry.file.name),)
        target = climb(3 + len(self.sub)) + "/".join(target_parts)
        return link_or_file(self.key + (entry.name,), target, entry.file)


class FilesetImages(Directory):
    immutable = True

    def __init__(self, catalog: Catalog, fileset: records.Fileset):
        self.catalog = catalog
        self.fileset = fileset
        self.key = ("fileset", fileset.id, "Image")
        self.mtime = fileset.mtime

    async def children(self) -> dict[str, Node]:
        return {str(i): Symlink(self.key + (str(i),), f"../../../Image/{i}", self.mtime)
                for i in self.fileset.image_ids}


# Repository/

class RepositoryList(Directory):
    key = ("Repository",)

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    async def children(self) -> dict[str, Node]:
        children: dict[str, Node] = {str(r.id): RepositoryDir(self.catalog, r, ()) for r in
                                     await self.catalog.repositories()}
        children[LEGACY] = LegacyFiles(self.catalog)
        return children

    async def lookup(self, name: str) -> Node | None:
        if name == LEGACY:
            return LegacyFiles(self.catalog)
        repository_id = parse_id(name)
        if repository_id is None:
            return None
        repository = await self.catalog.repository(repository_id)
        return RepositoryDir(self.catalog, repository, ()) if repository is not None else None


class RepositoryDir(Directory):
    """A directory of a repository, showing the files the mount has met so far.

    Limitation: a repository directory lists only files of filesets that
    this cache has seen (through Image/ or Fileset/); omerofs does not
    walk the whole managed repository.
    """

    immutable = True

    def __init__(self, catalog: Catalog, repository: records.Repository, path: tuple[str, ...]):
        self.catalog = catalog
        self.repository = repository
        self.path = path
        self.key = ("repository", repository.id) + path

    async def children(self) -> dict[str, Node]:
        children: dict[str, Node] = {}
        depth = len(self.path)
        # NOTE: two files share a name here only if the server gives both the
        # same path and name, which a real managed repository cannot, because
        # they name one file on its disk. The lowest ID then wins, whatever
        # order the files were met in.
        files = self.catalog.repository_files(self.repository.uuid)
        for file in sorted(files.values(), key=lambda f: f.id):
            components = path_components(file.path)
            if components[:depth] != self.path:
                continue
            if len(components) > depth:
                name = components[depth]
                if name not in children:
                    children[name] = RepositoryDir(self.catalog, self.repository, self.path + (name,))
            else:
                name = safe_name(file.name)
                if not isinstance(children.get(name), File):
                    children[name] = File(self.key + (name,), file)
        return children


class LegacyFiles(Directory):
    """``Repository/Legacy/<fileId>``: original files stored before filesets existed."""

    key = ("repository", LEGACY)
    immutable = False

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    async def children(self) -> dict[str, Node]:
        return {str(f.id): File(self.key + (str(f.id),), f) for f in self.catalog.repository_files(None).values()}

    async def lookup(self, name: str) -> Node | None:
        file_id = parse_id(name)
        if file_id is None:
            return None
        file = await self.catalog.original_file(file_id)
        if file is None or file.repo_uuid is not None:
            return None
        return File(self.key + (name,), file)
