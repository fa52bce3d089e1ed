"""The mount daemon: session, cache, the trio + pyfuse3 main loop, signals.

``omerofs mount`` logs in, then starts this module as a detached process
(``python -m omerofs.mount``) and sends it the options as JSON on standard
input, so a password or session key never appears in ``ps``. The daemon
writes one line on standard output, ``ready`` or ``error: MESSAGE``,
then logs only to its log file. With ``--foreground`` the same code runs
in the command's own process.

The daemon ends, closing the session it owns, when the filesystem is
unmounted (``omerofs umount``, ``fusermount3 -u``) or on SIGTERM or SIGINT.
"""

import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyfuse3
import trio

from . import records
from .blocks import BlockCache
from .catalog import DEFAULT_TTL, Catalog
from .errors import CacheError, OmerofsError, ServerUnavailable, UsageError
from .fetch import DEFAULT_BLOCK_SIZE, Fetcher
from .fs import Operations
from .tree import Root

log = logging.getLogger(__name__)

# How often (seconds) a running mount writes its statistics for `omerofs status`.
STATS_PERIOD = 2.0

# The kernel's read-ahead for this mount. Its default, 128 KiB, cuts a
# sequential reader's 1 MiB block into eight FUSE requests. At 4 MiB the
# kernel requests 1 MiB pieces (the FUSE request limit) several at a time,
# and a warm read of 1 GiB costs the daemon about a third less CPU. The
# kernel grows read-ahead only for sequential readers, so random readers
# are not affected.
READ_AHEAD_KIB = 4096

# glibc gives threads that allocate at the same time arenas of their own, up
# to 8 per core, and freed blocks stay in them. Streaming 4 GiB with 8
# download threads peaked at 290 MiB, and at 233 MiB with 2 arenas, at the
# same speed.
MALLOC_ARENAS = 2

# The mount reports itself ready once it has served a first request, or
# after this many seconds in any case.
READY_CHECK_SECONDS = 10.0


@dataclass
class MountOptions:
    mountpoint: str
    server: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    session_key: str | None = None
    session_key_owned: bool = False
    group: str | None = None
    targets: list[str] = field(default_factory=list)
    cache_dir: str = ""
    offline: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    cache_size: int | None = None
    ttl: float = DEFAULT_TTL
    allow_other: bool = False
    debug: bool = False
    log_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "MountOptions":
        return cls(**json.loads(text))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "omerofs"


def runtime_dir() -> Path:
    """Return the directory where running mounts register themselves."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "omerofs" if base else default_cache_dir() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def registration_path(mountpoint: str) -> Path:
    digest = hashlib.sha1(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return runtime_dir() / f"mount-{digest}.json"


def read_registration(mountpoint: str) -> dict | None:
    try:
        return json.loads(registration_path(mountpoint).read_text())
    except (OSError, ValueError):
        return None


def _write_registration(path: Path, content: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(content))
    temporary.replace(path)


def check_mountpoint(mountpoint: str) -> None:
    """Raise UsageError unless ``mountpoint`` is an existing, unmounted directory."""
    try:
        mode = os.stat(mountpoint).st_mode
    except FileNotFoundError:
        raise UsageError(f"Mount point {mountpoint} does not exist; create it with mkdir first.") from None
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            # A FUSE mount whose daemon ended without unmounting.
            raise UsageError(f"{mountpoint} is a mount whose daemon has ended; clean it up with "
                             f"`omerofs umount {mountpoint}` first.") from None
        raise UsageError(f"Cannot use mount point {mountpoint}: {error.strerror}.") from None
    if not stat.S_ISDIR(mode):
        raise UsageError(f"Mount point {mountpoint} is not a directory.")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is already a mount point; unmount it first (omerofs umount {mountpoint}).")


def _server_identity(options: MountOptions, cache: BlockCache, connection) -> str:
    """Return the database UUID that keys this server's cache entries."""
    address_key = f"address/{options.server}:{options.port}"
    if connection is not None:
        identity = connection.server_identity()
        cache.set_record(address_key, identity.database_uuid)
        return identity.database_uuid
    uuid = cache.get_record(address_key)
    if uuid is None:
        raise CacheError(f"The cache in {cache.directory} contains no data from {options.server}; "
                         "mount once while the server is reachable (or pin data) before mounting offline.")
    return uuid


