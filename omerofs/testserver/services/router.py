"""The Glacier2 router that every omero-py client talks to first.

A real OMERO server puts Glacier2 between clients and the server. The test server
implements the router's operations itself and is its own back end:

- `getClientProxy` returns a proxy on the server's own endpoint, so the client
  sends every routed call over the same connection and the call arrives with its
  real identity (`<session uuid>/...` for services).
- `getServerProxy` gives the endpoint the client publishes for its callback
  objects. The server never connects there: it calls back over the connection
  the client opened, as Glacier2 does.
- A Glacier2 session belongs to one connection. `destroySession`, or the
  connection closing, destroys that connection's service factory.
"""

from __future__ import annotations

import logging
import threading
import uuid as uuid_module

import Glacier2
import Ice

from .base import Servant, amd

log = logging.getLogger(__name__)

ROUTER_IDENTITY = Ice.Identity("router", "OMERO.Glacier2")


class _ConnectionState:
    """The router's state for one client connection."""

    def __init__(self) -> None:
        self.category = str(uuid_module.uuid4())
        self.factory = None  # the ServiceFactoryI of this connection's Glacier2 session


class RouterI(Servant, Glacier2.Router):
    """Glacier2.Router, identity `OMERO.Glacier2/router`."""

    def __init__(self, server):
        self.server = server
        self._lock = threading.Lock()
        self._connections: dict[str, _ConnectionState] = {}

    # Ice::Router

    def getClientProxy(self, current=None):
        return self.server.adapter.createProxy(Ice.Identity("client", "OMERO.Glacier2"))

    def getServerProxy(self, current=None):
        return self.server.adapter.createProxy(Ice.Identity("server", "OMERO.Glacier2"))

    def addProxies(self, proxies, current=None):
        # No routing table: nothing is ever evicted, so nothing is returned.
        return []

    # Glacier2::Router

    def getCategoryForClient(self, current=None):
        return self._state(current.con).category

    @amd
    def createSession_async(self, user_name, password, current=None):
        state = self._state(current.con)
        if state.factory is not None:
            raise Glacier2.CannotCreateSessionException(
                reason="This connection already has a session"
            )
        factory = self.server.create_service_factory(user_name, password, current)
        state.factory = factory
        return factory.proxy

    def destroySession(self, current=None):
        key = connection_key(current.con)
        with self._lock:
            state = self._connections.get(key)
            factory = state.factory if state else None
            if state is not None:
                state.factory = None
        if factory is None:
            raise Glacier2.SessionNotExistException()
        factory.destroy_session()

    def getSessionTimeout(self, current=None):
        # Seconds, as Glacier2 reports Glacier2.SessionTimeout.
        return int(self.server.config.session_timeout)

    def getACMTimeout(self, current=None):
        return 0

    @amd(void=True)
    def refreshSession_async(self, current=None):
        key = connection_key(current.con)
        with self._lock:
            state = self._connections.get(key)
        if state is None or state.factory is None:
            raise Glacier2.SessionNotExistException()
        state.factory.touch()

    # Connection tracking

    def _state(self, con) -> _ConnectionState:
        key = connection_key(con)
        with self._lock:
            state = self._connections.get(key)
            if state is None:
                state = _ConnectionState()
                self._connections[key] = state
            return state

    def connection_closed(self, key: str) -> None:
        """Destroy the Glacier2 session of a connection that closed (the server calls this)."""
        with self._lock:
            state = self._connections.pop(key, None)
        if state is None or state.factory is None:
            return
        log.info("connection closed; destroying its session %s", state.factory.session.uuid)
        state.factory.destroy_session()


def connection_key(con) -> str:
    """Return a key for `con` that stays the same for as long as it is open."""
    # IcePy returns a new wrapper object for the same connection on every call, so
    # the connection is known by its addresses, which are unique while it is open.
    return con.toString() if con is not None else "collocated"
