"""Plain metadata records that ``remote`` returns and the other layers share.

They are frozen dataclasses of built-in types, so they pickle into the
persistent catalog and compare by value. None of them refers to omero-py.
"""

from dataclasses import dataclass, field

from .errors import UsageError

# OMERO's OriginalFile.hasher values (ome.model.enums.ChecksumAlgorithm).
SHA1 = "SHA1-160"
MD5 = "MD5-128"

# Kinds that a command-line target may name, spelled as OMERO spells them.
TARGET_KINDS = ("Image", "Dataset", "Project", "Screen", "Plate", "Well", "Fileset")

# OMERO IDs are Java longs; a larger number names no object, and omero-py
# cannot even send it (RLong raises ValueError).
MAX_ID = 2 ** 63 - 1


@dataclass(frozen=True)
class OriginalFile:
    """One file stored on the server, as its OriginalFile row describes it."""

    id: int
    name: str
    path: str
    size: int
    mtime: float
    hash: str | None = None
    hasher: str | None = None
    repo_uuid: str | None = None
    mimetype: str | None = None
    # True when the server's binary_access policy forbids downloading it.
    restricted: bool = False


@dataclass(frozen=True)
class Repository:
    """A repository's own OriginalFile: its ID names the repository directory."""

    id: int
    name: str
    uuid: str


@dataclass(frozen=True)
class Image:
    id: int
    name: str
    fileset_id: int | None
    mtime: float = 0.0


@dataclass(frozen=True)
class UsedFiles:
    """The server's verdict on a fileset's files, by OriginalFile ID.

    ``binary`` contains the files the reader needs for pixels; ``companion``
    the files it reads without pixels. A file in both is binary.
    """

    binary: frozenset[int]
    companion: frozenset[int]


@dataclass(frozen=True)
class Fileset:
    """A fileset's files, their roles and the images made from it."""

    id: int
    files: tuple[OriginalFile, ...]
    image_ids: tuple[int, ...]
    used: UsedFiles
    mtime: float = 0.0

    def role_of(self, file_id: int) -> str:
        """Return "Binary" or "Companion" for one of this fileset's files."""
        if file_id in self.used.binary:
            return "Binary"
        return "Companion"


@dataclass(frozen=True)
class ServerIdentity:
    """Server identity that separates one server's data from another's in the cache."""

    database_uuid: str
    version: str = ""


@dataclass(frozen=True)
class ImageTarget:
    """A command-line target such as ``Dataset:3`` or ``Image:1,2``."""

    kind: str
    ids: tuple[int, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(str(i) for i in self.ids)}"


def parse_target(text: str) -> ImageTarget:
    """Parse a target written as OMERO's command line writes it: ``Dataset:3`` or ``Image:1,2``."""
    kind, sep, ids_text = text.partition(":")
    kind = kind.strip()
    matches = [k for k in TARGET_KINDS if k.lower() == kind.lower()]
    if not sep or not matches:
        raise UsageError(f"Invalid target {text!r}; expected KIND:ID[,ID...] with KIND one of "
                         f"{', '.join(TARGET_KINDS)}.")
    ids = []
    for part in ids_text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or not 0 < int(part) <= MAX_ID:
            raise UsageError(f"Invalid ID {part!r} in target {text!r}; IDs are positive integers up to {MAX_ID}.")
        ids.append(int(part))
    return ImageTarget(matches[0], tuple(ids))
