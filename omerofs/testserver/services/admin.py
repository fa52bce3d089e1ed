"""IAdmin and IConfig: who the caller is, and the server's settings.

Only the read operations that omero-py's BlitzGateway and `omero` command line
use are implemented. The test server is read-only, so every operation that
changes users, groups or settings raises `Ice.OperationNotExistException`.
"""

from __future__ import annotations

import logging
import re
import time

import omero
import omero.api
import omero.sys
from omero.rtypes import rlong, rstring, rtime

from .. import store
from .base import Servant, amd

log = logging.getLogger(__name__)

# OMERO's fixed system users and groups (ome.system.Roles defaults).
SECURITY_ROLES = omero.sys.Roles(
    rootId=0,
    rootName="root",
    systemGroupId=0,
    systemGroupName="system",
    userGroupId=1,
    userGroupName="user",
    guestId=1,
    guestName="guest",
    guestGroupId=2,
    guestGroupName="guest",
)

# OMERO's IQuery-based look-ups in AdminImpl fetch the group memberships too.
_EXPERIMENTER_QUERY = (
    "select distinct e from Experimenter e "
    "left outer join fetch e.groupExperimenterMap m "
    "left outer join fetch m.parent where e.{field} = :value"
)
_GROUP_QUERY = (
    "select distinct g from ExperimenterGroup g "
    "left outer join fetch g.groupExperimenterMap m "
    "left outer join fetch m.child where g.{field} = :value"
)


class AdminService(Servant, omero.api.IAdmin):
    """IAdmin for one service factory."""

    def __init__(self, factory):
        self.factory = factory

    @property
    def _repository(self):
        return self.factory.server.repository

    def _all_groups(self) -> store.Viewer:
        # Users and groups are visible to every user, whatever the group.
        return store.Viewer(self.factory.session.user_id, -1)

    def _lookup(self, query: str, field: str, value, missing: str):
        params = omero.sys.ParametersI()
        params.add("value", value)
        rows = self._repository.query(query.format(field=field), params, self._all_groups())
        if not rows:
            raise omero.ApiUsageException(message=missing)
        return rows[0]

    @amd
    def getEventContext_async(self, current=None):
        session = self.factory.session
        group_id = self.factory.group_for_call(current)
        context = self._repository.event_context(
            session.user_id, None if group_id == -1 else group_id
        )
        context.sessionUuid = session.uuid
        context.sessionId = session.session_id
        context.eventType = "User"
        return context

    @amd
    def getSecurityRoles_async(self, current=None):
        return SECURITY_ROLES

    @amd
    def getExperimenter_async(self, experimenter_id, current=None):
        return self._lookup(
            _EXPERIMENTER_QUERY, "id", rlong(experimenter_id),
            f"No such experimenter: {experimenter_id}",
        )

    @amd
    def lookupExperimenter_async(self, name, current=None):
        return self._lookup(
            _EXPERIMENTER_QUERY, "omeName", rstring(name),
            f"No such experimenter: {name}",
        )

    def _group(self, group_id: int):
        return self._lookup(
            _GROUP_QUERY, "id", rlong(group_id), f"No such group: {group_id}"
        )

    @amd
    def getGroup_async(self, group_id, current=None):
        return self._group(group_id)

    @amd
    def lookupGroup_async(self, name, current=None):
        return self._lookup(
            _GROUP_QUERY, "name", rstring(name), f"No such group: {name}"
        )

    @amd
    def lookupExperimenters_async(self, current=None):
        return self._repository.query(
            "select distinct e from Experimenter e "
            "left outer join fetch e.groupExperimenterMap m left outer join fetch m.parent",
            None,
            self._all_groups(),
        )

    @amd
    def lookupGroups_async(self, current=None):
        return self._repository.query(
            "select distinct g from ExperimenterGroup g "
            "left outer join fetch g.groupExperimenterMap m left outer join fetch m.child",
            None,
            self._all_groups(),
        )

    @amd
    def getDefaultGroup_async(self, experimenter_id, current=None):
        context = self._repository.event_context(experimenter_id, None)
        return self._group(context.groupId)

    @amd
    def getMemberOfGroupIds_async(self, experimenter, current=None):
        return list(self._repository.event_context(_object_id(experimenter), None).memberOfGroups)

    @amd
    def getLeaderOfGroupIds_async(self, experimenter, current=None):
        return list(self._repository.event_context(_object_id(experimenter), None).leaderOfGroups)

    @amd
    def containedGroups_async(self, experimenter_id, current=None):
        member_of = self._repository.event_context(experimenter_id, None).memberOfGroups
        return [self._group(group_id) for group_id in member_of]

    @amd
    def containedExperimenters_async(self, group_id, current=None):
        return self._repository.query(
            "select e from Experimenter e join e.groupExperimenterMap m "
            "where m.parent.id = :id",
            omero.sys.ParametersI().addId(group_id),
            self._all_groups(),
        )

    @amd
    def canUpdate_async(self, obj, current=None):
        # The test server is read-only.
        return False

    @amd
    def getCurrentAdminPrivileges_async(self, current=None):
        return []

    @amd
    def getAdminPrivileges_async(self, experimenter, current=None):
        return []

    @amd
    def getAdminsWithPrivileges_async(self, privileges, current=None):
        return []

    @amd
    def getMyUserPhotos_async(self, current=None):
        return []


def _object_id(obj) -> int:
    if obj is None or obj.id is None:
        raise omero.ApiUsageException(message="An object with an id is required")
    return obj.id.val


class ConfigService(Servant, omero.api.IConfig):
    """IConfig for one service factory: the version, the database UUID and a few settings."""

    def __init__(self, factory):
        self.factory = factory

    def _values(self) -> dict[str, str]:
        server = self.factory.server
        return {
            "omero.db.uuid": server.repository.database_uuid,
            # BlitzGateway's insecure connection joins the session through this
            # router; the test server has only its plain TCP endpoint.
            "omero.router.insecure": f"OMERO.Glacier2/router:tcp -p {server.port} -h @omero.host@",
            # OMERO's defaults for what BlitzGateway reads.
            "omero.pixeldata.max_plane_width": "3192",
            "omero.pixeldata.max_plane_height": "3192",
        }

    @amd
    def getVersion_async(self, current=None):
        return self.factory.server.config.version

    @amd
    def getDatabaseUuid_async(self, current=None):
        return self.factory.server.repository.database_uuid

    @amd
    def getConfigValue_async(self, key, current=None):
        # OMERO returns an empty string for a key that is not set.
        return self._values().get(key, "")

    @amd
    def getConfigValues_async(self, key_regex, current=None):
        pattern = re.compile(key_regex)
        return {k: v for k, v in self._values().items() if pattern.search(k)}

    @amd
    def getConfigDefaults_async(self, current=None):
        return self._values()

    @amd
    def getClientConfigValues_async(self, current=None):
        return {k: v for k, v in self._values().items() if k.startswith("omero.client.")}

    @amd
    def getClientConfigDefaults_async(self, current=None):
        return {k: v for k, v in self._values().items() if k.startswith("omero.client.")}

    @amd
    def getServerTime_async(self, current=None):
        return rtime(int(time.time() * 1000))

    @amd
    def getDatabaseTime_async(self, current=None):
        return rtime(int(time.time() * 1000))
