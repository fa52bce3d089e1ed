"""omero-py's client against the test server: sessions, raw file reads, commands, errors."""

from __future__ import annotations

import contextlib
import hashlib
import time

import Glacier2
import Ice
import omero
import omero.clients  # first: it loads the model, which omero.cmd needs
import omero.callbacks
import omero.cmd
import pytest
from omero.rtypes import rstring


@contextlib.contextmanager
def session(server, user="alice", password="omero"):
    """Yield (client, service factory) for a new session; close it afterwards."""
    client = omero.client(server.host)
    try:
        yield client, client.createSession(user, password)
    finally:
        client.closeSession()


@contextlib.contextmanager
def joined(server, key):
    client = omero.client(server.host)
    try:
        yield client, client.joinSession(key)
    finally:
        close_quietly(client)


def close_quietly(client):
    """Close a client whose login may have failed.

    After a failed login, Glacier2's destroySession raises
    SessionNotExistException. omero-py's closeSession does not catch it because
    its `except` names a different class of the same name, but `__del__` does.
    """
    client.__del__()


def close_session(factory, key) -> int:
    model = omero.model.SessionI()
    model.uuid = rstring(key)
    return factory.getSessionService().closeSession(model)


# Sessions


def test_session_key_names_the_service_factory(omero_server):
    with session(omero_server) as (client, factory):
        key = client.getSessionId()
        context = factory.getAdminService().getEventContext()
        model = factory.getSessionService().getSession(key)

    assert factory.ice_getIdentity().name == key
    assert context.sessionUuid == key
    assert context.userName == "alice"
    assert context.groupName == "lab"
    assert model.getUuid().getValue() == key
    assert model.getTimeToIdle().getValue() == 600 * 1000
    assert model.getTimeToLive().getValue() == 0


@pytest.mark.parametrize(
    "user,password,reason",
    [
        ("alice", "wrong", "Password check failed for 'alice': [id=2]"),
        ("nobody", "omero", "Password check failed for 'nobody': []"),
    ],
)
def test_bad_credentials_raise_permission_denied(omero_server, user, password, reason):
    client = omero.client(omero_server.host)
    try:
        with pytest.raises(Glacier2.PermissionDeniedException) as raised:
            client.createSession(user, password)
    finally:
        close_quietly(client)

    assert raised.value.reason == reason


def test_empty_password_is_rejected_by_the_client(omero_server):
    client = omero.client(omero_server.host)
    try:
        with pytest.raises(omero.ClientError):
            client.createSession("alice", "")
    finally:
        close_quietly(client)


def test_session_key_needs_equal_user_name(omero_server):
    with session(omero_server) as (client, _):
        key = client.getSessionId()
        other = omero.client(omero_server.host)
        try:
            with pytest.raises(Glacier2.PermissionDeniedException) as raised:
                other.createSession("alice", key)
        finally:
            close_quietly(other)

    assert raised.value.reason == "username and password must be equal; use joinSession"


def test_join_by_key_shares_the_session(omero_server):
    with session(omero_server) as (client, factory):
        key = client.getSessionId()
        with joined(omero_server, key) as (other, other_factory):
            assert other.getSessionId() == key
            count = other_factory.getSessionService().getReferenceCount(key)

    assert count == 2


def test_join_unknown_key_raises_permission_denied(omero_server):
    client = omero.client(omero_server.host)
    try:
        with pytest.raises(Glacier2.PermissionDeniedException):
            client.joinSession("00000000-0000-0000-0000-000000000000")
    finally:
        close_quietly(client)


def test_close_session_counts_references(omero_server):
    with session(omero_server) as (client, factory):
        key = client.getSessionId()
        factory.detachOnDestroy()
        with joined(omero_server, key) as (_, other_factory):
            other_factory.detachOnDestroy()
            results = [close_session(other_factory, key), close_session(other_factory, key)]

    assert results == [1, -2]
    with pytest.raises(Glacier2.PermissionDeniedException):
        with joined(omero_server, key):
            pass


