"""One OMERO session: log-in, retries, error translation, queries and reads.

``Connection`` wraps one OMERO session. Its methods block, so async code
calls them through ``trio.to_thread.run_sync``; they are thread-safe, and
every one returns plain records from ``omerofs.records``.

Error translation happens here, once, in ``_translate``: omero-py and Ice
exceptions become ``omerofs.errors`` classes chained with ``from``. Retries
happen here too, in ``Connection._call``: only temporary failures are
retried, with exponential back-off and jitter, within a total time limit,
and an expired session is re-joined or re-created first when the
credentials allow it.
"""

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import Glacier2
import Ice
import omero
import omero.callbacks
import omero.clients
import omero.cmd
import omero.sys
from omero.rtypes import rlist, rlong, rstring, unwrap

from .. import records
from ..errors import (
    AccessDenied,
    AuthenticationError,
    NotFound,
    OmerofsError,
    RemoteError,
    ServerFailure,
    ServerUnavailable,
    SessionExpired,
    UsageError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# OMERO's default Glacier2 port for plain TCP (omero.constants.GLACIER2PORT).
DEFAULT_PORT = 4064

# Queries that take ID lists send at most this many IDs at once: large
# enough that a listing of a thousand images costs one query, small enough
# that the request stays far below Ice's message size limit and the SQL
# statement that OMERO makes of it has a modest number of bind parameters.
ID_BATCH = 1000

# Ice's default message size limit is 1 MiB and OMERO's client raises it to
# 64 MiB (Ice.MessageSizeMax=65536 KiB). A single RawFileStore read stays a
# quarter of that, whatever the caller asks for, so the reply always fits.
MAX_READ = 16 * 1024 * 1024

# Connection set-up gives up after this long, so an unreachable server is an
# error within seconds rather than a hang (milliseconds, as Ice takes them).
CONNECT_TIMEOUT_MS = 5000

# A call without a reply for this long fails instead of hanging the
# process that waits on it. A 16 MiB read at 1 MiB/s still fits.
INVOCATION_TIMEOUT_MS = 30000

# Once a call has given up on an unreachable server (after its retries, up
# to retry_seconds, or one INVOCATION_TIMEOUT_MS), calls fail at once for
# this long (seconds). Otherwise every request of an `ls -lR` waits out its
# own retries or time-out, and cached records come only after that wait.
UNREACHABLE_SECONDS = 10.0

# omero-py's keep-alive thread pings the session at this period (seconds).
# OMERO's default idle time-out is 10 minutes; a third of it leaves room
# for a missed ping.
KEEP_ALIVE_SECONDS = 200

# Extended restriction that omero-py's download command checks
# (omero.constants.permissions.BINARYACCESS).
RESTRICT_BINARY_ACCESS = "RESTRICT-BINARY-ACCESS"


class _ResponseCallback(omero.callbacks.CmdCallbackI):
    """A command callback that needs only the command's response.

    Once registered, omero-py's callback requests the command's response,
    in case the command finished before, and then also its status, which
    omerofs never reads. Skipping the status saves one server call for each
    command that finished that early.
    """

    def poll(self):
        response = self.handle.getResponse()
        if response is not None:
            self.finished(response, None, None)


@dataclass(frozen=True)
class ServerAddress:
    """Server address: the host and port that omero.client takes."""

    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, server: str, port: int | None = None) -> "ServerAddress":
        """Parse ``host``, ``host:port`` or ``tcp://host:port`` / ``ssl://host:port``."""
        server = server.strip()
        if not server:
            raise UsageError("The server address is empty; give a host name or tcp://HOST:PORT.")
        if "://" in server:
            scheme, _, rest = server.partition("://")
            if scheme not in ("tcp", "ssl", "ws", "wss"):
                raise UsageError(f"Unsupported scheme {scheme!r} in server address {server!r}; use tcp:// or ssl://.")
            host, _, port_text = rest.rpartition(":")
            if not host or not (port_text.isascii() and port_text.isdigit()):
                raise UsageError(f"Invalid server address {server!r}; expected {scheme}://HOST:PORT.")
            port = int(port_text)
        elif server.count(":") == 1:
            host, _, port_text = server.partition(":")
            if not host or not (port_text.isascii() and port_text.isdigit()):
                raise UsageError(f"Invalid server address {server!r}; expected HOST or HOST:PORT.")
            if port is not None and port != int(port_text):
                raise UsageError(f"The server address {server!r} and -p {port} name different ports.")
            server, port = host, int(port_text)
        elif port is None:
            port = DEFAULT_PORT
        if not 0 < port < 65536:
            raise UsageError(f"Invalid port {port}; expected a number from 1 to 65535.")
        return cls(server, port)

    @property
    def display(self) -> str:
        if "://" in self.host:
            return self.host
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Credentials:
    """How to log in. Exactly one of ``password`` and ``session_key`` is used.

    ``session_key_owned`` is True when omerofs created the session, so
    omerofs closes it at the end. A key given by the user or stored by
    ``omero login`` belongs to someone else and is only detached.
    """

    user: str | None = None
    password: str | None = None
    session_key: str | None = None
    session_key_owned: bool = False

    def __repr__(self) -> str:
        # Never let a password reach a log line through a repr.
        return f"Credentials(user={self.user!r}, session_key={'set' if self.session_key else None})"


