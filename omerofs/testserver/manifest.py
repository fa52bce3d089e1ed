"""Load a YAML manifest into the test server's object graph.

The manifest format is documented in `docs/manifest.md`. Loading builds real
omero-py model objects (`ImageI`, `FilesetI`, ...), linked in both directions,
each with `details` (owner, group, creation event, permissions). `load` returns
them in a `Graph`, together with users, groups, repositories, file contents and
the binary/companion verdict of every fileset file.

Objects get the IDs the manifest gives them. Objects without an `id` (links,
pixels, channels, events, ...) get IDs after the largest explicit ID of their
ID space, so explicit IDs never move.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import yaml

import omero
import omero.model
from omero.rtypes import rbool, rint, rlong, rstring, rtime

from omerofs.testserver import content, schema
from omerofs.testserver.manifest_values import (
    ManifestError,
    hex_or_text_bytes,
    make_scalar,
    make_unit,
    parse_colour,
    parse_size,
    parse_time_ms,
)

log = logging.getLogger(__name__)

__all__ = ["Graph", "ManifestError", "load"]

SYSTEM_GROUP_ID = 0
USER_GROUP_ID = 1
ROOT_USER_ID = 0

PERMISSION_NAMES = {
    "private": "rw----",
    "read-only": "rwr---",
    "read-annotate": "rwra--",
    "read-write": "rwrw--",
}

# OMERO's default omero.policy.binary_access (OMERO 5.6): without "+plate", the
# original files of images in plates are restricted.
DEFAULT_BINARY_ACCESS = "+read,+write,+image"

ANNOTATION_KINDS = {
    "Tag": ("TagAnnotation", "textValue"),
    "Comment": ("CommentAnnotation", "textValue"),
    "Map": ("MapAnnotation", "mapValue"),
    "File": ("FileAnnotation", None),
    "Long": ("LongAnnotation", "longValue"),
    "Double": ("DoubleAnnotation", "doubleValue"),
    "Boolean": ("BooleanAnnotation", "boolValue"),
    "Timestamp": ("TimestampAnnotation", "timeValue"),
    "Term": ("TermAnnotation", "termValue"),
    "XML": ("XmlAnnotation", "textValue"),
    "List": ("ListAnnotation", None),
}

SHAPE_KINDS = ("Rectangle", "Ellipse", "Point", "Line", "Polyline", "Polygon", "Label", "Mask")

LIGHT_SOURCE_KINDS = ("Laser", "Arc", "Filament", "LightEmittingDiode", "GenericExcitationSource")

# Link classes whose child side has a collection of them (the parent side is found by type).
CHILD_COLLECTIONS = {
    "DatasetImageLink": "datasetLinks",
    "ProjectDatasetLink": "projectLinks",
    "ScreenPlateLink": "screenLinks",
    "GroupExperimenterMap": "groupExperimenterMap",
    "PixelsOriginalFileMap": "pixelsFileMaps",
    "FilterSetExcitationFilterLink": "excitationFilterLink",
    "FilterSetEmissionFilterLink": "emissionFilterLink",
}

BINARY = "binary"
COMPANION = "companion"

# libyaml's loader, when PyYAML has it, parses faster than the pure-Python one;
# both accept the same documents.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclasses.dataclass
class UserRecord:
    experimenter: omero.model.ExperimenterI
    password: str | None
    group_ids: list[int]  # the default group first, then the others, then "user"
    leader_of: set[int]
    admin: bool

    @property
    def user_id(self) -> int:
        return self.experimenter.getId().getValue()

    @property
    def name(self) -> str:
        return self.experimenter.getOmeName().getValue()


@dataclasses.dataclass
class GroupRecord:
    group: omero.model.ExperimenterGroupI
    permissions: str  # such as "rwra--"
    binary_access: frozenset[str]

    @property
    def group_id(self) -> int:
        return self.group.getId().getValue()

    @property
    def name(self) -> str:
        return self.group.getName().getValue()


@dataclasses.dataclass
class RepositoryRecord:
    description: omero.model.OriginalFileI  # mimetype "Repository", hash = uuid
    uuid: str
    binary_access: frozenset[str]
    legacy: bool  # contains the files stored before filesets (OriginalFile.repo is NULL)


@dataclasses.dataclass(frozen=True)
class FileRole:
    """The verdict on one fileset file: binary or companion, for which series."""

    role: str
    series: frozenset[int] | None  # None: every series of the fileset


@dataclasses.dataclass
class Graph:
    """The repository that a manifest describes, as linked omero-py objects."""

    database_uuid: str
    objects: dict[tuple[str, int], omero.model.IObject]  # (ID space, ID) -> object
    extents: dict[str, list[omero.model.IObject]]  # concrete class name -> objects by ID
    users: dict[int, UserRecord]
    groups: dict[int, GroupRecord]
    repositories: list[RepositoryRecord]
    contents: dict[int, content.FileContent]  # original file ID -> bytes
    file_roles: dict[int, FileRole]  # fileset file ID -> verdict
    binary_access: frozenset[str]  # the server-wide omero.policy.binary_access


def id_space(class_name: str) -> str:
    """Return the class whose database table assigns the IDs (`TagAnnotation` -> `Annotation`)."""
    model = schema.model_class(class_name)
    while model.base is not None:
        model = schema.model_class(model.base)
    return model.name


def parse_binary_access(value: Any, where: str) -> frozenset[str]:
    """Return the settings of an omero.policy.binary_access string such as `+read,-plate`."""
    settings = frozenset(part.strip() for part in str(value).split(",") if part.strip())
    known = {f"{sign}{name}" for sign in "+-" for name in ("read", "write", "image", "plate")}
    unknown = settings - known
    if unknown:
        raise ManifestError(f"{where}: unknown binary_access setting(s) {sorted(unknown)}; known: {sorted(known)}")
    return settings


def default_hash_sidecar(manifest_path: Path) -> Path:
    """Return where the SHA-1 cache of a manifest lives: the user's cache directory."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(manifest_path.resolve()).encode()).hexdigest()[:16]
    return cache_home / "omerofs" / "testserver" / f"hashes-{key}.json"


