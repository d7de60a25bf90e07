"""The serving process, assembled: a bundle, the ``[serve]`` configuration, the online state
and the pseudonymization key behind one gRPC server, or a supervisor of worker processes
where ``[serve] processes > 1`` (:mod:`tailored.serve.workers`).

``tailored serve`` declares its flags with :func:`add_arguments` and calls :func:`run`. A
supervisor starts each worker as ``python -m tailored.serve.app ...`` with the same flags
(:func:`worker_args`) plus ``--worker I/N --control DIR``; :func:`main` parses them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tailored.errors import TailoredError

if TYPE_CHECKING:
    from tailored.config import ServeConfig
    from tailored.serve.bundles import LiveBundle
    from tailored.serve.workers import Siblings, WorkerInfo

__all__ = ["add_arguments", "main", "run", "worker_args"]

_log = logging.getLogger("tailored.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serving process's flags (``tailored serve`` and a worker's command line)."""
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free one)")
    p.add_argument("--config", type=Path, help="a TOML file whose [serve] table configures this")
    p.add_argument("--state", help="online state URL: sqlite:///PATH or redis://HOST:PORT/DB")
    p.add_argument("--metrics-port", type=int, default=-1, help="Prometheus port (-1: off)")
    p.add_argument("--no-watch", action="store_true", help="do not watch for new versions")
    p.add_argument("--clock", choices=["wall", "bundle"], help="override [serve] clock")
    p.add_argument(
        "--experiments", type=Path, help="an experiments file (override [serve] experiments)"
    )
    p.add_argument("--key-file", type=Path, help="pseudonymization key (default: as for data)")
    # set by the supervisor of [serve] processes > 1 for each of its workers
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--control", type=Path, help=argparse.SUPPRESS)


def worker_args(args: argparse.Namespace) -> list[str]:
    """The supervisor's own options, as its workers get them (not host, port, metrics)."""
    out = [str(args.bundle)]
    for flag, value in (
        ("--config", args.config),
        ("--state", args.state),
        ("--clock", args.clock),
        ("--experiments", args.experiments),
        ("--key-file", args.key_file),
    ):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--no-watch"] if args.no_watch else [])


def run(args: argparse.Namespace, *, verbose: bool = False) -> int:
    """Serve until SIGTERM or SIGINT (the flags of :func:`add_arguments`); the exit status."""
    from tailored.config import load_serve_config

    experiments = str(args.experiments) if args.experiments is not None else None
    cfg = load_serve_config(
        args.config,
        overrides={"state": args.state, "clock": args.clock, "experiments": experiments},
    )
    if cfg.processes > 1 and args.worker is None:
        return _supervise(args, cfg, verbose)
    return _serve_one(args, cfg)


def _supervise(args: argparse.Namespace, cfg: ServeConfig, verbose: bool) -> int:
    from tailored.data.pseudonym import load_key
    from tailored.serve.workers import supervise

    load_key(args.key_file, create=False)  # refuse a missing key here, not in every worker
    return supervise(
        worker_args(args),
        processes=cfg.processes,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        verbose=verbose,
    )


@dataclass
class _Started:
    """What one serving process runs, once assembled."""

    bundle: LiveBundle
    siblings: Siblings | None
    stop: threading.Event


