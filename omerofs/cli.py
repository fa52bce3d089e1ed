"""The ``omerofs`` command line.

Exit codes: 0 success; 1 unexpected failure; 2 invalid usage; 3 login
failed; 4 server error or unreachable; 5 object not found; 6 access
denied; 7 data not available offline; 8 checksum mismatch; 9 cache
unusable; 10 pin finished but some files failed or are restricted;
130 interrupted; 141 standard output closed early (``| head``), as
for a program that SIGPIPE ends.
"""

import argparse
import getpass
import json
import logging
import math
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import __version__, records
from .blocks import DEFAULT_SIZE_LIMIT
from .catalog import DEFAULT_TTL
from .errors import AuthenticationError, CacheError, NotFound, OmerofsError, UsageError
from .fetch import DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE
from .mount import MountOptions, check_mountpoint, default_cache_dir, read_registration

log = logging.getLogger(__name__)

# `omerofs mount` waits this long (seconds) for the daemon to report that
# the mount is ready: login, the first server calls and the FUSE set-up.
MOUNT_READY_TIMEOUT = 60.0

# The type /proc/self/mounts shows for an omerofs mount: "fuse." and the
# subtype that the mount daemon passes to the kernel.
OMEROFS_FILESYSTEM = "fuse.omerofs"

# `omerofs umount` waits this long (seconds) for the daemon to exit after
# the unmount, so that its session is closed when the command returns.
UMOUNT_EXIT_TIMEOUT = 15.0


