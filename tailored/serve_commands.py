"""``tailored serve``, ``tailored recommend`` and ``tailored track``: the server and a client
for people trying it by hand. gRPC and the serving modules are imported inside handlers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailored.errors import TailoredError

if TYPE_CHECKING:
    from tailored.serve.workers import WorkerInfo

__all__ = ["register_serve"]

_log = logging.getLogger("tailored.serve")
Sub = Any


def register_serve(sub: Sub) -> None:
    _add_serve(sub)
    _add_recommend(sub)
    _add_track(sub)


# --- serve ------------------------------------------------------------------------------------


def _add_serve(sub: Sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a bundle over gRPC (Recommend, Track, SetConsent, Admin)",
        description="Verify and load a bundle and serve it over gRPC, with the health and "
        "reflection services and Prometheus metrics. BUNDLE is a version directory or a "
        "bundles root; a root is watched and new versions are swapped in under load.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free one)")
    p.add_argument("--config", type=Path, help="a TOML file whose [serve] table configures this")
    p.add_argument("--state", help="online state URL: sqlite:///PATH or redis://HOST:PORT/DB")
    p.add_argument("--metrics-port", type=int, default=-1, help="Prometheus port (-1: off)")
    p.add_argument("--no-watch", action="store_true", help="do not watch for new versions")
    p.add_argument("--clock", choices=["wall", "bundle"], help="override [serve] clock")
    p.add_argument("--key-file", type=Path, help="pseudonymization key (default: as for data)")
    # set by the supervisor of [serve] processes > 1 for each of its workers
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--control", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(handler=_serve)


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The supervisor's own options, as its workers get them (not host, port, metrics)."""
    out = [str(args.bundle)]
    for flag, value in (
        ("--config", args.config),
        ("--state", args.state),
        ("--clock", args.clock),
        ("--key-file", args.key_file),
    ):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--no-watch"] if args.no_watch else [])


def _serve(args: argparse.Namespace) -> int:
    from tailored.config import load_serve_config
    from tailored.data.pseudonym import Pseudonymizer, load_key
    from tailored.paths import tailored_home
    from tailored.serve.bundles import LiveBundle
    from tailored.serve.client import serving_line
    from tailored.serve.server import Service, create_server
    from tailored.serve.state import open_state
    from tailored.serve.workers import SUPERVISOR_ENV, Control, Siblings

    cfg = load_serve_config(args.config, overrides={"state": args.state, "clock": args.clock})
    key = load_key(args.key_file, create=False)
    if cfg.processes > 1 and args.worker is None:
        from tailored.serve.workers import supervise

        return supervise(
            _worker_args(args),
            processes=cfg.processes,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            verbose=args.verbose,
        )
    worker = _worker(args)
    source, request = args.bundle, None
    if worker is not None:  # a restarted worker serves what its siblings were asked to
        request = Control(args.control).reload_request()
        source = request[1] if request is not None else source
    try:
        bundle = LiveBundle(source, cfg, watch_root=args.bundle)
    except (TailoredError, OSError, ValueError) as e:
        if source == args.bundle:
            raise
        # what the siblings were asked to serve is gone or bad now: start from BUNDLE
        _log.error(
            "worker %s: cannot load %s (%s); serving %s", args.worker, source, e, args.bundle
        )
        bundle, request = LiveBundle(args.bundle, cfg), None
    state = open_state(cfg.state or str(tailored_home() / "serve" / "state.db"))
    stop = threading.Event()
    siblings = (
        Siblings(
            Control(args.control),
            worker,
            bundle,
            state.backend,
            loaded_seq=request[0] if request is not None else None,
            supervisor=int(os.environ[SUPERVISOR_ENV]) if SUPERVISOR_ENV in os.environ else None,
            on_orphaned=stop.set,
        )
        if worker
        else None
    )
    service = Service(bundle, state, Pseudonymizer(key), cfg, siblings=siblings)
    server, port = create_server(f"{args.host}:{args.port}", service)
    if args.metrics_port >= 0:
        _, mport = service.metrics.serve_http(args.metrics_port, args.host)
        _log.info("metrics on http://%s:%d/metrics", args.host, mport)
    if not args.no_watch and args.bundle.is_dir() and not (args.bundle / "manifest.json").exists():
        bundle.watch(cfg.watch_seconds)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    two = bundle.current.two
    if siblings is not None:
        siblings.start()  # the supervisor prints the serving line once all are ready
    else:
        print(serving_line(two.version, two.n_items, args.host, port, state.backend), flush=True)
    stop.wait()
    server.stop(grace=5).wait()
    if siblings is not None:
        siblings.close()
    service.close()
    return 0