def load(path: str | os.PathLike, hash_sidecar: Path | None = None) -> Graph:
    """Load a manifest file, or the `manifest.yaml` inside a directory.

    Raises ManifestError naming the entry at fault.
    """
    manifest_path = Path(path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "manifest.yaml"
    try:
        text = manifest_path.read_text(encoding="utf-8")
        document = _parse_document(text)
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"cannot read manifest {manifest_path}: {error}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"invalid YAML in {manifest_path}: {error}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{manifest_path}: the manifest must be a mapping of sections")

    hashes = content.HashCache(hash_sidecar or default_hash_sidecar(manifest_path))
    builder = _Builder(document, manifest_path.parent.resolve(), hashes)
    try:
        graph = builder.build()
    finally:
        hashes.save()
    log.info(
        "loaded manifest %s: %d objects, %d users, %d groups",
        manifest_path, len(graph.objects), len(graph.users), len(graph.groups),
    )
    return graph


def _parse_document(text: str) -> Any:
    """Parse a manifest; one written as JSON (which YAML accepts too) takes the faster JSON parser."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return yaml.load(text, Loader=SAFE_LOADER)


def _entries(document: dict, section: str) -> list[dict]:
    value = document.get(section) or []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ManifestError(f"section '{section}' must be a list of mappings")
    return value


def _where(section: str, entry: dict, index: int) -> str:
    if "id" in entry:
        return f"{section}[id={entry['id']}]"
    if "name" in entry:
        return f"{section}[name={entry['name']!r}]"
    return f"{section}[{index}]"


class _Builder:
    """Builds a Graph from one parsed manifest document."""

    def __init__(self, document: dict, base_dir: Path, hashes: content.HashCache):
        self.document = document
        self.base_dir = base_dir
        self.hashes = hashes

        self.objects: list[omero.model.IObject] = []
        self.explicit: dict[tuple[str, int], omero.model.IObject] = {}
        self.refs: dict[tuple[str, int], omero.model.IObject] = {}
        self.enums: dict[tuple[str, str], omero.model.IObject] = {}
        self.events: dict[tuple[int, int, int], omero.model.EventI] = {}
        self.permissions_by_group: dict[int, Any] = {}

        self.users: dict[str, UserRecord] = {}
        self.groups: dict[str, GroupRecord] = {}
        self.repositories: list[RepositoryRecord] = []
        self.contents: dict[int, content.FileContent] = {}  # id(OriginalFileI) -> content
        self.roles: dict[int, FileRole] = {}  # id(OriginalFileI) -> role

        self.default_time = parse_time_ms(document.get("created", "2024-01-01T00:00:00Z"), "created")
        self.binary_access = parse_binary_access(document.get("binary_access", DEFAULT_BINARY_ACCESS), "binary_access")
        self.defaults = document.get("defaults") or {}

    # The build, section by section, in dependency order

    def build(self) -> Graph:
        known = {
            "version", "database_uuid", "created", "binary_access", "defaults", "root_password", "groups", "users",
            "repositories", "instruments", "files", "filesets", "images", "datasets", "projects",
            "plates", "screens", "rois", "annotations",
        }
        unknown = set(self.document) - known
        if unknown:
            raise ManifestError(f"unknown top-level section(s) {sorted(unknown)}; known: {sorted(known)}")

        self._build_security()
        self._build_repositories()
        for index, entry in enumerate(_entries(self.document, "instruments")):
            self._build_instrument(entry, _where("instruments", entry, index))
        for index, entry in enumerate(_entries(self.document, "files")):
            self._build_standalone_file(entry, _where("files", entry, index))
        for index, entry in enumerate(_entries(self.document, "filesets")):
            self._build_fileset(entry, _where("filesets", entry, index))
        for index, entry in enumerate(_entries(self.document, "images")):
            self._build_image(entry, _where("images", entry, index))
        for index, entry in enumerate(_entries(self.document, "datasets")):
            self._build_container(entry, _where("datasets", entry, index), "Dataset", "images", "Image", "DatasetImageLink")
        for index, entry in enumerate(_entries(self.document, "projects")):
            self._build_container(entry, _where("projects", entry, index), "Project", "datasets", "Dataset", "ProjectDatasetLink")
        for index, entry in enumerate(_entries(self.document, "plates")):
            self._build_plate(entry, _where("plates", entry, index))
        for index, entry in enumerate(_entries(self.document, "screens")):
            self._build_container(entry, _where("screens", entry, index), "Screen", "plates", "Plate", "ScreenPlateLink")
        for index, entry in enumerate(_entries(self.document, "rois")):
            self._build_roi(entry, _where("rois", entry, index))

        annotations = _entries(self.document, "annotations")
        created = [self._build_annotation(entry, _where("annotations", entry, index)) for index, entry in enumerate(annotations)]
        for index, (entry, annotation) in enumerate(zip(annotations, created)):
            self._link_annotation(entry, annotation, _where("annotations", entry, index))

        return self._finish()

    def _finish(self) -> Graph:
        highest: dict[str, int] = {}
        for space, object_id in self.explicit:
            highest[space] = max(highest.get(space, 0), object_id)

        objects: dict[tuple[str, int], omero.model.IObject] = dict(self.explicit)
        for obj in self.objects:
            if obj.getId() is None:
                space = id_space(type(obj).__name__[:-1])
                highest[space] = highest.get(space, 0) + 1
                obj.setId(rlong(highest[space]))
                objects[(space, highest[space])] = obj

        extents: dict[str, list[omero.model.IObject]] = {}
        for obj in objects.values():
            extents.setdefault(type(obj).__name__[:-1], []).append(obj)
        for members in extents.values():
            members.sort(key=lambda member: member.getId().getValue())

        contents = {}
        for obj in objects.values():
            if id(obj) in self.contents:
                contents[obj.getId().getValue()] = self.contents[id(obj)]
        roles = {
            obj.getId().getValue(): self.roles[id(obj)]
            for obj in objects.values() if id(obj) in self.roles
        }

        return Graph(
            database_uuid=str(self.document.get("database_uuid") or uuid.uuid5(uuid.NAMESPACE_URL, str(self.base_dir))),
            objects=objects,
            extents=extents,
            users={record.user_id: record for record in self.users.values()},
            groups={record.group_id: record for record in self.groups.values()},
            repositories=self.repositories,
            contents=contents,
            file_roles=roles,
            binary_access=self.binary_access,
        )

    # Objects, IDs and details

    def new(self, class_name: str, object_id: Any, owner: Any, group: Any, time_ms: int, where: str,
            reference: bool = False) -> Any:
        """Create a loaded model object with details; register its explicit ID if it has one."""
        implementation = getattr(omero.model, class_name + "I", None)
        if implementation is None:
            raise ManifestError(f"{where}: {class_name} is not a concrete OMERO model class")
        obj = implementation()
        obj._details._owner = owner
        obj._details._group = group
        event = self._event(time_ms, owner, group)
        obj._details._creationEvent = event
        obj._details._updateEvent = event
        obj._details._permissions = self._shared_permissions(group)
        self.objects.append(obj)

        if object_id is not None:
            if isinstance(object_id, bool) or not isinstance(object_id, int) or object_id < 0:
                raise ManifestError(f"{where}: id must be a non-negative integer, got {object_id!r}")
            space = id_space(class_name)
            if (space, object_id) in self.explicit:
                raise ManifestError(f"{where}: {space} id {object_id} is used twice")
            obj.setId(rlong(object_id))
            self.explicit[(space, object_id)] = obj
            if reference:
                self.refs[(self._ref_kind(class_name), object_id)] = obj
        return obj

    def _ref_kind(self, class_name: str) -> str:
        model = schema.model_class(class_name)
        for kind in ("Annotation", "Shape", "LightSource"):
            if model.is_a(kind):
                return kind
        return class_name

    def lookup(self, kind: str, object_id: Any, where: str) -> Any:
        """Return the object of `kind` that the manifest gave this explicit ID."""
        found = self.refs.get((kind, object_id))
        if found is None:
            raise ManifestError(f"{where}: no {kind} with id {object_id!r} is defined before this entry")
        return found

    def _shared_permissions(self, group: Any) -> Any:
        """Return one PermissionsI per group for the graph's objects; the store never hands these out."""
        key = id(group)
        shared = self.permissions_by_group.get(key)
        if shared is None:
            text = "rw----"
            for record in self.groups.values():
                if record.group is group:
                    text = record.permissions
            shared = omero.model.PermissionsI(text)
            self.permissions_by_group[key] = shared
        return shared

    def _event(self, time_ms: int, owner: Any, group: Any) -> Any:
        if owner is None or group is None:
            return None
        key = (time_ms, owner.getId().getValue() if owner.getId() else -1, group.getId().getValue() if group.getId() else -1)
        event = self.events.get(key)
        if event is None:
            event = omero.model.EventI()
            event._time = rtime(time_ms)
            event._status = None
            event._experimenter = owner
            event._experimenterGroup = group
            event._type = self.enum("EventType", "User", "event")
            system = self.groups.get("system")
            root = self.users.get("root")
            event._details._owner = root.experimenter if root else owner
            event._details._group = system.group if system else group
            event._details._permissions = omero.model.PermissionsI("rw----")
            self.events[key] = event
            self.objects.append(event)
        return event

    def enum(self, class_name: str, value: Any, where: str) -> Any:
        """Return the shared enumeration object (`PixelsType` "uint16"), creating it on first use."""
        key = (class_name, str(value))
        found = self.enums.get(key)
        if found is None:
            found = getattr(omero.model, class_name + "I")()
            found._value = rstring(str(value))
            system = self.groups.get("system")
            root = self.users.get("root")
            if system is not None and root is not None:
                found._details._owner = root.experimenter
                found._details._group = system.group
            found._details._permissions = omero.model.PermissionsI("rw----")
            self.enums[key] = found
            self.objects.append(found)
        return found

    def who(self, entry: dict, where: str, parent: Any = None) -> tuple[Any, Any, int]:
        """Return (owner, group, creation time) for an entry.

        An entry inherits these from `parent`, else from the manifest's `defaults`.
        An `owner` without a `group` puts the object in `defaults.group` when the
        owner is a member of it, else in the owner's default group.
        """
        owner = group = None
        time_ms = self.default_time
        if parent is not None:
            owner, group, time_ms = parent._details._owner, parent._details._group, _created(parent)

        if "owner" in entry:
            owner = self._user(entry["owner"], where).experimenter
            group = None
        if "group" in entry:
            group = self._group(entry["group"], where).group
        if owner is None and "owner" in self.defaults:
            owner = self._user(self.defaults["owner"], "defaults.owner").experimenter
        if owner is None:
            raise ManifestError(f"{where}: needs an owner (set 'owner' here or under 'defaults')")
        if group is None:
            record = self._record_of(owner)
            default_group = self.groups.get(str(self.defaults.get("group")))
            if default_group is not None and default_group.group_id in record.group_ids:
                group = default_group.group
            else:
                group = self._group_by_id(record.group_ids[0]).group
        self._check_member(owner, group, where)

        if "created" in entry:
            time_ms = parse_time_ms(entry["created"], f"{where}.created")
        return owner, group, time_ms

    def _user(self, name: Any, where: str) -> UserRecord:
        record = self.users.get(str(name))
        if record is None:
            raise ManifestError(f"{where}: unknown user {name!r}")
        return record

    def _group(self, name: Any, where: str) -> GroupRecord:
        record = self.groups.get(str(name))
        if record is None:
            raise ManifestError(f"{where}: unknown group {name!r}")
        return record

    def _record_of(self, owner: Any) -> UserRecord:
        for record in self.users.values():
            if record.experimenter is owner:
                return record
        raise ManifestError(f"user {owner.getId().getValue()} is not defined")

    def _group_by_id(self, group_id: int) -> GroupRecord:
        for record in self.groups.values():
            if record.group_id == group_id:
                return record
        raise ManifestError(f"no group with id {group_id}")

    def _check_member(self, owner: Any, group: Any, where: str) -> None:
        for record in self.users.values():
            if record.experimenter is owner:
                if group.getId().getValue() not in record.group_ids and not record.admin:
                    raise ManifestError(f"{where}: user {record.name} is not a member of group {group.getName().getValue()}")
                return

    def set_fields(self, obj: Any, entry: dict, where: str, skip: set[str]) -> None:
        """Set every model field named in `entry` (except `skip`) from its manifest value."""
        model = schema.class_of(obj)
        for key, value in entry.items():
            if key in skip or key in ("id", "owner", "group", "created"):
                continue
            field = model.field(key)
            place = f"{where}.{key}"
            if field is None:
                settable = sorted(
                    name for name, f in model.all_fields().items()
                    if f.kind in (schema.SCALAR, schema.UNIT) or (f.kind == schema.ENTITY and _is_enum(f.type_name))
                )
                raise ManifestError(f"{place}: unknown field for {model.name}; settable fields: {', '.join(settable)}")
            if field.kind == schema.SCALAR:
                setattr(obj, "_" + key, make_scalar(field.type_name, value, place, key))
            elif field.kind == schema.UNIT:
                setattr(obj, "_" + key, make_unit(field.type_name, value, place) if value is not None else None)
            elif field.kind == schema.ENTITY and _is_enum(field.type_name):
                setattr(obj, "_" + key, self.enum(field.type_name, value, place) if value is not None else None)
            else:
                raise ManifestError(f"{place}: {model.name}.{key} is a {field.kind} and cannot be set directly here")

    def link(self, link_class: str, parent: Any, child: Any, where: str, owner: Any = None) -> Any:
        """Create a link object between two objects of one group and add it to both sides."""
        parent_group = parent._details._group
        child_group = child._details._group
        if parent_group is not child_group and child_group.getId().getValue() not in (SYSTEM_GROUP_ID, USER_GROUP_ID):
            raise ManifestError(
                f"{where}: cannot link {type(parent).__name__[:-1]} in group {parent_group.getName().getValue()} "
                f"to {type(child).__name__[:-1]} in group {child_group.getName().getValue()}; OMERO links stay within one group"
            )
        link_owner = owner or parent._details._owner
        time_ms = max(_created(parent), _created(child))
        link = self.new(link_class, None, link_owner, parent_group, time_ms, where)
        link._parent = parent
        link._child = child

        parent_collection = _collection_of(type(parent).__name__[:-1], link_class)
        if parent_collection is not None:
            getattr(parent, "_" + parent_collection + "Seq").append(link)
        child_collection = CHILD_COLLECTIONS.get(link_class)
        if child_collection is not None:
            getattr(child, "_" + child_collection + "Seq").append(link)
        return link

    # Groups, users and repositories

    def _build_security(self) -> None:
        system = self._new_group(SYSTEM_GROUP_ID, "system", "rw----", frozenset())
        user = self._new_group(USER_GROUP_ID, "user", "rwr---", frozenset())
        root = omero.model.ExperimenterI()
        root.setId(rlong(ROOT_USER_ID))
        root._omeName = rstring("root")
        root._firstName = rstring("root")
        root._lastName = rstring("root")
        root._ldap = rbool(False)
        self.explicit[("Experimenter", ROOT_USER_ID)] = root
        self.objects.append(root)
        self.users["root"] = UserRecord(root, self.document.get("root_password"), [SYSTEM_GROUP_ID, USER_GROUP_ID], set(), True)
        for record in (system, user):
            record.group._details._owner = root
            record.group._details._group = system.group
        root._details._owner = root
        root._details._group = user.group
        root._details._permissions = omero.model.PermissionsI("rwr---")

        for index, entry in enumerate(_entries(self.document, "groups")):
            where = _where("groups", entry, index)
            _require(entry, ("id", "name"), where)
            _allow(entry, {"id", "name", "permissions", "description", "binary_access"}, where)
            permissions = str(entry.get("permissions", "private"))
            permissions = PERMISSION_NAMES.get(permissions, permissions)
            if permissions not in PERMISSION_NAMES.values():
                raise ManifestError(f"{where}: invalid permissions {entry.get('permissions')!r}; use one of {sorted(PERMISSION_NAMES)} or {sorted(PERMISSION_NAMES.values())}")
            if entry["id"] in (SYSTEM_GROUP_ID, USER_GROUP_ID) or str(entry["name"]) in self.groups:
                raise ManifestError(f"{where}: group id or name is reserved or used twice")
            binary_access = parse_binary_access(entry["binary_access"], f"{where}.binary_access") if "binary_access" in entry else frozenset()
            record = self._new_group(entry["id"], str(entry["name"]), permissions, binary_access)
            record.group._details._owner = root
            record.group._details._group = system.group
            if "description" in entry:
                record.group._description = rstring(str(entry["description"]))
            if "binary_access" in entry:
                record.group._config = [omero.model.NamedValue("omero.policy.binary_access", str(entry["binary_access"]))]

        for index, entry in enumerate(_entries(self.document, "users")):
            self._build_user(entry, _where("users", entry, index))
        self._link_memberships()

    def _new_group(self, group_id: int, name: str, permissions: str, binary_access: frozenset[str]) -> GroupRecord:
        group = omero.model.ExperimenterGroupI()
        group._name = rstring(name)
        group._ldap = rbool(False)
        group._details._permissions = omero.model.PermissionsI(permissions)
        if isinstance(group_id, bool) or not isinstance(group_id, int) or group_id < 0:
            raise ManifestError(f"groups[{name}]: id must be a non-negative integer, got {group_id!r}")
        group.setId(rlong(group_id))
        if ("ExperimenterGroup", group_id) in self.explicit:
            raise ManifestError(f"groups[{name}]: group id {group_id} is used twice")
        self.explicit[("ExperimenterGroup", group_id)] = group
        self.objects.append(group)
        record = GroupRecord(group, permissions, binary_access)
        self.groups[name] = record
        return record

    def _build_user(self, entry: dict, where: str) -> None:
        _require(entry, ("id", "name", "groups"), where)
        _allow(entry, {"id", "name", "password", "first_name", "last_name", "email", "institution",
                       "groups", "default_group", "leader_of", "admin"}, where)
        name = str(entry["name"])
        if name in self.users or entry["id"] == ROOT_USER_ID:
            raise ManifestError(f"{where}: user name or id is reserved or used twice")

        group_names = [str(g) for g in entry["groups"]]
        default = str(entry.get("default_group", group_names[0] if group_names else ""))
        if default not in group_names:
            raise ManifestError(f"{where}: default_group {default!r} is not one of the user's groups")
        ordered = [default] + [g for g in group_names if g != default]
        group_ids = []
        for group_name in ordered:
            record = self.groups.get(group_name)
            if record is None:
                raise ManifestError(f"{where}: unknown group {group_name!r}")
            group_ids.append(record.group_id)
        admin = bool(entry.get("admin", False))
        if admin:
            group_ids.append(SYSTEM_GROUP_ID)
        group_ids.append(USER_GROUP_ID)
        leader_of = set()
        for group_name in entry.get("leader_of") or []:
            if str(group_name) not in group_names:
                raise ManifestError(f"{where}: leader_of {group_name!r} is not one of the user's groups")
            leader_of.add(self.groups[str(group_name)].group_id)

        experimenter = omero.model.ExperimenterI()
        if isinstance(entry["id"], bool) or not isinstance(entry["id"], int) or ("Experimenter", entry["id"]) in self.explicit:
            raise ManifestError(f"{where}: id must be an unused integer, got {entry['id']!r}")
        experimenter.setId(rlong(entry["id"]))
        self.explicit[("Experimenter", entry["id"])] = experimenter
        self.objects.append(experimenter)
        experimenter._omeName = rstring(name)
        experimenter._firstName = rstring(str(entry.get("first_name", name)))
        experimenter._lastName = rstring(str(entry.get("last_name", name)))
        for key, field in (("email", "_email"), ("institution", "_institution")):
            if key in entry:
                setattr(experimenter, field, rstring(str(entry[key])))
        experimenter._ldap = rbool(False)
        experimenter._details._owner = self.users["root"].experimenter
        experimenter._details._group = self.groups["user"].group
        experimenter._details._permissions = omero.model.PermissionsI("rwr---")

        password = entry.get("password")
        self.users[name] = UserRecord(experimenter, str(password) if password is not None else None, group_ids, leader_of, admin)

    def _link_memberships(self) -> None:
        by_id = {record.group_id: record for record in self.groups.values()}
        root = self.users["root"].experimenter
        system = self.groups["system"].group
        for record in self.users.values():
            for group_id in record.group_ids:
                membership = omero.model.GroupExperimenterMapI()
                membership._parent = by_id[group_id].group
                membership._child = record.experimenter
                membership._owner = rbool(group_id in record.leader_of)
                membership._details._owner = root
                membership._details._group = system
                membership._details._permissions = omero.model.PermissionsI("rw----")
                by_id[group_id].group._groupExperimenterMapSeq.append(membership)
                record.experimenter._groupExperimenterMapSeq.append(membership)
                self.objects.append(membership)

    def _build_repositories(self) -> None:
        root = self.users["root"].experimenter
        common = self.groups["user"].group
        seen_uuids = set()
        for index, entry in enumerate(_entries(self.document, "repositories")):
            where = _where("repositories", entry, index)
            _require(entry, ("id", "name", "uuid"), where)
            _allow(entry, {"id", "name", "uuid", "path", "legacy", "binary_access", "created"}, where)
            repo_uuid = str(entry["uuid"])
            if repo_uuid in seen_uuids:
                raise ManifestError(f"{where}: uuid {repo_uuid} is used twice")
            seen_uuids.add(repo_uuid)
            time_ms = parse_time_ms(entry.get("created", self.default_time), f"{where}.created")

            # OMERO registers a repository directory as an OriginalFile with the
            # directory name as `name`, its parent as `path`, the UUID as `hash`
            # and the mimetype "Repository", in the common "user" group.
            description = self.new("OriginalFile", entry["id"], root, common, time_ms, where)
            description._name = rstring(str(entry["name"]))
            description._path = rstring(_directory(str(entry.get("path", "/OMERO/"))))
            description._hash = rstring(repo_uuid)
            description._mimetype = rstring("Repository")
            description._size = rlong(0)
            for field in ("_atime", "_mtime", "_ctime"):
                setattr(description, field, rtime(time_ms))
            binary_access = (
                parse_binary_access(entry["binary_access"], f"{where}.binary_access")
                if "binary_access" in entry else self.binary_access
            )
            self.repositories.append(RepositoryRecord(description, repo_uuid, binary_access, bool(entry.get("legacy", False))))
        if sum(1 for r in self.repositories if r.legacy) > 1:
            raise ManifestError("repositories: at most one repository may be legacy")

    def repository(self, ref: Any, where: str) -> RepositoryRecord:
        candidates = [r for r in self.repositories if not r.legacy]
        if ref is None:
            if not candidates:
                raise ManifestError(f"{where}: no managed (non-legacy) repository is defined")
            return candidates[0]
        for record in self.repositories:
            if ref in (record.description.getId().getValue(), record.description.getName().getValue(), record.uuid):
                if record.legacy:
                    raise ManifestError(f"{where}: fileset files cannot live in the legacy repository {ref!r}")
                return record
        raise ManifestError(f"{where}: unknown repository {ref!r}")

    # Original files and filesets

    def _content_of(self, entry: dict, where: str) -> content.FileContent:
        if ("source" in entry) == ("synthetic" in entry):
            raise ManifestError(f"{where}: give exactly one of 'source' (a local file) or 'synthetic'")
        if "source" in entry:
            source = (self.base_dir / str(entry["source"])).resolve()
            if not source.is_file():
                raise ManifestError(f"{where}: source file {source} does not exist")
            return content.LocalFile.open(source)

        spec = entry["synthetic"]
        if not isinstance(spec, dict) or "size" not in spec:
            raise ManifestError(f"{where}.synthetic: needs at least 'size'")
        _allow(spec, {"size", "fill", "markers"}, f"{where}.synthetic")
        markers = []
        for position, marker in enumerate(spec.get("markers") or []):
            place = f"{where}.synthetic.markers[{position}]"
            if not isinstance(marker, dict) or "offset" not in marker:
                raise ManifestError(f"{place}: a marker needs 'offset' and 'hex' or 'text'")
            markers.append((parse_size(marker["offset"], place), hex_or_text_bytes(marker, place)))
        try:
            return content.SyntheticFile(parse_size(spec["size"], f"{where}.synthetic.size"), tuple(markers), int(spec.get("fill", 0)))
        except ValueError as error:
            raise ManifestError(f"{where}.synthetic: {error}") from None

    def _new_original_file(self, entry: dict, where: str, owner: Any, group: Any, time_ms: int,
                           path: str, repo_uuid: str | None) -> Any:
        _allow(entry, {"id", "name", "source", "synthetic", "path", "subdir", "mimetype", "sha1", "mtime",
                       "role", "series", "client_path", "owner", "group", "created"}, where)
        file_content = self._content_of(entry, where)
        if "name" in entry:
            name = str(entry["name"])
        elif "source" in entry:
            name = Path(str(entry["source"])).name
        else:
            raise ManifestError(f"{where}: a synthetic file needs a 'name'")
        if not name or "/" in name:
            raise ManifestError(f"{where}: invalid file name {name!r}")

        original_file = self.new("OriginalFile", entry.get("id"), owner, group, time_ms, where, reference=True)
        original_file._name = rstring(name)
        original_file._path = rstring(path)
        original_file._repo = rstring(repo_uuid) if repo_uuid is not None else None
        original_file._size = rlong(file_content.size)
        original_file._mimetype = rstring(str(entry.get("mimetype", "application/octet-stream")))
        modified = parse_time_ms(entry.get("mtime", time_ms), f"{where}.mtime")
        original_file._mtime = rtime(modified)
        original_file._atime = rtime(modified)
        original_file._ctime = rtime(time_ms)
        original_file._hasher = self.enum("ChecksumAlgorithm", content.HASHER, where)
        sha1 = entry.get("sha1")
        original_file._hash = rstring(str(sha1) if sha1 else self.hashes.sha1(file_content))
        self.contents[id(original_file)] = file_content
        return original_file

    def _build_standalone_file(self, entry: dict, where: str) -> None:
        owner, group, time_ms = self.who(entry, where)
        if "subdir" in entry or "role" in entry or "series" in entry:
            raise ManifestError(f"{where}: 'subdir', 'role' and 'series' belong to fileset files")
        self._new_original_file(entry, where, owner, group, time_ms, _directory(str(entry.get("path", "/"))), None)

    def _build_fileset(self, entry: dict, where: str) -> None:
        _require(entry, ("id", "files"), where)
        _allow(entry, {"id", "templatePrefix", "repository", "files", "owner", "group", "created"}, where)
        owner, group, time_ms = self.who(entry, where)
        fileset = self.new("Fileset", entry["id"], owner, group, time_ms, where, reference=True)
        repository = self.repository(entry.get("repository"), where)
        prefix = entry.get("templatePrefix") or _template_prefix(owner, time_ms)
        prefix = _directory(str(prefix)).lstrip("/")
        fileset._templatePrefix = rstring(prefix)

        names = set()
        for index, file_entry in enumerate(entry["files"] or []):
            place = f"{where}.files[{index}]"
            if not isinstance(file_entry, dict):
                raise ManifestError(f"{place}: must be a mapping")
            subdir = str(file_entry.get("subdir", "")).strip("/")
            path = prefix + (subdir + "/" if subdir else "")
            original_file = self._new_original_file(file_entry, place, owner, group, time_ms, path, repository.uuid)
            full_name = path + original_file._name.getValue()
            if full_name in names:
                raise ManifestError(f"{place}: {full_name} appears twice in the fileset")
            names.add(full_name)

            role = str(file_entry.get("role", BINARY))
            if role not in (BINARY, COMPANION):
                raise ManifestError(f"{place}: role must be '{BINARY}' or '{COMPANION}', got {role!r}")
            series = file_entry.get("series")
            self.roles[id(original_file)] = FileRole(role, frozenset(int(s) for s in series) if series is not None else None)

            fileset_entry = self.new("FilesetEntry", None, owner, group, time_ms, place)
            fileset_entry._fileset = fileset
            fileset_entry._originalFile = original_file
            client_path = file_entry.get("client_path", (subdir + "/" if subdir else "") + original_file._name.getValue())
            fileset_entry._clientPath = rstring(str(client_path))
            fileset._usedFilesSeq.append(fileset_entry)
            original_file._filesetEntriesSeq.append(fileset_entry)
        if not fileset._usedFilesSeq:
            raise ManifestError(f"{where}: a fileset needs at least one file")

    # Instruments

    def _build_instrument(self, entry: dict, where: str) -> None:
        _allow(entry, {"id", "microscope", "objectives", "detectors", "light_sources", "filters",
                       "dichroics", "filter_sets", "owner", "group", "created"}, where)
        owner, group, time_ms = self.who(entry, where)
        instrument = self.new("Instrument", entry.get("id"), owner, group, time_ms, where, reference=True)

        if "microscope" in entry:
            microscope = self.new("Microscope", None, owner, group, time_ms, f"{where}.microscope")
            self.set_fields(microscope, entry["microscope"], f"{where}.microscope", set())
            instrument._microscope = microscope

        parts = (
            ("objectives", "Objective", "objective"),
            ("detectors", "Detector", "detector"),
            ("filters", "Filter", "filter"),
            ("dichroics", "Dichroic", "dichroic"),
        )
        for section, class_name, collection in parts:
            for index, part in enumerate(entry.get(section) or []):
                place = f"{where}.{section}[{index}]"
                obj = self.new(class_name, part.get("id"), owner, group, time_ms, place, reference=True)
                transmittance = part.get("transmittanceRange")
                self.set_fields(obj, part, place, {"transmittanceRange"})
                if transmittance is not None:
                    obj._transmittanceRange = self.new("TransmittanceRange", None, owner, group, time_ms, place)
                    self.set_fields(obj._transmittanceRange, transmittance, f"{place}.transmittanceRange", set())
                obj._instrument = instrument
                getattr(instrument, "_" + collection + "Seq").append(obj)

        for index, part in enumerate(entry.get("light_sources") or []):
            place = f"{where}.light_sources[{index}]"
            kind = str(part.get("kind", ""))
            if kind not in LIGHT_SOURCE_KINDS:
                raise ManifestError(f"{place}: kind must be one of {', '.join(LIGHT_SOURCE_KINDS)}, got {kind!r}")
            source = self.new(kind, part.get("id"), owner, group, time_ms, place, reference=True)
            self.set_fields(source, part, place, {"kind"})
            source._instrument = instrument
            instrument._lightSourceSeq.append(source)

        for index, part in enumerate(entry.get("filter_sets") or []):
            place = f"{where}.filter_sets[{index}]"
            filter_set = self.new("FilterSet", part.get("id"), owner, group, time_ms, place, reference=True)
            self.set_fields(filter_set, part, place, {"dichroic", "excitation_filters", "emission_filters"})
            if "dichroic" in part:
                filter_set._dichroic = self.lookup("Dichroic", part["dichroic"], place)
            for key, link_class in (("excitation_filters", "FilterSetExcitationFilterLink"),
                                    ("emission_filters", "FilterSetEmissionFilterLink")):
                for filter_id in part.get(key) or []:
                    self.link(link_class, filter_set, self.lookup("Filter", filter_id, place), place)
            filter_set._instrument = instrument
            instrument._filterSetSeq.append(filter_set)

    # Images

    def _build_image(self, entry: dict, where: str) -> None:
        _require(entry, ("id", "name", "pixels"), where)
        owner, group, time_ms = self.who(entry, where)
        image = self.new("Image", entry["id"], owner, group, time_ms, where, reference=True)
        structural = {"pixels", "fileset", "instrument", "objective_settings", "archived_files"}
        self.set_fields(image, entry, where, structural)

        if "fileset" in entry:
            fileset = self.lookup("Fileset", entry["fileset"], where)
            self._same_group(image, fileset, where)
            image._fileset = fileset
            fileset._imagesSeq.append(image)
            if image._series is None:
                image._series = rint(0)
        if "instrument" in entry:
            image._instrument = self.lookup("Instrument", entry["instrument"], where)
            self._same_group(image, image._instrument, where)
        if "objective_settings" in entry:
            settings_entry = entry["objective_settings"]
            place = f"{where}.objective_settings"
            settings = self.new("ObjectiveSettings", None, owner, group, time_ms, place)
            settings._objective = self.lookup("Objective", settings_entry.get("objective"), place)
            self.set_fields(settings, settings_entry, place, {"objective"})
            image._objectiveSettings = settings

        pixels = self._build_pixels(image, entry["pixels"], f"{where}.pixels", owner, group, time_ms)

        for file_id in entry.get("archived_files") or []:
            if image._fileset is not None:
                raise ManifestError(f"{where}: archived_files are for images without a fileset (stored before OMERO 5)")
            original_file = self.lookup("OriginalFile", file_id, f"{where}.archived_files")
            if original_file._repo is not None:
                raise ManifestError(f"{where}: archived file {file_id} must not be in a repository")
            self.link("PixelsOriginalFileMap", original_file, pixels, where, owner)
            image._archived = rbool(True)

    def _same_group(self, first: Any, second: Any, where: str) -> None:
        if first._details._group is not second._details._group:
            raise ManifestError(
                f"{where}: {type(first).__name__[:-1]} and {type(second).__name__[:-1]} "
                f"{second.getId().getValue()} are in different groups"
            )

    def _build_pixels(self, image: Any, entry: dict, where: str, owner: Any, group: Any, time_ms: int) -> Any:
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: must be a mapping")
        _require(entry, ("sizeX", "sizeY", "pixelsType"), where)
        if str(entry["pixelsType"]) not in _BITS:
            raise ManifestError(f"{where}.pixelsType: unknown type {entry['pixelsType']!r}; known: {', '.join(_BITS)}")
        pixels = self.new("Pixels", entry.get("id", image.getId().getValue()), owner, group, time_ms, where)
        defaults = {"sizeZ": 1, "sizeC": 1, "sizeT": 1, "dimensionOrder": "XYZCT"}
        merged = {**defaults, **entry}
        self.set_fields(pixels, merged, where, {"channels"})
        if pixels._significantBits is None:
            pixels._significantBits = rint(_BITS.get(str(entry["pixelsType"]), 16))
        if pixels._sha1 is None:
            pixels._sha1 = rstring("Pending")
        pixels._image = image
        image._pixelsSeq.append(pixels)

        channels = entry.get("channels")
        size_c = pixels._sizeC.getValue()
        if channels is None:
            channels = [{} for _ in range(size_c)]
        if len(channels) != size_c:
            raise ManifestError(f"{where}.channels: {len(channels)} channels listed but sizeC is {size_c}")
        for index, channel_entry in enumerate(channels):
            self._build_channel(pixels, channel_entry or {}, f"{where}.channels[{index}]", owner, group, time_ms)
        return pixels

    def _build_channel(self, pixels: Any, entry: dict, where: str, owner: Any, group: Any, time_ms: int) -> None:
        channel = self.new("Channel", entry.get("id"), owner, group, time_ms, where)
        logical = self.new("LogicalChannel", None, owner, group, time_ms, where)
        if "color" in entry:
            channel._red, channel._green, channel._blue, channel._alpha = (
                rint(part) for part in parse_colour(entry["color"], f"{where}.color")
            )
        structural = {"id", "color", "detector", "detector_settings", "light_source", "light_source_settings"}
        self.set_fields(logical, entry, where, structural)

        detector_settings = dict(entry.get("detector_settings") or {})
        if "detector" in entry:
            detector_settings["detector"] = entry["detector"]
        if detector_settings:
            settings = self.new("DetectorSettings", None, owner, group, time_ms, f"{where}.detector_settings")
            settings._detector = self.lookup("Detector", detector_settings.pop("detector", None), where)
            self.set_fields(settings, detector_settings, f"{where}.detector_settings", set())
            logical._detectorSettings = settings

        light_settings = dict(entry.get("light_source_settings") or {})
        if "light_source" in entry:
            light_settings["light_source"] = entry["light_source"]
        if light_settings:
            settings = self.new("LightSettings", None, owner, group, time_ms, f"{where}.light_source_settings")
            settings._lightSource = self.lookup("LightSource", light_settings.pop("light_source", None), where)
            self.set_fields(settings, light_settings, f"{where}.light_source_settings", set())
            logical._lightSourceSettings = settings

        channel._logicalChannel = logical
        logical._channelsSeq.append(channel)
        channel._pixels = pixels
        pixels._channelsSeq.append(channel)

    # Containers, plates and ROIs

    def _build_container(self, entry: dict, where: str, class_name: str, children_key: str,
                         child_kind: str, link_class: str) -> None:
        _require(entry, ("id", "name"), where)
        owner, group, time_ms = self.who(entry, where)
        container = self.new(class_name, entry["id"], owner, group, time_ms, where, reference=True)
        self.set_fields(container, entry, where, {children_key})
        for child_id in entry.get(children_key) or []:
            child = self.lookup(child_kind, child_id, f"{where}.{children_key}")
            self.link(link_class, container, child, f"{where}.{children_key}")

    def _build_plate(self, entry: dict, where: str) -> None:
        _require(entry, ("id", "name"), where)
        owner, group, time_ms = self.who(entry, where)
        plate = self.new("Plate", entry["id"], owner, group, time_ms, where, reference=True)
        self.set_fields(plate, entry, where, {"wells", "acquisitions"})

        acquisitions = {}
        for index, acquisition_entry in enumerate(entry.get("acquisitions") or []):
            place = f"{where}.acquisitions[{index}]"
            acquisition = self.new("PlateAcquisition", acquisition_entry.get("id"), owner, group, time_ms, place, reference=True)
            self.set_fields(acquisition, acquisition_entry, place, set())
            acquisition._plate = plate
            plate._plateAcquisitionsSeq.append(acquisition)
            acquisitions[acquisition_entry.get("id")] = acquisition

        for index, well_entry in enumerate(entry.get("wells") or []):
            place = f"{where}.wells[{index}]"
            _require(well_entry, ("row", "column"), place)
            well = self.new("Well", well_entry.get("id"), owner, group, time_ms, place, reference=True)
            self.set_fields(well, well_entry, place, {"samples", "color"})
            if "color" in well_entry:
                well._red, well._green, well._blue, well._alpha = (
                    rint(part) for part in parse_colour(well_entry["color"], f"{place}.color")
                )
            well._plate = plate
            plate._wellsSeq.append(well)

            for sample_index, sample_entry in enumerate(well_entry.get("samples") or []):
                sample_place = f"{place}.samples[{sample_index}]"
                _require(sample_entry, ("image",), sample_place)
                sample = self.new("WellSample", sample_entry.get("id"), owner, group, time_ms, sample_place, reference=True)
                self.set_fields(sample, sample_entry, sample_place, {"image", "acquisition"})
                image = self.lookup("Image", sample_entry["image"], sample_place)
                self._same_group(sample, image, sample_place)
                sample._image = image
                image._wellSamplesSeq.append(sample)
                sample._well = well
                well._wellSamplesSeq.append(sample)
                if "acquisition" in sample_entry:
                    acquisition = acquisitions.get(sample_entry["acquisition"])
                    if acquisition is None:
                        raise ManifestError(f"{sample_place}: unknown acquisition {sample_entry['acquisition']!r} of this plate")
                    sample._plateAcquisition = acquisition
                    acquisition._wellSampleSeq.append(sample)

    def _build_roi(self, entry: dict, where: str) -> None:
        _require(entry, ("id", "image", "shapes"), where)
        image = self.lookup("Image", entry["image"], where)
        owner, group, time_ms = self.who(entry, where, parent=image)
        roi = self.new("Roi", entry["id"], owner, group, time_ms, where, reference=True)
        self.set_fields(roi, entry, where, {"image", "shapes"})
        self._same_group(roi, image, where)
        roi._image = image
        image._roisSeq.append(roi)

        for index, shape_entry in enumerate(entry["shapes"] or []):
            place = f"{where}.shapes[{index}]"
            kind = str(shape_entry.get("kind", ""))
            if kind not in SHAPE_KINDS:
                raise ManifestError(f"{place}: kind must be one of {', '.join(SHAPE_KINDS)}, got {kind!r}")
            shape = self.new(kind, shape_entry.get("id"), owner, group, time_ms, place, reference=True)
            fields = dict(shape_entry)
            points = fields.pop("points", None)
            transform = fields.pop("transform", None)
            self.set_fields(shape, fields, place, {"kind"})
            if points is not None:
                if kind not in ("Polyline", "Polygon"):
                    raise ManifestError(f"{place}: only Polyline and Polygon have points")
                shape._points = rstring(_points(points, f"{place}.points"))
            if transform is not None:
                affine = self.new("AffineTransform", None, owner, group, time_ms, f"{place}.transform")
                self.set_fields(affine, transform, f"{place}.transform", set())
                shape._transform = affine
            shape._roi = roi
            roi._shapesSeq.append(shape)

    # Annotations

    def _build_annotation(self, entry: dict, where: str) -> Any:
        _require(entry, ("id", "kind"), where)
        kind = str(entry["kind"])
        if kind not in ANNOTATION_KINDS:
            raise ManifestError(f"{where}: kind must be one of {', '.join(ANNOTATION_KINDS)}, got {kind!r}")
        class_name, value_field = ANNOTATION_KINDS[kind]
        owner, group, time_ms = self.who(entry, where)
        annotation = self.new(class_name, entry["id"], owner, group, time_ms, where, reference=True)
        self.set_fields(annotation, entry, where, {"kind", "value", "links", "file", "mapValue"})

        value = entry.get("value", entry.get("mapValue"))
        if kind == "Map":
            annotation._mapValue = _named_values(value or [], f"{where}.value")
        elif kind == "File":
            original_file = self.lookup("OriginalFile", entry.get("file"), where)
            self._same_group(annotation, original_file, where)
            annotation._file = original_file
        elif value_field is not None:
            if value is None:
                raise ManifestError(f"{where}: a {kind} annotation needs a 'value'")
            field = schema.class_of(annotation).field(value_field)
            setattr(annotation, "_" + value_field, make_scalar(field.type_name, value, f"{where}.value", value_field))
        elif value is not None:
            raise ManifestError(f"{where}: a {kind} annotation takes no 'value'")
        return annotation

    def _link_annotation(self, entry: dict, annotation: Any, where: str) -> None:
        for target in entry.get("links") or []:
            place = f"{where}.links"
            kind, _, target_id = str(target).partition(":")
            if not target_id.strip().isdigit():
                raise ManifestError(f"{place}: invalid link target {target!r}; write Kind:id such as Image:1")
            parent = self.lookup(kind, int(target_id), place)
            link_class = f"{kind}AnnotationLink"
            if not hasattr(omero.model, link_class + "I"):
                raise ManifestError(f"{place}: {kind} objects cannot be annotated")
            self.link(link_class, parent, annotation, place, owner=annotation._details._owner)


_BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32,
         "float": 32, "double": 64, "complex": 64, "double-complex": 128, "bit": 1}