def parse_size(text: str) -> int:
    """Parse a byte count with an optional K, M, G or T suffix (powers of 1024)."""
    units = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = cleaned[-1:] if cleaned[-1:] in units else ""
    number = cleaned[:-1] if suffix else cleaned
    try:
        value = float(number) * units[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use a number with an optional K, M, G or T suffix")
    # "not value > 0" also rejects nan; "inf" and "1e999" parse as infinity.
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; it must be a positive, finite number")
    return int(value)


def parse_seconds(text: str) -> float:
    """Parse a non-negative, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}; use a number of seconds")
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid time {text!r}; it must be zero or more, and finite")
    return value


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("-s", "--server", help="OMERO server: a host name, or tcp://HOST:PORT or ssl://HOST:PORT")
    group.add_argument("-p", "--port", type=int, help="server port when --server is a host name (default 4064)")
    group.add_argument("-u", "--user", help="OMERO user name")
    group.add_argument("-k", "--key", dest="session_key",
                       help="join an existing session by its key instead of logging in")
    group.add_argument("-g", "--group", help="OMERO group name or ID to work in (default: all of the user's groups)")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()),
                        help="directory of the block cache and logs (default: %(default)s)")
    parser.add_argument("--cache-size", type=parse_size, default=None,
                        help="size limit of unpinned cached data, e.g. 20G; kept for later commands "
                             f"(default: the last limit given, else {DEFAULT_SIZE_LIMIT // 1024 ** 3}G)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omerofs", description="Read-only FUSE filesystem for OMERO servers.")
    parser.add_argument("--version", action="version", version=f"omerofs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount an OMERO server as a read-only filesystem")
    mount.add_argument("mountpoint", help="an existing, empty directory")
    mount.add_argument("targets", nargs="*", metavar="TARGET",
                       help="what Image/ lists, e.g. Dataset:3 or Image:1,2 (default: every readable image)")
    _add_server_options(mount)
    mount.add_argument("--foreground", action="store_true", help="stay in the foreground and log to standard error")
    mount.add_argument("--offline", action="store_true",
                       help="serve only the cached data, without contacting the server")
    mount.add_argument("--block-size", type=parse_size, default=DEFAULT_BLOCK_SIZE,
                       help="bytes per cached block, a power of two from 4K to 16M (default: 1M)")

    mount.add_argument("--ttl", type=parse_seconds, default=DEFAULT_TTL,
                       help="seconds that metadata which may change is reused (default: %(default)s)")
    mount.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    mount.add_argument("--debug", action="store_true", help="log every request and server call")

    umount = commands.add_parser("umount", help="unmount and end the mount's session")
    umount.add_argument("mountpoint")
    umount.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")

    pin = commands.add_parser("pin", help="copy targets into the cache, verified and kept through eviction")
    pin.add_argument("targets", nargs="+", metavar="TARGET", help="e.g. Dataset:3 or Image:1,2")
    _add_server_options(pin)
    pin.add_argument("--json", action="store_true", help="print the summary as JSON on standard output")

    unpin = commands.add_parser("unpin", help="let the cache evict pinned targets again")
    unpin.add_argument("targets", nargs="+", metavar="TARGET")
    _add_server_options(unpin)

    status = commands.add_parser("status", help="show the cache, pinned targets and running mounts")
    status.add_argument("--cache-dir", default=str(default_cache_dir()),
                        help="directory of the block cache (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    return parser


def resolve_credentials(args) -> tuple[str | None, str | None, str | None, bool]:
    """Return (user, password, session_key, key_owned) in the documented order.

    A session key given with -k comes first, then the session that
    ``omero login`` stored for this server, then OMERO_PASSWORD, then a
    prompt when standard input is a terminal.
    """
    from .remote import ServerAddress, stored_session_key

    if args.session_key:
        return args.user, None, args.session_key, False
    address = ServerAddress.parse(args.server, args.port)
    stored = stored_session_key(address, args.user)
    if stored:
        return args.user, None, stored, False
    return args.user, _password(args.user, address.display), None, True


def _password(user: str | None, server: str) -> str:
    if not user:
        raise UsageError("No session to reuse; give -u USER (with OMERO_PASSWORD or at the prompt) or -k SESSION_KEY.")
    password = os.environ.get("OMERO_PASSWORD")
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise UsageError("No password: set OMERO_PASSWORD, run `omero login` first, or give -k SESSION_KEY.")
    return getpass.getpass(f"Password for {user}@{server}: ")


def _connect(args):
    """Log in with the command-line options and return the connected ``remote.Connection``.

    Errors and the password prompt reach the user here, in the foreground.
    """
    from .remote import Connection, Credentials, ServerAddress

    address = ServerAddress.parse(args.server, args.port)
    user, password, session_key, _ = resolve_credentials(args)
    connection = Connection(address, Credentials(user, password, session_key), args.group)
    try:
        connection.connect()
    except AuthenticationError:
        if session_key is None or args.session_key:
            raise
        # The session that `omero login` stored has expired: fall back to a password.
        password = _password(user, address.display)
        connection = Connection(address, Credentials(user, password), args.group)
        connection.connect()
    return connection


def command_mount(args) -> int:
    from . import mount

    if not args.offline and not args.server:
        raise UsageError("No server given; use -s HOST or -s tcp://HOST:PORT (or --offline with -s to name the cache).")
    if args.offline and not args.server:
        raise UsageError("--offline needs -s SERVER to find that server's data in the cache.")
    for target in args.targets:
        records.parse_target(target)
    if args.block_size & (args.block_size - 1) or not 4096 <= args.block_size <= MAX_BLOCK_SIZE:
        raise UsageError(f"Invalid block size {args.block_size}; use a power of two from 4K to "
                         f"{MAX_BLOCK_SIZE // 1024 ** 2}M.")
    check_mountpoint(args.mountpoint)

    cache_dir = Path(args.cache_dir).expanduser().resolve()
    options = MountOptions(
        mountpoint=os.path.abspath(args.mountpoint), server=args.server, port=args.port, group=args.group,
        targets=list(args.targets), cache_dir=str(cache_dir), offline=args.offline, block_size=args.block_size,
        cache_size=args.cache_size, ttl=args.ttl, allow_other=args.allow_other, debug=args.debug)
    # Before the log-in: a session handed to a daemon that never starts
    # would stay open on the server.
    logs = cache_dir / "logs"
    if not args.foreground:
        options.log_file = str(logs / f"mount-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        logs.mkdir(parents=True, exist_ok=True)
        if options.log_file:
            open(options.log_file, "a").close()
    except OSError as error:
        raise CacheError(f"Cannot write the mount's log in {logs}: {error.strerror}; "
                         "give a writable --cache-dir.") from error
    if not args.offline:
        # Log in here, so that errors and the prompt reach the user, then hand
        # the session to the daemon, which joins it.
        connection = _connect(args)
        try:
            _check_targets(connection, [records.parse_target(t) for t in args.targets])
        except OmerofsError:
            connection.close()
            raise
        credentials = connection.credentials
        options.user = credentials.user
        options.password = credentials.password
        options.session_key = credentials.session_key
        options.session_key_owned = credentials.session_key_owned
        connection.detach()

    if args.foreground:
        mount.configure_logging(None, args.debug)
        return mount.run(options, lambda message: None)

    return _start_daemon(options)


def _start_daemon(options: MountOptions) -> int:
    # The password reaches the daemon on its standard input only, never
    # through its command line or environment.
    environment = {k: v for k, v in os.environ.items() if k != "OMERO_PASSWORD"}
    with open(options.log_file, "a") as log_file:
        daemon = subprocess.Popen([sys.executable, "-m", "omerofs.mount"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log_file, start_new_session=True, text=True,
                                  env=environment, cwd="/")
    daemon.stdin.write(options.to_json())
    daemon.stdin.close()

    ready, _, _ = select.select([daemon.stdout], [], [], MOUNT_READY_TIMEOUT)
    line = daemon.stdout.readline().strip() if ready else ""
    if line == "ready":
        print(f"Mounted {options.server} at {options.mountpoint} (log: {options.log_file})")
        return 0
    if not ready:
        daemon.terminate()
        raise OmerofsError(f"The mount was not ready after {MOUNT_READY_TIMEOUT:.0f} s; see {options.log_file}.")
    daemon.wait(timeout=10)
    message = line.removeprefix("error: ") if line else f"the mount daemon exited; see {options.log_file}"
    print(f"omerofs: error: {message}", file=sys.stderr)
    # A daemon ended by a signal has a negative return code, which is no exit code.
    return daemon.returncode if daemon.returncode > 0 else 1


def command_umount(args) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    registration = read_registration(mountpoint)
    # A mount whose daemon ended is in the mount table, but os.path.ismount
    # cannot stat it (ENOTCONN); fusermount3 -u still removes it.
    filesystem = _filesystem_type(os.path.realpath(mountpoint))
    if filesystem is None and not os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is not mounted.")
    # Run as root, fusermount3 -u unmounts any filesystem, not only FUSE ones.
    if filesystem is not None and filesystem != OMEROFS_FILESYSTEM:
        raise UsageError(f"{mountpoint} is a {filesystem} mount, not an omerofs one; omerofs leaves it alone.")
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None:
        raise OmerofsError("fusermount3 not found; install the fuse3 package.")
    command = [fusermount, "-u"] + (["-z"] if args.lazy else []) + [mountpoint]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OmerofsError(f"Unmounting {mountpoint} failed: {result.stderr.strip()} "
                           "(close the files open there, or use --lazy).")
    if registration is not None:
        _wait_for_exit(registration["pid"])
    print(f"Unmounted {mountpoint}")
    return 0


def _filesystem_type(mountpoint: str, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """Return the type that the mount table gives the top mount at ``mountpoint``, None if unknown."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and _unescape_mount_path(fields[1]) == mountpoint:
            found = fields[2]
    return found


def _unescape_mount_path(path: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) that the kernel writes in mount tables."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), path)


def _wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + UMOUNT_EXIT_TIMEOUT
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.1)
    log.warning("the mount daemon (pid %d) is still running", pid)