def test_detached_session_outlives_its_client(omero_server):
    with session(omero_server) as (client, factory):
        key = client.getSessionId()
        factory.detachOnDestroy()

    with joined(omero_server, key) as (_, factory):
        assert factory.getAdminService().getEventContext().sessionUuid == key
        factory.closeOnDestroy()


def test_closed_client_ends_session_by_default(omero_server):
    with session(omero_server) as (client, _):
        key = client.getSessionId()

    with pytest.raises(Glacier2.PermissionDeniedException):
        with joined(omero_server, key):
            pass


def test_expired_session(omero_server_factory):
    server = omero_server_factory("--session-timeout", "2")
    client = omero.client(server.host)
    try:
        factory = client.createSession("alice", "omero")
        key = client.getSessionId()
        query = factory.getQueryService()
        time.sleep(3)

        with pytest.raises(Ice.ObjectNotExistException):
            factory.keepAlive(None)
        with pytest.raises(Ice.ObjectNotExistException):
            query.get("Image", 1)
    finally:
        close_quietly(client)

    with pytest.raises(Glacier2.PermissionDeniedException) as raised:
        with joined(server, key):
            pass
    assert raised.value.reason.startswith(f"Password check failed for '{key}': [user=alice, created=")
    assert ", closed=" in raised.value.reason


def test_keep_alive_holds_session_open(omero_server_factory):
    server = omero_server_factory("--session-timeout", "2")

    with session(server) as (_, factory):
        for _ in range(4):
            time.sleep(1)
            factory.keepAlive(None)
        context = factory.getAdminService().getEventContext()

    assert context.userName == "alice"


def test_security_contexts_and_group_switch(omero_server, sample_manifest):
    private = sample_manifest.groups["alice-private"]["id"]

    with session(omero_server) as (_, factory):
        groups = {g.getName().getValue() for g in factory.getSecurityContexts()}
        factory.setSecurityContext(omero.model.ExperimenterGroupI(private, False))
        switched = factory.getAdminService().getEventContext().groupName

    assert {"lab", "alice-private"} <= groups
    assert switched == "alice-private"


def test_group_switch_to_foreign_group_raises(omero_server, sample_manifest):
    private = sample_manifest.groups["alice-private"]["id"]

    with session(omero_server, "bob") as (_, factory):
        with pytest.raises(omero.SecurityViolation):
            factory.setSecurityContext(omero.model.ExperimenterGroupI(private, False))


def test_admin_looks_up_users_and_groups(omero_server, sample_manifest):
    bob = sample_manifest.users["bob"]
    lab = sample_manifest.groups["lab"]

    with session(omero_server) as (_, factory):
        admin = factory.getAdminService()
        by_id = admin.getExperimenter(bob["id"])
        by_name = admin.lookupExperimenter("bob")
        group = admin.lookupGroup("lab")
        with pytest.raises(omero.ApiUsageException):
            admin.lookupExperimenter("nobody")

    assert by_id.getOmeName().getValue() == "bob"
    assert by_name.getId().getValue() == bob["id"]
    assert "lab" in {m.getParent().getName().getValue() for m in by_name.copyGroupExperimenterMap()}
    assert group.getId().getValue() == lab["id"]
    assert {m.getChild().getOmeName().getValue() for m in group.copyGroupExperimenterMap()} == {
        "alice", "bob"
    }


# Configuration and repositories


def test_config_reports_database_uuid_and_version(omero_server, sample_manifest):
    with session(omero_server) as (_, factory):
        config = factory.getConfigService()
        uuid = config.getDatabaseUuid()
        version = config.getVersion()
        unset = config.getConfigValue("omero.no.such.key")

    assert uuid == sample_manifest.data["database_uuid"]
    assert version.startswith("5.")
    assert unset == ""