def _connect(options: MountOptions):
    """Return a connected ``remote.Connection``, or None when offline."""
    if options.offline:
        return None
    from .remote import Connection, Credentials, ServerAddress

    address = ServerAddress.parse(options.server, options.port)
    credentials = Credentials(options.user, options.password, options.session_key, options.session_key_owned)
    connection = Connection(address, credentials, options.group)
    try:
        connection.connect()
    except ServerUnavailable as error:
        log.warning("%s; serving the cached data offline", error)
        return None
    return connection


def run(options: MountOptions, ready: Callable[[str | None], None]) -> int:
    """Mount, serve until unmounted or signalled, and clean up. Returns an exit code.

    ``ready(None)`` is called once the mount is in place, ``ready(message)``
    if it could not be set up.
    """
    _limit_malloc_arenas(MALLOC_ARENAS)
    connection = None
    cache = None
    mounted = False
    # Resolve the path before mounting. Afterwards, resolving it is a FUSE
    # request that stays unanswered until the main loop runs.
    mountpoint = os.path.realpath(options.mountpoint)
    registration = registration_path(mountpoint)
    lock = None
    try:
        lock = _lock_mountpoint(registration, mountpoint)
        check_mountpoint(mountpoint)
        cache = BlockCache(Path(options.cache_dir), size_limit=options.cache_size)
        connection = _connect(options)
        server = _server_identity(options, cache, connection)
        targets = [records.parse_target(t) for t in options.targets]

        catalog = Catalog(connection, cache, server, targets, options.ttl)
        download = connection.read if connection is not None else None
        fetcher = Fetcher(cache, server, download, options.block_size)
        operations = Operations(Root(catalog), fetcher, options.ttl)
        fetcher.on_mismatch = lambda file: operations.invalidate_file(file.id)

        fuse_options = set(pyfuse3.default_options)
        fuse_options.update({"fsname=omerofs", "subtype=omerofs", "ro"})
        if options.allow_other:
            fuse_options.add("allow_other")
        pyfuse3.init(operations, mountpoint, fuse_options)
        mounted = True
        _write_registration(registration, {
            "pid": os.getpid(), "mountpoint": mountpoint, "server": options.server,
            "port": options.port, "cache_dir": options.cache_dir, "offline": connection is None,
            "log_file": options.log_file, "started": time.time(),
        })
        log.info("mounted %s at %s (%s)", options.server, mountpoint,
                 "offline" if connection is None else "online")
        trio.run(_serve, operations, fetcher, catalog, registration, mountpoint, ready)
        return 0
    except OmerofsError as error:
        log.error("%s", error)
        ready(str(error))
        return error.exit_code
    except Exception as error:
        log.exception("the mount failed")
        ready(f"the mount failed unexpectedly: {error!r}")
        return 1
    finally:
        if mounted:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)
            # Only the process that mounted owns the registration; a daemon
            # that failed its checks must not remove a running mount's.
            registration.unlink(missing_ok=True)
        if connection is not None:
            connection.close()
        elif options.session_key_owned and not options.offline:
            _end_unused_session(options)
        if cache is not None:
            cache.close()
        if lock is not None:
            lock.close()


