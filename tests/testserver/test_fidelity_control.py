"""The test server's process, counters and fault knobs, driven through its control endpoint."""

from __future__ import annotations

import contextlib
import signal
import time

import Ice
import omero
import omero.clients
import pytest

from omerofs.testserver.control import ControlError

KNOB_NAMES = {
    "latency_ms", "bandwidth", "drop_after_reads", "fail_next_read",
    "corrupt_reads", "expire_sessions", "refuse_connections",
}


@contextlib.contextmanager
def session(server, user="alice", password="omero"):
    client = omero.client(server.host)
    try:
        yield client, client.createSession(user, password)
    finally:
        client.__del__()  # ignores the errors of a session the test broke


def open_store(factory, file_id=101):
    store = factory.createRawFileStore()
    store.setFileId(file_id)
    return store


# Process


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_server_stops_cleanly_on_signal(omero_server_factory, signal_number):
    server = omero_server_factory()

    server.process.send_signal(signal_number)
    status = server.process.wait(timeout=15)
    rest = server.process.stdout.read()

    assert status == 0
    assert rest == ""
    assert "Traceback" not in server.log_text()


def test_start_options_set_knobs(omero_server_factory):
    server = omero_server_factory(
        "--latency-ms", "5", "--bandwidth-bytes-per-s", "1000000",
        "--fault", "corrupt_reads", "--fault", "drop_after_reads=7",
    )

    knobs = server.control.knobs()

    assert set(knobs) == KNOB_NAMES
    assert knobs["latency_ms"] == 5
    assert knobs["bandwidth"] == 1000000
    assert knobs["corrupt_reads"] is True
    assert knobs["drop_after_reads"] == 7


# Counters


def test_counters_count_every_operation(omero_server, reset_knobs, sample_manifest, tmp_path):
    size = sample_manifest.original_files()[402]["source"].stat().st_size
    block = 1024 * 1024
    reset_knobs.reset()

    with session(omero_server) as (client, factory):
        original_file = factory.getQueryService().get("OriginalFile", 402)
        client.download(original_file, str(tmp_path / "file"))
    counters = reset_knobs.counters()

    assert counters["Router.createSession"] == 1
    assert counters["ServiceFactory.createRawFileStore"] == 1
    assert counters["IQuery.get"] == 2
    assert counters["RawFileStore.setFileId"] == 1
    assert counters["RawFileStore.read"] == max(1, -(-size // block))
    assert counters["RawFileStore.close"] == 1
    assert counters["Router.destroySession"] == 1


def test_counters_reset(omero_server, reset_knobs):
    with session(omero_server):
        pass

    reset_knobs.reset()

    assert reset_knobs.counters() == {}


# Knobs


def test_unknown_knob_is_rejected(omero_server, reset_knobs):
    with pytest.raises(ControlError, match="unknown knob"):
        reset_knobs.set(no_such_knob=1)
    with pytest.raises(ControlError, match="latency_ms"):
        reset_knobs.set(latency_ms="slow")


def test_latency_delays_every_call(omero_server, reset_knobs):
    with session(omero_server) as (_, factory):
        query = factory.getQueryService()
        reset_knobs.set(latency_ms=200)
        started = time.monotonic()
        query.get("Image", 1)
        elapsed = time.monotonic() - started

    assert elapsed >= 0.2


def test_bandwidth_limits_reads(omero_server, reset_knobs):
    with session(omero_server) as (_, factory):
        store = open_store(factory)
        reset_knobs.set(bandwidth=200_000)
        started = time.monotonic()
        store.read(0, 100_000)
        store.read(100_000, 100_000)
        elapsed = time.monotonic() - started

    assert elapsed >= 0.9


def test_fail_next_read_fails_once(omero_server, reset_knobs):
    with session(omero_server) as (_, factory):
        store = open_store(factory)
        reset_knobs.set(fail_next_read=True)
        with pytest.raises(omero.ResourceError):
            store.read(0, 10)
        data = store.read(0, 10)

    assert len(data) == 10
    assert reset_knobs.knobs()["fail_next_read"] is False


def test_drop_after_reads_closes_connection(omero_server, reset_knobs):
    with session(omero_server) as (_, factory):
        store = open_store(factory)
        reset_knobs.set(drop_after_reads=2)
        store.read(0, 10)
        store.read(10, 10)
        with pytest.raises(Ice.ConnectionLostException):
            store.read(20, 10)

    assert reset_knobs.knobs()["drop_after_reads"] is None


def test_corrupt_reads_change_bytes(omero_server, reset_knobs, sample_manifest):
    expected = sample_manifest.original_files()[101]["source"].read_bytes()[:16]

    with session(omero_server) as (_, factory):
        store = open_store(factory)
        reset_knobs.set(corrupt_reads=True)
        corrupted = store.read(0, 16)
        reset_knobs.set(corrupt_reads=False)
        clean = store.read(0, 16)

    assert corrupted != expected
    assert corrupted[1:] == expected[1:]
    assert clean == expected


def test_expire_sessions_ends_open_sessions(omero_server_factory):
    server = omero_server_factory()

    with session(server) as (_, factory):
        server.control.set(expire_sessions=True)
        with pytest.raises(Ice.ObjectNotExistException):
            factory.getQueryService()

    with session(server) as (_, factory):
        assert factory.getAdminService().getEventContext().userName == "alice"
    assert server.control.knobs()["expire_sessions"] is False


def test_refuse_connections_keeps_open_ones(omero_server_factory):
    server = omero_server_factory()

    with session(server) as (_, factory):
        query = factory.getQueryService()
        server.control.set(refuse_connections=True)
        with pytest.raises(Ice.ConnectionLostException):
            with session(server):
                pass
        still_working = query.get("Image", 1)
        server.control.set(refuse_connections=False)

    with session(server) as (_, factory):
        assert factory.getAdminService().getEventContext().userName == "alice"
    assert still_working.getId().getValue() == 1
