"""The data half of the OMERO test server: one repository, seen through OMERO's permissions.

`Repository.load(manifest)` builds the object graph (see `manifest`). The Ice
servants call the methods below with a `Viewer` (user and group context), and
the methods return result copies of omero-py model objects, never the graph
itself.

Permissions follow OMERO 5:
- A viewer reads the groups it is a member of: the session's current group, or
  all of them when the call context sets `omero.group` to -1 (`Viewer.group_id`
  -1). Administrators read every group.
- In a private group (`rw----`) members read only their own objects; group
  leaders read all of them. Read-only (`rwr---`), read-annotate (`rwra--`) and
  read-write (`rwrw--`) groups let every member read everything.
- The "system" and "user" groups hold objects everybody reads: users, groups,
  events, enumerations and the repository descriptions.
- `get` of a missing ID raises `omero.ValidationException`; `get` of an object the
  viewer cannot read raises `omero.SecurityViolation`, as IQuery.get does.

Binary access follows OMERO's BinaryAccessPolicy: each repository's
`binary_access` setting (OMERO's `omero.policy.binary_access`, default
`+read,+write,+image`) plus the group's own setting decide whether an original
file, image, plate, well or well sample is restricted. Restricted objects carry
`RESTRICT-BINARY-ACCESS` in `details.permissions` extended restrictions, and
`original_file_bytes` raises `omero.SecurityViolation` for them. Files named
`*.txt` are never restricted, as in OMERO.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import omero
import omero.model
import omero.cmd
import omero_cmd_FS_ice  # noqa: F401  (defines omero.cmd.UsedFilesResponse)
import omero.sys
import omero_ServerErrors_ice  # noqa: F401  (defines omero.ValidationException and friends)
import omero.constants.permissions  # after omero.model: the other order fails in omero-py 5.23

from omerofs.testserver import content, hql, manifest, schema
from omerofs.testserver.manifest import Graph, ManifestError

log = logging.getLogger(__name__)

__all__ = ["AuthenticationFailed", "ManifestError", "Repository", "Viewer"]

ALL_GROUPS = -1

BINARY_ACCESS_RESTRICTION = "RESTRICT-BINARY-ACCESS"

# Classes that OMERO's BinaryAccessPolicy checks.
BINARY_POLICY_CLASSES = ("OriginalFile", "Image", "Plate", "PlateAcquisition", "Well", "WellSample", "FileAnnotation")

COMPANION_FILE_NAMESPACE = "openmicroscopy.org/omero/import/companionFile"
ORIGINAL_METADATA_NAME = "original_metadata.txt"


class AuthenticationFailed(Exception):
    """Raised by `Repository.authenticate` for an unknown user or a wrong password."""


@dataclasses.dataclass(frozen=True)
class Viewer:
    """The caller of a query: the session's user and group, where `group_id` -1 means all of the user's groups."""

    user_id: int
    group_id: int = ALL_GROUPS


class _ViewerScope:
    """The graph as one viewer may read it; implements `hql.Scope`."""

    def __init__(self, repository: "Repository", viewer: Viewer):
        graph = repository.graph
        user = graph.users.get(viewer.user_id)
        if user is None:
            raise omero.SecurityViolation(message=f"unknown user id {viewer.user_id}")
        self.repository = repository
        self.graph = graph
        self.user_id = viewer.user_id
        self.admin = user.admin
        self.leader_of = user.leader_of

        if viewer.group_id == ALL_GROUPS:
            readable = set(graph.groups) if user.admin else set(user.group_ids)
        elif viewer.group_id in user.group_ids or (user.admin and viewer.group_id in graph.groups):
            readable = {viewer.group_id}
        else:
            readable = set()
        readable.update((manifest.SYSTEM_GROUP_ID, manifest.USER_GROUP_ID))
        self.readable = readable
        self.private = {
            group_id for group_id in readable
            if not omero.model.PermissionsI(graph.groups[group_id].permissions).isGroupRead()
            and group_id not in (manifest.SYSTEM_GROUP_ID, manifest.USER_GROUP_ID)
        }
        self._permissions: dict[tuple, omero.model.PermissionsI] = {}

    # hql.Scope

    def extent(self, model: schema.ModelClass) -> list:
        return self.repository.extent(model.name)

    def by_ids(self, model: schema.ModelClass, ids: Iterable[int]) -> list:
        space = manifest.id_space(model.name)
        found = []
        for object_id in ids:
            obj = self.graph.objects.get((space, object_id))
            if obj is not None and isinstance(obj, model.interface):
                found.append(obj)
        return found

    def referrers(self, model: schema.ModelClass, path: tuple[str, ...], target_ids: Iterable[int]) -> list:
        index = self.repository.reverse_index(model.name, path)
        found = []
        for target_id in sorted(target_ids):
            found.extend(index.get(target_id, ()))
        found.sort(key=lambda obj: obj._id._val)
        return found

    def is_visible(self, obj: Any) -> bool:
        details = obj._details
        if details is None or details._group is None:
            return True
        group_id = details._group._id._val
        if group_id not in self.readable:
            return False
        if group_id in self.private and not self.admin and group_id not in self.leader_of:
            return details._owner is not None and details._owner._id._val == self.user_id
        return True

    def permissions(self, obj: Any) -> omero.model.PermissionsI:
        if isinstance(obj, omero.model.ExperimenterGroup):
            record = self.graph.groups.get(obj._id._val)
            return omero.model.PermissionsI(record.permissions if record else "rw----")

        details = obj._details
        group_id = details._group._id._val if details and details._group else manifest.SYSTEM_GROUP_ID
        owner_id = details._owner._id._val if details and details._owner else manifest.ROOT_USER_ID
        restricted = self.repository.binary_access_restricted(obj, self)
        key = (group_id, owner_id == self.user_id, restricted)
        cached = self._permissions.get(key)
        if cached is None:
            cached = self._make_permissions(group_id, owner_id == self.user_id, restricted)
            self._permissions[key] = cached
        return cached

    def _make_permissions(self, group_id: int, is_owner: bool, restricted: bool) -> omero.model.PermissionsI:
        record = self.graph.groups.get(group_id)
        permissions = omero.model.PermissionsI(record.permissions if record else "rw----")
        group_permissions = omero.model.PermissionsI(record.permissions if record else "rw----")
        manager = self.admin or group_id in self.leader_of
        can_annotate = is_owner or manager or group_permissions.isGroupAnnotate()
        can_edit = is_owner or manager or group_permissions.isGroupWrite()
        constants = omero.constants.permissions
        restrictions = [False] * 6
        restrictions[constants.LINKRESTRICTION] = not can_edit
        restrictions[constants.EDITRESTRICTION] = not can_edit
        restrictions[constants.DELETERESTRICTION] = not can_edit
        restrictions[constants.ANNOTATERESTRICTION] = not can_annotate
        restrictions[constants.CHGRPRESTRICTION] = not (is_owner or self.admin)
        restrictions[constants.CHOWNRESTRICTION] = not manager
        permissions._restrictions = restrictions
        permissions._extendedRestrictions = [BINARY_ACCESS_RESTRICTION] if restricted else []
        return permissions

    def can_update(self, obj: Any) -> bool:
        details = obj._details
        if self.admin:
            return True
        if details._group is not None and details._group._id._val in self.leader_of:
            return True
        return details._owner is not None and details._owner._id._val == self.user_id


class Repository:
    """One OMERO repository for the test server: objects, users, files and permissions.

    Thread-safe for concurrent reads: the graph never changes after loading, and
    the lazily built indexes are guarded by a lock.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.database_uuid = graph.database_uuid
        self._lock = threading.Lock()
        self._extents: dict[str, list] = {}
        self._indexes: dict[tuple[str, tuple[str, ...]], dict[int, list]] = {}
        self._repository_of_uuid = {record.uuid: record for record in graph.repositories}
        self._legacy = next((record for record in graph.repositories if record.legacy), None)

    @classmethod
    def load(cls, manifest_path: str | os.PathLike, hash_sidecar: os.PathLike | None = None) -> "Repository":
        """Load a manifest file (or a directory holding `manifest.yaml`); raise ManifestError if invalid.

        `hash_sidecar` is where computed SHA-1s are cached; by default a file in
        the user's cache directory.
        """
        return cls(manifest.load(manifest_path, Path(hash_sidecar) if hash_sidecar is not None else None))

    # Users, groups and sessions

    def authenticate(self, user_name: str, password: str) -> omero.model.ExperimenterI:
        """Return the user's Experimenter if the password matches; raise AuthenticationFailed if not."""
        for record in self.graph.users.values():
            if record.name == user_name:
                if record.password is None or not hmac.compare_digest(record.password.encode(), password.encode()):
                    break
                return self._plain_copy(record.experimenter)
        raise AuthenticationFailed(f"authentication failed for user {user_name!r}")

    def user_id(self, user_name: str) -> int | None:
        """Return the ID of the user with this omeName, or None."""
        for record in self.graph.users.values():
            if record.name == user_name:
                return record.user_id
        return None

    def default_group_id(self, user_id: int) -> int:
        return self._user(user_id).group_ids[0]

    def member_of(self, user_id: int) -> list[int]:
        """Return the IDs of the user's groups, default group first, "user" group last."""
        return list(self._user(user_id).group_ids)

    def experimenter(self, user_id: int) -> omero.model.ExperimenterI:
        return self._plain_copy(self._user(user_id).experimenter)

    def experimenter_group(self, group_id: int) -> omero.model.ExperimenterGroupI:
        record = self.graph.groups.get(group_id)
        if record is None:
            raise omero.ApiUsageException(message=f"no group with id {group_id}")
        return self._plain_copy(record.group)

    def event_context(self, user_id: int, group_id: int | None) -> omero.sys.EventContext:
        """Return the EventContext of a session of this user in this group (None: the default group)."""
        user = self._user(user_id)
        if group_id is None or group_id == ALL_GROUPS:
            group_id = user.group_ids[0]
        if group_id not in user.group_ids and not user.admin:
            raise omero.SecurityViolation(message=f"user {user.name} is not a member of group {group_id}")
        group = self.graph.groups[group_id]

        context = omero.sys.EventContext()
        context.shareId = -1
        context.sessionId = 0
        context.sessionUuid = ""
        context.userId = user_id
        context.userName = user.name
        context.groupId = group_id
        context.groupName = group.name
        context.isAdmin = user.admin
        context.adminPrivileges = []
        context.eventId = -1
        context.eventType = "User"
        context.memberOfGroups = list(user.group_ids)
        context.leaderOfGroups = sorted(user.leader_of)
        context.groupPermissions = omero.model.PermissionsI(group.permissions)
        return context

    def _user(self, user_id: int) -> manifest.UserRecord:
        record = self.graph.users.get(user_id)
        if record is None:
            raise omero.ApiUsageException(message=f"no user with id {user_id}")
        return record

    # Queries

    def scope(self, viewer: Viewer) -> _ViewerScope:
        """Return the graph as this viewer may read it (an `hql.Scope`)."""
        return _ViewerScope(self, viewer)

    def query(self, hql_text: str, params: Any, viewer: Viewer) -> list:
        """Run an HQL query as IQuery.findAllByQuery does.

        Rows of a single entity column come back as result copies; other rows as
        lists of rtypes. Raises omero.QueryException for HQL it cannot run.
        """
        return hql.execute(hql_text, params, self.scope(viewer)).objects()

    def query_one(self, hql_text: str, params: Any, viewer: Viewer) -> Any:
        """Run an HQL query as IQuery.findByQuery does: one object or None.

        Raises omero.ApiUsageException when the query returns more than one object.
        """
        rows = self.query(hql_text, params, viewer)
        unique = {id(row): row for row in rows}
        if len(unique) > 1:
            raise omero.ApiUsageException(
                message=f"Query named:\n\n\t{hql_text}\n\nhas returned more than one Object\n"
                "findBy methods must return a single value.\n"
                "Please try findAllBy methods for queries which return Lists."
            )
        return rows[0] if rows else None

    def projection(self, hql_text: str, params: Any, viewer: Viewer) -> list[list]:
        """Run an HQL query as IQuery.projection does: every row a list of rtypes."""
        return hql.execute(hql_text, params, self.scope(viewer)).projection()

    def get(self, kind: str, object_id: int, viewer: Viewer) -> Any:
        """Return one object as IQuery.get does.

        Raises omero.ValidationException for a missing ID and omero.SecurityViolation
        for an object the viewer cannot read.
        """
        model = api_class(kind)
        scope = self.scope(viewer)
        found = scope.by_ids(model, [object_id])
        if not found:
            raise omero.ValidationException(
                message=f"No row with the given identifier exists: [{model.java_name}#{object_id}]"
            )
        obj = found[0]
        if not scope.is_visible(obj):
            raise omero.SecurityViolation(message=f"Cannot read {model.java_name}:Id_{object_id}")
        return self._copy(obj, scope)

    def find(self, kind: str, object_id: int, viewer: Viewer) -> Any:
        """Return one object as IQuery.find does: None when missing or unreadable."""
        model = api_class(kind)
        scope = self.scope(viewer)
        found = [obj for obj in scope.by_ids(model, [object_id]) if scope.is_visible(obj)]
        return self._copy(found[0], scope) if found else None

    def find_all(self, kind: str, page: Any, viewer: Viewer) -> list:
        """Return every readable object of a class as IQuery.findAll does; `page` is an omero.sys.Filter or None."""
        model = api_class(kind)
        scope = self.scope(viewer)
        objects = [obj for obj in self.extent(model.name) if scope.is_visible(obj)]
        if page is not None:
            offset = hql.unwrap_parameter(page.offset) or 0
            limit = hql.unwrap_parameter(page.limit)
            objects = objects[offset:]
            if limit is not None:
                objects = objects[:limit]
        return [self._copy(obj, scope) for obj in objects]

    def _copy(self, obj: Any, scope: _ViewerScope) -> Any:
        return hql.copy_objects(scope, [obj])[0]

    def _plain_copy(self, obj: Any) -> Any:
        root = Viewer(manifest.ROOT_USER_ID, ALL_GROUPS)
        return self._copy(obj, self.scope(root))

    # Files

    def repositories(self, viewer: Viewer) -> list[omero.model.OriginalFileI]:
        """Return the repositories' description OriginalFiles (mimetype "Repository")."""
        scope = self.scope(viewer)
        return [self._copy(record.description, scope) for record in self.graph.repositories]

    def original_file_bytes(self, file_id: int, viewer: Viewer) -> content.FileContent:
        """Return the content of an original file for a RawFileStore.

        Raises as `get` does for missing and unreadable files, and
        omero.SecurityViolation when binary access to the file is restricted.
        """
        model = schema.model_class("OriginalFile")
        scope = self.scope(viewer)
        found = scope.by_ids(model, [file_id])
        if not found:
            raise omero.ValidationException(
                message=f"No row with the given identifier exists: [{model.java_name}#{file_id}]"
            )
        original_file = found[0]
        if not scope.is_visible(original_file):
            raise omero.SecurityViolation(message=f"Cannot read {model.java_name}:Id_{file_id}")
        if self.binary_access_restricted(original_file, scope):
            raise omero.SecurityViolation(message=f"Download is restricted for {model.java_name}:Id_{file_id}")
        file_content = self.graph.contents.get(file_id)
        if file_content is None:
            # A repository description has no bytes, like a directory.
            raise omero.ResourceError(message=f"OriginalFile {file_id} has no content")
        return file_content

    def used_files(self, image_id: int, viewer: Viewer) -> Any:
        """Return the response to a UsedFilesRequest for an image, as OMERO 5 does.

        OMERO runs this request in all of the user's groups. Images in a fileset get
        a UsedFilesResponse that splits the fileset's files into binary and
        companion files of the image's own series ("ThisSeries") and of the other
        series only ("OtherSeries"). Images stored before filesets get a
        UsedFilesResponsePreFs. An image the user cannot read, or one without
        pixels, gets an `omero.cmd.ERR` named "bad-image", as OMERO answers.
        """
        scope = self.scope(Viewer(viewer.user_id, ALL_GROUPS))
        found = [image for image in scope.by_ids(schema.model_class("Image"), [image_id]) if scope.is_visible(image)]
        if not found:
            return _error("bad-image", f"cannot read image {image_id}")
        image = found[0]
        if not image._pixelsSeq:
            return _error("bad-image", f"no pixels for image {image_id}")
        if image._fileset is None:
            return self._used_files_pre_fs(image, scope)
        return self._used_files_fs(image)

    def _used_files_fs(self, image: Any) -> omero.cmd.UsedFilesResponse:
        fileset = image._fileset
        this_series = image._series.getValue() if image._series is not None else 0
        all_series = {other._series.getValue() if other._series is not None else 0 for other in fileset._imagesSeq}
        all_series.add(this_series)

        binary_this, binary_other, companion_this, companion_other = [], [], [], []
        for entry in fileset._usedFilesSeq:
            original_file = entry._originalFile
            file_id = original_file._id._val
            role = self.graph.file_roles.get(file_id, manifest.FileRole(manifest.BINARY, None))
            series = all_series if role.series is None else set(role.series)
            if this_series in series:
                (binary_this if role.role == manifest.BINARY else companion_this).append(file_id)
            elif series & all_series:
                (binary_other if role.role == manifest.BINARY else companion_other).append(file_id)
        return omero.cmd.UsedFilesResponse(binary_this, binary_other, companion_this, companion_other)

    def _used_files_pre_fs(self, image: Any, scope: _ViewerScope) -> omero.cmd.UsedFilesResponsePreFs:
        archived = []
        for pixels in image._pixelsSeq[:1]:
            for file_map in pixels._pixelsFileMapsSeq:
                original_file = file_map._parent
                if scope.is_visible(original_file) and original_file._id._val not in archived:
                    archived.append(original_file._id._val)

        companions, original_metadata = [], []
        for link in image._annotationLinksSeq:
            annotation = link._child
            if not isinstance(annotation, omero.model.FileAnnotation) or annotation._file is None:
                continue
            if annotation._ns is None or annotation._ns.getValue() != COMPANION_FILE_NAMESPACE:
                continue
            original_file = annotation._file
            target = original_metadata if original_file._name.getValue() == ORIGINAL_METADATA_NAME else companions
            target.append(original_file._id._val)
        return omero.cmd.UsedFilesResponsePreFs(archived, companions, original_metadata)

    # Binary access policy

    def binary_access_restricted(self, obj: Any, scope: _ViewerScope) -> bool:
        """Return whether OMERO's BinaryAccessPolicy restricts this object for the viewer."""
        class_name = type(obj).__name__.removesuffix("I")
        if class_name not in BINARY_POLICY_CLASSES:
            return False
        settings = self._binary_access_settings(obj)
        group = self._group_settings(obj)

        def denied(plus: str, minus: str) -> bool:
            if minus in settings or minus in group:
                return True
            return not (plus in settings or plus in group)

        if denied("+write", "-write"):
            return True
        if denied("+read", "-read") and not scope.can_update(obj):
            return True
        no_image = denied("+image", "-image")
        no_plate = denied("+plate", "-plate")

        if class_name == "OriginalFile":
            name = obj._name.getValue() if obj._name is not None else ""
            if name.endswith(".txt"):
                return False
            for entry in obj._filesetEntriesSeq or []:
                images = entry._fileset._imagesSeq if entry._fileset is not None else []
                if images and no_image:
                    return True
                if no_plate and any(image._wellSamplesSeq for image in images):
                    return True
            return False
        if class_name == "Image":
            return no_image or (no_plate and bool(obj._wellSamplesSeq))
        if class_name in ("Plate", "PlateAcquisition", "Well", "WellSample"):
            return no_image or no_plate
        return False

    def _binary_access_settings(self, obj: Any) -> frozenset[str]:
        """Return the repository-wide setting that applies to an object."""
        repository = None
        if isinstance(obj, omero.model.OriginalFile):
            repo_uuid = obj._repo.getValue() if obj._repo is not None else None
            repository = self._repository_of_uuid.get(repo_uuid) if repo_uuid else self._legacy
        elif isinstance(obj, omero.model.Image) and obj._fileset is not None and obj._fileset._usedFilesSeq:
            first = obj._fileset._usedFilesSeq[0]._originalFile
            repository = self._repository_of_uuid.get(first._repo.getValue()) if first._repo is not None else None
        return repository.binary_access if repository is not None else self.graph.binary_access

    def _group_settings(self, obj: Any) -> frozenset[str]:
        details = obj._details
        if details is None or details._group is None:
            return frozenset()
        record = self.graph.groups.get(details._group._id._val)
        return record.binary_access if record is not None else frozenset()

    # Indexes over the graph

    def extent(self, class_name: str) -> list:
        """Return every object of a class and its subclasses, ordered by ID."""
        cached = self._extents.get(class_name)
        if cached is not None:
            return cached
        interface = getattr(omero.model, class_name)
        members = []
        for concrete, objects in self.graph.extents.items():
            if issubclass(getattr(omero.model, concrete), interface):
                members.extend(objects)
        members.sort(key=lambda obj: obj._id._val)
        with self._lock:
            self._extents[class_name] = members
        return members

    def reverse_index(self, class_name: str, path: tuple[str, ...]) -> dict[int, list]:
        """Return, for objects of a class, target ID -> objects whose association `path` points there."""
        key = (class_name, path)
        cached = self._indexes.get(key)
        if cached is not None:
            return cached
        index: dict[int, list] = {}
        for obj in self.extent(class_name):
            target = obj
            for name in path:
                target = getattr(target, "_" + name, None)
                if target is None:
                    break
            if target is not None and target._id is not None:
                index.setdefault(target._id._val, []).append(obj)
        with self._lock:
            self._indexes[key] = index
        return index


def _error(name: str, message: str) -> omero.cmd.ERR:
    return omero.cmd.ERR(category="::omero::cmd::UsedFilesRequest", name=name, parameters={"message": message})


@functools.cache
def api_class(kind: str) -> schema.ModelClass:
    """Return the model class for a class name as the IQuery API takes it.

    IQuery.get and friends accept `Image`, `ImageI`, `omero.model.Image`,
    `omero.model.ImageI` and `ome.model.core.Image`. Raises omero.ApiUsageException
    for other names.
    """
    name = kind
    for prefix in ("omero.model.", "::omero::model::"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    try:
        if "." in name:
            return schema.resolve_entity_name(name)
        if name.endswith("I") and hasattr(omero.model, name) and hasattr(omero.model, name[:-1]):
            name = name[:-1]
        return schema.model_class(name)
    except schema.UnknownClass:
        raise omero.ApiUsageException(message=f"Unknown class: {kind}") from None
