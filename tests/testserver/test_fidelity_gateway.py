"""omero-py's BlitzGateway against the test server: object look-ups and their errors."""

from __future__ import annotations

import contextlib

import omero
import pytest
from omero.gateway import BlitzGateway

# BlitzGateway kind -> manifest section
SECTIONS = {
    "Image": "images",
    "Dataset": "datasets",
    "Project": "projects",
    "Screen": "screens",
    "Plate": "plates",
}


@contextlib.contextmanager
def connected(server, user="alice", password="omero", group=None):
    conn = BlitzGateway(user, password, host=server.host, port=server.port, group=group)
    assert conn.connect(), conn.getLastError()
    try:
        yield conn
    finally:
        conn.close()


def expected_file_ids(manifest, user, group=None) -> set[int]:
    """Original files `user` reads: files, fileset files and the repository descriptions."""
    files = {
        file_id
        for file_id, entry in manifest.original_files().items()
        if manifest.readable(entry, user, group)
    }
    return files | {repository["id"] for repository in manifest.data["repositories"]}


def file_annotations(manifest) -> list[dict]:
    return [a for a in manifest.objects("annotations") if a["kind"] == "File"]


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_getobjects_all_groups_match_manifest(omero_server, sample_manifest, kind):
    with connected(omero_server) as conn:
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        found = {obj.getId(): obj.getName() for obj in conn.getObjects(kind)}

    expected = {
        entry["id"]: entry["name"]
        for entry in sample_manifest.objects(SECTIONS[kind])
        if sample_manifest.readable(entry, "alice")
    }
    assert found == expected


def test_getobjects_original_files_match_manifest(omero_server, sample_manifest):
    with connected(omero_server) as conn:
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        found = {obj.getId(): obj for obj in conn.getObjects("OriginalFile")}

    assert set(found) == expected_file_ids(sample_manifest, "alice")
    for file_id, entry in sample_manifest.original_files().items():
        original_file = found[file_id]
        assert original_file.getName() == entry["name"]
        assert original_file.getPath() == entry["path"]
        assert original_file.getSize() == entry["source"].stat().st_size


def test_getobjects_file_annotations_match_manifest(omero_server, sample_manifest):
    with connected(omero_server) as conn:
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        found = {obj.getId(): obj.getFile().getId() for obj in conn.getObjects("FileAnnotation")}

    expected = {a["id"]: a["file"] for a in file_annotations(sample_manifest)}
    assert found == expected


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_getobject_by_id_matches_manifest(omero_server, sample_manifest, kind):
    entries = sample_manifest.objects(SECTIONS[kind])

    with connected(omero_server) as conn:
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        for entry in entries:
            obj = conn.getObject(kind, entry["id"])
            assert obj is not None, f"{kind}:{entry['id']}"
            assert obj.getName() == entry["name"]
            assert obj.getDescription() == entry.get("description", "")
            assert obj.getOwnerOmeName() == entry["owner"]
            assert obj.getDetails().getGroup().getName() == entry["group"]


def test_getobject_file_annotation_file(omero_server, sample_manifest):
    files = sample_manifest.original_files()

    with connected(omero_server) as conn:
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        for annotation in file_annotations(sample_manifest):
            found = conn.getObject("FileAnnotation", annotation["id"])
            assert found.getFile().getName() == files[annotation["file"]]["name"]


def test_getobjects_current_group_only(omero_server, sample_manifest):
    with connected(omero_server) as conn:
        found = {obj.getId() for obj in conn.getObjects("Image")}
        group_name = conn.getEventContext().groupName

    assert group_name == "lab"
    assert found == sample_manifest.readable_ids("images", "alice", "lab")


def test_group_switch_shows_private_group(omero_server, sample_manifest):
    private = sample_manifest.groups["alice-private"]["id"]

    with connected(omero_server) as conn:
        assert conn.setGroupForSession(private)
        found = {obj.getId() for obj in conn.getObjects("Image")}
        group_name = conn.getEventContext().groupName

    assert group_name == "alice-private"
    assert found == sample_manifest.readable_ids("images", "alice", "alice-private")


def test_other_user_cannot_see_private_group(omero_server, sample_manifest):
    private_images = sample_manifest.readable_ids("images", "alice", "alice-private")
    assert private_images

    with connected(omero_server, "bob") as conn:
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        found = {obj.getId() for obj in conn.getObjects("Image")}
        lookups = [conn.getObject("Image", image_id) for image_id in private_images]

    assert found == sample_manifest.readable_ids("images", "bob")
    assert not found & private_images
    assert lookups == [None] * len(private_images)


def test_fileset_list_files_matches_manifest(omero_server, sample_manifest):
    expected = sorted(
        f["name"] for f in sample_manifest.original_files().values() if f["fileset"] == 3
    )

    with connected(omero_server) as conn:
        image = conn.getObject("Image", 3)
        fileset = image.getFileset()
        names = sorted(f.getName() for f in fileset.listFiles())

    assert fileset.getId() == 3
    assert names == expected


def test_image_fileset_unloaded_when_not_fetched(omero_server):
    with connected(omero_server) as conn:
        image = conn.getObject("Image", 1)

    assert image._obj.fileset is not None
    assert not image._obj.fileset.isLoaded()
    assert image._obj.fileset.id.val == 1


def test_unknown_id_is_none_and_get_raises(omero_server):
    with connected(omero_server) as conn:
        assert conn.getObject("Image", 9999) is None
        with pytest.raises(omero.ValidationException):
            conn.getQueryService().get("Image", 9999, {"omero.group": "-1"})


def test_get_unreadable_object_raises_security_violation(omero_server, sample_manifest):
    image_id = min(sample_manifest.readable_ids("images", "alice", "alice-private"))

    with connected(omero_server, "bob") as conn:
        with pytest.raises(omero.SecurityViolation):
            conn.getQueryService().get("Image", image_id, {"omero.group": "-1"})


def test_context_group_not_a_member_raises_security_violation(omero_server, sample_manifest):
    private = sample_manifest.groups["alice-private"]["id"]

    with connected(omero_server, "bob") as conn:
        with pytest.raises(omero.SecurityViolation):
            conn.getQueryService().findAllByQuery(
                "select i from Image i", None, {"omero.group": str(private)}
            )


def test_bad_hql_raises_query_exception(omero_server):
    with connected(omero_server) as conn:
        with pytest.raises(omero.QueryException) as raised:
            conn.getQueryService().findAllByQuery("select x from NoSuchClass x", None)

    assert "NoSuchClass" in raised.value.message


def test_find_by_query_with_many_rows_raises(omero_server):
    with connected(omero_server) as conn:
        with pytest.raises(omero.ApiUsageException):
            conn.getQueryService().findByQuery("select i from Image i", None)


def test_connect_with_wrong_password_fails(omero_server):
    conn = BlitzGateway("alice", "wrong", host=omero_server.host, port=omero_server.port)
    try:
        assert not conn.connect()
    finally:
        conn.close()


def test_connect_with_unknown_group_falls_back(omero_server):
    """BlitzGateway retries without the group when the user is not in it."""
    with connected(omero_server, "bob", group="alice-private") as conn:
        assert conn.getEventContext().groupName == "lab"
