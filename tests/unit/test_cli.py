"""Command-line misuse: a clear one-line message and the documented exit code, never a traceback."""

import subprocess

import pytest

from omerofs import cli
from omerofs.mount import MountOptions


@pytest.fixture
def mountpoint(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    return path


def run(capsys, *argv):
    """Run the command line in this process; argparse errors exit with SystemExit."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--ttl", "-1"), ("--ttl", "nan"), ("--ttl", "inf"), ("--ttl", "soon"),
    ("--cache-size", "1e999"), ("--cache-size", "inf"), ("--cache-size", "nan"), ("--cache-size", "0"),
    ("--block-size", "1e999"), ("--block-size", "3000"), ("--block-size", "32M"), ("--block-size", "1T"),
])
def test_mount_rejects_invalid_number(capsys, mountpoint, tmp_path, option, value):
    code, error = run(capsys, "mount", str(mountpoint), "-s", "tcp://127.0.0.1:1", "-u", "alice",
                      "--cache-dir", str(tmp_path / "cache"), option, value)
    assert code == 2
    assert "Traceback" not in error
    assert "invalid" in error.lower()


@pytest.mark.parametrize("server", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "ssl://host:65536"])
def test_mount_rejects_port_out_of_range(capsys, mountpoint, tmp_path, server):
    code, error = run(capsys, "mount", str(mountpoint), "-s", server, "-u", "alice",
                      "--cache-dir", str(tmp_path / "cache"))
    assert code == 2
    assert "Invalid port" in error


def test_mount_with_file_as_cache_dir_is_cache_error(capsys, mountpoint, tmp_path, monkeypatch):
    cache_dir = tmp_path / "a-file"
    cache_dir.write_text("not a directory")
    logins = []
    monkeypatch.setattr(cli, "_connect", lambda args: logins.append(args))
    code, error = run(capsys, "mount", str(mountpoint), "-s", "tcp://127.0.0.1:1", "-u", "alice",
                      "--cache-dir", str(cache_dir))
    assert code == 9
    assert "Traceback" not in error
    assert str(cache_dir) in error
    # The cache directory is checked before the log-in, so no session is left behind.
    assert logins == []


def test_status_of_missing_cache_dir_creates_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    cache_dir = tmp_path / "no-such-cache"
    code, _ = run(capsys, "status", "--cache-dir", str(cache_dir), "--json")
    assert code == 0
    assert not cache_dir.exists()


def test_unpin_with_missing_cache_dir_is_usage_error(capsys, tmp_path):
    cache_dir = tmp_path / "no-such-cache"
    code, error = run(capsys, "unpin", "Image:1", "-s", "tcp://127.0.0.1:1", "--cache-dir", str(cache_dir))
    assert code == 2
    assert "no cache" in error
    assert not cache_dir.exists()


def test_filesystem_type_reads_escaped_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /data/my\\040mount tmpfs rw 0 0\n"
                      "omerofs /data/my\\040mount fuse.omerofs ro 0 0\n"
                      "/dev/vda / ext4 rw 0 0\n")
    assert cli._filesystem_type("/data/my mount", mounts) == "fuse.omerofs"
    assert cli._filesystem_type("/", mounts) == "ext4"
    assert cli._filesystem_type("/elsewhere", mounts) is None


def test_umount_leaves_other_filesystems_alone(capsys, tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(cli.os.path, "ismount", lambda path: True)
    monkeypatch.setattr(cli, "_filesystem_type", lambda path: "ext4")
    monkeypatch.setattr(cli.subprocess, "run", lambda command, **kwargs: commands.append(command))
    code, error = run(capsys, "umount", str(tmp_path))
    assert code == 2
    assert "ext4" in error
    assert commands == []


def test_closed_output_pipe_exits_quietly(tmp_path):
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "omerofs.cli", "status", "--cache-dir", str(tmp_path / "c")],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                                env=dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "run")))
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert "Traceback" not in result.stderr


def test_mount_daemon_ended_by_signal_exits_1(capsys, tmp_path, monkeypatch):
    start_process = subprocess.Popen

    def start_daemon(command, **options):
        # A daemon that SIGTERM ends before it reports ready or an error.
        return start_process(["sh", "-c", "cat > /dev/null; kill -TERM $$"], **options)

    monkeypatch.setattr(cli.subprocess, "Popen", start_daemon)
    options = MountOptions(mountpoint=str(tmp_path), log_file=str(tmp_path / "mount.log"))
    # Not the negative return code of the signal, which the shell would show as 241.
    assert cli._start_daemon(options) == 1
    assert "the mount daemon exited" in capsys.readouterr().err
