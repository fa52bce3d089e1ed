"""The unmodified `omero` command line against the test server.

Exit statuses: the command line exits with `die(code)`, and the operating
system keeps the low 8 bits, so `die(601)` shows up as 601 % 256 = 89.
"""

from __future__ import annotations

import csv
import filecmp
import io
import time
from pathlib import Path

import pytest

# omero's exit statuses (omero/plugins/download.py, sessions.py, hql.py)
EXIT_RESTRICTED = 66
EXIT_NO_SUCH_OBJECT = 601 % 256
EXIT_LOGIN_FAILED = 44  # no usable password and no terminal to ask for one
EXIT_NO_SESSION = 52


def hql_rows(result) -> list[list[str]]:
    """Parse `omero hql --style csv` output into rows without the index column."""
    rows = list(csv.reader(io.StringIO(result.stdout)))
    return [row[1:] for row in rows[1:] if row]


def test_login_stores_session(omero_server, omero_cli):
    result = omero_cli.login(omero_server)

    assert result.returncode == 0, result.stderr
    assert "Created session for alice" in result.stderr
    stored = list(omero_cli.session_dir.rglob("*"))
    session_files = [p for p in stored if p.is_file() and not p.name.startswith("._")]
    assert len(session_files) == 1
    properties = session_files[0].read_text()
    assert "omero.user=alice" in properties
    assert f"omero.port={omero_server.port}" in properties
    assert "omero.sess=" + session_files[0].name in properties


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("nobody", "omero")])
def test_login_rejects_bad_credentials(omero_server, omero_cli, user, password):
    result = omero_cli.login(omero_server, user, password)

    assert result.returncode == EXIT_LOGIN_FAILED
    assert f"Password check failed for '{user}'" in result.stderr


def test_hql_lists_images_of_current_group(omero_server, omero_cli, sample_manifest):
    omero_cli.login(omero_server)

    result = omero_cli.run(
        "hql", "-q", "--style", "csv", "--limit", "1000", "select i.id, i.name from Image i"
    )

    assert result.returncode == 0, result.stderr
    expected = {
        (str(image["id"]), image["name"])
        for image in sample_manifest.objects("images")
        if sample_manifest.readable(image, "alice", "lab")
    }
    assert {tuple(row) for row in hql_rows(result)} == expected


def test_login_into_other_group(omero_server, omero_cli, sample_manifest):
    login = omero_cli.run(
        "login", "-s", omero_server.host, "-u", "alice", "-w", "omero", "-g", "alice-private"
    )
    result = omero_cli.run(
        "hql", "-q", "--style", "csv", "--limit", "1000", "select i.id from Image i"
    )

    assert login.returncode == 0, login.stderr
    assert "Current group: alice-private" in login.stderr
    assert result.returncode == 0, result.stderr
    expected = sample_manifest.readable_ids("images", "alice", "alice-private")
    assert {int(row[0]) for row in hql_rows(result)} == expected


def test_hql_pages_with_limit_and_offset(omero_server, omero_cli):
    omero_cli.login(omero_server)

    result = omero_cli.run(
        "hql", "-q", "--style", "csv", "--limit", "3", "--offset", "2",
        "select i.id from Image i order by i.id",
    )

    assert result.returncode == 0, result.stderr
    assert hql_rows(result) == [["3"], ["4"], ["5"]]


def test_hql_bad_query_fails(omero_server, omero_cli):
    omero_cli.login(omero_server)

    result = omero_cli.run("hql", "-q", "select bogus from Nothing")

    assert result.returncode == EXIT_NO_SESSION
    assert "Bad query" in result.stderr
    assert "Nothing" in result.stderr


def test_download_original_file_is_identical(omero_server, omero_cli, sample_manifest):
    omero_cli.login(omero_server)
    original_file = sample_manifest.original_files()[101]
    target = omero_cli.home / "file101"

    result = omero_cli.run("download", "OriginalFile:101", str(target))

    assert result.returncode == 0, result.stderr
    assert filecmp.cmp(target, original_file["source"], shallow=False)


def test_download_non_ascii_name_is_identical(omero_server, omero_cli, sample_manifest):
    omero_cli.login(omero_server)
    original_file = sample_manifest.original_files()[1501]
    target = omero_cli.home / "Übersicht copy.tif"

    result = omero_cli.run("download", "OriginalFile:1501", str(target))

    assert result.returncode == 0, result.stderr
    assert filecmp.cmp(target, original_file["source"], shallow=False)


def _fileset_files(sample_manifest, fileset_id: int) -> list[dict]:
    return [f for f in sample_manifest.original_files().values() if f["fileset"] == fileset_id]


