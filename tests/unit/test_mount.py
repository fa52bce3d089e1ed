"""The mount daemon's start-up report, without a kernel mount."""

import errno
import threading

import pytest
import trio
import trio.testing

from omerofs import mount


def test_daemon_stopped_before_first_request_is_not_ready(monkeypatch):
    reports = []
    release = threading.Event()

    def unanswered_stat(path, *args, **kwargs):
        # The daemon's own mount point, whose request the stopped main loop never serves.
        release.wait()
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", path)

    async def main():
        monkeypatch.setattr(mount.os, "stat", unanswered_stat)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mount._announce, "/mnt/omero", reports.append)
            await trio.testing.wait_all_tasks_blocked()
            # SIGTERM ends the main loop, and _serve then cancels _announce.
            nursery.cancel_scope.cancel()
        monkeypatch.undo()
        release.set()

    trio.run(main)
    assert reports == []


@pytest.mark.allow_warnings
def test_failed_first_request_is_reported_and_unmounts(monkeypatch):
    reports = []
    terminated = []

    def failing_stat(path, *args, **kwargs):
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", path)

    monkeypatch.setattr(mount.pyfuse3, "terminate", lambda: terminated.append(True))

    async def main():
        monkeypatch.setattr(mount.os, "stat", failing_stat)
        await mount._announce("/mnt/omero", reports.append)
        monkeypatch.undo()

    trio.run(main)
    assert reports == ["the new mount at /mnt/omero failed its first request: Transport endpoint is not connected"]
    assert terminated == [True]
