"""Connection retries without a server: a server that stopped answering costs one wait, not one per call."""

import time

import pytest

from omerofs.errors import ServerUnavailable
from omerofs.remote import connection as remote
from omerofs.remote.connection import Connection, Credentials, ServerAddress


@pytest.fixture
def unreachable(monkeypatch):
    """A Connection whose every call finds the server unreachable; counts the calls that reach it."""
    monkeypatch.setattr(remote, "UNREACHABLE_SECONDS", 0.5)
    connection = Connection(ServerAddress("tcp://127.0.0.1:1", 1), Credentials("alice", "secret"),
                            retry_seconds=0.2)
    monkeypatch.setattr(connection, "_current", lambda: (object(), 1))
    monkeypatch.setattr(connection, "_reconnect", lambda generation: None)
    attempts = []

    def call():
        def refused(session):
            attempts.append(time.monotonic())
            raise ServerUnavailable("Reading: cannot reach the server (ConnectionRefusedException)")
        return connection._call("Reading", refused)

    return call, attempts


def test_calls_fail_at_once_after_the_server_stopped_answering(unreachable):
    call, attempts = unreachable
    with pytest.raises(ServerUnavailable):
        call()
    tried = len(attempts)
    assert tried >= 1

    started = time.monotonic()
    for _ in range(5):
        with pytest.raises(ServerUnavailable):
            call()
    assert len(attempts) == tried
    assert time.monotonic() - started < 0.1


def test_server_is_tried_again_after_the_pause(unreachable):
    call, attempts = unreachable
    with pytest.raises(ServerUnavailable):
        call()
    tried = len(attempts)
    time.sleep(0.6)
    with pytest.raises(ServerUnavailable):
        call()
    assert len(attempts) > tried
