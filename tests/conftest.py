"""Fixtures shared by every test: log checks, OMERO test servers and the `omero` command line."""

import logging
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from omerofs.testserver.process import SAMPLE_MANIFEST, OmeroCli, OmeroServer, ensure_cli_user, start_omero_server


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_warnings: the test expects omerofs to log warnings")


@pytest.fixture(autouse=True)
def fail_on_unexpected_warnings(request, caplog):
    """Fail a test whose in-process omerofs code logged a warning it did not expect."""
    caplog.set_level(logging.DEBUG, logger="omerofs")
    yield
    if request.node.get_closest_marker("allow_warnings"):
        return
    unexpected = [r for r in caplog.get_records("call")
                  if r.levelno >= logging.WARNING and r.name.startswith("omerofs")]
    assert not unexpected, "unexpected warnings: " + "; ".join(r.getMessage() for r in unexpected)


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


@pytest.fixture(scope="session")
def cli_user():
    """The user that runs `omero`: the unprivileged test user as root, or None when not root."""
    if os.geteuid() != 0:
        return None
    return ensure_cli_user()


@pytest.fixture
def omero_cli(cli_user):
    """An `OmeroCli` with a fresh home directory that the CLI user owns."""
    home = Path(tempfile.mkdtemp(prefix="omerofs-cli-"))
    if cli_user is not None:
        entry = pwd.getpwnam(cli_user)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    yield OmeroCli(home, cli_user)
    shutil.rmtree(home, ignore_errors=True)
