"""What a user sees when something is missing, forbidden, broken or read-only."""

import errno
import os
import signal
import subprocess
import time

import pytest



def first_image_with_binary(mount_path):
    for name in sorted(os.listdir(mount_path / "Image"), key=int):
        binary = mount_path / "Image" / name / "Binary"
        files = [f for f in sorted(os.listdir(binary)) if (binary / f).is_symlink()]
        if files:
            return name, binary / files[0]
    raise AssertionError("no image with binary files")


@pytest.mark.parametrize("path", ["Image/987654321", "Fileset/987654321", "Repository/987654321",
                                  "Repository/Legacy/987654321", "Image/abc", "Image/0012", "Nothing",
                                  "Image/99999999999999999999", "Annotation/99999999999999999999",
                                  "Image/²"])
def test_unknown_object_is_enoent(omero_server, mounter, path):
    mount = mounter(omero_server)
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path / path)


def test_writes_fail_with_erofs(omero_server, mounter):
    mount = mounter(omero_server)
    _, binary = first_image_with_binary(mount.path)
    attempts = [
        lambda: open(os.path.realpath(binary), "r+b"),
        lambda: open(mount.path / "Image" / "new-file", "w"),
        lambda: os.mkdir(mount.path / "Image" / "new-dir"),
        lambda: os.unlink(os.path.realpath(binary)),
        lambda: os.rename(os.path.realpath(binary), os.path.realpath(binary) + ".moved"),
        lambda: os.chmod(os.path.realpath(binary), 0o777),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS


def test_reads_fail_with_eio_when_server_stops(omero_server_factory, mounter):
    server = omero_server_factory()
    try:
        mount = mounter(server)
        _, binary = first_image_with_binary(mount.path)
        target = os.path.realpath(binary)
    finally:
        server.stop()
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        with open(target, "rb") as handle:
            handle.read(4096)
    assert raised.value.errno == errno.EIO
    assert time.monotonic() - started < 60


def test_failing_server_read_is_eio_then_recovers(omero_server, mounter):
    mount = mounter(omero_server)
    _, binary = first_image_with_binary(mount.path)
    target = os.path.realpath(binary)
    # O_DIRECT makes one read one FUSE request: through the page cache, the
    # kernel retries a failed read-ahead with a second request of its own.
    descriptor = os.open(target, os.O_RDONLY | os.O_DIRECT)
    omero_server.control.set(fail_next_read=True)
    try:
        with pytest.raises(OSError) as raised:
            os.read(descriptor, 4096)
        assert raised.value.errno == errno.EIO
        assert len(os.read(descriptor, 4096)) == min(4096, os.path.getsize(target))
    finally:
        os.close(descriptor)
        omero_server.control.set(fail_next_read=False)


def test_restricted_plate_file_is_eacces(omero_server, mounter, plate_image_ids):
    mount = mounter(omero_server)
    image_id = plate_image_ids[0]
    binary = mount.path / "Image" / str(image_id) / "Binary"
    names = sorted(os.listdir(binary))
    assert names
    with pytest.raises(PermissionError):
        with open(os.path.realpath(binary / names[0]), "rb") as handle:
            handle.read(10)
    assert f"OriginalFile" in mount.log_text()


def test_restricted_read_logs_one_line(omero_server, mounter, plate_image_ids):
    mount = mounter(omero_server)
    binary = mount.path / "Image" / str(plate_image_ids[0]) / "Binary"
    real = os.path.realpath(binary / sorted(os.listdir(binary))[0])
    for _ in range(3):
        with pytest.raises(PermissionError):
            with open(real, "rb") as handle:
                handle.read()
    # The kernel retries a failed read; one user's attempts make one line.
    assert mount.log_text().count("restricts downloads") == 1


def test_other_groups_private_image_is_enoent(omero_server, mounter, private_image_ids):
    mount = mounter(omero_server, user="bob")
    for image_id in private_image_ids:
        assert not (mount.path / "Image" / str(image_id)).exists()


def test_bad_password_is_clear_error(omero_server, mounter):
    mount = mounter(omero_server, password="wrong", check=False)
    assert mount.result.returncode == 3
    assert "Login failed" in mount.result.stderr
    assert "Traceback" not in mount.result.stderr
    assert not os.path.ismount(mount.path)


def test_unreachable_server_is_clear_error(mounter, tmp_path):
    from omerofs.testserver.process import free_port

    class Nowhere:
        host = f"tcp://127.0.0.1:{free_port()}"

    started = time.monotonic()
    mount = mounter(Nowhere, check=False)
    assert mount.result.returncode == 4
    assert "Traceback" not in mount.result.stderr
    assert time.monotonic() - started < 60


def test_mountpoint_errors_are_usage_errors(omero_server, tmp_path):
    from support import OMEROFS

    for path in [tmp_path / "missing", tmp_path / "file"]:
        if path.name == "file":
            path.write_text("x")
        result = subprocess.run([OMEROFS, "mount", str(path), "-s", omero_server.host, "-u", "alice"],
                                capture_output=True, text=True, env=dict(os.environ, OMERO_PASSWORD="omero"))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr


@pytest.mark.allow_warnings
def test_corrupt_bytes_leave_the_page_cache(omero_server, mounter, reset_knobs):
    mount = mounter(omero_server)
    _, binary = first_image_with_binary(mount.path)
    target = os.path.realpath(binary)
    expected_size = os.path.getsize(target)

    reset_knobs.set(corrupt_reads=True)
    with open(target, "rb") as handle:
        corrupt = handle.read()
    deadline = time.monotonic() + 30
    while "does not match the server's" not in mount.log_text():
        assert time.monotonic() < deadline, "the checksum mismatch was never logged"
        time.sleep(0.2)
    reset_knobs.set(corrupt_reads=False)

    # The kernel keeps an immutable file's pages across opens; the mismatch
    # must drop them, or the corrupt bytes would be served until unmount.
    with open(target, "rb") as handle:
        again = handle.read()
    assert len(again) == expected_size
    assert again != corrupt
    assert again[0] == corrupt[0] ^ 0xFF


@pytest.mark.allow_warnings
def test_failed_read_of_many_blocks_is_eio_not_a_bug(omero_server, mounter, reset_knobs):
    mount = mounter(omero_server, "--block-size", "4K")
    _, binary = first_image_with_binary(mount.path)
    descriptor = os.open(os.path.realpath(binary), os.O_RDONLY | os.O_DIRECT)
    reset_knobs.set(fail_next_read=True)
    try:
        with pytest.raises(OSError) as raised:
            os.read(descriptor, 64 * 1024)
    finally:
        os.close(descriptor)
    assert raised.value.errno == errno.EIO
    log_text = mount.log_text()
    assert "failed unexpectedly" not in log_text
    assert "Traceback" not in log_text


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MiB tmpfs, far below the cache's free-space floor, filled up once the test is mounted."""
    path = tmp_path / "small-disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.allow_warnings
def test_full_cache_disk_still_serves_reads(full_disk, omero_server, mounter):
    from support import source_files

    mount = mounter(omero_server, cache_dir=full_disk / "cache")
    with open(full_disk / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass

    sources = source_files()
    _, binary = first_image_with_binary(mount.path)
    real = os.path.realpath(binary)
    relative = os.path.relpath(real, mount.path / "Repository").split("/", 1)[1]
    with open(real, "rb") as handle:
        assert handle.read() == sources[relative].read_bytes()
    # Listings persist their records for offline use; a full disk must not fail them.
    for image_id in os.listdir(mount.path / "Image"):
        os.listdir(mount.path / "Image" / image_id / "Annotation")
    log_text = mount.log_text()
    assert "Cannot write to the cache" in log_text
    assert "Traceback" not in log_text


def test_two_mounts_at_once_mount_once(omero_server, tmp_path, runtime_dir):
    from support import OMEROFS, Mount

    path = tmp_path / "mnt"
    path.mkdir()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir), OMERO_SESSIONDIR=str(runtime_dir / "no-sessions"),
               OMERO_PASSWORD="omero")
    commands = [[OMEROFS, "mount", str(path), "-s", omero_server.host, "-u", "alice",
                 "--cache-dir", str(tmp_path / f"cache{i}")] for i in range(2)]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL) for command in commands]
    results = [process.communicate(timeout=120) for process in processes]
    try:
        codes = sorted(process.returncode for process in processes)
        mounts = [line for line in open("/proc/mounts") if f" {path} " in line]
        assert codes == [0, 2], results
        assert len(mounts) == 1
        loser = results[[p.returncode for p in processes].index(2)][1]
        assert "already" in loser
        assert "Traceback" not in loser
    finally:
        # Before the fix both mounted, stacked; unmount each layer.
        for _ in range(3):
            if os.path.ismount(path):
                Mount(path, tmp_path, env, None).unmount()


