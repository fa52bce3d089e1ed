"""Original files through a real mount: layout, readers, bytes and the cache."""

import json
import os
import random
import subprocess
import threading
from pathlib import Path

import pytest

from omerofs import mount
from support import projection, showinf, source_files

SERIES_KEYS = ("Series count", "Width", "Height", "SizeZ", "SizeC", "SizeT", "Pixel type")


def image_ids(mount_path: Path) -> list[int]:
    return sorted(int(name) for name in os.listdir(mount_path / "Image"))


def links_below(directory: Path) -> list[Path]:
    """Every symlink under ``directory``, at any depth."""
    found = []
    for root, directories, files in os.walk(directory):
        for name in directories + files:
            path = Path(root) / name
            if path.is_symlink():
                found.append(path)
    return sorted(found)


def repository_path(mount_path: Path, real: str) -> str:
    """The ``<path><name>`` of a resolved file, as the server's OriginalFile row stores it."""
    relative = Path(real).relative_to(mount_path / "Repository")
    return "/" .join(relative.parts[1:])


def reader_report(result) -> list[str]:
    return [line.strip() for line in result.stdout.splitlines() if line.strip().startswith(SERIES_KEYS)]


@pytest.fixture(scope="module")
def sources():
    return source_files()


def test_image_files_resolve_into_one_repository_directory(omero_server, mounter):
    mount = mounter(omero_server)
    checked = 0
    for image_id in image_ids(mount.path):
        image_dir = mount.path / "Image" / str(image_id)
        links = links_below(image_dir / "Binary") + links_below(image_dir / "Companion")
        if not links:
            assert not (image_dir / "Fileset").exists()
            continue
        bases = set()
        for link in links:
            real = Path(os.path.realpath(link))
            assert real.is_relative_to(mount.path / "Repository"), (link, real)
            assert real.is_file()
            depth_below_role = len(link.relative_to(image_dir).parts) - 2
            bases.add(real.parents[depth_below_role])
        assert len(bases) == 1, (image_id, bases)

        fileset_dir = Path(os.path.realpath(image_dir / "Fileset"))
        fileset_links = links_below(fileset_dir / "Binary") + links_below(fileset_dir / "Companion")
        base = bases.pop()
        for link in fileset_links:
            assert Path(os.path.realpath(link)).is_relative_to(base)
        assert {os.path.realpath(link) for link in fileset_links} == {os.path.realpath(link) for link in links}
        assert str(image_id) in os.listdir(fileset_dir / "Image")
        checked += 1
    assert checked >= 15


def test_showinf_matches_source_for_every_fileset(omero_server, mounter, sources, plate_image_ids):
    mount = mounter(omero_server)
    seen_filesets = set()
    compared = 0
    for image_id in image_ids(mount.path):
        image_dir = mount.path / "Image" / str(image_id)
        if image_id in plate_image_ids or not (image_dir / "Fileset").exists():
            continue
        fileset = os.readlink(image_dir / "Fileset")
        if fileset in seen_filesets:
            continue
        seen_filesets.add(fileset)
        top_level = sorted(p for p in (image_dir / "Binary").iterdir() if p.is_symlink())
        real = os.path.realpath(top_level[0])
        source = sources[repository_path(mount.path, real)]

        through_mount = showinf(real)
        direct = showinf(source)
        assert direct.returncode == 0, direct.stderr
        assert through_mount.returncode == 0, (real, through_mount.stdout[-2000:], through_mount.stderr[-2000:])
        assert reader_report(through_mount) == reader_report(direct), real
        assert reader_report(direct)
        compared += 1
    assert compared >= 13


def test_every_file_reads_back_identical(omero_server, mounter, sources, plate_image_ids):
    mount = mounter(omero_server)
    compared = 0
    for image_id in image_ids(mount.path):
        if image_id in plate_image_ids:
            continue
        image_dir = mount.path / "Image" / str(image_id)
        for link in links_below(image_dir / "Binary") + links_below(image_dir / "Companion"):
            real = os.path.realpath(link)
            source = sources[repository_path(mount.path, real)]
            result = subprocess.run(["cmp", real, str(source)], capture_output=True, text=True)
            assert result.returncode == 0, result.stdout + result.stderr
            assert os.path.getsize(real) == source.stat().st_size
            compared += 1
    assert compared >= 20