def stored_session_key(address: ServerAddress, user: str | None) -> str | None:
    """Return the session key that ``omero login`` stored for this server, if any.

    Reads the session directory that omero-py uses (``OMERO_SESSIONDIR``,
    else ``~/omero/sessions``) without creating it.
    """
    directory = os.environ.get("OMERO_SESSIONDIR")
    if directory is None:
        user_dir = os.environ.get("OMERO_USERDIR") or str(Path.home() / "omero")
        directory = str(Path(user_dir) / "sessions")
    if not Path(directory).is_dir():
        return None

    from omero.util.sessions import SessionsStore

    store = SessionsStore(directory)
    # `omero login -s tcp://HOST:PORT` stores the host as "tcp://HOST" and the
    # port in the session's properties.
    hosts = [address.host]
    if "://" in address.host:
        hosts.append(address.host.rsplit(":", 1)[0])
    last_host, last_user, last_uuid, _ = store.get_current()
    for host in hosts:
        if user:
            users = [user]
        elif last_host == host and last_user:
            users = [last_user]
        else:
            users = []
        for name in users:
            keys = store.available(host, name)
            if host == last_host and name == last_user and last_uuid in keys:
                keys.remove(last_uuid)
                keys.insert(0, last_uuid)
            for key in keys:
                port = store.get(host, name, key).get("omero.port")
                if port is None or int(port) == address.port:
                    return key
    return None


def _translate(error: Exception, what: str) -> RemoteError:
    """Map an omero-py or Ice exception to the omerofs error it means."""
    message = getattr(error, "message", "") or type(error).__name__
    if isinstance(error, omero.SecurityViolation):
        return AccessDenied(f"{what}: the server denied access ({message})")
    if isinstance(error, (omero.RemovedSessionException, omero.SessionTimeoutException)):
        return SessionExpired(f"{what}: the session has ended ({message})")
    if isinstance(error, Ice.ObjectNotExistException):
        return SessionExpired(f"{what}: the session has ended on the server")
    if isinstance(error, (omero.ValidationException, omero.ApiUsageException)):
        return NotFound(f"{what}: {message}")
    if isinstance(error, Glacier2.PermissionDeniedException):
        reason = getattr(error, "reason", "") or "permission denied"
        return AuthenticationError(f"Login failed: {reason}")
    if isinstance(error, (Glacier2.CannotCreateSessionException, omero.ClientError)):
        return AuthenticationError(f"Login failed: {message}")
    if isinstance(error, (Ice.ConnectFailedException, Ice.ConnectionLostException, Ice.TimeoutException,
                          Ice.DNSException, Ice.SocketException, Ice.CommunicatorDestroyedException,
                          Ice.ConnectionRefusedException, Ice.CloseConnectionException)):
        return ServerUnavailable(f"{what}: cannot reach the server ({type(error).__name__})")
    if isinstance(error, Ice.ProtocolException):
        # omero.client speaks SSL to a bare host or HOST:PORT; a router that
        # takes plain TCP sends back bytes that are not an SSL handshake.
        return ServerUnavailable(f"{what}: the server did not reply in the expected protocol "
                                 f"({type(error).__name__}). A HOST or HOST:PORT address uses SSL; for a server "
                                 "that takes plain TCP, give tcp://HOST:PORT.")
    if isinstance(error, omero.ServerError):
        return ServerFailure(f"{what}: the server raised {type(error).__name__}: {message}")
    if isinstance(error, Ice.Exception):
        return ServerFailure(f"{what}: {type(error).__name__}")
    return ServerFailure(f"{what}: {error!r}")


