"""pin, unpin, status and offline mounts over one cache."""

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import OMEROFS, projection, showinf, source_files


def run_omerofs(*args, cache_dir, runtime, password="omero", timeout=300):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), OMERO_SESSIONDIR=str(runtime / "no-sessions"))
    if password is not None:
        env["OMERO_PASSWORD"] = password
    return subprocess.run([OMEROFS, *args, "--cache-dir", str(cache_dir)], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def pin(server, *targets, cache_dir, runtime, extra=()):
    return run_omerofs("pin", *targets, "-s", server.host, "-u", "alice", *extra, cache_dir=cache_dir,
                       runtime=runtime)


def dataset_ids(server):
    return projection(server, "alice", "select d.id from Dataset d")


def links_below(directory: Path) -> list[Path]:
    found = []
    for root, directories, files in os.walk(directory):
        found.extend(Path(root) / name for name in directories + files if (Path(root) / name).is_symlink())
    return sorted(found)


@pytest.fixture
def own_server(omero_server_factory):
    """A server of this test's own, so that stopping it or setting knobs affects no other test."""
    return omero_server_factory()


def test_pinned_dataset_works_offline(own_server, mounter, tmp_path, runtime_dir):
    cache_dir = tmp_path / "cache"
    dataset = dataset_ids(own_server)[0]
    result = pin(own_server, f"Dataset:{dataset}", "--json", cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] > 0
    assert summary["failed"] == []
    image_ids = projection(own_server, "alice",
                           f"select l.child.id from DatasetImageLink l where l.parent.id = {dataset}")
    own_server.stop()

    mount = mounter(own_server, "--offline", server_args=["-s", own_server.host])
    listed = sorted(int(name) for name in os.listdir(mount.path / "Image"))
    assert listed == image_ids
    sources = source_files()
    files = set()
    for image_id in listed:
        image_dir = mount.path / "Image" / str(image_id)
        for link in links_below(image_dir / "Binary") + links_below(image_dir / "Companion"):
            real = os.path.realpath(link)
            relative = Path(real).relative_to(mount.path / "Repository")
            source = sources["/".join(relative.parts[1:])]
            assert subprocess.run(["cmp", real, str(source)]).returncode == 0
            files.add(real)
        top_level = sorted(p for p in (mount.path / "Image" / str(image_id) / "Binary").iterdir() if p.is_symlink())
        if top_level:
            report = showinf(os.path.realpath(top_level[0]))
            assert report.returncode == 0, report.stdout[-2000:]
    assert len(files) == summary["files"]
    assert os.listdir(mount.path / "Dataset") == [str(dataset)]
    assert sorted(int(n) for n in os.listdir(mount.path / "Dataset" / str(dataset) / "Image")) == image_ids
    for image_id in listed:
        for kind in ("Metadata", "Export"):
            document = mount.path / "Image" / str(image_id) / kind / f"image-{image_id}.ome.xml"
            assert document.read_bytes().startswith(b"<"), document


ATTACHMENTS = Path(__file__).resolve().parents[2] / "omerofs" / "testserver" / "sample" / "attachments"


def test_pinned_attachments_read_offline(own_server, mounter, tmp_path, runtime_dir):
    cache_dir = tmp_path / "cache"
    rows = projection(own_server, "alice", "select l.parent.id from ImageAnnotationLink l, FileAnnotation f "
                                          "where l.child.id = f.id")
    assert rows, "the sample repository has no image with a file attachment"
    result = pin(own_server, f"Image:{rows[0]}", "--json", cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode == 0, result.stderr
    own_server.stop()

    mount = mounter(own_server, "--offline", cache_dir=cache_dir, server_args=["-s", own_server.host])
    read = 0
    for link in (mount.path / "Image" / str(rows[0]) / "Annotation").iterdir():
        if not (link / "File").is_dir():
            continue
        for attachment in (link / "File").iterdir():
            assert attachment.read_bytes() == (ATTACHMENTS / attachment.name).read_bytes()
            read += 1
    assert read >= 1


def test_offline_read_of_unpinned_file_fails_at_once(own_server, mounter, tmp_path, runtime_dir):
    cache_dir = tmp_path / "cache"
    datasets = dataset_ids(own_server)
    assert pin(own_server, f"Dataset:{datasets[0]}", cache_dir=cache_dir, runtime=runtime_dir).returncode == 0
    # An online mount lists everything, so the offline mount has the other images' records too.
    online = mounter(own_server, cache_dir=cache_dir)
    other = projection(own_server, "alice",
                       f"select l.child.id from DatasetImageLink l where l.parent.id = {datasets[1]}")
    for image_id in other:
        os.listdir(online.path / "Image" / str(image_id) / "Binary")
    online.unmount()
    own_server.stop()

    mount = mounter(own_server, "--offline", cache_dir=cache_dir, server_args=["-s", own_server.host])
    pinned = set(int(n) for n in os.listdir(mount.path / "Image"))
    unpinned = [i for i in other if i not in pinned]
    assert unpinned
    link = links_below(mount.path / "Image" / str(unpinned[0]) / "Binary")[0]
    started = time.monotonic()
    with pytest.raises(OSError):
        Path(os.path.realpath(link)).read_bytes()
    assert time.monotonic() - started < 5


def test_pin_resumes_after_kill_and_fetches_nothing_twice(own_server, tmp_path, runtime_dir):
    cache_dir = tmp_path / "cache"
    target = f"Dataset:{dataset_ids(own_server)[0]}"
    control = own_server.control
    control.set(bandwidth=512 * 1024)
    control.reset()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir), OMERO_PASSWORD="omero")
    process = subprocess.Popen([OMEROFS, "pin", target, "-s", own_server.host, "-u", "alice", "--cache-dir",
                                str(cache_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill the pin as soon as it has stored some blocks; at 512 KiB/s the
    # whole dataset takes several seconds more.
    sizes = dict(zip(*file_sizes_by_id(own_server, target)))
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if (cache_dir / "pinned").exists() and stored_bytes(cache_dir, own_server, sizes) > 0:
            break
        time.sleep(0.2)
    assert process.poll() is None, "pin finished before it could be interrupted; lower the bandwidth"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert control.counters().get("RawFileStore.read", 0) > 0

    control.set(bandwidth=None)
    control.reset()
    # Blocks the killed pin stored stay; blocks it was still downloading are lost.
    stored = stored_bytes(cache_dir, own_server, sizes)
    assert 0 < stored < sum(sizes.values())
    result = pin(own_server, target, "--json", cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["failed"] == []
    assert sorted(summary["file_ids"]) == sorted(sizes)
    # Only what the killed pin had not stored came from the server.
    assert summary["fetched_bytes"] == sum(sizes.values()) - stored
    reads = control.counters().get("RawFileStore.read", 0)
    assert 0 < reads <= sum(block_count(size) for size in sizes.values())

    again = json.loads(pin(own_server, target, "--json", cache_dir=cache_dir, runtime=runtime_dir).stdout)
    assert again["already_local_files"] == again["files"]
    assert control.counters().get("RawFileStore.read", 0) == reads


BLOCK = 1024 * 1024


def block_count(size: int) -> int:
    return -(-size // BLOCK)


def file_sizes_by_id(server, target: str) -> tuple[list[int], list[int]]:
    """IDs and sizes of every original file of the images in a ``Dataset:N`` target."""
    import omero.clients
    from omero.rtypes import unwrap

    dataset = int(target.split(":")[1])
    client = omero.client(host=server.host, port=server.port)
    try:
        query = client.createSession("alice", "omero").getQueryService()
        context = {"omero.group": "-1"}
        filesets = {unwrap(row[0]) for row in query.projection(
            f"select i.fileset.id from DatasetImageLink l join l.child i where l.parent.id = {dataset}",
            None, context) if row[0] is not None}
        rows = query.projection("select fse.originalFile.id, fse.originalFile.size from FilesetEntry fse "
                                "where fse.fileset.id in (" + ",".join(map(str, filesets)) + ")", None, context)
        return [unwrap(r[0]) for r in rows], [unwrap(r[1]) for r in rows]
    finally:
        client.closeSession()


@functools.cache
def database_uuid(host: str, port: int) -> str:
    import omero.clients

    client = omero.client(host=host, port=port)
    try:
        return client.createSession("alice", "omero").getConfigService().getDatabaseUuid()
    finally:
        client.closeSession()


def stored_bytes(cache_dir, server, sizes: dict[int, int]) -> int:
    """Count the bytes of these files that the cache holds."""
    from omerofs.blocks import BlockCache, BlockKey

    uuid = database_uuid(server.host, server.port)
    cache = BlockCache(cache_dir)
    try:
        return sum(min(BLOCK, size - index * BLOCK) for file_id, size in sizes.items()
                   for index in range(block_count(size)) if cache.contains(BlockKey(uuid, file_id, BLOCK, index)))
    finally:
        cache.close()


def test_corrupted_bytes_fail_the_pin(own_server, tmp_path, runtime_dir):
    cache_dir = tmp_path / "cache"
    target = f"Dataset:{dataset_ids(own_server)[0]}"
    own_server.control.set(corrupt_reads=True)
    result = pin(own_server, target, "--json", cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode != 0
    summary = json.loads(result.stdout)
    assert summary["failed"]
    assert all("checksum" in entry["error"] for entry in summary["failed"])
    status = json.loads(run_omerofs("status", "--json", cache_dir=cache_dir, runtime=runtime_dir).stdout)
    assert status["pins"][0]["verified_files"] == 0
    assert status["pins"][0]["local_bytes"] == 0

    own_server.control.set(corrupt_reads=False)
    result = pin(own_server, target, "--json", cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_restricted_files_are_listed_and_rest_pinned(omero_server, tmp_path, runtime_dir, plate_image_ids):
    cache_dir = tmp_path / "cache"
    dataset = dataset_ids(omero_server)[0]
    image_id = projection(omero_server, "alice",
                          f"select l.child.id from DatasetImageLink l where l.parent.id = {dataset}")[0]
    result = pin(omero_server, f"Image:{image_id},{plate_image_ids[0]}", "--json", cache_dir=cache_dir,
                 runtime=runtime_dir)
    assert result.returncode == 10
    summary = json.loads(result.stdout)
    assert summary["restricted"]
    assert summary["files"] >= 1
    text = pin(omero_server, f"Image:{plate_image_ids[0]}", cache_dir=cache_dir, runtime=runtime_dir)
    assert text.returncode == 10
    assert "restricts" in text.stdout
    assert summary["restricted"][0]["name"] in text.stdout


def test_status_reports_pins_and_unpin_releases(omero_server, tmp_path, runtime_dir):
    cache_dir = tmp_path / "cache"
    target = f"Dataset:{dataset_ids(omero_server)[0]}"
    summary = json.loads(pin(omero_server, target, "--json", cache_dir=cache_dir, runtime=runtime_dir).stdout)
    status = json.loads(run_omerofs("status", "--json", cache_dir=cache_dir, runtime=runtime_dir).stdout)
    assert len(status["pins"]) == 1
    entry = status["pins"][0]
    assert entry["target"] == target
    assert entry["files"] == summary["files"]
    assert entry["verified_files"] == summary["files"]
    assert entry["bytes"] == summary["bytes"]
    assert entry["local_bytes"] == summary["bytes"]
    assert status["pinned"] >= summary["bytes"]

    result = run_omerofs("unpin", target, "-s", omero_server.host, cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode == 0, result.stderr
    status = json.loads(run_omerofs("status", "--json", cache_dir=cache_dir, runtime=runtime_dir).stdout)
    assert status["pins"] == []
    assert status["pinned"] < summary["bytes"]
    assert status["cached"] >= summary["bytes"]

    missing = run_omerofs("unpin", target, "-s", omero_server.host, cache_dir=cache_dir, runtime=runtime_dir)
    assert missing.returncode == 2


def test_size_limit_evicts_unpinned_and_keeps_pinned(omero_server, mounter, tmp_path, runtime_dir,
                                                     plate_image_ids):
    cache_dir = tmp_path / "cache"
    datasets = dataset_ids(omero_server)
    summary = json.loads(pin(omero_server, f"Dataset:{datasets[0]}", "--json", cache_dir=cache_dir,
                             runtime=runtime_dir).stdout)
    limit = 1024 * 1024
    mount = mounter(omero_server, "--cache-size", str(limit), cache_dir=cache_dir)
    for image_id in sorted(int(n) for n in os.listdir(mount.path / "Image")):
        if image_id in plate_image_ids:
            continue
        for link in links_below(mount.path / "Image" / str(image_id) / "Binary"):
            Path(os.path.realpath(link)).read_bytes()
    status = json.loads(run_omerofs("status", "--json", cache_dir=cache_dir, runtime=runtime_dir).stdout)
    # diskcache culls after each write, so the store may pass the limit by one block.
    assert status["cached"] <= limit + 1024 * 1024 + 64 * 1024
    assert status["pins"][0]["local_bytes"] == summary["bytes"]
    assert status["pins"][0]["verified_files"] == summary["files"]


def test_running_mount_serves_new_pins_without_server_reads(omero_server, mounter, tmp_path, runtime_dir):
    cache_dir = tmp_path / "cache"
    dataset = dataset_ids(omero_server)[0]
    mount = mounter(omero_server, cache_dir=cache_dir)
    result = pin(omero_server, f"Dataset:{dataset}", "--json", cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode == 0, result.stderr
    omero_server.control.reset()
    image_ids = projection(omero_server, "alice",
                           f"select l.child.id from DatasetImageLink l where l.parent.id = {dataset}")
    read = 0
    for image_id in image_ids:
        for link in links_below(mount.path / "Image" / str(image_id) / "Binary"):
            read += len(Path(os.path.realpath(link)).read_bytes())
    assert read > 0
    assert omero_server.control.counters().get("RawFileStore.read", 0) == 0

    status = json.loads(run_omerofs("status", "--json", cache_dir=cache_dir, runtime=runtime_dir).stdout)
    assert [m["mountpoint"] for m in status["mounts"]] == [str(mount.path)]


def test_ctrl_c_stops_pin_with_exit_130(own_server, tmp_path, runtime_dir):
    target = f"Dataset:{dataset_ids(own_server)[0]}"
    own_server.control.set(bandwidth=512 * 1024)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir), OMERO_PASSWORD="omero")
    process = subprocess.Popen([OMEROFS, "pin", target, "-s", own_server.host, "-u", "alice", "--cache-dir",
                                str(tmp_path / "cache")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    time.sleep(3.0)
    assert process.poll() is None, "pin finished before it could be interrupted; lower the bandwidth"
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in error
    assert "Traceback" not in error


@pytest.mark.parametrize("target", ["Image:987654321", "Dataset:987654321", "Plate:987654321"])
def test_pin_of_missing_target_is_not_found(omero_server, tmp_path, runtime_dir, target):
    cache_dir = tmp_path / "cache"
    result = pin(omero_server, target, cache_dir=cache_dir, runtime=runtime_dir)
    assert result.returncode == 5
    assert "987654321 not found" in result.stderr
    status = run_omerofs("status", "--json", cache_dir=cache_dir, runtime=runtime_dir)
    assert json.loads(status.stdout)["pins"] == []


def test_mount_of_missing_target_is_not_found(omero_server, mounter):
    mount = mounter(omero_server, "Dataset:987654321", check=False)
    assert mount.result.returncode == 5
    assert "Dataset 987654321 not found" in mount.result.stderr
    assert not os.path.ismount(mount.path)