def test_random_offsets_read_right_bytes(omero_server, mounter, sources):
    mount = mounter(omero_server, "--block-size", "64K")
    generator = random.Random(7)
    for image_id in image_ids(mount.path)[:12]:
        for link in links_below(mount.path / "Image" / str(image_id) / "Binary"):
            real = os.path.realpath(link)
            source = sources.get(repository_path(mount.path, real))
            if source is None:
                continue
            expected = source.read_bytes()
            for _ in range(8):
                skip = generator.randrange(0, max(1, len(expected) // 512))
                result = subprocess.run(["dd", f"if={real}", "bs=512", f"skip={skip}", "count=3", "status=none"],
                                        capture_output=True)
                assert result.returncode == 0
                assert result.stdout == expected[skip * 512:skip * 512 + 1536]


def largest_readable_file(mount_path: Path, plate_image_ids) -> str:
    candidates = []
    for image_id in image_ids(mount_path):
        if image_id in plate_image_ids:
            continue
        for link in links_below(mount_path / "Image" / str(image_id) / "Binary"):
            real = os.path.realpath(link)
            candidates.append((os.path.getsize(real), real))
    return max(candidates)[1]


def test_second_read_and_remount_make_no_server_reads(omero_server, mounter, tmp_path, plate_image_ids):
    cache_dir = tmp_path / "shared-cache"
    mount = mounter(omero_server, cache_dir=cache_dir)
    target = largest_readable_file(mount.path, plate_image_ids)
    control = omero_server.control
    control.reset()
    first = Path(target).read_bytes()
    assert control.counters().get("RawFileStore.read", 0) > 0

    control.reset()
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    assert Path(target).read_bytes() == first
    assert control.counters().get("RawFileStore.read", 0) == 0

    relative = Path(target).relative_to(mount.path)
    mount.unmount()
    again = mounter(omero_server, cache_dir=cache_dir)
    control.reset()
    assert (again.path / relative).read_bytes() == first
    assert control.counters().get("RawFileStore.read", 0) == 0


def test_concurrent_readers_download_each_block_once(omero_server, mounter, plate_image_ids):
    block = 64 * 1024
    mount = mounter(omero_server, "--block-size", "64K")
    target = largest_readable_file(mount.path, plate_image_ids)
    size = os.path.getsize(target)
    omero_server.control.reset()
    results = []

    def reader():
        # O_DIRECT is not needed: each reader opens its own handle, and the
        # kernel's page cache is cold for a file that no process has read yet.
        with open(target, "rb", buffering=0) as handle:
            results.append(handle.read())

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    assert len(set(results)) == 1
    # A read loads its consecutive missing blocks with one server read and
    # waits for blocks under way, so 16 readers make at most one read per block.
    assert omero_server.control.counters().get("RawFileStore.read", 0) <= -(-size // block)


@pytest.fixture(scope="module")
def big_repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("big-repository")
    subprocess.run([os.sys.executable, "-m", "omerofs.testserver.generate", str(out), "--images", "2",
                    "--big-files", "1", "--big-file-gib", "5"], check=True, capture_output=True)
    return out


def test_reads_past_4_gib_are_right(big_repository, mounter, omero_server_factory):
    server = omero_server_factory(manifest=big_repository / "manifest.yaml")
    try:
        mount = mounter(server)
        markers = [(offset, bytes.fromhex(data))
                   for file_markers in json.loads((big_repository / "markers.json").read_text()).values()
                   for offset, data in file_markers]
        big = [os.path.realpath(link) for image_id in image_ids(mount.path)
               for link in links_below(mount.path / "Image" / str(image_id) / "Binary")
               if os.path.getsize(os.path.realpath(link)) > 4 * 1024 ** 3]
        assert len(big) == 1
        assert any(offset > 4 * 1024 ** 3 for offset, _ in markers)
        with open(big[0], "rb") as handle:
            for offset, data in markers:
                handle.seek(offset)
                assert handle.read(len(data)) == data, offset
    finally:
        server.stop()


def test_mount_raises_the_kernels_read_ahead(omero_server, mounter):
    mounted = mounter(omero_server, name="mount point \u00e9")
    device = os.stat(mounted.path).st_dev
    setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    # Sequential readers then get 1 MiB requests instead of 128 KiB ones.
    assert int(setting.read_text()) == mount.READ_AHEAD_KIB