def _ids_param(name: str, ids: Iterable[int]) -> omero.sys.ParametersI:
    params = omero.sys.ParametersI()
    params.map[name] = rlist([rlong(int(i)) for i in ids])
    return params


def _batches(ids: Sequence[int], size: int = ID_BATCH) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def _value(obj, field: str):
    """Return an unwrapped field of a model object, None if unset or unloaded."""
    try:
        return unwrap(getattr(obj, field))
    except omero.UnloadedEntityException:
        return None


def original_file_record(obj) -> records.OriginalFile:
    """Return the record of a loaded OriginalFile model object."""
    hasher = None
    if obj._hasher is not None and obj._hasher.isLoaded():
        hasher = _value(obj._hasher, "_value")
    permissions = obj._details._permissions if obj._details is not None else None
    restricted = permissions is not None and bool(permissions.isRestricted(RESTRICT_BINARY_ACCESS))
    mtime = _value(obj, "_mtime")
    return records.OriginalFile(
        id=_value(obj, "_id"),
        name=_value(obj, "_name") or "",
        path=_value(obj, "_path") or "",
        size=_value(obj, "_size") or 0,
        mtime=(mtime or 0) / 1000.0,
        hash=_value(obj, "_hash"),
        hasher=hasher,
        repo_uuid=_value(obj, "_repo"),
        mimetype=_value(obj, "_mimetype"),
        restricted=restricted,
    )


def _used_files_record(response) -> records.UsedFiles:
    """Turn a UsedFilesResponse (or the pre-fileset kind) into a record."""
    if isinstance(response, omero.cmd.UsedFilesResponsePreFs):
        binary = set(response.archivedFiles or [])
        companion = set(response.companionFiles or []) | set(response.originalMetadataFiles or [])
    else:
        binary = set(response.binaryFilesThisSeries or []) | set(response.binaryFilesOtherSeries or [])
        companion = (set(response.companionFilesThisSeries or [])
                     | set(response.companionFilesOtherSeries or []))
    return records.UsedFiles(frozenset(binary), frozenset(companion - binary))