def _running(pid: int) -> bool:
    """Return True if the process runs. A zombie that is not reaped yet counts as exited."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state follows the command name, which is in parentheses.
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def command_pin(args) -> int:
    import trio

    from .blocks import BlockCache
    from .pin import run_pin, summary_json, summary_text

    targets = [records.parse_target(t) for t in args.targets]
    if not args.server:
        raise UsageError("No server given; use -s HOST or -s tcp://HOST:PORT.")
    cache = BlockCache(Path(args.cache_dir).expanduser(), size_limit=args.cache_size)
    connection = _connect(args)
    try:
        _check_targets(connection, targets)
        server = connection.server_identity().database_uuid
        cache.set_record(f"address/{args.server}:{args.port}", server)
        summary = trio.run(run_pin, connection, cache, server, targets)
    finally:
        connection.close()
        cache.close()
    print(summary_json(summary) if args.json else summary_text(summary))
    return 0 if summary.ok else 10


def _check_targets(connection, targets) -> None:
    """Raise NotFound for target IDs that do not exist, so a mistyped ID is not an empty success."""
    for target in targets:
        missing = connection.missing_target_ids(target)
        if missing:
            raise NotFound(f"{target.kind} {', '.join(map(str, missing))} not found, or not readable by "
                           f"{connection.credentials.user or 'this session'}.")


def _cached_server(cache, args) -> str:
    server = cache.get_record(f"address/{args.server}:{args.port}")
    if server is None:
        raise UsageError(f"The cache contains no data from {args.server}; check -s and --cache-dir.")
    return server


def command_unpin(args) -> int:
    from .blocks import BlockCache
    from .pin import unpin

    targets = [records.parse_target(t) for t in args.targets]
    if not args.server:
        raise UsageError("No server given; use -s with the server that the targets were pinned from.")
    cache_dir = Path(args.cache_dir).expanduser()
    if not cache_dir.is_dir():
        raise UsageError(f"There is no cache in {cache_dir}; check --cache-dir.")
    cache = BlockCache(cache_dir, size_limit=args.cache_size)
    try:
        removed = unpin(cache, _cached_server(cache, args), targets)
    finally:
        cache.close()
    missing = [str(t) for t in targets if str(t) not in removed]
    for target in removed:
        print(f"unpinned {target}")
    if missing:
        raise UsageError(f"Not pinned: {', '.join(missing)}.")
    return 0


def command_status(args) -> int:
    from .status import cache_status, status_text

    status = cache_status(Path(args.cache_dir).expanduser())
    print(json.dumps(status, indent=2) if args.json else status_text(status))
    return 0


COMMANDS = {"mount": command_mount, "umount": command_umount, "pin": command_pin, "unpin": command_unpin,
            "status": command_status}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.command == "mount" and args.foreground):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("omerofs: %(levelname)s: %(message)s"))
        package = logging.getLogger("omerofs")
        package.addHandler(handler)
        package.setLevel(logging.WARNING)
        package.propagate = False
    try:
        return _run_command(args)
    except OmerofsError as error:
        print(f"omerofs: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("omerofs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, grep -q) stopped early. Point stdout at
        # /dev/null so that the interpreter's final flush fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run_command(args) -> int:
    try:
        return COMMANDS[args.command](args)
    except* KeyboardInterrupt:
        # Inside trio.run (a pin) Ctrl-C arrives wrapped in a nursery's group.
        raise KeyboardInterrupt from None


if __name__ == "__main__":
    sys.exit(main())