@functools.cache
def _collection_of(class_name: str, element_class: str) -> str | None:
    """Return the name of the class's collection of `element_class` objects, if it has one."""
    for name, field in schema.model_class(class_name).all_fields().items():
        if field.kind == schema.COLLECTION and field.type_name == element_class:
            return name
    return None


def _is_enum(class_name: str) -> bool:
    return schema.model_class(class_name).java_name.startswith("ome.model.enums.")


def _created(obj: Any) -> int:
    event = obj._details._creationEvent
    return event._time.getValue() if event is not None else 0


def _require(entry: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ManifestError(f"{where}: missing {', '.join(missing)}")


def _allow(entry: dict, keys: set[str], where: str) -> None:
    unknown = set(entry) - keys
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(keys)}")


def _directory(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _template_prefix(owner: Any, time_ms: int) -> str:
    """Return OMERO's default managed repository directory: `%user%_%userId%/%year%-%month%/%day%/%time%`."""
    moment = datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.timezone.utc)
    name = owner.getOmeName().getValue()
    return (
        f"{name}_{owner.getId().getValue()}/{moment:%Y-%m}/{moment:%d}/"
        f"{moment:%H-%M-%S}.{moment.microsecond // 1000:03d}/"
    )


def _named_values(value: Any, where: str) -> list:
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for item in value:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ManifestError(f"{where}: each entry must be a [key, value] pair")
            pairs.append((item[0], item[1]))
    else:
        raise ManifestError(f"{where}: a Map value is a mapping or a list of [key, value] pairs")
    return [omero.model.NamedValue(str(key), str(item)) for key, item in pairs]


def _points(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return " ".join(f"{float(x):g},{float(y):g}" for x, y in value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: points are a list of [x, y] pairs or a string 'x,y x,y'") from None