class Connection:
    """One OMERO session with retries, reconnection and a pool of file stores.

    Every public method may be called from any thread.
    """

    def __init__(self, address: ServerAddress, credentials: Credentials, group: str | None = None,
                 retry_seconds: float = 10.0):
        self.address = address
        self.retry_seconds = retry_seconds
        self._credentials = credentials
        self._group_name = group
        self._lock = threading.Lock()
        self._client = None
        self._session = None
        self._context: dict[str, str] = {"omero.group": "-1"}
        self._generation = 0
        self._local = threading.local()
        self._stores: list = []
        self._services: dict[int, object] = {}
        self._category: tuple[object, str] | None = None
        self._closed = False
        self._unreachable_until = 0.0

    # Session life cycle

    def connect(self) -> None:
        """Log in, or join the session, and start the keep-alive."""
        with self._lock:
            self._connect_locked()

    def _connect_locked(self) -> None:
        self._drop_locked()
        client = omero.client(host=self.address.host, port=self.address.port, pmap=[
            f"--Ice.Override.ConnectTimeout={CONNECT_TIMEOUT_MS}",
            f"--Ice.Default.InvocationTimeout={INVOCATION_TIMEOUT_MS}",
            "--Ice.RetryIntervals=-1",
        ])
        try:
            if self._credentials.session_key:
                session = client.joinSession(self._credentials.session_key)
            elif self._credentials.user and self._credentials.password is not None:
                session = client.createSession(self._credentials.user, self._credentials.password)
            else:
                raise AuthenticationError("No session key or password to log in with.")
            # A dropped connection would otherwise end the session with it, and
            # the reconnect could not re-join; close() ends owned sessions itself.
            session.detachOnDestroy()
            client.enableKeepAlive(KEEP_ALIVE_SECONDS)
            if self._credentials.session_key is None:
                # Reconnecting after expiry re-joins this session first.
                self._credentials = Credentials(self._credentials.user, self._credentials.password,
                                                client.getSessionId(), session_key_owned=True)
        except AuthenticationError:
            client.__del__()
            raise
        except Exception as error:
            client.__del__()
            raise _translate(error, "Login") from error

        try:
            group_id = self._group_id(session)
        except Exception as error:
            # The caller never gets this client, so it is ended here.
            self._abandon(client)
            if isinstance(error, OmerofsError):
                raise
            raise _translate(error, "Looking up the group") from error

        self._client = client
        self._session = session
        self._generation += 1
        self._context = {"omero.group": group_id}
        log.info("connected to %s as session %s...", self.address.display, client.getSessionId()[:8])

    def _group_id(self, session) -> str:
        """Return the ID of the group that -g names, checking that the user may work in it."""
        if self._group_name is None:
            return "-1"
        admin = session.getAdminService()
        try:
            if self._group_name.isascii() and self._group_name.isdigit():
                group_id = int(self._group_name)
            else:
                group_id = unwrap(admin.lookupGroup(self._group_name).id)
        except omero.ApiUsageException as error:
            raise UsageError(f"Group {self._group_name!r} not found on the server.") from error

        # The server rejects every call in a group the user is not a member
        # of (administrators excepted), so the mount would deny everything.
        context = admin.getEventContext()
        if not context.isAdmin and group_id not in context.memberOfGroups:
            raise UsageError(f"User {context.userName} is not a member of group {self._group_name!r}; "
                             "give one of the user's groups with -g, or leave -g out for all of them.")
        return str(group_id)

    def _abandon(self, client) -> None:
        """End a client whose log-in is not used: kill the session if omerofs created it."""
        try:
            if self._credentials.session_key_owned:
                client.killSession()
            else:
                client.closeSession()
        except Exception as error:
            log.debug("closing the unused session failed: %r", error)
        client.__del__()

    def _drop_locked(self) -> None:
        for store in self._stores:
            try:
                store.close()
            except Exception:
                pass
        self._stores = []
        if self._client is not None:
            try:
                self._client.__del__()
            except Exception:
                pass
        self._client = None
        self._session = None
        self._services = {}

    def close(self) -> None:
        """End the session if omerofs created it, else detach from it."""
        with self._lock:
            self._closed = True
            client = self._client
            if client is None:
                return
            try:
                if self._credentials.session_key_owned:
                    client.killSession()
                    log.info("closed session %s...", self._credentials.session_key[:8])
                else:
                    client.closeSession()
            except Exception as error:
                log.debug("closing the session failed: %r", error)
            self._drop_locked()

    def detach(self) -> None:
        """Disconnect but leave the session open on the server for another process."""
        with self._lock:
            client = self._client
            if client is not None:
                try:
                    client.closeSession()
                except Exception as error:
                    log.debug("detaching from the session failed: %r", error)
            self._drop_locked()

    @property
    def session_key(self) -> str | None:
        return self._credentials.session_key

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def _current(self):
        with self._lock:
            if self._closed:
                raise ServerUnavailable("The connection is closed.")
            if self._session is None:
                # An earlier reconnect failed; try again, with the same fallback.
                self._login_again_locked()
            return self._session, self._generation

    def _reconnect(self, generation: int) -> None:
        with self._lock:
            if self._generation != generation or self._closed:
                return
            log.warning("session to %s ended; reconnecting", self.address.display)
            self._login_again_locked()

    def _login_again_locked(self) -> None:
        """Re-join the session, else log in again with the password.

        Without a password, a session that cannot be re-joined is gone for
        good, so this raises AuthenticationError, which is not retried:
        retrying would only make every request wait for the retry limit.
        """
        try:
            self._connect_locked()
        except AuthenticationError:
            if self._credentials.password is None:
                raise AuthenticationError("The session has expired and no password is available to log in "
                                          "again; run `omero login` or give a new session key.") from None
            self._credentials = Credentials(self._credentials.user, self._credentials.password)
            self._connect_locked()

    def _call(self, what: str, function: Callable[..., T]) -> T:
        """Run ``function(session)`` with retries of temporary failures."""
        deadline = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            attempt += 1
            generation = 0
            wait = self._unreachable_until - time.monotonic()
            if wait > 0:
                raise ServerUnavailable(f"{what}: cannot reach the server (it did not answer a moment ago; "
                                        f"the next try is in {wait:.0f} s)")
            try:
                session, generation = self._current()
                return function(session)
            except OmerofsError as error:
                failure = error
            except Exception as error:
                failure = _translate(error, what)
                failure.__cause__ = error

            delay = min(2.0 ** attempt * 0.05, 2.0) * random.uniform(0.5, 1.5)
            if not getattr(failure, "temporary", False) or time.monotonic() + delay > deadline:
                if isinstance(failure, ServerUnavailable):
                    self._unreachable_until = time.monotonic() + UNREACHABLE_SECONDS
                raise failure
            log.info("%s failed (attempt %d): %s; retrying in %.2f s", what, attempt, failure, delay)
            time.sleep(delay)
            if isinstance(failure, (SessionExpired, ServerUnavailable)):
                try:
                    self._reconnect(generation)
                except RemoteError as error:
                    if not error.temporary:
                        raise

    def _query_service(self, session):
        """Return the session's IQuery proxy, asking the server for it once per session."""
        cached = self._services.get(id(session))
        if cached is None:
            cached = self._services[id(session)] = session.getQueryService()
        return cached

    # Server identity

    def server_identity(self) -> records.ServerIdentity:
        def run(session):
            config = session.getConfigService()
            return records.ServerIdentity(config.getDatabaseUuid(), config.getVersion())
        return self._call("Reading the server's identity", run)

    # Queries

    def _query(self, what: str, hql: str, params, method: str = "findAllByQuery"):
        def run(session):
            query = self._query_service(session)
            return getattr(query, method)(hql, params, self._context)
        return self._call(what, run)

    def _projection(self, what: str, hql: str, params) -> list[list]:
        rows = self._query(what, hql, params, method="projection")
        return [[unwrap(value) for value in row] for row in rows]

    def image_ids(self, offset: int, limit: int) -> list[int]:
        """Return IDs of the images the user can read, in ID order, one page."""
        params = omero.sys.ParametersI()
        params.page(offset, limit)
        rows = self._projection("Listing images", "select i.id from Image i order by i.id", params)
        return [row[0] for row in rows]

    def images(self, image_ids: Sequence[int]) -> dict[int, records.Image]:
        """Return the images among ``image_ids`` that exist and are readable."""
        found: dict[int, records.Image] = {}
        for batch in _batches(sorted(set(image_ids))):
            rows = self._projection(
                f"Reading {len(batch)} images",
                "select i.id, i.name, f.id, i.details.updateEvent.time from Image i "
                "left outer join i.fileset f where i.id in (:ids)",
                _ids_param("ids", batch))
            for image_id, name, fileset_id, updated in rows:
                found[image_id] = records.Image(image_id, name or "", fileset_id, (updated or 0) / 1000.0)
        return found

    def missing_target_ids(self, target: records.ImageTarget) -> list[int]:
        """Return the IDs of ``target`` that do not exist or that the user cannot read."""
        found: set[int] = set()
        for batch in _batches(list(target.ids)):
            # target.kind is one of records.TARGET_KINDS, all OMERO class names.
            rows = self._projection(f"Checking {target}", f"select o.id from {target.kind} o where o.id in (:ids)",
                                    _ids_param("ids", batch))
            found.update(row[0] for row in rows)
        return [i for i in target.ids if i not in found]

    def target_image_ids(self, target: records.ImageTarget) -> list[int]:
        """Return the IDs of the images under a target such as ``Dataset:3``."""
        hql_by_kind = {
            "Image": "select i.id from Image i where i.id in (:ids)",
            "Dataset": "select l.child.id from DatasetImageLink l where l.parent.id in (:ids)",
            "Project": "select dl.child.id from DatasetImageLink dl, ProjectDatasetLink pl "
                       "where dl.parent.id = pl.child.id and pl.parent.id in (:ids)",
            "Screen": "select ws.image.id from WellSample ws, ScreenPlateLink sl "
                      "where ws.well.plate.id = sl.child.id and sl.parent.id in (:ids)",
            "Plate": "select ws.image.id from WellSample ws where ws.well.plate.id in (:ids)",
            "Well": "select ws.image.id from WellSample ws where ws.well.id in (:ids)",
            "Fileset": "select i.id from Image i where i.fileset.id in (:ids)",
        }
        hql = hql_by_kind.get(target.kind)
        if hql is None:
            raise UsageError(f"Unsupported target kind {target.kind!r}; use one of {', '.join(records.TARGET_KINDS)}.")
        image_ids: set[int] = set()
        for batch in _batches(list(target.ids)):
            rows = self._projection(f"Resolving {target}", hql, _ids_param("ids", batch))
            image_ids.update(row[0] for row in rows)
        return sorted(image_ids)

    def filesets(self, fileset_ids: Sequence[int]) -> dict[int, records.Fileset]:
        """Return filesets with their files, images and the server's file roles."""
        entries: dict[int, list[records.OriginalFile]] = {}
        images: dict[int, list[int]] = {}
        for batch in _batches(sorted(set(fileset_ids))):
            rows = self._query(
                f"Reading the files of {len(batch)} filesets",
                "select fse from FilesetEntry fse join fetch fse.originalFile f left outer join fetch f.hasher "
                "where fse.fileset.id in (:ids) order by fse.id",
                _ids_param("ids", batch))
            for entry in rows:
                fileset_id = unwrap(entry._fileset._id)
                entries.setdefault(fileset_id, []).append(original_file_record(entry._originalFile))
            rows = self._projection(
                f"Reading the images of {len(batch)} filesets",
                "select i.fileset.id, i.id from Image i where i.fileset.id in (:ids) order by i.id",
                _ids_param("ids", batch))
            for fileset_id, image_id in rows:
                images.setdefault(fileset_id, []).append(image_id)

        # Any image of a fileset gets the verdict on all of its files.
        verdicts = self.used_files_of_images([ids[0] for ids in images.values() if ids])
        found = {}
        for fileset_id, files in entries.items():
            image_ids = images.get(fileset_id, [])
            used = verdicts.get(image_ids[0]) if image_ids else None
            if used is None:
                used = records.UsedFiles(frozenset(), frozenset())
            mtime = max((f.mtime for f in files), default=0.0)
            found[fileset_id] = records.Fileset(fileset_id, tuple(files), tuple(image_ids), used, mtime)
        return found

    def _submit(self, what: str, request):
        """Submit a command and return its response once it has finished."""
        def run(session):
            client = self._client
            handle = session.submit(request, self._context)
            try:
                # The router's callback category lasts as long as the client, so
                # it is asked for once rather than once per command.
                if self._category is None or self._category[0] is not client:
                    self._category = (client, client.getCategory())
                callback = _ResponseCallback(client, handle, category=self._category[1])
            except Exception:
                handle.close()
                raise
            try:
                callback.loop(60, 500)
                return callback.getResponse()
            finally:
                callback.close(True)

        return self._call(what, run)

    def used_files_of_images(self, image_ids: Sequence[int]) -> dict[int, records.UsedFiles]:
        """Ask for many images' verdicts in one DoAll command per batch.

        One failed sub-request fails a whole DoAll, so that
        batch is asked again image by image, and images still failing are
        left out of the result.
        """
        verdicts: dict[int, records.UsedFiles] = {}
        for batch in _batches(list(image_ids)):
            if len(batch) > 1:
                request = omero.cmd.DoAll(requests=[omero.cmd.UsedFilesRequest(imageId=i) for i in batch])
                response = self._submit(f"Asking which files {len(batch)} images use", request)
                if isinstance(response, omero.cmd.DoAllRsp):
                    verdicts.update(zip(batch, (_used_files_record(r) for r in response.responses)))
                    continue
            for image_id in batch:
                try:
                    verdicts[image_id] = self.used_files(image_id)
                except ServerFailure as error:
                    log.warning("%s", error)
        return verdicts

    def used_files(self, image_id: int) -> records.UsedFiles:
        """Ask the server which of an image's files are binary and which companion."""
        request = omero.cmd.UsedFilesRequest(imageId=image_id)
        response = self._submit(f"Asking which files image {image_id} uses", request)
        if isinstance(response, omero.cmd.ERR):
            raise ServerFailure(f"The server could not list the files of image {image_id}: "
                                f"{response.category} {response.name}")
        return _used_files_record(response)

    def original_files(self, file_ids: Sequence[int]) -> dict[int, records.OriginalFile]:
        """Return the OriginalFile rows among ``file_ids`` that exist and are readable."""
        found = {}
        for batch in _batches(sorted(set(file_ids))):
            rows = self._query(f"Reading {len(batch)} original files",
                               "select o from OriginalFile o left outer join fetch o.hasher where o.id in (:ids)",
                               _ids_param("ids", batch))
            for obj in rows:
                record = original_file_record(obj)
                found[record.id] = record
        return found

    def repositories(self) -> list[records.Repository]:
        """Return the repositories whose files the user may see."""
        rows = self._query("Listing repositories",
                           "select o from OriginalFile o where o.mimetype = :mimetype order by o.id",
                           omero.sys.ParametersI().add("mimetype", rstring("Repository")))
        return [records.Repository(unwrap(o._id), unwrap(o._name) or "", unwrap(o._hash) or "") for o in rows]

    # File contents

    def read(self, file_id: int, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes of an original file from ``offset``.

        Reads larger than ``MAX_READ`` are split, so no reply exceeds Ice's
        message size limit. The result is shorter only at the end of the file.
        """
        parts = []
        while length > 0:
            size = min(length, MAX_READ)
            data = self._read_once(file_id, offset, size)
            parts.append(data)
            if len(data) < size:
                break
            offset += size
            length -= size
        return b"".join(parts)

    def _read_once(self, file_id: int, offset: int, length: int) -> bytes:
        what = f"Reading OriginalFile {file_id} at {offset}"

        def run(session):
            store = self._thread_store(session, file_id)
            try:
                return store.read(offset, length)
            except Exception:
                # A failed store may be in any state; the next read makes a new one.
                self._local.store = None
                raise

        started = time.monotonic()
        data = self._call(what, run)
        log.debug("read OriginalFile:%d offset=%d bytes=%d in %.1f ms", file_id, offset, len(data),
                  (time.monotonic() - started) * 1000)
        return data

    def _thread_store(self, session, file_id: int):
        """Return this thread's RawFileStore, pointed at ``file_id``.

        RawFileStore is stateful (one file at a time), so each worker thread
        keeps its own; a new session generation invalidates them all.
        """
        state = getattr(self._local, "store", None)
        if state is None or state[0] != self._generation:
            store = session.createRawFileStore(self._context)
            with self._lock:
                self._stores.append(store)
            state = [self._generation, store, None]
            self._local.store = state
        if state[2] != file_id:
            state[1].setFileId(file_id, self._context)
            state[2] = file_id
        return state[1]

