"""The test server's store: manifests, permissions, binary access, file bytes and used files.

Most tests use a small manifest written into a temporary directory; a few check
the packaged sample repository.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

import omero
import omero.clients  # noqa: F401  (loads every omero-py module)
from omero.sys import ParametersI

from omerofs.testserver import content, manifest
from omerofs.testserver.store import AuthenticationFailed, ManifestError, Repository, Viewer

SAMPLE = Path(__file__).resolve().parents[2] / "omerofs" / "testserver" / "sample"

ALICE, BOB, CAROL = 2, 3, 4
LAB, PRIVATE, READ_ONLY = 3, 4, 5
GIB = 1 << 30
MIB = 1 << 20

MANIFEST = """
version: 1
database_uuid: 3f1d2c4b-0000-4000-8000-000000000001
created: 2024-05-01T12:00:00Z
defaults: {owner: alice, group: lab}
groups:
  - {id: 3, name: lab, permissions: read-annotate}
  - {id: 4, name: alice-private, permissions: private}
  - {id: 5, name: core, permissions: read-only, binary_access: "-read"}
users:
  - {id: 2, name: alice, password: secret, groups: [lab, alice-private, core], leader_of: [alice-private]}
  - {id: 3, name: bob, password: hunter2, groups: [lab, core]}
  - {id: 4, name: carol, password: omero, groups: [alice-private]}
repositories:
  - {id: 1, name: OMERO, path: /, uuid: 00000000-0000-4000-8000-0000000000a1, legacy: true}
  - {id: 2, name: ManagedRepository, path: /OMERO/, uuid: 00000000-0000-4000-8000-0000000000a2}
  - {id: 3, name: OpenRepository, path: /data/, uuid: 00000000-0000-4000-8000-0000000000a3,
     binary_access: "+read,+write,+image,+plate"}
files:
  - {id: 50, source: legacy.bin, path: /home/alice/}
  - {id: 51, source: notes.txt, path: /attachments/, mimetype: text/plain}
filesets:
  - id: 10
    templatePrefix: alice_2/2024-05/01/12-00-00.000/
    files:
      - {id: 100, source: pixels.bin, role: binary}
      - {id: 101, source: header.txt, name: header.ics, role: companion}
      - {id: 102, source: pixels.bin, name: series1.bin, subdir: extra/dir, series: [1]}
      - {id: 103, source: header.txt, name: series1.xml, role: companion, series: [1]}
  - id: 11
    group: alice-private
    files:
      - {id: 110, source: pixels.bin}
  - id: 12
    files:
      - id: 120
        name: big.raw
        synthetic:
          size: 4100 MiB
          markers:
            - {offset: 0, text: START}
            - {offset: 4294967296, hex: "deadbeef"}
            - {offset: 4299161596, text: "END!"}
  - id: 13
    repository: OpenRepository
    files:
      - {id: 130, source: pixels.bin}
  - id: 14
    files:
      - {id: 140, source: notes.txt, name: plate-notes.txt}
  - id: 15
    owner: bob
    group: core
    files:
      - {id: 150, source: pixels.bin}