def _limit_malloc_arenas(count: int) -> None:
    """Cap glibc's malloc arenas; called before the download threads start. Other C libraries ignore it."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, count)
    except (OSError, AttributeError) as error:
        log.debug("malloc arenas left as they are: %s", error)


# mallopt's parameter number for the arena limit, from glibc's malloc.h.
_M_ARENA_MAX = -8


def _end_unused_session(options: MountOptions) -> None:
    """End the session that ``omerofs mount`` created for this daemon, which never used it."""
    from .remote import Connection, Credentials, ServerAddress

    credentials = Credentials(options.user, None, options.session_key, session_key_owned=True)
    connection = Connection(ServerAddress.parse(options.server, options.port), credentials)
    try:
        connection.connect()
    except OmerofsError as error:
        log.debug("could not end the unused session: %s", error)
        return
    connection.close()


def _lock_mountpoint(registration: Path, mountpoint: str):
    """Return an open file holding this process's exclusive lock on ``mountpoint``.

    Two mounts started at once both pass check_mountpoint before either
    mounts, and the second would then stack on the first. The lock lives
    as long as the file stays open; the kernel drops it when the process ends.
    """
    lock = open(registration.with_suffix(".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UsageError(f"{mountpoint} is already being mounted by another omerofs process.") from None
    return lock


async def _serve(operations: Operations, fetcher: Fetcher, catalog: Catalog, registration: Path,
                 mountpoint: str, ready: Callable[[str | None], None]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        nursery.start_soon(_announce, mountpoint, ready)
        nursery.start_soon(_write_statistics, operations, fetcher, catalog, registration)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _announce(mountpoint: str, ready: Callable[[str | None], None]) -> None:
    """Report the mount ready once it serves requests, after tuning the kernel's read-ahead.

    The kernel sets the mount's read-ahead from the FUSE handshake, which
    the main loop handles, so the setting can only change after it. The
    stat() here is a request to this very daemon, so it returns after it.
    """
    try:
        with trio.move_on_after(READY_CHECK_SECONDS):
            device = (await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)).st_dev
            _set_read_ahead(device, READ_AHEAD_KIB)
    except OSError as error:
        # The daemon stops, so that `omerofs mount` reports the error and leaves no mount behind.
        log.error("the new mount at %s failed its first request: %s; unmounting", mountpoint, error)
        ready(f"the new mount at {mountpoint} failed its first request: {error.strerror or error}")
        pyfuse3.terminate()
        return
    # Not in a finally clause: a daemon stopped before it served a request
    # (SIGTERM, a failed main loop) must not be reported ready.
    ready(None)


def _set_read_ahead(device: int, kib: int) -> None:
    """Set the kernel's read-ahead for the filesystem on ``device``, if this process may.

    Only root may write it, so for other users the kernel's default stays.
    """
    setting = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(setting, "w") as control:
            control.write(f"{kib}\n")
        log.debug("read-ahead set to %d KiB in %s", kib, setting)
    except OSError as error:
        log.debug("read-ahead left as it is: %s", error)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for number in signals:
            log.info("received %s; unmounting", signal.Signals(number).name)
            pyfuse3.terminate()
            return


async def _write_statistics(operations: Operations, fetcher: Fetcher, catalog: Catalog, registration: Path) -> None:
    while True:
        await trio.sleep(STATS_PERIOD)
        try:
            content = json.loads(registration.read_text())
            content["statistics"] = {
                "hits": fetcher.hits, "misses": fetcher.misses, "bytes_fetched": fetcher.bytes_fetched,
                "blocks_fetched": fetcher.blocks_fetched, "metadata_calls": catalog.calls,
                "errors": dict(operations.error_counts),
            }
            _write_registration(registration, content)
        except (OSError, ValueError) as error:
            log.debug("could not write statistics: %s", error)


def configure_logging(log_file: str | None, debug: bool) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("omerofs")
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if debug else logging.INFO)
    # omero-py configures the root logger; without this every line appears twice.
    package.propagate = False


def _daemon_main() -> int:
    """Entry point of the detached daemon that ``omerofs mount`` starts."""
    options = MountOptions.from_json(sys.stdin.read())
    sys.stdin.close()
    configure_logging(options.log_file, options.debug)
    status = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)

    def ready(message: str | None) -> None:
        if status.closed:
            return
        status.write("ready\n" if message is None else f"error: {message}\n")
        status.close()

    return run(options, ready)


if __name__ == "__main__":
    # Run with -m, this module is "__main__", outside the "omerofs" logger
    # that configure_logging sets up, so its lines would miss the log file.
    log = logging.getLogger("omerofs.mount")
    sys.exit(_daemon_main())
