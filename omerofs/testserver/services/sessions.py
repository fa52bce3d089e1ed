"""OMERO sessions: their life cycle, reference counts and the ISession service.

A session outlives the connections that use it. `createSession` with a password
starts one with a reference count of 1, and joining it by its key adds 1. A
service factory gives its reference back when it is destroyed. "Closing" removes
the session once the count falls below 1, while "detaching" never removes it.
A session also ends when it has been idle for longer than its `timeToIdle`, or
when `ISession.closeSession` drops the last reference. These are the rules of
OMERO 5's `SessionManagerImpl`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid as uuid_module
from typing import Callable

import omero
import omero.api
import omero.model
from omero.rtypes import rlong, rstring, rtime

from .base import Servant, amd

log = logging.getLogger(__name__)

# ISession.closeSession's results, as OMERO's SessionManagerImpl.close returns them.
CLOSE_UNKNOWN_SESSION = -1
CLOSE_REMOVED = -2


@dataclasses.dataclass
class Session:
    """One OMERO session."""

    uuid: str
    session_id: int
    user_id: int
    user_name: str
    group_id: int
    member_of_groups: list[int]
    # name -> ID of every group in member_of_groups
    group_ids_by_name: dict[str, int]
    started_ms: int
    time_to_idle_ms: int
    agent: str = ""
    references: int = 1
    closed: bool = False
    # wall-clock time in ms at which the session ended, once it has
    closed_ms: int | None = None
    # monotonic time of the last call made with this session
    last_access: float = dataclasses.field(default_factory=time.monotonic)

    def idle_expired(self, now: float) -> bool:
        if self.time_to_idle_ms <= 0:
            return False
        return now - self.last_access > self.time_to_idle_ms / 1000.0


class SessionRegistry:
    """Every open session, by UUID; safe to use from any thread.

    `on_removed` is called (outside the lock) with each session that ends, so the
    server can drop the services that belong to it.
    """

    def __init__(self, time_to_idle_s: float):
        self.time_to_idle_ms = int(time_to_idle_s * 1000)
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        # Ended sessions stay known, because a failed join reports who owned them.
        self._ended: dict[str, Session] = {}
        self._next_id = 1
        self.on_removed: Callable[[Session], None] = lambda session: None

    def create(
        self,
        user_id: int,
        user_name: str,
        group_id: int,
        group_ids_by_name: dict[str, int],
        agent: str,
    ) -> Session:
        with self._lock:
            session = Session(
                uuid=str(uuid_module.uuid4()),
                session_id=self._next_id,
                user_id=user_id,
                user_name=user_name,
                group_id=group_id,
                member_of_groups=list(group_ids_by_name.values()),
                group_ids_by_name=dict(group_ids_by_name),
                started_ms=int(time.time() * 1000),
                time_to_idle_ms=self.time_to_idle_ms,
                agent=agent,
            )
            self._next_id += 1
            self._sessions[session.uuid] = session
        log.info("session %s started for user %s", session.uuid, user_name)
        return session

    def join(self, session_uuid: str) -> Session | None:
        """Add a reference to the open session `session_uuid`; None if there is none."""
        session = self.find(session_uuid)
        if session is None:
            return None
        with self._lock:
            session.references += 1
            session.last_access = time.monotonic()
        return session

    def ended(self, session_uuid: str) -> Session | None:
        """Return the session `session_uuid` if it existed and has ended."""
        with self._lock:
            return self._ended.get(session_uuid)

    def find(self, session_uuid: str) -> Session | None:
        """Return the open session `session_uuid`, ending it first if it has expired."""
        with self._lock:
            session = self._sessions.get(session_uuid)
        if session is None:
            return None
        if self.check_alive(session):
            return session
        return None

    def check_alive(self, session: Session) -> bool:
        """Return whether `session` is still open; an idle-expired session is ended."""
        if session.closed:
            return False
        if not session.idle_expired(time.monotonic()):
            return True
        log.info("session %s expired after %d ms idle", session.uuid, session.time_to_idle_ms)
        self._remove(session)
        return False

    def touch(self, session: Session) -> None:
        session.last_access = time.monotonic()

    def close(self, session_uuid: str) -> int:
        """Drop one reference, as ISession.closeSession does; return OMERO's result."""
        session = self.find(session_uuid)
        if session is None:
            return CLOSE_UNKNOWN_SESSION
        with self._lock:
            session.references -= 1
            remaining = session.references
        if remaining < 1:
            self._remove(session)
            return CLOSE_REMOVED
        return remaining

    def detach(self, session: Session) -> None:
        """Drop one reference without ever ending the session."""
        with self._lock:
            session.references = max(0, session.references - 1)

    def reference_count(self, session_uuid: str) -> int:
        session = self.find(session_uuid)
        return session.references if session is not None else 0

    def open_sessions(self, user_id: int) -> list[Session]:
        with self._lock:
            candidates = [s for s in self._sessions.values() if s.user_id == user_id]
        return [s for s in candidates if self.check_alive(s)]

    def expire_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        log.info("expiring all %d sessions", len(sessions))
        for session in sessions:
            self._remove(session)

    def reap(self) -> None:
        """End every session that has been idle for too long."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            self.check_alive(session)

    def _remove(self, session: Session) -> None:
        with self._lock:
            if session.closed:
                return
            session.closed = True
            session.closed_ms = int(time.time() * 1000)
            self._sessions.pop(session.uuid, None)
            self._ended[session.uuid] = session
        log.info("session %s ended", session.uuid)
        self.on_removed(session)


def session_model(session: Session) -> omero.model.SessionI:
    """Return `session` as the `omero.model.Session` that ISession.getSession returns."""
    model = omero.model.SessionI(session.session_id, True)
    model.uuid = rstring(session.uuid)
    model.started = rtime(session.started_ms)
    model.timeToIdle = rlong(session.time_to_idle_ms)
    # 0: no limit on the session's total lifetime, OMERO's default.
    model.timeToLive = rlong(0)
    model.userAgent = rstring(session.agent) if session.agent else None
    model.owner = omero.model.ExperimenterI(session.user_id, False)
    model.details.owner = omero.model.ExperimenterI(session.user_id, False)
    model.details.group = omero.model.ExperimenterGroupI(session.group_id, False)
    return model


class SessionService(Servant, omero.api.ISession):
    """ISession for one service factory."""

    def __init__(self, factory):
        self.factory = factory

    @property
    def _registry(self) -> SessionRegistry:
        return self.factory.server.sessions

    @amd
    def getSession_async(self, session_uuid, current=None):
        session = self._registry.find(session_uuid)
        if session is None:
            raise omero.RemovedSessionException(message=f"No session with uuid: {session_uuid}")
        return session_model(session)

    @amd
    def getReferenceCount_async(self, session_uuid, current=None):
        return self._registry.reference_count(session_uuid)

    @amd
    def closeSession_async(self, session, current=None):
        if session is None or session.uuid is None:
            raise omero.ApiUsageException(message="closeSession needs a session with a uuid")
        return self._registry.close(session.uuid.val)

    def _my_open_sessions(self) -> list[Session]:
        return self._registry.open_sessions(self.factory.session.user_id)

    @amd
    def getMyOpenSessions_async(self, current=None):
        return [session_model(s) for s in self._my_open_sessions()]

    @amd
    def getMyOpenAgentSessions_async(self, agent, current=None):
        return [session_model(s) for s in self._my_open_sessions() if s.agent == agent]

    @amd
    def getMyOpenClientSessions_async(self, current=None):
        return [session_model(s) for s in self._my_open_sessions()]
