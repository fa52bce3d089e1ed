"""The processes a benchmark run starts: test servers, mounts and the ``omero`` command.

Servers and mounts are registered with the run's ``ExitStack`` as they
start, so an error or Ctrl-C still unmounts every mount and stops every
server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omerofs.testserver.control import Control
from omerofs.testserver.process import free_port

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
OMEROFS = VENV_BIN / "omerofs"
OMERO = VENV_BIN / "omero"

# Users and password of the generator's repositories.
USER = "alice"
PASSWORD = "omero"

# `omero` refuses to run as root, so it runs as this unprivileged system user.
CLI_USER = "omerofs-test"

# A stored `omero login` session is used for at most this long (seconds):
# half of the test server's ten-minute idle time-out, so it never expires
# between the log-in and the timed command.
LOGIN_REFRESH_SECONDS = 300.0

# Loading a manifest of a thousand images and starting Ice takes a few
# seconds; this leaves room for a busy machine.
SERVER_START_TIMEOUT = 120.0

# Starts of a test server before the run gives up on it.
SERVER_START_ATTEMPTS = 3

# `omerofs mount` itself waits up to 60 s for its daemon.
MOUNT_TIMEOUT = 120.0


def drop_caches() -> None:
    """Write back dirty pages, then empty the kernel's page, dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")


def peak_rss_bytes(pid: int) -> int:
    """Return a running process's peak resident memory (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM line")


def wait4_timed(command: list[str], env: dict | None = None, cwd: str | None = None
                ) -> tuple[float, int, int, bytes, bytes]:
    """Run ``command``; return (seconds, peak resident bytes, exit status, stdout, stderr).

    The peak comes from ``os.wait4`` on this very child, so it covers its
    whole life without sampling.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               env=env, cwd=cwd)
    # Both pipes are read while the child runs, so a child that writes much
    # output cannot fill a pipe and block.
    out, err = _drain(process)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss * 1024, process.returncode, out, err


