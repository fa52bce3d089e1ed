"""omero.cmd: requests submitted with `ServiceFactory.submit` and their Handles.

A request runs in a worker thread, as OMERO runs it in the background. The client
polls `Handle.getResponse` once and otherwise waits for `CmdCallback.finished`.
The server calls that callback over the connection the client used for
`Handle.addCallback`, the way Glacier2 forwards callbacks, because the callback's
proxy names the router's endpoint and not the client's. A callback added after
the request has finished is notified at once.

Failures follow OMERO's `omero.cmd.Helper`. The response is an `omero.cmd.ERR`
whose category is the request's Slice type ID and whose name states what failed
(`bad-image` for an image the caller cannot read). Its parameters contain the
message, and the status then has the FAILURE and CANCELLED flags.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import traceback

import Ice
import omero
import omero.cmd

from .. import store
from .base import Servant

log = logging.getLogger(__name__)

# Two worker threads are enough because the requests this server handles finish
# in milliseconds.
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="testserver-cmd")


class HandleI(Servant, omero.cmd.Handle):
    """omero.cmd.Handle for one submitted request."""

    def __init__(self, factory, request):
        self.factory = factory
        self.request = request
        self._lock = threading.Lock()
        self._response = None
        self._status = omero.cmd.Status(
            category="",
            name="",
            flags=[],
            parameters={},
            currentStep=0,
            steps=1,
            startTime=int(time.time() * 1000),
            stepStartTimes=[],
            stepStopTimes=[],
            stopTime=0,
        )
        # (connection, callback identity) pairs to notify when the request is done.
        self._callbacks: list[tuple[Ice.Connection, Ice.Identity]] = []

    def start(self) -> None:
        _executor.submit(self._run)

    def _run(self) -> None:
        try:
            response = self._execute()
        except Exception as exc:  # noqa: BLE001 - every failure becomes an ERR response
            response = self._error_response(exc)
        failed = isinstance(response, omero.cmd.ERR)

        with self._lock:
            self._response = response
            self._status.currentStep = 1
            self._status.stopTime = int(time.time() * 1000)
            if failed:
                self._status.flags = [omero.cmd.State.FAILURE, omero.cmd.State.CANCELLED]
            callbacks = list(self._callbacks)
        for connection, identity in callbacks:
            self._notify(connection, identity)

    def _execute(self):
        return self._execute_one(self.request)

    def _execute_one(self, request):
        if isinstance(request, omero.cmd.DoAll):
            return self._do_all(request)
        if isinstance(request, omero.cmd.UsedFilesRequest):
            return self._used_files(request)
        raise _RequestFailure(
            "unknown-request",
            f"The OMERO test server does not handle {request.ice_id()}",
        )

    def _do_all(self, request):
        # As OMERO's DoAllI: the sub-requests run in order, and the first one
        # that fails makes its ERR the response of the whole DoAll.
        responses = []
        for sub_request in request.requests or []:
            response = self._execute_one(sub_request)
            if isinstance(response, omero.cmd.ERR):
                return response
            responses.append(response)
        statuses = [omero.cmd.Status(steps=1, currentStep=1) for _ in responses]
        return omero.cmd.DoAllRsp(responses=responses, status=statuses)

    def _used_files(self, request):
        # OMERO runs UsedFilesRequest in all of the user's groups.
        viewer = store.Viewer(self.factory.session.user_id, -1)
        return self.factory.server.repository.used_files(request.imageId, viewer)

    def _error_response(self, exc: Exception) -> omero.cmd.ERR:
        if isinstance(exc, _RequestFailure):
            name, message = exc.name, exc.message
        else:
            log.error("request %s failed", self.request.ice_id(), exc_info=exc)
            name, message = "request-failed", str(exc)
        return omero.cmd.ERR(
            category=self.request.ice_id(),
            name=name,
            parameters={"message": message, "stacktrace": traceback.format_exc()},
        )

    def _notify(self, connection: Ice.Connection, identity: Ice.Identity) -> None:
        with self._lock:
            response, status = self._response, self._status
        callback = omero.cmd.CmdCallbackPrx.uncheckedCast(connection.createProxy(identity))

        def failed(exc):
            log.warning("could not deliver a command result to the client: %s", exc)

        callback.begin_finished(response, status, _ex=failed)

    # omero.cmd.Handle

    def addCallback(self, callback, current=None):
        if callback is None:
            return
        entry = (current.con, callback.ice_getIdentity())
        with self._lock:
            finished = self._response is not None
            if not finished:
                self._callbacks.append(entry)
        if finished:
            self._notify(*entry)

    def removeCallback(self, callback, current=None):
        if callback is None:
            return
        identity = callback.ice_getIdentity()
        with self._lock:
            self._callbacks = [c for c in self._callbacks if c[1] != identity]

    def getRequest(self, current=None):
        return self.request

    def getResponse(self, current=None):
        with self._lock:
            return self._response

    def getStatus(self, current=None):
        with self._lock:
            return self._status

    def cancel(self, current=None):
        # The requests this server handles finish almost at once, and OMERO returns
        # false when a request can no longer be cancelled.
        return False

    def close(self, current=None):
        self.factory.remove_service(self)


class _RequestFailure(Exception):
    """A request that failed in a way OMERO reports with a named ERR response."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name
        self.message = message
