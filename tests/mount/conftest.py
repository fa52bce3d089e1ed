"""Fixtures for tests that mount omerofs for real against the OMERO test server."""

import os
from pathlib import Path

import pytest

from support import Mount, run_mount, start_server


def pytest_collection_modifyitems(config, items):
    usable = os.geteuid() == 0 and os.path.exists("/dev/fuse")
    for item in items:
        if "tests/mount/" in str(item.fspath):
            item.add_marker(pytest.mark.mount)
            if not usable:
                item.add_marker(pytest.mark.skip(reason="mounting needs root and /dev/fuse"))


@pytest.fixture(scope="session")
def sample_server(tmp_path_factory):
    server = start_server(["--sample"], tmp_path_factory.mktemp("sample-server"))
    yield server
    server.stop()


@pytest.fixture
def runtime_dir(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def mounter(tmp_path, runtime_dir):
    """Return ``mount(server, *args, ...)``; unmounts and stops every daemon at teardown."""
    mounts: list[Mount] = []
    counter = iter(range(1000))

    def mount(server, *args, user="alice", password="omero", cache_dir=None, check=True, extra_env=None,
              server_args=None) -> Mount:
        path = tmp_path / f"mnt{next(counter)}"
        cache = Path(cache_dir) if cache_dir else tmp_path / "cache"
        if server_args is None:
            server_args = ["-s", server.host] + (["-u", user] if user else [])
        result = run_mount(path, cache, runtime_dir, [*args, *server_args], password=password,
                           extra_env=extra_env)
        mounted = result
        mounts.append(mounted)
        if check:
            assert result.result.returncode == 0, result.result.stderr + result.log_text()
            assert os.path.ismount(path)
        return mounted

    yield mount
    for mounted in mounts:
        mounted.unmount()
    for mounted in mounts:
        assert not os.path.ismount(mounted.path)


def projection(server, user, hql):
    """Run one HQL projection as ``user`` with omero-py and return the first column."""
    import omero.clients
    from omero.rtypes import unwrap

    client = omero.client(host=server.host, port=server.port)
    try:
        session = client.createSession(user, "omero")
        rows = session.getQueryService().projection(hql, None, {"omero.group": "-1"})
        return sorted(unwrap(row[0]) for row in rows)
    finally:
        client.closeSession()


@pytest.fixture(scope="session")
def plate_image_ids(sample_server):
    image_ids = projection(sample_server, "alice", "select ws.image.id from WellSample ws")
    assert image_ids, "the sample repository has no plate images"
    return image_ids


@pytest.fixture(scope="session")
def private_image_ids(sample_server):
    """Images that alice can read and bob cannot."""
    alice = set(projection(sample_server, "alice", "select i.id from Image i"))
    bob = set(projection(sample_server, "bob", "select i.id from Image i"))
    private = sorted(alice - bob)
    assert private, "the sample repository has no image that only alice can read"
    return private


@pytest.fixture
def omero_login_dir(sample_server, tmp_path):
    """A session directory in which the unmodified `omero login` stored a session for alice.

    `omero` refuses to run as root, so it runs as an unprivileged user.
    """
    import pwd
    import subprocess
    import sys

    user = "omerofs-test"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", user], check=True)
    home = tmp_path / "omero-home"
    home.mkdir()
    entry = pwd.getpwnam(user)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    for directory in [tmp_path, *tmp_path.parents]:
        os.chmod(directory, os.stat(directory).st_mode | 0o001)
    omero = Path(sys.executable).parent / "omero"
    result = subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i", f"HOME={home}", f"OMERO_SESSIONDIR={home}/sessions",
         f"PATH={omero.parent}:/usr/bin:/bin", str(omero), "login", "-s", sample_server.host, "-u", "alice",
         "-w", "omero"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return home / "sessions"
