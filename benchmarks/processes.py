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

from omerofs.testserver.process import CLI_USER, OmeroCli as SharedCli, OmeroServer, StartingServer, \
    ensure_cli_user, make_traversable, spawn_omero_server, wait_for_omero_server

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
OMEROFS = VENV_BIN / "omerofs"

# Users and password of the generator's repositories.
USER = "alice"
PASSWORD = "omero"

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


def start_servers(repositories: dict[str, Path], log_dir: Path, stack: contextlib.ExitStack
                  ) -> dict[str, OmeroServer]:
    """Start one test server per repository, all at once, and wait until each listens.

    A server that fails to start is started again, up to
    ``SERVER_START_ATTEMPTS`` times: another process on the machine may take
    its control port between ``free_port`` and the server's bind.
    """
    starting = {name: _spawn(data, log_dir, stack) for name, data in repositories.items()}
    servers = {}
    for name, data in repositories.items():
        for attempt in range(1, SERVER_START_ATTEMPTS + 1):
            try:
                servers[name] = wait_for_omero_server(starting[name], SERVER_START_TIMEOUT)
                break
            except RuntimeError as error:
                if attempt == SERVER_START_ATTEMPTS:
                    raise RuntimeError(f"the test server for {name} did not start: {error}") from None
                log.warning("test server %s did not start (attempt %d); starting it again", name, attempt)
                starting[name] = _spawn(data, log_dir, stack)
        log.info("test server %s listening on %s", name, servers[name].host)
    return servers


def _spawn(data: Path, log_dir: Path, stack: contextlib.ExitStack) -> StartingServer:
    starting = spawn_omero_server(log_dir, "--log-level", "WARNING", manifest=data / "manifest.yaml")
    stack.callback(_stop, starting.process)
    return starting


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("test server %d did not stop within 30 s; killing it", process.pid)
            process.kill()
            process.wait()


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

    def mount(self, server: OmeroServer, cache_dir: Path, *targets: str) -> Mount:
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
        user = pwd.getpwnam(ensure_cli_user())
        home = work_dir / "omero-home"
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, user.pw_uid, user.pw_gid)
        self.user = user
        self.cli = SharedCli(home, CLI_USER)
        # The user must be able to reach its home: the session directory's parents.
        make_traversable(self.cli.session_dir)
        self._logins: dict[str, float] = {}

    def directory(self, name: str) -> Path:
        """Return a fresh directory under the CLI's home that the CLI user owns."""
        path = self.cli.home / name
        path.mkdir()
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def login(self, server: OmeroServer) -> None:
        """Store a session for ``server``, so the timed commands need no log-in of their own.

        A stored session expires after ten idle minutes, and an expired one
        would make `omero` prompt, so a session older than
        ``LOGIN_REFRESH_SECONDS`` is replaced.
        """
        last = self._logins.get(server.host)
        if last is not None and time.monotonic() - last < LOGIN_REFRESH_SECONDS:
            return
        result = self.cli.run("login", "-q", "-s", server.host, "-u", USER, "-w", PASSWORD)
        if result.returncode != 0:
            raise RuntimeError(f"omero login to {server.host} failed: {result.stdout}{result.stderr}")
        self._logins[server.host] = time.monotonic()

    def run(self, *arguments: str) -> float:
        """Run ``omero ARGUMENTS``; return its wall time in seconds. Raise if it fails."""
        started = time.perf_counter()
        result = self.cli.run(*arguments, timeout=3600)
        seconds = time.perf_counter() - started
        if result.returncode != 0 or "Ignoring error" in result.stderr:
            raise RuntimeError(f"omero {' '.join(arguments)} failed ({result.returncode}): "
                               f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return seconds