images:
  - {id: 1, name: series zero, fileset: 10, series: 0, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 2, name: series one, fileset: 10, series: 1, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 3, name: private, group: alice-private, fileset: 11, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 4, name: legacy, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}, archived_files: [50]}
  - {id: 5, name: big, fileset: 12, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 6, name: open plate image, fileset: 13, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 7, name: plate with text file, fileset: 14, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 8, name: bob in core, owner: bob, group: core, fileset: 15, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 9, name: carol private, owner: carol, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
  - {id: 10, name: no pixels file, pixels: {sizeX: 4, sizeY: 4, pixelsType: uint8}}
plates:
  - id: 1
    name: plate
    wells:
      - {id: 1, row: 0, column: 0, samples: [{id: 1, image: 1}, {id: 2, image: 6}, {id: 3, image: 7}]}
annotations:
  - {id: 1, kind: Tag, value: shared, links: ["Image:1"]}
  - {id: 2, kind: File, file: 51, ns: openmicroscopy.org/omero/import/companionFile, links: ["Image:4"]}
"""


def write_manifest(directory: Path, text: str = MANIFEST) -> Path:
    (directory / "pixels.bin").write_bytes(bytes(range(256)) * 4)
    (directory / "header.txt").write_text("ics_version\t1.0\n")
    (directory / "legacy.bin").write_bytes(b"legacy archived bytes")
    (directory / "notes.txt").write_text("plain notes\n")
    path = directory / "manifest.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Repository:
    directory = tmp_path_factory.mktemp("repository")
    return Repository.load(write_manifest(directory), hash_sidecar=directory / "hashes.json")


def image_ids(repository: Repository, viewer: Viewer) -> list[int]:
    rows = repository.projection("select i.id from Image i order by i.id", None, viewer)
    return [row[0].getValue() for row in rows]


# Users, groups and sessions


def test_authenticate_returns_experimenter(repository):
    experimenter = repository.authenticate("alice", "secret")
    assert experimenter.getId().getValue() == ALICE
    assert experimenter.getOmeName().getValue() == "alice"


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "secret"), ("root", "")])
def test_authenticate_rejects(repository, user, password):
    with pytest.raises(AuthenticationFailed):
        repository.authenticate(user, password)


def test_event_context_default_group(repository):
    context = repository.event_context(ALICE, None)
    assert context.userId == ALICE
    assert context.userName == "alice"
    assert context.groupId == LAB
    assert context.groupName == "lab"
    assert context.memberOfGroups == [LAB, PRIVATE, READ_ONLY, manifest.USER_GROUP_ID]
    assert context.leaderOfGroups == [PRIVATE]
    assert not context.isAdmin
    assert str(context.groupPermissions) == "rwra--"


def test_event_context_rejects_foreign_group(repository):
    with pytest.raises(omero.SecurityViolation):
        repository.event_context(BOB, PRIVATE)


# Permissions


def test_member_sees_group_objects(repository):
    assert image_ids(repository, Viewer(BOB, -1)) == [1, 2, 4, 5, 6, 7, 8, 10]


def test_group_leader_sees_private_group(repository):
    assert image_ids(repository, Viewer(ALICE, PRIVATE)) == [3, 9]


def test_private_member_sees_only_own(repository):
    assert image_ids(repository, Viewer(CAROL, -1)) == [9]


def test_group_context_limits_view(repository):
    assert image_ids(repository, Viewer(ALICE, READ_ONLY)) == [8]
    assert image_ids(repository, Viewer(BOB, PRIVATE)) == []


def test_get_missing_raises_validation(repository):
    with pytest.raises(omero.ValidationException) as raised:
        repository.get("Image", 999, Viewer(ALICE))
    assert "999" in raised.value.message


def test_get_unreadable_raises_security_violation(repository):
    with pytest.raises(omero.SecurityViolation) as raised:
        repository.get("Image", 3, Viewer(BOB))
    assert "Image:Id_3" in raised.value.message


def test_get_in_other_group_context_raises(repository):
    with pytest.raises(omero.SecurityViolation):
        repository.get("Image", 1, Viewer(ALICE, PRIVATE))


@pytest.mark.parametrize("kind", ["Image", "ImageI", "omero.model.Image", "omero.model.ImageI", "ome.model.core.Image"])
def test_get_accepts_api_class_names(repository, kind):
    assert repository.get(kind, 1, Viewer(ALICE)).getName().getValue() == "series zero"


def test_get_unknown_class_raises(repository):
    with pytest.raises(omero.ApiUsageException):
        repository.get("Nonsense", 1, Viewer(ALICE))


def test_get_returns_unloaded_associations(repository):
    image = repository.get("Image", 1, Viewer(ALICE))
    assert image.isLoaded()
    assert not image.getFileset().isLoaded()
    assert image.getFileset().getId().getValue() == 10
    assert not image.isPixelsLoaded()
    assert not image.isAnnotationLinksLoaded()
    assert not image.getDetails().getOwner().isLoaded()
    assert image.getDetails().getOwner().getId().getValue() == ALICE
    assert image.getDetails().getGroup().getId().getValue() == LAB
    assert image.getDetails().getCreationEvent() is not None


def test_find_returns_none_for_missing_and_unreadable(repository):
    assert repository.find("Image", 999, Viewer(ALICE)) is None
    assert repository.find("Image", 3, Viewer(BOB)) is None
    assert repository.find("Image", 3, Viewer(ALICE)).getId().getValue() == 3


def test_find_all_pages(repository):
    page = omero.sys.Filter()
    page.offset = omero.rtypes.rint(1)
    page.limit = omero.rtypes.rint(2)
    images = repository.find_all("Image", page, Viewer(BOB))
    assert [i.getId().getValue() for i in images] == [2, 4]


def test_query_one_rejects_several(repository):
    with pytest.raises(omero.ApiUsageException):
        repository.query_one("select i from Image i", None, Viewer(ALICE))
    assert repository.query_one("select i from Image i where i.id < 0", None, Viewer(ALICE)) is None


def test_permissions_of_others_objects(repository):
    bob_view = repository.get("Image", 1, Viewer(BOB)).getDetails().getPermissions()
    assert bob_view.canAnnotate()
    assert not bob_view.canEdit()
    assert not bob_view.canDelete()
    alice_view = repository.get("Image", 1, Viewer(ALICE)).getDetails().getPermissions()
    assert alice_view.canEdit()
    assert str(alice_view) == "rwra--"


def test_group_objects_carry_group_permissions(repository):
    group = repository.get("ExperimenterGroup", PRIVATE, Viewer(BOB))
    assert str(group.getDetails().getPermissions()) == "rw----"


# Binary access


def restricted(repository: Repository, kind: str, object_id: int, viewer: Viewer) -> bool:
    obj = repository.get(kind, object_id, viewer)
    return obj.getDetails().getPermissions().isRestricted("RESTRICT-BINARY-ACCESS")


def test_plate_image_files_restricted_by_default(repository):
    assert restricted(repository, "OriginalFile", 100, Viewer(ALICE))
    assert restricted(repository, "Image", 1, Viewer(ALICE))
    assert restricted(repository, "Plate", 1, Viewer(ALICE))
    assert restricted(repository, "Well", 1, Viewer(ALICE))
    assert restricted(repository, "WellSample", 1, Viewer(ALICE))


def test_unrestricted_outside_plates(repository):
    assert not restricted(repository, "OriginalFile", 110, Viewer(ALICE))
    assert not restricted(repository, "Image", 5, Viewer(ALICE))
    assert not restricted(repository, "OriginalFile", 50, Viewer(ALICE))


def test_repository_setting_allows_plates(repository):
    assert not restricted(repository, "OriginalFile", 130, Viewer(ALICE))
    assert not restricted(repository, "Image", 6, Viewer(ALICE))


def test_text_files_never_restricted(repository):
    assert not restricted(repository, "OriginalFile", 140, Viewer(ALICE))


def test_group_setting_restricts_non_owners(repository):
    assert restricted(repository, "OriginalFile", 150, Viewer(ALICE))
    assert not restricted(repository, "OriginalFile", 150, Viewer(BOB))


def test_restricted_bytes_raise_security_violation(repository):
    with pytest.raises(omero.SecurityViolation) as raised:
        repository.original_file_bytes(100, Viewer(ALICE))
    assert "restricted" in raised.value.message


def test_unknown_file_bytes_raise_validation(repository):
    with pytest.raises(omero.ValidationException):
        repository.original_file_bytes(12345, Viewer(ALICE))


def test_unreadable_file_bytes_raise_security_violation(repository):
    with pytest.raises(omero.SecurityViolation):
        repository.original_file_bytes(110, Viewer(BOB))


# File bytes and hashes


def test_local_file_bytes_and_hash(repository):
    data = bytes(range(256)) * 4
    file_content = repository.original_file_bytes(110, Viewer(ALICE))
    assert file_content.size == len(data)
    assert file_content.read(0, 10) == data[:10]
    assert file_content.read(1020, 100) == data[1020:]
    assert file_content.read(len(data), 10) == b""
    original_file = repository.get("OriginalFile", 110, Viewer(ALICE))
    assert original_file.getHash().getValue() == hashlib.sha1(data).hexdigest()
    assert original_file.getSize().getValue() == len(data)


def test_synthetic_file_markers_past_4_gib(repository):
    file_content = repository.original_file_bytes(120, Viewer(ALICE))
    assert file_content.size == 4100 * MIB
    assert file_content.read(0, 5) == b"START"
    assert file_content.read(4 * GIB - 2, 8) == b"\0\0\xde\xad\xbe\xef\0\0"
    assert file_content.read(4100 * MIB - 4, 100) == b"END!"
    assert file_content.read(2 * GIB, 4) == b"\0\0\0\0"


def test_synthetic_hash_matches_content():
    synthetic = content.SyntheticFile(3 * 1024 * 1024 + 7, ((5, b"abc"), (3 * 1024 * 1024, b"xyz")))
    expected = bytearray(3 * 1024 * 1024 + 7)
    expected[5:8] = b"abc"
    expected[3 * 1024 * 1024:3 * 1024 * 1024 + 3] = b"xyz"
    assert content.sha1_hex(synthetic) == hashlib.sha1(bytes(expected)).hexdigest()


def test_hashes_cached_in_sidecar(tmp_path, monkeypatch):
    path = write_manifest(tmp_path, BASE + "filesets: [{id: 1, files: [{id: 11, source: pixels.bin}, {id: 12, source: notes.txt}]}]")
    sidecar = tmp_path / "hashes.json"
    calls = []
    real = content.sha1_hex

    def counting(file_content):
        calls.append(file_content.cache_key())
        return real(file_content)

    monkeypatch.setattr(content, "sha1_hex", counting)
    manifest.load(path, sidecar)
    first = len(calls)
    manifest.load(path, sidecar)
    assert first > 0
    assert len(calls) == first


def test_original_file_fields(repository):
    original_file = repository.get("OriginalFile", 102, Viewer(ALICE))
    assert original_file.getName().getValue() == "series1.bin"
    assert original_file.getPath().getValue() == "alice_2/2024-05/01/12-00-00.000/extra/dir/"
    assert original_file.getRepo().getValue() == "00000000-0000-4000-8000-0000000000a2"
    assert original_file.getMimetype().getValue() == "application/octet-stream"
    assert original_file.getMtime().getValue() == 1714564800000
    hasher = repository.query_one(
        "select h from ChecksumAlgorithm h where h.id = :id",
        ParametersI().addId(original_file.getHasher().getId().getValue()), Viewer(ALICE),
    )
    assert hasher.getValue().getValue() == "SHA1-160"


def test_legacy_file_has_no_repository(repository):
    legacy = repository.get("OriginalFile", 50, Viewer(ALICE))
    assert legacy.getRepo() is None
    assert legacy.getPath().getValue() == "/home/alice/"


def test_repository_descriptions(repository):
    descriptions = repository.repositories(Viewer(BOB))
    by_name = {d.getName().getValue(): d for d in descriptions}
    assert sorted(by_name) == ["ManagedRepository", "OMERO", "OpenRepository"]
    managed = by_name["ManagedRepository"]
    assert managed.getMimetype().getValue() == "Repository"
    assert managed.getHash().getValue() == "00000000-0000-4000-8000-0000000000a2"
    assert managed.getPath().getValue() == "/OMERO/"
    assert managed.getId().getValue() == 2


def test_default_template_prefix(repository):
    fileset = repository.get("Fileset", 11, Viewer(ALICE))
    assert fileset.getTemplatePrefix().getValue() == "alice_2/2024-05/01/12-00-00.000/"


# Used files


def used_files(repository, image_id, viewer=Viewer(ALICE)):
    response = repository.used_files(image_id, viewer)
    return (
        sorted(response.binaryFilesThisSeries), sorted(response.binaryFilesOtherSeries),
        sorted(response.companionFilesThisSeries), sorted(response.companionFilesOtherSeries),
    )


def test_used_files_this_and_other_series(repository):
    assert used_files(repository, 1) == ([100], [102], [101], [103])
    assert used_files(repository, 2) == ([100, 102], [], [101, 103], [])


def test_used_files_in_all_groups(repository):
    assert used_files(repository, 3, Viewer(ALICE, LAB)) == ([110], [], [], [])


def test_used_files_pre_fileset(repository):
    response = repository.used_files(4, Viewer(ALICE))
    assert isinstance(response, omero.cmd.UsedFilesResponsePreFs)
    assert list(response.archivedFiles) == [50]
    assert list(response.companionFiles) == [51]
    assert list(response.originalMetadataFiles) == []


def test_used_files_of_unreadable_image_is_error(repository):
    response = repository.used_files(3, Viewer(BOB))
    assert isinstance(response, omero.cmd.ERR)
    assert response.name == "bad-image"
    assert isinstance(repository.used_files(999, Viewer(ALICE)), omero.cmd.ERR)


# Manifest checks


def load_error(tmp_path: Path, text: str) -> str:
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as raised:
        manifest.load(path, tmp_path / "hashes.json")
    return str(raised.value)


BASE = """
defaults: {owner: alice, group: lab}
groups: [{id: 3, name: lab, permissions: read-annotate}, {id: 4, name: other, permissions: private}]
users: [{id: 2, name: alice, groups: [lab, other]}]
repositories: [{id: 1, name: ManagedRepository, uuid: 00000000-0000-4000-8000-0000000000b1}]
"""


def test_manifest_unknown_field_named(tmp_path):
    message = load_error(tmp_path, BASE + "images: [{id: 1, name: a, sizeX: 3, pixels: {sizeX: 1, sizeY: 1, pixelsType: uint8}}]")
    assert "sizeX" in message
    assert "images[id=1]" in message


def test_manifest_cross_group_link_rejected(tmp_path):
    message = load_error(tmp_path, BASE + """
images: [{id: 1, name: a, group: other, pixels: {sizeX: 1, sizeY: 1, pixelsType: uint8}}]
datasets: [{id: 1, name: d, images: [1]}]
""")
    assert "group" in message


def test_manifest_duplicate_id_rejected(tmp_path):
    message = load_error(tmp_path, BASE + """
images:
  - {id: 1, name: a, pixels: {sizeX: 1, sizeY: 1, pixelsType: uint8}}
  - {id: 1, name: b, pixels: {sizeX: 1, sizeY: 1, pixelsType: uint8}}
""")
    assert "used twice" in message


def test_manifest_missing_source_rejected(tmp_path):
    message = load_error(tmp_path, BASE + "filesets: [{id: 1, files: [{id: 1, source: nothere.bin}]}]")
    assert "nothere.bin" in message


def test_manifest_unknown_reference_rejected(tmp_path):
    message = load_error(tmp_path, BASE + "images: [{id: 1, name: a, fileset: 7, pixels: {sizeX: 1, sizeY: 1, pixelsType: uint8}}]")
    assert "Fileset" in message
    assert "7" in message


def test_manifest_auto_ids_follow_explicit(tmp_path):
    path = write_manifest(tmp_path, BASE + """
images:
  - {id: 7, name: a, pixels: {id: 40, sizeX: 1, sizeY: 1, sizeC: 2, pixelsType: uint8}}
datasets: [{id: 3, name: d, images: [7]}]
""")
    graph = manifest.load(path, tmp_path / "hashes.json")
    channel_ids = sorted(key[1] for key in graph.objects if key[0] == "Channel")
    assert channel_ids == [1, 2]
    assert ("Pixels", 40) in graph.objects
    assert sorted(key[1] for key in graph.objects if key[0] == "DatasetImageLink") == [1]


def test_manifest_units_and_colours(tmp_path):
    path = write_manifest(tmp_path, BASE + """
images:
  - id: 1
    name: a
    pixels:
      sizeX: 1
      sizeY: 1
      pixelsType: uint16
      physicalSizeX: "0.5 nm"
      physicalSizeY: {value: 2, unit: MILLIMETER}
      physicalSizeZ: 1.5
      channels: [{name: GFP, color: "#00FF0080", emissionWave: 510}]
rois:
  - {id: 1, image: 1, shapes: [{id: 1, kind: Point, x: 1, y: 2, strokeColor: "#FF000080"}]}
""")
    repository = Repository(manifest.load(path, tmp_path / "hashes.json"))
    pixels = repository.query_one(
        "select p from Pixels p join fetch p.channels c join fetch c.logicalChannel where p.image.id = 1",
        None, Viewer(2),
    )
    assert pixels.getPhysicalSizeX().getValue() == 0.5
    assert str(pixels.getPhysicalSizeX().getUnit()) == "NANOMETER"
    assert str(pixels.getPhysicalSizeY().getUnit()) == "MILLIMETER"
    assert str(pixels.getPhysicalSizeZ().getUnit()) == "MICROMETER"
    channel = pixels.copyChannels()[0]
    assert (channel.getRed().getValue(), channel.getGreen().getValue(), channel.getAlpha().getValue()) == (0, 255, 128)
    assert channel.getLogicalChannel().getName().getValue() == "GFP"
    point = repository.get("Shape", 1, Viewer(2))
    assert point.getStrokeColor().getValue() == (0xFF000080 - (1 << 32))


# The sample repository


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Repository:
    return Repository.load(SAMPLE, hash_sidecar=tmp_path_factory.mktemp("sample") / "hashes.json")


def test_sample_bob_cannot_see_private(sample):
    assert 22 in image_ids(sample, Viewer(2, -1))
    assert 22 not in image_ids(sample, Viewer(3, -1))


def test_sample_anaphase_tag_on_several_images(sample):
    rows = sample.projection(
        "select l.parent.id from ImageAnnotationLink l where l.child.textValue = 'anaphase'", None, Viewer(3)
    )
    assert len(rows) >= 2


def test_sample_every_annotation_kind(sample):
    kinds = {type(a).__name__ for a in sample.query("select a from Annotation a", None, Viewer(2))}
    assert kinds == {
        "TagAnnotationI", "CommentAnnotationI", "MapAnnotationI", "FileAnnotationI", "LongAnnotationI",
        "DoubleAnnotationI", "BooleanAnnotationI", "TimestampAnnotationI", "TermAnnotationI",
        "XmlAnnotationI", "ListAnnotationI",
    }


def test_sample_every_shape_kind(sample):
    kinds = {type(s).__name__ for s in sample.query("select s from Shape s", None, Viewer(2))}
    assert kinds == {"RectangleI", "EllipseI", "PointI", "LineI", "PolylineI", "PolygonI", "LabelI", "MaskI"}


def test_sample_hashes_match_files(sample):
    for original_file in sample.query("select o from OriginalFile o where o.mimetype <> 'Repository'", None, Viewer(2)):
        file_id = original_file.getId().getValue()
        file_content = sample.graph.contents[file_id]
        assert original_file.getHash().getValue() == content.sha1_hex(file_content)
        assert original_file.getSize().getValue() == file_content.size


def test_sample_non_ascii_name(sample):
    original_file = sample.get("OriginalFile", 1501, Viewer(2))
    assert original_file.getName().getValue() == "Zellkern Übersicht µm.tif"
    assert original_file.getPath().getValue().endswith("/Mikroskopie Übersicht/")


def test_sample_companion_verdict(sample):
    assert used_files(sample, 1, Viewer(2)) == ([101], [], [102], [])
    assert used_files(sample, 15, Viewer(2)) == ([1201], [], [], [])


# Generated repositories


def test_generated_repository_loads_and_serves(tmp_path):
    from omerofs.testserver import generate

    manifest_path = generate.generate(tmp_path, images=25, files_per_image=2, file_bytes=100,
                                      big_files=1, big_file_gib=0.01, shared_content=False)
    repository = Repository.load(manifest_path, hash_sidecar=tmp_path / "hashes.json")
    viewer = Viewer(2)
    count = repository.projection("select count(i.id) from Image i", None, viewer)
    assert count[0][0].getValue() == 26
    links = repository.projection(
        "select count(l.id) from DatasetImageLink l where l.parent.id = 1", None, viewer
    )
    assert links[0][0].getValue() == 26
    tagged = repository.projection(
        "select count(l.id) from ImageAnnotationLink l where l.child.textValue = 'batch-0'", None, viewer
    )
    assert tagged[0][0].getValue() == 3
    first = repository.original_file_bytes(1000, viewer)
    second = repository.original_file_bytes(1001, viewer)
    assert first.read(0, 100) != second.read(0, 100)
    for original_file in repository.query("select o from OriginalFile o where o.repo is not null", None, viewer):
        file_content = repository.graph.contents[original_file.getId().getValue()]
        assert original_file.getHash().getValue() == content.sha1_hex(file_content)


def test_generated_big_file_is_sparse_with_markers(tmp_path):
    import json

    from omerofs.testserver import generate

    generate.generate(tmp_path, images=0, files_per_image=1, file_bytes=10,
                      big_files=1, big_file_gib=0.01, shared_content=True)
    markers = json.loads((tmp_path / "markers.json").read_text())
    (file_id, file_markers), = markers.items()
    path = tmp_path / "data" / "big-0.raw"
    assert path.stat().st_size == int(0.01 * GIB)
    assert path.stat().st_blocks * 512 < path.stat().st_size
    with open(path, "rb") as handle:
        for offset, data in file_markers:
            handle.seek(offset)
            assert handle.read(len(data) // 2) == bytes.fromhex(data)


def test_big_file_markers_straddle_32_bit_limits():
    from omerofs.testserver import generate

    offsets = [offset for offset, _ in generate.big_file_markers(0, 6 * GIB)]
    assert any(offset < 2 * GIB < offset + 8 for offset in offsets)
    assert any(offset < 4 * GIB < offset + 8 for offset in offsets)
    assert any(offset > 4 * GIB for offset in offsets)
    assert max(offsets) + 16 >= 6 * GIB - 1