def _assert_fileset_downloaded(target: Path, files: list[dict]) -> None:
    downloaded = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    expected = sorted(Path(f["path"].removeprefix(f["template_prefix"])) / f["name"] for f in files)
    assert downloaded == expected
    for f in files:
        local = target / f["path"].removeprefix(f["template_prefix"]) / f["name"]
        assert filecmp.cmp(local, f["source"], shallow=False), f"{local} differs from {f['source']}"


@pytest.mark.parametrize("fileset_id", [3, 4, 15])
def test_download_fileset_is_identical(omero_server, omero_cli, sample_manifest, fileset_id):
    omero_cli.login(omero_server)
    target = omero_cli.home / f"fileset{fileset_id}"

    result = omero_cli.run("download", f"Fileset:{fileset_id}", str(target))

    assert result.returncode == 0, result.stderr
    _assert_fileset_downloaded(target, _fileset_files(sample_manifest, fileset_id))


def test_download_image_fetches_its_fileset(omero_server, omero_cli, sample_manifest):
    omero_cli.login(omero_server)
    image = next(i for i in sample_manifest.objects("images") if i["id"] == 1)
    target = omero_cli.home / "image1"

    result = omero_cli.run("download", "Image:1", str(target))

    assert result.returncode == 0, result.stderr
    assert f"Fileset: {image['fileset']}" in result.stdout
    _assert_fileset_downloaded(target, _fileset_files(sample_manifest, image["fileset"]))


def test_download_every_original_file(omero_server, omero_cli, sample_manifest):
    """Every file alice can read arrives byte-identical, in all of her groups."""
    omero_cli.login(omero_server)
    files = sample_manifest.original_files()
    plate_filesets = _plate_filesets(sample_manifest)

    for file_id, original_file in sorted(files.items()):
        if original_file["fileset"] in plate_filesets:
            continue
        target = omero_cli.home / f"all-{file_id}"
        result = omero_cli.run("download", f"OriginalFile:{file_id}", str(target))
        assert result.returncode == 0, f"OriginalFile:{file_id}: {result.stderr}"
        assert filecmp.cmp(target, original_file["source"], shallow=False), f"OriginalFile:{file_id}"


def _plate_filesets(sample_manifest) -> set[int]:
    """Filesets of images in plates, whose files the sample's policy restricts."""
    plate_images = {
        sample["image"]
        for plate in sample_manifest.objects("plates")
        for well in plate.get("wells", [])
        for sample in well.get("samples", [])
    }
    return {i["fileset"] for i in sample_manifest.objects("images") if i["id"] in plate_images}


def test_download_restricted_file_exits_66(omero_server, omero_cli, sample_manifest):
    omero_cli.login(omero_server)
    restricted = sorted(
        file_id
        for file_id, f in sample_manifest.original_files().items()
        if f["fileset"] in _plate_filesets(sample_manifest)
    )
    assert restricted, "the sample has no files of plate images"

    result = omero_cli.run("download", f"OriginalFile:{restricted[0]}", str(omero_cli.home / "x"))

    assert result.returncode == EXIT_RESTRICTED
    assert f"Download of OriginalFile:{restricted[0]} is restricted" in result.stderr
    assert not (omero_cli.home / "x").exists()


@pytest.mark.parametrize("target", ["OriginalFile:9999", "Image:9999", "Fileset:9999"])
def test_download_unknown_id_exits_601(omero_server, omero_cli, target):
    omero_cli.login(omero_server)

    result = omero_cli.run("download", target, str(omero_cli.home / "x"))

    assert result.returncode == EXIT_NO_SUCH_OBJECT
    assert "No " in result.stderr


def test_download_other_users_private_file_fails(omero_server, omero_cli):
    """bob is not in alice-private, so its archived file does not exist for him."""
    omero_cli.login(omero_server, "bob")

    result = omero_cli.run("download", "OriginalFile:900", str(omero_cli.home / "x"))

    assert result.returncode != 0
    assert not (omero_cli.home / "x").exists()


def test_logout_closes_session(omero_server, omero_cli):
    omero_cli.login(omero_server)

    logout = omero_cli.run("logout")
    after = omero_cli.run("hql", "-q", "select i.id from Image i")

    assert logout.returncode == 0, logout.stderr
    assert after.returncode == EXIT_NO_SESSION


def test_expired_session_needs_new_login(omero_server_factory, omero_cli):
    server = omero_server_factory("--session-timeout", "2")
    login = omero_cli.login(server)
    assert login.returncode == 0, login.stderr
    assert "Idle timeout: 2 s" in login.stderr

    time.sleep(3)
    result = omero_cli.run("hql", "-q", "select i.id from Image i")

    assert result.returncode == EXIT_NO_SESSION
    assert "Previous session expired for alice" in result.stdout
