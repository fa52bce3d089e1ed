"""Start and stop OMERO test server processes, and run the `omero` command line.

Shared by the test suite and the benchmarks: a server started here is a
real subprocess on a loopback port that prints its `listening on` line
when ready.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from .control import Control

log = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MANIFEST = Path(__file__).resolve().parent / "sample" / "manifest.yaml"
VENV_BIN = Path(sys.executable).parent
OMERO_CLI = VENV_BIN / "omero"
CLI_USER = "omerofs-test"

# Loading and hashing the sample repository takes a few seconds; a large
# generated repository takes longer.
SERVER_START_TIMEOUT = 120.0
SERVER_STOP_TIMEOUT = 15.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class OmeroServer:
    """A running test server process."""

    process: subprocess.Popen
    port: int
    control_port: int
    manifest_path: Path
    log_path: Path

    @property
    def host(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def control(self) -> Control:
        return Control(self.control_port)

    @property
    def manifest(self) -> dict:
        """The server's manifest, parsed as plain YAML."""
        return yaml.safe_load(self.manifest_path.read_text())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Stop the server with SIGTERM (SIGKILL if it hangs); return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_omero_server(log_dir: Path, *args: str, manifest: Path = SAMPLE_MANIFEST) -> OmeroServer:
    """Start `python -m omerofs.testserver` and wait for its `listening on` line."""
    return wait_for_omero_server(spawn_omero_server(log_dir, *args, manifest=manifest))


@dataclasses.dataclass
class StartingServer:
    """A test server process that has not yet printed its `listening on` line."""

    process: subprocess.Popen
    control_port: int
    manifest_path: Path
    log_path: Path


def spawn_omero_server(log_dir: Path, *args: str, manifest: Path = SAMPLE_MANIFEST) -> StartingServer:
    """Start `python -m omerofs.testserver` without waiting, so that several can start at once."""
    control_port = free_port()
    log_path = log_dir / f"testserver-{control_port}.log"
    source = ["--sample"] if manifest == SAMPLE_MANIFEST else ["--data", str(manifest)]
    command = [
        sys.executable, "-m", "omerofs.testserver", *source,
        "--port", "0", "--control-port", str(control_port), *args,
    ]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPOSITORY_ROOT
        )
    return StartingServer(process, control_port, manifest, log_path)


def wait_for_omero_server(starting: StartingServer, timeout: float = SERVER_START_TIMEOUT) -> OmeroServer:
    """Wait for a spawned server's `listening on` line; raise RuntimeError, with its log, if it fails."""
    process = starting.process
    line = read_first_line(process, timeout)
    if not line.startswith("listening on tcp://127.0.0.1:"):
        process.kill()
        process.wait()
        raise RuntimeError(
            f"the test server did not start (stdout {line!r}); log:\n{starting.log_path.read_text()[-3000:]}"
        )
    port = int(line.rsplit(":", 1)[1])
    return OmeroServer(process, port, starting.control_port, starting.manifest_path, starting.log_path)


def read_first_line(process: subprocess.Popen, timeout: float) -> str:
    """Return the first line the process prints, or "" if it prints none in time."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return ""
    return process.stdout.readline().strip()


@dataclasses.dataclass
class OmeroCli:
    """Runs `omero` with a home and session directory of its own."""

    home: Path
    user: str | None

    @property
    def session_dir(self) -> Path:
        return self.home / "sessions"

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        env = {
            "PATH": f"{VENV_BIN}:/usr/bin:/bin",
            "HOME": str(self.home),
            "OMERO_SESSIONDIR": str(self.session_dir),
            "LANG": "C.UTF-8",
        }
        command = [str(OMERO_CLI), *args]
        if self.user is not None:
            env_args = [f"{key}={value}" for key, value in env.items()]
            command = ["runuser", "-u", self.user, "--", "env", "-i", *env_args, *command]
            env = None
        return subprocess.run(
            command, env=env, cwd=self.home, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def login(self, server: OmeroServer, user: str = "alice", password: str = "omero"):
        return self.run("login", "-s", server.host, "-u", user, "-w", password)


def ensure_cli_user() -> str:
    try:
        pwd.getpwnam(CLI_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", CLI_USER], check=True)
        log.info("created the user %s for running the omero command line", CLI_USER)
    make_traversable(Path(sys.executable).resolve())
    make_traversable(Path(sys.prefix).resolve() / "bin")
    return CLI_USER


def make_traversable(path: Path) -> None:
    """Let other users reach `path` by adding the search bit to directories that lack it.

    The venv's interpreter may live under a directory only root can enter (such
    as /root/.pyenv); the unprivileged user has to be able to run it. Only the
    search bit is added, so the directories stay unlistable.
    """
    for directory in reversed(path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(directory, mode | stat.S_IXOTH)
            log.warning("added o+x to %s so that %s can run the venv", directory, CLI_USER)
