"""Run the OMERO test server: `python -m omerofs.testserver --sample --port 4064`.

Once the server accepts connections it prints exactly one line on stdout,
`listening on tcp://HOST:PORT`, and it stops cleanly (exit status 0) on SIGTERM
or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("omerofs.testserver")

SAMPLE_MANIFEST = Path(__file__).parent / "sample" / "manifest.yaml"


def _parse_fault(text: str) -> tuple[str, object]:
    """Parse one `--fault NAME[=VALUE]` option into a knob name and value."""
    name, _, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not value:
        return name, True
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    if value.lower() in ("null", "none"):
        return name, None
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value in --fault {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m omerofs.testserver",
        description="Serve a repository of OMERO objects and files over OMERO's Ice protocol.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sample", action="store_true", help="serve the sample repository")
    source.add_argument(
        "--data", type=Path, metavar="MANIFEST",
        help="serve the repository that this manifest file (or directory with manifest.yaml) describes",
    )

    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)")
    parser.add_argument(
        "--control-port", type=int, metavar="PORT",
        help="port of the HTTP control endpoint on 127.0.0.1 (default: no endpoint)",
    )
    parser.add_argument(
        "--session-timeout", type=float, default=600.0, metavar="SECONDS",
        help="seconds a session may stay idle before it expires (default 600)",
    )

    parser.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS",
        help="delay added to every call, in milliseconds (default 0)",
    )
    parser.add_argument(
        "--bandwidth-bytes-per-s", type=int, metavar="BYTES",
        help="limit on the bytes per second of all file reads together (default: no limit)",
    )
    parser.add_argument(
        "--fault", action="append", type=_parse_fault, default=[], metavar="KNOB[=VALUE]",
        help="set a fault knob at start, e.g. drop_after_reads=3, corrupt_reads, "
        "refuse_connections (may be repeated)",
    )

    parser.add_argument(
        "--log-level", default="INFO", help="logging level on stderr (default INFO)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    # Imported here so that `--help` works without loading omero-py.
    import Ice

    from . import store
    from .control import ControlServer, Counters, InvalidKnob, Knobs
    from .server import ServerConfig, TestServer

    manifest = SAMPLE_MANIFEST if args.sample else args.data
    try:
        repository = store.Repository.load(manifest)
    except (store.ManifestError, OSError) as exc:
        print(f"error: cannot load the manifest {manifest}: {exc}", file=sys.stderr)
        return 2

    knobs = Knobs()
    counters = Counters()
    try:
        knobs.update(
            {"latency_ms": args.latency_ms, "bandwidth": args.bandwidth_bytes_per_s}
            | dict(args.fault)
        )
    except InvalidKnob as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    config = ServerConfig(host=args.host, port=args.port, session_timeout=args.session_timeout)
    server = TestServer(repository, config, knobs, counters)
    control = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    try:
        port = server.start()
    except Ice.LocalException as exc:
        # Ice reports a port in use as Ice.SocketException.
        reason = str(exc).strip().splitlines()[-1]
        print(f"error: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    try:
        if args.control_port is not None:
            try:
                control = ControlServer(knobs, counters, port=args.control_port)
            except OSError as exc:
                print(f"error: cannot listen on control port {args.control_port}: {exc}", file=sys.stderr)
                return 1
            control.start()
        print(f"listening on tcp://{args.host}:{port}", flush=True)
        # wait() with a timeout lets the signal handlers run promptly.
        while not stop.wait(0.5):
            pass
        log.info("stopping on signal")
    finally:
        if control is not None:
            control.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