def _drain(process: subprocess.Popen) -> tuple[bytes, bytes]:
    import threading

    chunks: dict[str, bytes] = {}

    def read(name: str, pipe) -> None:
        chunks[name] = pipe.read()
        pipe.close()

    readers = [threading.Thread(target=read, args=("out", process.stdout)),
               threading.Thread(target=read, args=("err", process.stderr))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    return chunks["out"], chunks["err"]


@dataclass
class Server:
    """A running ``python -m omerofs.testserver``."""

    name: str
    process: subprocess.Popen
    port: int
    control_port: int
    log_path: Path

    @property
    def host(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def control(self) -> Control:
        return Control(self.control_port)

    def counters(self) -> dict[str, int]:
        return self.control.counters()

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("test server %s did not stop within 30 s; killing it", self.name)
            self.process.kill()
            self.process.wait()


def start_servers(repositories: dict[str, Path], log_dir: Path, stack: contextlib.ExitStack) -> dict[str, Server]:
    """Start one test server per repository, all at once, and wait until each listens.

    A server that exits before it listens is started again on new ports,
    up to ``SERVER_START_ATTEMPTS`` times: another process on the machine
    may take a port between ``free_port`` and the server's bind.
    """
    servers = {name: _spawn_server(name, data, log_dir, stack) for name, data in repositories.items()}
    for name, data in repositories.items():
        for attempt in range(1, SERVER_START_ATTEMPTS + 1):
            if _wait_listening(servers[name]):
                break
            servers[name].stop()
            log_tail = servers[name].log_path.read_text()[-2000:]
            if attempt == SERVER_START_ATTEMPTS:
                raise RuntimeError(f"the test server for {name} did not start: {log_tail}")
            last_line = (log_tail.strip().splitlines() or ["no log"])[-1]
            log.warning("test server %s did not start (attempt %d); starting it on new ports: %s",
                        name, attempt, last_line)
            servers[name] = _spawn_server(name, data, log_dir, stack)
        log.info("test server %s listening on %s", name, servers[name].host)
    return servers


def _spawn_server(name: str, data: Path, log_dir: Path, stack: contextlib.ExitStack) -> Server:
    port, control_port = free_port(), free_port()
    log_path = log_dir / f"testserver-{name}.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "omerofs.testserver", "--data", str(data), "--port", str(port),
             "--control-port", str(control_port), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=log_file, text=True)
    server = Server(name, process, port, control_port, log_path)
    stack.callback(server.stop)
    return server


def _wait_listening(server: Server) -> bool:
    """Wait for the server's ``listening on`` line; return False if it exits first."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        line = server.process.stdout.readline()
        if line.startswith("listening on"):
            server.process.stdout.close()
            return True
        if not line and server.process.poll() is not None:
            return False
    return False


@dataclass
class Mount:
    """A running ``omerofs mount`` and the daemon behind it."""

    path: Path
    cache_dir: Path
    pid: int
    log_file: str

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.pid)

    def unmount(self) -> None:
        """Unmount and wait for the daemon to end.

        This is what ``omerofs umount`` does, without its wait. That wait
        counts a zombie daemon as running, and the daemon's parent (the
        ``omerofs mount`` command) has exited, so the zombie waits for init
        to reap it, which adds a second or two to every unmount.
        """
        if os.path.ismount(self.path):
            result = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True,
                                    timeout=60)
            if result.returncode != 0 and os.path.ismount(self.path):
                log.warning("fusermount3 -u %s failed (%s); detaching lazily", self.path, result.stderr.strip())
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(self.pid):
            time.sleep(0.01)
        if _alive(self.pid):
            log.warning("mount daemon %d still runs after the unmount; killing it", self.pid)
            os.kill(self.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # A zombie has ended; only its exit status is left.
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


class Mounter:
    """Starts mounts under one working directory and unmounts them at the end of the run."""

    def __init__(self, work_dir: Path, stack: contextlib.ExitStack):
        self.work_dir = work_dir
        self.runtime = work_dir / "run"
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.stack = stack
        self._count = 0

    def mount(self, server: Server, cache_dir: Path, *targets: str) -> Mount:
        self._count += 1
        path = self.work_dir / f"mnt{self._count}"
        path.mkdir()
        # No stored `omero login` session: the mount logs in with the password.
        env = dict(os.environ, XDG_RUNTIME_DIR=str(self.runtime), OMERO_SESSIONDIR=str(self.runtime / "no-sessions"),
                   OMERO_PASSWORD=PASSWORD)
        result = subprocess.run(
            [str(OMEROFS), "mount", str(path), *targets, "-s", server.host, "-u", USER, "--cache-dir", str(cache_dir)],
            env=env, capture_output=True, text=True, timeout=MOUNT_TIMEOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0 or not os.path.ismount(path):
            raise RuntimeError(f"omerofs mount failed ({result.returncode}): {result.stderr.strip()}")
        registration = self._registration(path)
        mount = Mount(path, cache_dir, registration["pid"], registration["log_file"])
        self.stack.callback(mount.unmount)
        return mount

    def _registration(self, path: Path) -> dict:
        for candidate in (self.runtime / "omerofs").glob("mount-*.json"):
            content = json.loads(candidate.read_text())
            if content.get("mountpoint") == os.path.realpath(path):
                return content
        raise RuntimeError(f"the mount at {path} did not register its daemon in {self.runtime / 'omerofs'}")


class OmeroCli:
    """The unmodified ``omero`` command, run as an unprivileged user with its own home."""

    def __init__(self, work_dir: Path):
        self.user = _ensure_user(CLI_USER)
        self.home = work_dir / "omero-home"
        self._logins: dict[str, float] = {}
        self.home.mkdir(parents=True, exist_ok=True)
        os.chown(self.home, self.user.pw_uid, self.user.pw_gid)
        # The user must be able to reach its home and the venv's interpreter.
        for directory in (work_dir, *work_dir.parents, *VENV_BIN.parents):
            mode = os.stat(directory).st_mode
            if not mode & 0o001:
                log.info("adding o+x to %s so that %s can reach it", directory, CLI_USER)
                os.chmod(directory, mode | 0o001)

    def directory(self, name: str) -> Path:
        """Return a fresh directory under the CLI's home that the CLI user owns."""
        path = self.home / name
        path.mkdir()
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def command(self, *arguments: str) -> list[str]:
        return ["runuser", "-u", CLI_USER, "--", "env", "-i", f"HOME={self.home}",
                f"OMERO_SESSIONDIR={self.home}/sessions", f"PATH={VENV_BIN}:/usr/bin:/bin", str(OMERO), *arguments]

    def login(self, server: Server) -> None:
        """Store a session for ``server``, so the timed commands need no log-in of their own.

        A stored session expires after ten idle minutes, and an expired one
        would make `omero` prompt, so a session older than
        ``LOGIN_REFRESH_SECONDS`` is replaced.
        """
        last = self._logins.get(server.host)
        if last is not None and time.monotonic() - last < LOGIN_REFRESH_SECONDS:
            return
        result = subprocess.run(self.command("login", "-q", "-s", server.host, "-u", USER, "-w", PASSWORD),
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"omero login to {server.host} failed: {result.stdout}{result.stderr}")
        self._logins[server.host] = time.monotonic()

    def run(self, *arguments: str) -> float:
        """Run ``omero ARGUMENTS``; return its wall time in seconds. Raise if it fails."""
        started = time.perf_counter()
        result = subprocess.run(self.command(*arguments), capture_output=True, text=True, timeout=3600,
                                stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        if result.returncode != 0 or "Ignoring error" in result.stderr:
            raise RuntimeError(f"omero {' '.join(arguments)} failed ({result.returncode}): "
                               f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return seconds


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        log.info("creating the system user %s for the omero command", name)
        subprocess.run(["useradd", "--system", "--create-home", name], check=True)
        return pwd.getpwnam(name)
