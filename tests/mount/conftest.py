"""Fixtures for tests that mount omerofs for real against the OMERO test server."""

import os
from pathlib import Path

import pytest

from support import Mount, projection, run_mount


def pytest_collection_modifyitems(config, items):
    usable = os.geteuid() == 0 and os.path.exists("/dev/fuse")
    for item in items:
        if "tests/mount/" in str(item.fspath):
            item.add_marker(pytest.mark.mount)
            if not usable:
                item.add_marker(pytest.mark.skip(reason="mounting needs root and /dev/fuse"))


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
              server_args=None, name=None) -> Mount:
        path = tmp_path / (name or f"mnt{next(counter)}")
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


@pytest.fixture(scope="session")
def plate_image_ids(omero_server):
    image_ids = projection(omero_server, "alice", "select ws.image.id from WellSample ws")
    assert image_ids, "the sample repository has no plate images"
    return image_ids


@pytest.fixture(scope="session")
def private_image_ids(omero_server):
    """Images that alice can read and bob cannot."""
    alice = set(projection(omero_server, "alice", "select i.id from Image i"))
    bob = set(projection(omero_server, "bob", "select i.id from Image i"))
    private = sorted(alice - bob)
    assert private, "the sample repository has no image that only alice can read"
    return private


@pytest.fixture
def omero_login_dir(omero_server, omero_cli):
    """A session directory in which the unmodified `omero login` stored a session for alice."""
    result = omero_cli.login(omero_server)
    assert result.returncode == 0, result.stdout + result.stderr
    return omero_cli.session_dir