def test_repositories_are_described(omero_server, sample_manifest):
    with session(omero_server) as (client, factory):
        repositories = factory.sharedResources().repositories()
        managed = client.getManagedRepository()

    described = {d.getName().getValue(): d for d in repositories.descriptions}
    assert set(described) == {r["name"] for r in sample_manifest.data["repositories"]}
    for record in sample_manifest.data["repositories"]:
        description = described[record["name"]]
        assert description.getMimetype().getValue() == "Repository"
        assert description.getHash().getValue() == record["uuid"]
    assert len(repositories.proxies) == len(repositories.descriptions)
    assert managed is None


# Raw file reads


def test_raw_file_store_reads_whole_file(omero_server, sample_manifest):
    original_file = sample_manifest.original_files()[402]
    data = original_file["source"].read_bytes()

    with session(omero_server) as (_, factory):
        store = factory.createRawFileStore()
        store.setFileId(402, {"omero.group": "-1"})
        size = store.size()
        chunks = [store.read(offset, 65536) for offset in range(0, size, 65536)]
        store.close()

    assert size == len(data)
    assert b"".join(chunks)[:size] == data
    assert hashlib.sha1(b"".join(chunks)[:size]).hexdigest() == hashlib.sha1(data).hexdigest()


def test_read_past_end_is_zero_filled(omero_server, sample_manifest):
    """OMERO fills a zeroed array of the requested length, so the tail is zeros."""
    data = sample_manifest.original_files()[102]["source"].read_bytes()

    with session(omero_server) as (_, factory):
        store = factory.createRawFileStore()
        store.setFileId(102)
        tail = store.read(len(data) - 10, 30)
        beyond = store.read(len(data) + 100, 5)
        empty = store.read(0, 0)

    assert tail == data[-10:] + bytes(20)
    assert beyond == bytes(5)
    assert empty == b""


@pytest.mark.parametrize(
    "position,length,error",
    [
        (0, 64 * 1000 * 1000 + 1, omero.ApiUsageException),
        (0, -1, omero.InternalException),
        (-1, 10, omero.InternalException),
    ],
)
def test_bad_read_arguments_raise(omero_server, position, length, error):
    with session(omero_server) as (_, factory):
        store = factory.createRawFileStore()
        store.setFileId(101)
        with pytest.raises(error):
            store.read(position, length)


def test_read_before_set_file_id_raises(omero_server):
    with session(omero_server) as (_, factory):
        store = factory.createRawFileStore()
        with pytest.raises(omero.ApiUsageException):
            store.read(0, 10)


def test_set_file_id_unknown_raises_validation(omero_server):
    with session(omero_server) as (_, factory):
        store = factory.createRawFileStore()
        with pytest.raises(omero.ValidationException):
            store.setFileId(9999, {"omero.group": "-1"})


def test_restricted_file_has_size_but_no_bytes(omero_server, sample_manifest):
    with session(omero_server) as (_, factory):
        query = factory.getQueryService()
        plate_file_id = query.projection(
            "select fse.originalFile.id from FilesetEntry fse, WellSample ws "
            "where fse.fileset = ws.image.fileset",
            None,
            {"omero.group": "-1"},
        )[0][0].getValue()
        store = factory.createRawFileStore()
        store.setFileId(plate_file_id, {"omero.group": "-1"})
        size = store.size()
        with pytest.raises(omero.SecurityViolation):
            store.read(0, 10)

    assert size == sample_manifest.original_files()[plate_file_id]["source"].stat().st_size


def test_closed_store_is_gone(omero_server):
    with session(omero_server) as (_, factory):
        store = factory.createRawFileStore()
        store.setFileId(101)
        store.close()
        with pytest.raises(Ice.ObjectNotExistException):
            store.size()
        alive = factory.keepAlive(store)

    assert alive is False


def test_read_over_message_size_max_fails_fast(omero_server):
    """A request over the server's Ice.MessageSizeMax (64 MiB) breaks the connection."""
    client = omero.client(omero_server.host)
    try:
        factory = client.createSession("alice", "omero")
        started = time.monotonic()
        with pytest.raises(Ice.ConnectionLostException):
            factory.getQueryService().findAllByQuery("x" * (65 * 1024 * 1024), None)
        assert time.monotonic() - started < 30
    finally:
        close_quietly(client)


