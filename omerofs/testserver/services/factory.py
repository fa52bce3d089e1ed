"""The ServiceFactory: one per Glacier2 session, the client's entry to every service.

Identities: the factory is `<session uuid>` in a category of its own, because
omero-py reads the session key from the factory identity's name. Every service
the factory hands out lives in the same category, which is how a call is traced
back to its session even when the client sends an explicit context without
`omero.session.uuid`. Stateless services (IQuery, IAdmin, ...) exist once per
factory, as in OMERO; each `createRawFileStore` makes a new stateful service.
"""

from __future__ import annotations

import logging
import threading
import uuid as uuid_module

import Ice
import omero
import omero.api
import omero.cmd
import omero.grid
import omero.model

from .. import store
from .admin import AdminService, ConfigService
from .base import Servant, amd, interface_name, sync
from .commands import HandleI
from .query import QueryService
from .rawfile import RawFileStoreI
from .sessions import Session, SessionService
from .shared import SharedResourcesI

log = logging.getLogger(__name__)

class ServiceFactoryI(Servant, omero.api.ServiceFactory):
    """omero.api.ServiceFactory for one Glacier2 session."""

    def __init__(self, server, session: Session):
        self.server = server
        self.session = session
        self.category = str(uuid_module.uuid4())
        self.identity = Ice.Identity(session.uuid, self.category)
        self.proxy = None
        self.callback = None
        # OMERO closes the session when the factory is destroyed unless the client
        # called detachOnDestroy.
        self.close_on_destroy = True
        self._lock = threading.Lock()
        self._services: dict[str, Servant] = {}
        self._destroyed = False

    # Life cycle

    def touch(self) -> None:
        self.server.sessions.touch(self.session)

    def alive(self) -> bool:
        return not self._destroyed and self.server.sessions.check_alive(self.session)

    def destroy_session(self) -> None:
        """Release this factory's reference to the session and drop its services."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        if self.close_on_destroy:
            self.server.sessions.close(self.session.uuid)
        else:
            self.server.sessions.detach(self.session)
        self.drop_services()

    def drop_services(self) -> None:
        with self._lock:
            self._destroyed = True
            services = list(self._services.values())
            self._services.clear()
        for servant in services:
            self.server.remove_servant(servant.identity)
        self.server.remove_servant(self.identity)

    # The caller's view of the repository

    def group_for_call(self, current: Ice.Current) -> int:
        """Return the group a call acts in: `omero.group` from its context, else the session's.

        The context names the group by ID or by name, as BlitzGateway(group=...)
        sends it; -1 stands for all of the user's groups.
        """
        requested = (current.ctx or {}).get("omero.group", "") if current is not None else ""
        if requested == "":
            return self.session.group_id
        if requested.lstrip("-").isdigit():
            group_id = int(requested)
        else:
            group_id = self.session.group_ids_by_name.get(requested)
        if group_id == -1:
            return -1
        if group_id not in self.session.member_of_groups:
            raise omero.SecurityViolation(
                message=f"User {self.session.user_id} is not a member of group {requested}"
            )
        return group_id

    def viewer(self, current: Ice.Current) -> store.Viewer:
        return store.Viewer(self.session.user_id, self.group_for_call(current))

    # Services

    def add_service(self, name: str, servant: Servant) -> Ice.ObjectPrx:
        servant.identity = Ice.Identity(name, self.category)
        with self._lock:
            self._services[name] = servant
        return self.server.add_servant(servant, servant.identity)

    def remove_service(self, servant: Servant) -> None:
        with self._lock:
            self._services.pop(servant.identity.name, None)
        self.server.remove_servant(servant.identity)

    def _stateless(self, name: str, make, cast):
        """Return the proxy of the factory's one instance of the stateless service `name`."""
        with self._lock:
            servant = self._services.get(name)
            if servant is None:
                servant = make(self)
                servant.identity = Ice.Identity(name, self.category)
                self._services[name] = servant
                self.server.add_servant(servant, servant.identity)
        return cast.uncheckedCast(self.server.adapter.createProxy(servant.identity))

    def _stateful(self, servant: Servant, cast):
        name = f"omero.api.{interface_name(servant)}-{uuid_module.uuid4()}"
        return cast.uncheckedCast(self.add_service(name, servant))

    def service_names(self) -> list[str]:
        with self._lock:
            return list(self._services)

    @sync
    def getAdminService(self, current=None):
        return self._stateless("omero.api.IAdmin", AdminService, omero.api.IAdminPrx)

    @sync
    def getConfigService(self, current=None):
        return self._stateless("omero.api.IConfig", ConfigService, omero.api.IConfigPrx)

    @sync
    def getQueryService(self, current=None):
        return self._stateless("omero.api.IQuery", QueryService, omero.api.IQueryPrx)

    @sync
    def getSessionService(self, current=None):
        return self._stateless("omero.api.ISession", SessionService, omero.api.ISessionPrx)

    @sync
    def sharedResources(self, current=None):
        return self._stateless("omero.grid.SharedResources", SharedResourcesI, omero.grid.SharedResourcesPrx)

    @sync
    def createRawFileStore(self, current=None):
        return self._stateful(RawFileStoreI(self), omero.api.RawFileStorePrx)

    @sync
    def getByName(self, name, current=None):
        with self._lock:
            servant = self._services.get(name)
        if servant is None:
            raise omero.ApiUsageException(message=f"No service named {name} in this session")
        return omero.api.ServiceInterfacePrx.uncheckedCast(
            self.server.adapter.createProxy(servant.identity)
        )

    @sync
    def activeServices(self, current=None):
        return self.service_names()

    # Commands

    @amd
    def submit_async(self, request, current=None):
        handle = HandleI(self, request)
        proxy = omero.cmd.HandlePrx.uncheckedCast(
            self.add_service(f"omero.cmd.Handle-{uuid_module.uuid4()}", handle)
        )
        handle.start()
        return proxy

    # Security contexts

    @sync
    def getSecurityContexts(self, current=None):
        groups = []
        for group_id in self.session.member_of_groups:
            group = self.server.find_group(group_id, self.session.user_id)
            if group is not None:
                groups.append(group)
        return groups

    @sync
    def setSecurityContext(self, obj, current=None):
        if not isinstance(obj, omero.model.ExperimenterGroup) or obj.id is None:
            raise omero.ApiUsageException(
                message="The test server supports only an ExperimenterGroup as security context"
            )
        group_id = obj.id.val
        if group_id not in self.session.member_of_groups:
            raise omero.SecurityViolation(
                message=f"User {self.session.user_id} is not a member of group {group_id}"
            )
        previous = self.session.group_id
        self.session.group_id = group_id
        log.info("session %s switched to group %d", self.session.uuid, group_id)
        return omero.model.ExperimenterGroupI(previous, False)

    @sync
    def setSecurityPassword(self, password, current=None):
        try:
            self.server.repository.authenticate(self.session.user_name, password)
        except Exception as exc:
            raise omero.SecurityViolation(
                message=f"Bad password for {self.session.user_name}"
            ) from exc

    # Session management

    @sync
    def setCallback(self, callback, current=None):
        self.callback = callback

    @sync
    def closeOnDestroy(self, current=None):
        self.close_on_destroy = True

    @sync
    def detachOnDestroy(self, current=None):
        self.close_on_destroy = False

    @sync
    def keepAlive(self, proxy, current=None):
        self.touch()
        if proxy is None:
            return False
        return self.server.is_alive(proxy.ice_getIdentity())

    @sync
    def keepAllAlive(self, proxies, current=None):
        self.touch()
        dead = 0
        for index, proxy in enumerate(proxies or []):
            if proxy is None or not self.server.is_alive(proxy.ice_getIdentity()):
                dead |= 1 << index
        return dead

    @sync
    def subscribe(self, topic_name, proxy, current=None):
        # The test server publishes no events; accepting the subscription is enough.
        log.debug("ignoring subscription to %s", topic_name)

    def destroy(self, current=None):
        # Glacier2.Session.destroy: the client ends its own Glacier2 session.
        self.destroy_session()
