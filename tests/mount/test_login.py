"""Logging in: session keys, sessions stored by `omero login`, and secrets kept out of sight."""

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from omerofs.errors import ServerUnavailable



def new_session_key(server, user="alice", password="omero") -> str:
    """Create a session with omero-py and leave it open, as a user's other tool would."""
    import omero.clients

    client = omero.client(host=server.host, port=server.port)
    client.createSession(user, password)
    key = client.getSessionId()
    client.getSession().detachOnDestroy()
    client.closeSession()
    return key


def test_mount_with_session_key(omero_server, mounter):
    key = new_session_key(omero_server)
    mount = mounter(omero_server, "-k", key, user=None, password=None)
    assert os.listdir(mount.path / "Image")


def test_invalid_session_key_is_login_error(omero_server, mounter):
    mount = mounter(omero_server, "-k", "00000000-0000-0000-0000-000000000000", user=None, password=None,
                    check=False)
    assert mount.result.returncode == 3
    assert "Traceback" not in mount.result.stderr


def test_mount_reuses_omero_login_session(omero_server, mounter, omero_login_dir):
    mount = mounter(omero_server, user="alice", password=None,
                    extra_env={"OMERO_SESSIONDIR": str(omero_login_dir)})
    assert os.listdir(mount.path / "Image")


def test_no_password_without_tty_is_usage_error(omero_server, mounter):
    mount = mounter(omero_server, password=None, check=False)
    assert mount.result.returncode == 2
    assert "OMERO_PASSWORD" in mount.result.stderr


def test_password_stays_out_of_ps_environment_and_log(mounter, tmp_path, omero_server_factory):
    password = "Zq7-unusual-Secret"
    manifest = tmp_path / "manifest.json"
    subprocess.run([os.sys.executable, "-m", "omerofs.testserver.generate", str(tmp_path / "repo"), "--images", "3",
                    "--big-files", "0"], check=True, capture_output=True)
    content = json.loads((tmp_path / "repo" / "manifest.yaml").read_text())
    for user in content["users"]:
        user["password"] = password
    manifest.write_text(json.dumps(content))
    (tmp_path / "repo" / "manifest.yaml").write_text(json.dumps(content))

    server = omero_server_factory(manifest=tmp_path / "repo" / "manifest.yaml")
    try:
        mount = mounter(server, password=password, extra_env={"OMEROFS_TEST_MARK": "1"})
        assert os.listdir(mount.path / "Image")
        processes = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        assert password not in processes
        environment = Path(f"/proc/{mount.pid}/environ").read_bytes()
        assert password.encode() not in environment
        assert b"OMEROFS_TEST_MARK" in environment
        cache_files = [p for p in mount.cache_dir.rglob("*") if p.is_file()]
        assert cache_files
        for path in cache_files:
            assert password.encode() not in path.read_bytes(), path
    finally:
        server.stop()


def test_umount_closes_the_session_omerofs_created(omero_server, mounter):
    mount = mounter(omero_server)
    assert os.listdir(mount.path / "Image")
    omero_server.control.reset()
    mount.unmount()
    assert omero_server.control.counters().get("ISession.closeSession", 0) >= 1


def test_umount_leaves_a_given_session_open(omero_server, mounter):
    import omero.clients

    key = new_session_key(omero_server)
    mount = mounter(omero_server, "-k", key, user=None, password=None)
    assert os.listdir(mount.path / "Image")
    mount.unmount()
    client = omero.client(host=omero_server.host, port=omero_server.port)
    try:
        client.joinSession(key)
    finally:
        client.closeSession()


@pytest.mark.allow_warnings
def test_expired_session_is_created_again(omero_server_factory, mounter):
    server = omero_server_factory()
    mount = mounter(server)
    image_ids = sorted(os.listdir(mount.path / "Image"), key=int)
    server.control.set(expire_sessions=True)

    # Nothing below was read before the expiry, so each needs the server.
    assert os.listdir(mount.path / "Image" / image_ids[-1] / "Metadata")
    for name in os.listdir(mount.path / "Image" / image_ids[0] / "Binary"):
        with open(mount.path / "Image" / image_ids[0] / "Binary" / name, "rb") as handle:
            assert handle.read(100)
    assert "reconnecting" in mount.log_text()


@pytest.mark.allow_warnings
def test_expired_given_session_fails_fast_and_clearly(omero_server_factory, mounter):
    server = omero_server_factory()
    key = new_session_key(server)
    mount = mounter(server, "-k", key, user=None, password=None)
    image_ids = sorted(os.listdir(mount.path / "Image"), key=int)
    server.control.set(expire_sessions=True)

    started = time.monotonic()
    for image_id in image_ids[:4]:
        with pytest.raises(OSError) as raised:
            os.listdir(mount.path / "Image" / image_id / "Roi")
        assert raised.value.errno == errno.EIO
    # Retrying a session that cannot come back would make each request wait.
    assert time.monotonic() - started < 5
    assert mount.log_text().count("no password is available to log in again") == 1


@pytest.mark.parametrize("group, message", [("999", "is not a member of group"),
                                            ("no-such-group", "not found on the server")])
def test_unusable_group_is_usage_error(omero_server, mounter, group, message):
    mount = mounter(omero_server, "-g", group, check=False)
    assert mount.result.returncode == 2
    assert message in mount.result.stderr
    assert "Traceback" not in mount.result.stderr
    # The session the log-in created is ended, not left to the interpreter's exit.
    assert "communicator not destroyed" not in mount.result.stderr
    assert not os.path.ismount(mount.path)


def test_member_group_mounts(omero_server, mounter):
    mount = mounter(omero_server, "-g", "alice-private")
    assert os.listdir(mount.path / "Image")


def test_plain_address_to_tcp_server_suggests_tcp(omero_server, mounter):
    # The test server takes plain TCP, and HOST:PORT means SSL.
    mount = mounter(omero_server, check=False, server_args=["-s", f"127.0.0.1:{omero_server.port}", "-u", "alice"])
    assert mount.result.returncode == ServerUnavailable.exit_code
    assert "tcp://HOST:PORT" in mount.result.stderr
    assert "Traceback" not in mount.result.stderr
