"""Counters, fault knobs and the loopback HTTP control endpoint of the test server.

Tests drive the running server through a small JSON-over-HTTP API that listens on
127.0.0.1 only:

    GET  /counters        {"RawFileStore.read": 12, "IQuery.findAllByQuery": 3, ...}
    POST /counters/reset  sets every counter to zero
    GET  /knobs           the current knobs
    POST /knobs           changes the knobs named in the JSON body, returns all knobs

Knobs (all off by default):

    latency_ms          delay added to every call before the server handles it
    bandwidth           bytes per second shared by all `RawFileStore.read` replies,
                        or null for no limit
    drop_after_reads    after this many more successful reads, the next read
                        closes its connection; null for never. It resets to
                        null once it fires.
    fail_next_read      the next `RawFileStore.read` raises `omero.ResourceError`.
                        It resets to false once it fires.
    corrupt_reads       every read reply has its first byte inverted, so it no
                        longer matches the file's checksum
    expire_sessions     expires every open session now; an action, so it always
                        reads back as false
    refuse_connections  every new client connection is closed at its first request

`Control` is the client for tests: `Control(port).set(latency_ms=10)`.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import json
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class Counters:
    """Calls per operation, named `Interface.operation`; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def increment(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


@dataclasses.dataclass
class KnobValues:
    """One consistent reading of every knob."""

    latency_ms: float = 0.0
    bandwidth: int | None = None
    drop_after_reads: int | None = None
    fail_next_read: bool = False
    corrupt_reads: bool = False
    expire_sessions: bool = False
    refuse_connections: bool = False


class InvalidKnob(ValueError):
    """A knob name or value that the server does not accept."""


class Knobs:
    """The fault and throttling knobs; safe to use from any thread.

    `expire_sessions` is an action: setting it calls `on_expire_sessions`, which the
    server points at its session registry.
    """

    def __init__(self, initial: KnobValues | None = None) -> None:
        self._lock = threading.Lock()
        self._values = initial or KnobValues()
        # Reads left before the connection is dropped; counts down to zero.
        self._reads_until_drop: int | None = self._values.drop_after_reads
        # Time at which the shared link is next free for a read reply (monotonic).
        self._link_free_at = 0.0
        self.on_expire_sessions: Callable[[], None] = lambda: None

    def values(self) -> KnobValues:
        with self._lock:
            return dataclasses.replace(self._values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.values())

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply `changes` (knob name -> value) after checking all of them."""
        checked = {name: _check_knob(name, value) for name, value in changes.items()}
        expire = checked.pop("expire_sessions", False)
        with self._lock:
            for name, value in checked.items():
                setattr(self._values, name, value)
            if "drop_after_reads" in checked:
                self._reads_until_drop = checked["drop_after_reads"]
        log.info("knobs changed: %s", checked | ({"expire_sessions": True} if expire else {}))
        if expire:
            self.on_expire_sessions()
        return self.as_dict()

    def latency_seconds(self) -> float:
        with self._lock:
            return self._values.latency_ms / 1000.0

    def refusing_connections(self) -> bool:
        with self._lock:
            return self._values.refuse_connections

    def corrupting_reads(self) -> bool:
        with self._lock:
            return self._values.corrupt_reads

    def take_read_fault(self) -> str | None:
        """Return the fault for the read now starting: "fail", "drop" or None.

        Both faults are one-shot: taking one clears its knob.
        """
        with self._lock:
            if self._values.fail_next_read:
                self._values.fail_next_read = False
                return "fail"
            if self._reads_until_drop is None:
                return None
            if self._reads_until_drop > 0:
                self._reads_until_drop -= 1
                return None
            self._reads_until_drop = None
            self._values.drop_after_reads = None
            return "drop"

    def throttle(self, byte_count: int) -> None:
        """Sleep as long as sending `byte_count` bytes takes on the shared link.

        Every read reply books its transfer time on one link, so concurrent readers
        share the bandwidth instead of each getting all of it.
        """
        with self._lock:
            bandwidth = self._values.bandwidth
            if not bandwidth:
                return
            now = time.monotonic()
            start = max(now, self._link_free_at)
            self._link_free_at = start + byte_count / bandwidth
            done_at = self._link_free_at
        delay = done_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


_KNOB_TYPES = {field.name: field.type for field in dataclasses.fields(KnobValues)}


def _check_knob(name: str, value: Any) -> Any:
    if name not in _KNOB_TYPES:
        raise InvalidKnob(f"unknown knob {name!r}; known knobs: {', '.join(_KNOB_TYPES)}")

    if name in ("fail_next_read", "corrupt_reads", "expire_sessions", "refuse_connections"):
        if not isinstance(value, bool):
            raise InvalidKnob(f"knob {name} must be true or false, not {value!r}")
        return value

    if name == "latency_ms":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InvalidKnob(f"knob latency_ms must be a number >= 0, not {value!r}")
        return float(value)

    # bandwidth and drop_after_reads: a whole number or null.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidKnob(f"knob {name} must be a whole number or null, not {value!r}")
    minimum = 1 if name == "bandwidth" else 0
    if value < minimum:
        raise InvalidKnob(f"knob {name} must be >= {minimum}, not {value}")
    return value


class ControlServer:
    """The HTTP control endpoint, served from a daemon thread."""

    def __init__(self, knobs: Knobs, counters: Counters, host: str = "127.0.0.1", port: int = 0):
        handler = _handler_class(knobs, counters)
        self._httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="testserver-control", daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()
        log.info("control endpoint listening on http://127.0.0.1:%d", self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _handler_class(knobs: Knobs, counters: Counters):
    class ControlHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/counters":
                self._reply(200, counters.snapshot())
            elif self.path == "/knobs":
                self._reply(200, knobs.as_dict())
            else:
                self._reply(404, {"error": f"not found: {self.path}"})

        def do_POST(self):
            if self.path == "/counters/reset":
                counters.reset()
                self._reply(200, {})
                return
            if self.path != "/knobs":
                self._reply(404, {"error": f"not found: {self.path}"})
                return

            length = int(self.headers.get("Content-Length") or 0)
            try:
                changes = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(changes, dict):
                    raise InvalidKnob("the body must be a JSON object of knob names and values")
                self._reply(200, knobs.update(changes))
            except (json.JSONDecodeError, InvalidKnob) as exc:
                self._reply(400, {"error": str(exc)})

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 - the base class names it so
            log.debug("control: " + format, *args)

    return ControlHandler


class ControlError(RuntimeError):
    """The control endpoint rejected a request."""


class Control:
    """Client for the control endpoint of a running test server."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.host = host
        self.port = port
        self.timeout = timeout

    def counters(self) -> dict[str, int]:
        return self._request("GET", "/counters")

    def reset(self) -> None:
        self._request("POST", "/counters/reset")

    def knobs(self) -> dict[str, Any]:
        return self._request("GET", "/knobs")

    def set(self, **knobs: Any) -> dict[str, Any]:
        return self._request("POST", "/knobs", knobs)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            payload = json.loads(response.read() or b"{}")
        finally:
            connection.close()
        if response.status != 200:
            raise ControlError(f"{method} {path} failed: {payload.get('error', response.status)}")
        return payload
