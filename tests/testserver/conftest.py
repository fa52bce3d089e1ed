"""Fixtures for tests against the OMERO test server, run as a real subprocess.

Generic on purpose, so that mount tests can use them too:

- `omero_server`: the sample repository, served for the whole test session.
- `omero_server_factory`: starts more servers with other options (a short
  session time-out, knobs set at start); each one is stopped at teardown.
- `omero_cli`: runs the unmodified `omero` command line. `omero` refuses to run
  as root, so as root the command runs as the unprivileged user
  `omerofs-test`, created if missing, with its own HOME and OMERO_SESSIONDIR.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from omerofs.testserver.control import Control

log = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MANIFEST = REPOSITORY_ROOT / "omerofs" / "testserver" / "sample" / "manifest.yaml"
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

    line = _read_line(process, SERVER_START_TIMEOUT)
    if not line.startswith("listening on tcp://127.0.0.1:"):
        process.kill()
        process.wait()
        raise RuntimeError(
            f"the test server did not start (stdout {line!r}); log:\n{log_path.read_text()[-3000:]}"
        )
    port = int(line.rsplit(":", 1)[1])
    return OmeroServer(process, port, control_port, manifest, log_path)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """Return the first line the process prints, or "" if it prints none in time."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return ""
    return process.stdout.readline().strip()


@pytest.fixture(scope="session")
def omero_server(tmp_path_factory):
    """The sample repository, served for the whole test session."""
    server = start_omero_server(tmp_path_factory.mktemp("omero-server"))
    yield server
    server.stop()


@pytest.fixture
def omero_server_factory(tmp_path):
    """Return `start(*args, manifest=...)`, which starts one more server for this test."""
    servers: list[OmeroServer] = []

    def start(*args: str, manifest: Path = SAMPLE_MANIFEST) -> OmeroServer:
        server = start_omero_server(tmp_path, *args, manifest=manifest)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def reset_knobs(omero_server):
    """Set every knob of the shared server back to off after the test."""
    yield omero_server.control
    omero_server.control.set(
        latency_ms=0, bandwidth=None, drop_after_reads=None, fail_next_read=False,
        corrupt_reads=False, refuse_connections=False,
    )


# The `omero` command line as an unprivileged user


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


def _ensure_cli_user() -> str:
    try:
        pwd.getpwnam(CLI_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", CLI_USER], check=True)
        log.info("created the user %s for running the omero command line", CLI_USER)
    _make_traversable(Path(sys.executable).resolve())
    _make_traversable(Path(sys.prefix).resolve() / "bin")
    return CLI_USER


def _make_traversable(path: Path) -> None:
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


@pytest.fixture(scope="session")
def cli_user():
    """The user that runs `omero`: the unprivileged test user as root, or None when not root."""
    if os.geteuid() != 0:
        return None
    return _ensure_cli_user()


@pytest.fixture
def omero_cli(cli_user):
    """An `OmeroCli` with a fresh home directory that the CLI user owns."""
    home = Path(tempfile.mkdtemp(prefix="omerofs-cli-"))
    if cli_user is not None:
        entry = pwd.getpwnam(cli_user)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    yield OmeroCli(home, cli_user)
    shutil.rmtree(home, ignore_errors=True)


# Expected objects, read straight from the manifest's YAML


class ManifestView:
    """Expected objects of a manifest, read independently of the server's own loader."""

    def __init__(self, manifest_path: Path):
        self.path = manifest_path
        self.data = yaml.safe_load(manifest_path.read_text())
        defaults = self.data.get("defaults", {})
        self.default_owner = defaults.get("owner")
        self.default_group = defaults.get("group")
        self.groups = {group["name"]: group for group in self.data.get("groups", [])}
        self.users = {user["name"]: user for user in self.data.get("users", [])}

    def objects(self, section: str) -> list[dict]:
        """Entries of a top-level section, with `owner` and `group` filled in."""
        return [self._with_defaults(entry) for entry in self.data.get(section, [])]

    def _with_defaults(self, entry: dict, parent: dict | None = None) -> dict:
        parent = parent or {}
        return {
            **entry,
            "owner": entry.get("owner", parent.get("owner", self.default_owner)),
            "group": entry.get("group", parent.get("group", self.default_group)),
        }

    def original_files(self) -> dict[int, dict]:
        """Every original file except repository descriptions: id -> entry with
        `name`, `source` (absolute Path), `path`, `fileset` and `template_prefix`."""
        files = {}
        for entry in self.data.get("files", []):
            files[entry["id"]] = self._file(self._with_defaults(entry), None, "")
        for fileset in self.objects("filesets"):
            for entry in fileset["files"]:
                files[entry["id"]] = self._file(
                    self._with_defaults(entry, fileset), fileset["id"], fileset["templatePrefix"]
                )
        return files

    def _file(self, entry: dict, fileset_id: int | None, template_prefix: str) -> dict:
        source = self.path.parent / entry["source"]
        if fileset_id is None:
            path = entry.get("path", "/")
        else:
            subdir = entry.get("subdir")
            path = template_prefix + (subdir + "/" if subdir else "")
        return {
            **entry,
            "name": entry.get("name", source.name),
            "source": source,
            "path": path,
            "fileset": fileset_id,
            "template_prefix": template_prefix,
        }

    def readable(self, entry: dict, user: str, group: str | None = None) -> bool:
        """Whether `user` reads `entry` in `group` (None: all of the user's groups)."""
        record = self.users[user]
        if group is not None and entry["group"] != group:
            return False
        if entry["group"] not in record["groups"]:
            return False
        permissions = self.groups[entry["group"]]["permissions"]
        if permissions in ("private", "rw----"):
            return entry["owner"] == user or entry["group"] in record.get("leader_of", [])
        return True

    def readable_ids(self, section: str, user: str, group: str | None = None) -> set[int]:
        return {entry["id"] for entry in self.objects(section) if self.readable(entry, user, group)}


@pytest.fixture(scope="session")
def sample_manifest() -> ManifestView:
    return ManifestView(SAMPLE_MANIFEST)
