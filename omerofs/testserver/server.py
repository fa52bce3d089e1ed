"""The OMERO test server: a real Ice server that omero-py talks to as to OMERO.

One object adapter on `tcp -h 127.0.0.1 -p PORT` serves everything: the Glacier2
router `OMERO.Glacier2/router` and, behind it, the service factories and
services of every session. All servants sit in the server's own table and reach
the adapter through one servant locator (`_Dispatcher`), so every call passes one
place that

- counts it as `Interface.operation` (also calls to services that no longer
  exist, under the interface they had),
- adds the configured latency,
- closes new connections while `refuse_connections` is set,
- raises `Ice.ObjectNotExistException` for calls on services of an ended
  session, as OMERO does once it has reaped a session,
- and marks the session as used, which keeps it from expiring.

Threads: Ice dispatches calls on its server thread pool (up to
`THREAD_POOL_MAX` threads, so injected latency does not serialize clients). A
reaper thread ends idle sessions. Requests submitted with `submit` run on a small
worker pool (see `services.commands`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import Glacier2
import Ice
import omero
import omero.api
import omero.rtypes
from omero import ObjectFactoryRegistrar

from . import store
from .control import Counters, Knobs
from .services.base import interface_name
from .services.factory import ServiceFactoryI
from .services.router import ROUTER_IDENTITY, RouterI, connection_key
from .services.sessions import Session, SessionRegistry

log = logging.getLogger(__name__)

# OMERO's server configuration sets Ice.MessageSizeMax to 65536 KB.
MESSAGE_SIZE_MAX_KB = 65536

# Enough dispatch threads that calls held back by injected latency do not block
# other clients; each idle thread costs only its stack.
THREAD_POOL_MAX = 64

# The version IConfig.getVersion reports: an OMERO 5.6 server, which omero-py 5.23
# is built for.
SERVER_VERSION = "5.6.16-ice36"


@dataclasses.dataclass
class ServerConfig:
    """Start-up settings of the test server."""

    host: str = "127.0.0.1"
    port: int = 0
    # Seconds a session may stay idle before it expires (OMERO's omero.sessions.timeout).
    session_timeout: float = 600.0
    version: str = SERVER_VERSION


class _IceLogger(Ice.Logger):
    """Sends the Ice run time's messages to Python logging."""

    def __init__(self, prefix: str = ""):
        Ice.Logger.__init__(self)
        self._prefix = prefix
        self._log = logging.getLogger("omerofs.testserver.ice")

    def _print(self, message):
        self._log.info("%s", message)

    def trace(self, category, message):
        self._log.debug("%s: %s", category, message)

    def warning(self, message):
        self._log.warning("%s", message)

    def error(self, message):
        self._log.error("%s", message)

    def getPrefix(self):
        return self._prefix

    def cloneWithPrefix(self, prefix):
        return _IceLogger(prefix)


class _ConnectionClosed(Ice.ConnectionCallback):
    def __init__(self, server: "TestServer", key: str):
        self._server = server
        self._key = key

    def heartbeat(self, con):
        pass

    def closed(self, con):
        self._server.connection_closed(self._key)


class _Dispatcher(Ice.ServantLocator):
    """The adapter's only way to servants; see the module docstring."""

    def __init__(self, server: "TestServer"):
        self._server = server

    def locate(self, current):
        server = self._server
        servant, interface = server.lookup(current.id)
        server.counters.increment(f"{interface}.{current.operation}")

        # IcePy wants None, not (None, cookie), when there is no servant.
        if not server.accept_connection(current.con):
            return None

        delay = server.knobs.latency_seconds()
        if delay > 0:
            threading.Event().wait(delay)

        if servant is None:
            return None
        factory = getattr(servant, "factory", None)
        if factory is not None:
            if not factory.alive():
                return None
            factory.touch()
        return (servant, None)

    def finished(self, current, servant, cookie):
        pass

    def deactivate(self, category):
        pass