def _serve_one(args: argparse.Namespace, cfg: ServeConfig) -> int:
    from tailored.data.pseudonym import Pseudonymizer, load_key
    from tailored.paths import tailored_home
    from tailored.serve.client import serving_line
    from tailored.serve.server import Service, create_server
    from tailored.serve.state import open_state

    key = load_key(args.key_file, create=False)
    worker = _worker(args)
    cfg, experiments_seq = _experiments(args, cfg, worker)
    bundle, request_seq = _load_bundle(args, cfg, worker)
    state = open_state(
        cfg.state or str(tailored_home() / "serve" / "state.db"), timeout=cfg.state_timeout_seconds
    )
    stop = threading.Event()
    siblings = _siblings(args, worker, bundle, state.backend, request_seq, experiments_seq, stop)
    service = Service(bundle, state, Pseudonymizer(key), cfg, siblings=siblings)
    if siblings is not None:
        siblings.follow_experiments = service.follow_experiments
    server, port = create_server(f"{args.host}:{args.port}", service)
    if args.metrics_port >= 0:
        _, mport = service.metrics.serve_http(args.metrics_port, args.host)
        _log.info("metrics on http://%s:%d/metrics", args.host, mport)
    if not args.no_watch and args.bundle.is_dir() and not (args.bundle / "manifest.json").exists():
        bundle.watch(cfg.watch_seconds)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    loaded = bundle.current.bundle
    if siblings is not None:
        siblings.start()  # the supervisor prints the serving line once all are ready
    else:
        print(
            serving_line(loaded.version, loaded.n_items, args.host, port, state.backend), flush=True
        )
    stop.wait()
    server.stop(grace=5).wait()
    if siblings is not None:
        siblings.close()
    service.close()
    return 0


def _experiments(
    args: argparse.Namespace, cfg: ServeConfig, worker: WorkerInfo | None
) -> tuple[ServeConfig, str | None]:
    """The configuration with the experiments file to run and, for a worker, the sequence
    number of the experiments request it runs (a restarted worker runs what its siblings
    were asked to)."""
    from tailored.serve.workers import Control

    request = Control(args.control).experiments_request() if worker is not None else None
    if request is None:
        return cfg, None
    return dataclasses.replace(cfg, experiments=request[1]), request[0]


def _load_bundle(
    args: argparse.Namespace, cfg: ServeConfig, worker: WorkerInfo | None
) -> tuple[LiveBundle, str | None]:
    """The bundle to serve and, for a worker, the sequence number of the reload request it
    serves (a restarted worker serves what its siblings were asked to). From a bundles
    root: its latest version that no experiment reserves (a candidate under test, or one
    that lost)."""
    from tailored.serve.bundles import LiveBundle
    from tailored.serve.experiments import reserved_versions
    from tailored.serve.workers import Control

    reserved = reserved_versions(cfg.experiments)
    source, request = args.bundle, None
    if worker is not None:
        request = Control(args.control).reload_request()
        source = request[1] if request is not None else source
    try:
        return LiveBundle(source, cfg, watch_root=args.bundle, reserved=reserved), (
            request[0] if request is not None else None
        )
    except (TailoredError, OSError, ValueError) as e:
        if source == args.bundle:
            raise
        # what the siblings were asked to serve is gone or bad now: start from BUNDLE
        _log.error(
            "worker %s: cannot load %s (%s); serving %s", args.worker, source, e, args.bundle
        )
        return LiveBundle(args.bundle, cfg, reserved=reserved), None


def _siblings(
    args: argparse.Namespace,
    worker: WorkerInfo | None,
    bundle: LiveBundle,
    backend: str,
    loaded_seq: str | None,
    experiments_seq: str | None,
    stop: threading.Event,
) -> Siblings | None:
    """A worker's link to the others (reloads, reports); None for a lone server."""
    from tailored.serve.workers import SUPERVISOR_ENV, Control, Siblings

    if worker is None:
        return None
    return Siblings(
        Control(args.control),
        worker,
        bundle,
        backend,
        loaded_seq=loaded_seq,
        experiments_seq=experiments_seq,
        supervisor=int(os.environ[SUPERVISOR_ENV]) if SUPERVISOR_ENV in os.environ else None,
        on_orphaned=stop.set,
    )


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


def main(argv: Sequence[str] | None = None) -> int:
    """A worker process: ``python -m tailored.serve.app [-v] BUNDLE ... --worker I/N``."""
    parser = argparse.ArgumentParser(prog="tailored serve (worker)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return run(args, verbose=args.verbose)
    except TailoredError as e:
        print(f"tailored serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