# Commands


def used_files(client, image_id):
    return client.submit(omero.cmd.UsedFilesRequest(image_id), loops=20, ms=500).getResponse()


def test_used_files_splits_binary_and_companion(omero_server):
    with session(omero_server) as (client, _):
        response = used_files(client, 1)

    assert isinstance(response, omero.cmd.UsedFilesResponse)
    assert response.binaryFilesThisSeries == [101]
    assert response.companionFilesThisSeries == [102]
    assert response.binaryFilesOtherSeries == []
    assert response.companionFilesOtherSeries == []


def test_used_files_of_image_before_filesets(omero_server):
    with session(omero_server) as (client, _):
        response = used_files(client, 22)

    assert isinstance(response, omero.cmd.UsedFilesResponsePreFs)
    assert response.archivedFiles == [900]


def test_used_files_of_unknown_image_is_bad_image(omero_server):
    with session(omero_server) as (client, _):
        with pytest.raises(omero.CmdError) as raised:
            used_files(client, 9999)

    error = raised.value.err
    assert error.name == "bad-image"
    assert error.category == "::omero::cmd::UsedFilesRequest"
    assert "9999" in error.parameters["message"]


def test_do_all_answers_each_request_in_order(omero_server):
    request = omero.cmd.DoAll(requests=[omero.cmd.UsedFilesRequest(imageId=i) for i in (22, 1)])
    with session(omero_server) as (client, _):
        response = client.submit(request, loops=20, ms=250).getResponse()

    assert isinstance(response, omero.cmd.DoAllRsp)
    assert isinstance(response.responses[0], omero.cmd.UsedFilesResponsePreFs)
    assert response.responses[0].archivedFiles == [900]
    assert response.responses[1].binaryFilesThisSeries == [101]
    assert len(response.status) == 2


def test_do_all_with_one_bad_request_is_its_error(omero_server):
    request = omero.cmd.DoAll(requests=[omero.cmd.UsedFilesRequest(imageId=i) for i in (1, 9999)])
    with session(omero_server) as (client, _):
        with pytest.raises(omero.CmdError) as raised:
            client.submit(request, loops=20, ms=250)

    assert raised.value.err.name == "bad-image"
    assert raised.value.err.category == "::omero::cmd::UsedFilesRequest"


class _SlowUsedFiles:
    """A repository whose UsedFilesRequest takes a while, like a real server's."""

    def __init__(self, repository, delay: float):
        self._repository = repository
        self._delay = delay

    def __getattr__(self, name):
        return getattr(self._repository, name)

    def used_files(self, image_id, viewer):
        time.sleep(self._delay)
        return self._repository.used_files(image_id, viewer)


def test_command_result_arrives_by_callback():
    """A response not ready at the client's one poll must come through
    CmdCallback.finished, over the connection the client opened."""
    from omerofs.testserver.process import SAMPLE_MANIFEST
    from omerofs.testserver import store
    from omerofs.testserver.server import TestServer

    repository = _SlowUsedFiles(store.Repository.load(SAMPLE_MANIFEST), delay=1.5)
    server = TestServer(repository)
    port = server.start()
    client = omero.client(f"tcp://127.0.0.1:{port}")
    try:
        factory = client.createSession("alice", "omero")
        handle = factory.submit(omero.cmd.UsedFilesRequest(1))
        callback = omero.callbacks.CmdCallbackI(client, handle)
        polled = callback.getResponse()
        response = callback.loop(10, 500)
        callback.close(True)
    finally:
        client.closeSession()
        server.stop()

    assert polled is None
    assert response.binaryFilesThisSeries == [101]


# Servant coverage


def test_unimplemented_service_raises_operation_not_exist(omero_server):
    with session(omero_server) as (_, factory):
        with pytest.raises(Ice.OperationNotExistException):
            factory.getUpdateService()