def _worker(args: argparse.Namespace) -> WorkerInfo | None:
    from tailored.serve.workers import WorkerInfo

    if args.worker is None:
        return None
    try:
        index, count = (int(x) for x in args.worker.split("/"))
    except ValueError:
        raise TailoredError(f"--worker: expected I/N, got {args.worker!r}") from None
    if args.control is None or not 0 <= index < count:
        raise TailoredError(f"--worker {args.worker}: needs --control and 0 <= I < N")
    return WorkerInfo(index, count)


# --- recommend / track --------------------------------------------------------------------------


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="the server, HOST:PORT")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call")


def _add_recommend(sub: Sub) -> None:
    p = sub.add_parser(
        "recommend",
        help="ask a running server for one user's recommendations",
        description="Call Recommend on a running `tailored serve` and print the items.",
    )
    _add_target(p)
    p.add_argument("--user", required=True, help="the site's user id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--surface", default="home")
    p.add_argument("--exclude", nargs="*", default=[], metavar="ITEM", help="item ids to skip")
    p.add_argument("--profile", nargs="*", default=[], metavar="FIELD=VALUE", help="for a new user")
    p.add_argument("--device", default="")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(handler=_recommend)


def _call(fn: Any) -> Any:
    import grpc

    try:
        return fn()
    except grpc.RpcError as e:
        raise TailoredError(f"{e.code().name}: {e.details()}") from None


def _recommend(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from tailored.serve.client import Client
    from tailored.serve.v1 import personalization_pb2 as pb

    profile = {}
    for pair in args.profile:
        name, sep, value = pair.partition("=")
        if not sep:
            raise TailoredError(f"--profile {pair!r}: expected FIELD=VALUE")
        profile[name] = value
    with Client(args.target, timeout=args.timeout) as client:
        resp = _call(
            lambda: client.recommend(
                args.user,
                args.k,
                surface=args.surface,
                exclude=args.exclude,
                profile=profile,
                context=pb.Context(device=args.device),
            )
        )
    if args.json:
        print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=1))
        return 0
    print(f"bundle {resp.bundle_version}, {resp.strategy}, request {resp.request_id}")
    for rank, item in enumerate(resp.items, 1):
        name = item.title or item.item_id
        print(f"{rank:3d}. {name:<45.45} {item.score:8.3f}  {item.reason}")
    return 0


def _add_track(sub: Sub) -> None:
    p = sub.add_parser(
        "track",
        help="send events (clicks, views, ratings...) to a running server",
        description="Call Track on a running `tailored serve`: one event per --item.",
    )
    _add_target(p)
    p.add_argument("--user", required=True, help="the site's user id")
    p.add_argument("--item", required=True, nargs="+", metavar="ITEM", help="item id(s)")
    p.add_argument("--type", default="click", help="impression|click|view|rating|purchase")
    p.add_argument("--value", type=float, default=0.0, help="rating, dwell seconds or amount")
    p.add_argument("--surface", default="home")
    p.set_defaults(handler=_track)


def _track(args: argparse.Namespace) -> int:
    from tailored.serve.client import Client, event_type
    from tailored.serve.v1 import personalization_pb2 as pb

    try:
        kind = event_type(args.type)
    except ValueError as e:
        raise TailoredError(f"--type: {e}") from None
    events = [
        pb.Event(
            user_id=args.user,
            item_id=item,
            type=kind,  # type: ignore[arg-type]
            value=args.value,
            surface=args.surface,
        )
        for item in args.item
    ]
    with Client(args.target, timeout=args.timeout) as client:
        resp = _call(lambda: client.track(events))
    print(f"accepted {resp.accepted}, dropped {resp.dropped} (no consent)")
    return 0