class TestServer:
    """The test server; `start()` it, then `stop()` it."""

    def __init__(
        self,
        repository,
        config: ServerConfig | None = None,
        knobs: Knobs | None = None,
        counters: Counters | None = None,
    ):
        self.repository = repository
        self.config = config or ServerConfig()
        self.knobs = knobs or Knobs()
        self.counters = counters or Counters()
        self.sessions = SessionRegistry(self.config.session_timeout)
        self.sessions.on_removed = self._session_removed
        self.knobs.on_expire_sessions = self.sessions.expire_all

        self.communicator: Ice.Communicator | None = None
        self.adapter: Ice.ObjectAdapter | None = None
        self.port: int | None = None
        self.router = RouterI(self)

        self._lock = threading.Lock()
        self._servants: dict[tuple[str, str], Ice.Object] = {}
        # Interface names of removed servants, so late calls still count by name.
        self._removed: dict[tuple[str, str], str] = {}
        self._factories: dict[str, set[ServiceFactoryI]] = {}
        self._connections: set[str] = set()
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None

    # Life cycle

    def start(self) -> int:
        """Start serving; return the port."""
        init = Ice.InitializationData()
        init.properties = Ice.createProperties()
        properties = {
            "Ice.MessageSizeMax": str(MESSAGE_SIZE_MAX_KB),
            "Ice.ThreadPool.Server.Size": "4",
            "Ice.ThreadPool.Server.SizeMax": str(THREAD_POOL_MAX),
            "Ice.ThreadPool.Server.SizeWarn": "0",
            # Connections stay open while idle: a Glacier2 session lives as long
            # as its connection, and the client may sit idle for minutes.
            "Ice.ACM.Server.Close": "0",
            "Ice.Warn.Connections": "0",
            "Ice.Warn.Dispatch": "1",
        }
        for key, value in properties.items():
            init.properties.setProperty(key, value)
        init.logger = _IceLogger()

        self.communicator = Ice.initialize(init)
        # The model classes and rtypes clients send need factories to unmarshal.
        ObjectFactoryRegistrar.registerObjectFactory(self.communicator, None)
        for factory in omero.rtypes.ObjectFactories.values():
            factory.register(self.communicator)

        try:
            self.adapter = self.communicator.createObjectAdapterWithEndpoints(
                "OMERO", f"tcp -h {self.config.host} -p {self.config.port}"
            )
        except Ice.LocalException:
            self.communicator.destroy()
            self.communicator = None
            raise
        self.adapter.addServantLocator(_Dispatcher(self), "")
        self.add_servant(self.router, ROUTER_IDENTITY)
        self.adapter.activate()
        self.port = self.adapter.getEndpoints()[0].getInfo().port

        self._reaper = threading.Thread(target=self._reap, name="testserver-reaper", daemon=True)
        self._reaper.start()
        log.info("OMERO test server listening on tcp://%s:%d", self.config.host, self.port)
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        if self.communicator is not None:
            self.communicator.destroy()
            self.communicator = None
        if self._reaper is not None:
            self._reaper.join()
        log.info("OMERO test server stopped")

    def _reap(self) -> None:
        interval = max(0.5, min(30.0, self.config.session_timeout / 4))
        while not self._stopping.wait(interval):
            self.sessions.reap()

    # Servant table

    def add_servant(self, servant: Ice.Object, identity: Ice.Identity) -> Ice.ObjectPrx:
        key = (identity.category, identity.name)
        with self._lock:
            self._servants[key] = servant
        return self.adapter.createProxy(identity)

    def remove_servant(self, identity: Ice.Identity) -> None:
        key = (identity.category, identity.name)
        with self._lock:
            servant = self._servants.pop(key, None)
            if servant is not None:
                self._removed[key] = interface_name(servant)

    def lookup(self, identity: Ice.Identity) -> tuple[Ice.Object | None, str]:
        """Return the servant for `identity` and its interface name for counting."""
        key = (identity.category, identity.name)
        with self._lock:
            servant = self._servants.get(key)
            if servant is not None:
                return servant, interface_name(servant)
            return None, self._removed.get(key, "Object")

    def is_alive(self, identity: Ice.Identity) -> bool:
        servant, _ = self.lookup(identity)
        if servant is None:
            return False
        factory = getattr(servant, "factory", None)
        return factory is None or factory.alive()

    # Connections

    def accept_connection(self, con) -> bool:
        """Track `con`; return False (and close it) if new connections are refused."""
        if con is None:
            return True
        key = connection_key(con)
        with self._lock:
            known = key in self._connections
        if known:
            return True
        if self.knobs.refusing_connections():
            log.info("refusing new connection %s", key.replace("\n", ", "))
            con.close(True)
            return False
        with self._lock:
            self._connections.add(key)
        con.setCallback(_ConnectionClosed(self, key))
        return True

    def connection_closed(self, key: str) -> None:
        with self._lock:
            self._connections.discard(key)
        self.router.connection_closed(key)

    # Sessions

    def create_service_factory(self, user_name: str, password: str, current) -> ServiceFactoryI:
        """Join the session whose key is the user name and password, or log in.

        Follows OMERO's PermissionsVerifierI: a session key joins only when it is
        both the user name and the password. Raises Glacier2.PermissionDeniedException
        for a wrong password, an unknown user and a key that is not (or no longer)
        valid, with OMERO's reason text.
        """
        session = self.sessions.find(password) or self.sessions.find(user_name)
        if session is not None and user_name != password:
            log.info("login failed: a session key was given without the same user name")
            raise Glacier2.PermissionDeniedException(
                reason="username and password must be equal; use joinSession"
            )
        if session is not None:
            session = self.sessions.join(password)
        if session is None:
            session = self._log_in(user_name, password, current.ctx or {})
        else:
            log.info("session %s joined", session.uuid)

        factory = ServiceFactoryI(self, session)
        with self._lock:
            self._factories.setdefault(session.uuid, set()).add(factory)
        factory.proxy = omero.api.ServiceFactoryPrx.uncheckedCast(
            self.add_servant(factory, factory.identity)
        )
        if not self.sessions.check_alive(session):
            # The session ended while the factory was being made.
            factory.drop_services()
            raise Glacier2.PermissionDeniedException(reason="Session expired")
        return factory

    def _log_in(self, user_name: str, password: str, ctx: dict) -> Session:
        try:
            experimenter = self.repository.authenticate(user_name, password)
        except store.AuthenticationFailed as exc:
            log.info("login failed for %r: %s", user_name, exc)
            raise Glacier2.PermissionDeniedException(
                reason=self._password_check_failed(user_name)
            ) from None

        user_id = experimenter.id.val
        context = self.repository.event_context(user_id, None)
        group_ids_by_name = {
            self.repository.event_context(user_id, group_id).groupName: group_id
            for group_id in context.memberOfGroups
        }
        requested = ctx.get("omero.group", "")
        group_id = _requested_group(requested, group_ids_by_name)
        return self.sessions.create(
            user_id=user_id,
            user_name=context.userName,
            group_id=group_id if group_id is not None else context.groupId,
            group_ids_by_name=group_ids_by_name,
            agent=ctx.get("omero.agent", ""),
        )

    def _password_check_failed(self, user_name: str) -> str:
        """Return OMERO's reason for a failed login, with the user or session the name matches."""
        details = []
        ended = self.sessions.ended(user_name)
        if ended is not None:
            details.append(f"user={ended.user_name}")
            details.append(f"created={_java_timestamp(ended.started_ms)}")
            details.append(f"closed={_java_timestamp(ended.closed_ms)}")
        else:
            user_id = self.repository.user_id(user_name)
            if user_id is not None:
                details.append(f"id={user_id}")
        return f"Password check failed for '{user_name}': [{', '.join(details)}]"

    def find_group(self, group_id: int, user_id: int):
        """Return the loaded ExperimenterGroup `group_id` as `user_id` may read it, or None."""
        try:
            return self.repository.get("ExperimenterGroup", group_id, store.Viewer(user_id, -1))
        except omero.ServerError:
            return None

    def _session_removed(self, session: Session) -> None:
        with self._lock:
            factories = self._factories.pop(session.uuid, set())
        for factory in factories:
            factory.drop_services()


def _requested_group(requested: str, group_ids_by_name: dict[str, int]) -> int | None:
    """Return the group that `omero.group` at login names by ID or name, if the user is in it.

    A user who asks for a group they are not in gets their default group. The
    first call that sends that group in its context then raises
    omero.SecurityViolation, which BlitzGateway.connect expects before it retries
    without the group.
    """
    if not requested:
        return None
    if requested.lstrip("-").isdigit():
        group_id = int(requested)
        return group_id if group_id in group_ids_by_name.values() else None
    return group_ids_by_name.get(requested)


def _java_timestamp(epoch_ms: int | None) -> str:
    """Format a time as java.sql.Timestamp.toString does, in local time."""
    if epoch_ms is None:
        return "null"
    seconds, millis = divmod(epoch_ms, 1000)
    fraction = f"{millis:03d}".rstrip("0") or "0"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + "." + fraction
