"""Untrusted names from the server: every entry listable, readable, and inside the mount."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from omerofs.testserver import content

# Names that must each reach their own file, among them names that the
# mount has to change ("..", "a\x00b") next to names they could turn into.
FILE_NAMES = {
    101: "..", 102: ".", 103: "a\x00b", 104: "a_b", 105: "L" * 300 + ".tif", 106: "L" * 299 + "M.tif",
    107: "ctl\x01\n\t\x7f", 108: "²", 109: "١٢", 110: " spaced ", 111: "-rf", 112: "emoji🧪.tif",
    113: "é" * 200, 114: "x." + "e" * 300, 115: "_..", 116: "_.", 117: "a\\b", 118: "\u202eevil.txt",
    119: "0123", 120: "7",
}


def synthetic_file(file_id: int, name: str, **extra) -> dict:
    marker = f"file {file_id}\n".encode()
    entry = {"id": file_id, "name": name,
             "sha1": content.sha1_hex(content.SyntheticFile(100, ((0, marker),))),
             "synthetic": {"size": 100, "markers": [{"offset": 0, "hex": marker.hex()}]}}
    entry.update(extra)
    return entry


def write_manifest(directory: Path) -> Path:
    files = [synthetic_file(file_id, name) for file_id, name in FILE_NAMES.items()]
    files.append(synthetic_file(130, "deep", subdir="../../../etc"))
    files.append(synthetic_file(131, "inner", subdir="./x/./y"))
    manifest = {
        "version": 1,
        "created": "2024-05-01T12:00:00Z",
        "defaults": {"owner": "alice", "group": "lab"},
        "groups": [{"id": 3, "name": "lab", "permissions": "read-annotate"}],
        "users": [{"id": 2, "name": "alice", "password": "omero", "groups": ["lab"]}],
        "repositories": [
            {"id": 1, "name": "OMERO", "path": "/", "uuid": "6c0a0d1e-0000-4000-8000-000000000001", "legacy": True},
            {"id": 2, "name": "ManagedRepository", "path": "/OMERO/",
             "uuid": "6c0a0d1e-0000-4000-8000-000000000002"},
        ],
        "files": [synthetic_file(901, "..", path="/../../"), synthetic_file(902, "att\x00ach\x01.txt")],
        "filesets": [{"id": 1, "templatePrefix": "alice_2/../../hostile/", "files": files}],
        "images": [{"id": 1, "name": "evil\x01\n name <&>\"]]>", "fileset": 1,
                    "pixels": {"sizeX": 4, "sizeY": 4, "pixelsType": "uint8"}}],
        "annotations": [
            {"id": 1, "kind": "Tag", "value": "tag\x00\x01\nnext line ]]>", "links": ["Image:1"]},
            {"id": 2, "kind": "File", "file": 901, "links": ["Image:1"]},
            {"id": 3, "kind": "File", "file": 902, "links": ["Image:1"]},
        ],
    }
    path = directory / "manifest.yaml"
    # JSON is valid YAML and writes control characters as escapes.
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def hostile_mount(tmp_path, omero_server_factory, mounter):
    directory = tmp_path / "hostile"
    directory.mkdir()
    server = omero_server_factory(manifest=write_manifest(directory))
    mount = mounter(server)
    return mount


def walk(root: Path):
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            yield Path(directory) / name


def test_every_entry_lists_reads_and_stays_inside(hostile_mount):
    root = os.path.realpath(hostile_mount.path)
    regular = 0
    for path in walk(hostile_mount.path):
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            target = os.path.realpath(path)
            assert os.path.commonpath([root, target]) == root, path
            assert os.path.exists(path), path
            assert os.lstat(path).st_size == len(os.readlink(os.fsencode(path)))
        elif stat.S_ISREG(mode):
            assert len(path.read_bytes()) == os.stat(path).st_size, path
            regular += 1
    assert regular >= len(FILE_NAMES)


def test_fileset_links_reach_their_own_files(hostile_mount):
    binary = hostile_mount.path / "Image" / "1" / "Binary"
    reached = {}
    for path in walk(binary):
        if path.is_symlink() and path.is_file():
            first_line = path.read_bytes().split(b"\n")[0]
            reached[first_line] = path
    expected = {f"file {file_id}".encode() for file_id in [*FILE_NAMES, 130, 131]}
    assert set(reached) == expected


@pytest.mark.parametrize("command", [["find", "."], ["ls", "-lR"], ["grep", "-r", "-a", "-l", "file 1"], ["du", "-a"]])
def test_standard_tools_walk_without_errors(hostile_mount, command):
    result = subprocess.run(command, cwd=hostile_mount.path, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b""


def test_metadata_elements_stay_on_one_line(hostile_mount):
    for path in [hostile_mount.path / "Image" / "1" / "Metadata" / "image-1.ome.xml",
                 hostile_mount.path / "Annotation" / "1" / "Metadata" / "annotation-1.ome.xml"]:
        assert path.read_bytes().count(b"\n") == 1, path