def test_daemon_log_records_mount_and_unmount(omero_server, mounter):
    mount = mounter(omero_server)
    mount.unmount()
    log_text = mount.log_text()
    assert f"omerofs.mount: mounted {omero_server.host} at" in log_text
    assert "omerofs.mount: unmounted" in log_text


def test_mount_left_by_killed_daemon_is_cleaned_up(omero_server, mounter):
    from support import OMEROFS

    # With --ttl 0 the kernel keeps no attributes of the root, so a stat
    # reaches the dead daemon's connection and fails with ENOTCONN.
    mount = mounter(omero_server, "--ttl", "0")
    os.kill(mount.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.listdir(mount.path)
        except OSError as error:
            if error.errno == errno.ENOTCONN:
                break
        time.sleep(0.1)

    again = subprocess.run([OMEROFS, "mount", str(mount.path), "-s", omero_server.host, "-u", "alice"],
                           capture_output=True, text=True, env=mount.env, timeout=60)
    assert again.returncode == 2
    assert "daemon has ended" in again.stderr
    assert f"omerofs umount {mount.path}" in again.stderr
    assert "Traceback" not in again.stderr

    unmounted = subprocess.run([OMEROFS, "umount", str(mount.path)], capture_output=True, text=True,
                               env=mount.env, timeout=60)
    assert unmounted.returncode == 0, unmounted.stderr
    assert str(mount.path) not in open("/proc/mounts").read()


@pytest.fixture
def read_only_cache(tmp_path):
    """A cache directory with a cache and a log directory in it, on a tmpfs then made read-only."""
    from omerofs.blocks import BlockCache

    disk = tmp_path / "read-only-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", str(disk)], check=True)
    try:
        BlockCache(disk / "cache").close()
        (disk / "cache" / "logs").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        yield disk / "cache"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.parametrize("command", [["status"], ["pin", "Image:1"], ["unpin", "Image:1"], ["mount"],
                                     ["mount", "--foreground"], ["mount", "--offline", "--foreground"]])
def test_read_only_cache_is_a_clear_cache_error(read_only_cache, omero_server, tmp_path, command):
    from support import OMEROFS

    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    arguments = [*command, "--cache-dir", str(read_only_cache)]
    if command[0] == "mount":
        arguments.insert(1, str(mountpoint))
    if command[0] != "status":
        arguments += ["-s", omero_server.host] + (["-u", "alice"] if "--offline" not in command else [])
    result = subprocess.run([OMEROFS, *arguments], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, OMERO_PASSWORD="omero", XDG_RUNTIME_DIR=str(tmp_path / "run")))
    assert result.returncode == 9, result.stderr
    assert "writable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.ismount(mountpoint)
