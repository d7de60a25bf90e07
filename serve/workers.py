"""Serving from several processes: ``[serve] processes = N``.

One Python process answers with one core at a time (the GIL), however many threads it runs.
With N > 1, ``tailored serve`` becomes a supervisor: it starts N worker processes, each a
whole server (bundle, online state, gRPC) listening on the same address with
``SO_REUSEPORT``, so that the kernel spreads connections over them. The supervisor prints
the serving line once every worker is ready, serves the Prometheus metrics of all of them
(prometheus-client's multiprocess mode), restarts a worker that dies, and stops them all on
SIGTERM or SIGINT.

The workers share a control directory (:class:`Control`), made by the supervisor:

* ``worker-I.json``: what worker I serves (version, bundle path, pid), rewritten on change;
* ``reload.json``: the bundle every worker must serve after a ``ReloadBundle``. The worker
  that receives the call loads the bundle, writes this file, and answers once every worker
  reports that bundle (:meth:`Siblings.broadcast`); a restarted worker starts from it.
* ``experiments.json``: the experiments file every worker must run after a
  ``ReloadExperiments`` or a ``Promote`` (whose decision is recorded beside that file), in
  the same way (:meth:`Siblings.broadcast_experiments`); a restarted worker starts from it.

A new version in a watched bundles directory needs no message: every worker watches it.
The online state is shared as it is between replicas: the SQLite file (WAL, one writer at a
time, readers never blocked) or Redis.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailored.errors import TailoredError
from tailored.serve.bundles import LiveBundle

__all__ = ["SUPERVISOR_ENV", "Control", "RestartBudget", "Siblings", "WorkerInfo", "supervise"]

_log = logging.getLogger(__name__)
_POLL = 0.2  # seconds between looks at the control directory
_RESTART_PAUSE = 2.0  # seconds before a dead worker is started again
SUPERVISOR_ENV = "TAILORED_SUPERVISOR_PID"  # a worker's supervisor, whose end it watches


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    count: int


class Control:
    """The directory the supervisor and its workers share."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def report(self, worker: int, info: dict[str, Any]) -> None:
        _write_json(self.path / f"worker-{worker}.json", info)

    def reports(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for f in self.path.glob("worker-*.json"):
            obj = _read_json(f)
            if obj is not None:
                out[int(f.stem.split("-", 1)[1])] = obj
        return out

    def request_reload(self, path: Path) -> str:
        seq = uuid.uuid4().hex
        _write_json(self.path / "reload.json", {"seq": seq, "path": str(path)})
        return seq

    def reload_request(self) -> tuple[str, Path] | None:
        obj = _read_json(self.path / "reload.json")
        if obj is None or not isinstance(obj.get("path"), str):
            return None
        return str(obj.get("seq", "")), Path(obj["path"])

    def request_experiments(self, path: str) -> str:
        seq = uuid.uuid4().hex
        _write_json(self.path / "experiments.json", {"seq": seq, "path": path})
        return seq

    def experiments_request(self) -> tuple[str, str] | None:
        obj = _read_json(self.path / "experiments.json")
        if obj is None or not isinstance(obj.get("path"), str):
            return None
        return str(obj.get("seq", "")), obj["path"]


class Siblings:
    """A worker's side of the control directory: it reports what it serves and follows the
    bundle a sibling's ``ReloadBundle`` asked for.

    ``loaded_seq`` is the reload request this worker started from (a restarted worker), so
    that a later one is still followed; ``supervisor`` the supervisor's pid (default: the
    parent's), watched so that the worker stops when it is gone."""

    def __init__(
        self,
        control: Control,
        me: WorkerInfo,
        bundle: LiveBundle,
        backend: str,
        *,
        loaded_seq: str | None = None,
        experiments_seq: str | None = None,
        supervisor: int | None = None,
        on_orphaned: Callable[[], None] = lambda: None,
    ) -> None:
        self.control = control
        self.me = me
        self.bundle = bundle
        self.backend = backend
        self.on_orphaned = on_orphaned  # called once the supervisor is gone (even kill -9)
        self._parent = supervisor if supervisor is not None else os.getppid()
        self._seen = loaded_seq
        self._refusal: dict[str, str] = {}  # the last request this worker could not follow
        # the experiments request this worker runs, and how it runs one (set by its server)
        self._experiments_seen = experiments_seq
        self._tried: str | None = None
        self._experiments_refusal: dict[str, str] = {}
        self.follow_experiments: Callable[[str], object] | None = None
        self._lock = threading.Lock()  # following a request, or making one: one at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: dict[str, Any] = {}

    def start(self) -> None:
        """Report ready and follow the control directory from now on."""
        self._report()
        self._thread = threading.Thread(target=self._loop, name="siblings", daemon=True)
        self._thread.start()

    def _report(self) -> None:
        bundle = self.bundle.current.bundle
        info = {
            "pid": os.getpid(),
            "version": bundle.version,
            "path": str(bundle.manifest.path.resolve()),
            "items": bundle.n_items,
            "backend": self.backend,
            "ready": True,
            "refused": self._refusal,
            "experiments": self._experiments_seen,
            "experiments_refused": self._experiments_refusal,
        }
        if info != self._reported:
            self.control.report(self.me.index, info)
            self._reported = info

    def _orphaned(self) -> bool:
        return os.getppid() != self._parent

    def _loop(self) -> None:
        while not self._stop.wait(_POLL):
            if self._orphaned():
                _log.error("worker %d: the supervisor is gone; stopping", self.me.index)
                self.on_orphaned()
                return
            try:
                self._follow()
                self._follow_experiments()  # after the bundle: a promotion names one
                self._report()
            except Exception:  # never let the follower die silently: log and go on
                _log.exception("worker %d: following the control directory", self.me.index)

    def _follow(self) -> None:
        with self._lock:
            request = self.control.reload_request()
            if request is None or request[0] == self._seen:
                return
            self._seen, path = request
            if path.resolve() == self.bundle.current.bundle.manifest.path.resolve():
                return
            try:
                self.bundle.reload(path)
            except (TailoredError, OSError, ValueError) as e:  # logged by reload
                self._refusal = {"seq": request[0], "error": str(e)}

    def _follow_experiments(self) -> None:
        with self._lock:
            request = self.control.experiments_request()
            follow = self.follow_experiments
            if (
                request is None
                or request[0] in (self._experiments_seen, self._tried)
                or (follow is None)
            ):
                return
            seq, path = request
            self._tried = seq  # once: a refusal is reported, not tried again every poll
            try:
                follow(path)
            except (TailoredError, OSError, ValueError) as e:
                _log.warning("worker %d: experiments %s refused: %s", self.me.index, path, e)
                self._experiments_refusal = {"seq": seq, "error": str(e)}
                return
            self._experiments_seen = seq

    def broadcast(self, path: Path, timeout: float) -> list[str]:
        """Ask every worker to serve ``path`` (already served here) and wait until they
        report it; returns, for each worker that does not, why (refused it, superseded by a
        later request, or not within ``timeout`` seconds)."""
        with self._lock:
            seq = self._seen = self.control.request_reload(path)
        self._report()
        want = str(Path(path).resolve())
        return self._wait(
            seq, "path", want, "refused", self.control.reload_request, "reload", timeout
        )

    def broadcast_experiments(self, path: str, timeout: float) -> list[str]:
        """Ask every worker to run the experiments file at ``path`` (run here already) and
        wait until they report it, as :meth:`broadcast` does for a bundle."""
        with self._lock:
            seq = self._experiments_seen = self.control.request_experiments(path)
            self._experiments_refusal = {}
        self._report()
        return self._wait(
            seq,
            "experiments",
            seq,
            "experiments_refused",
            self.control.experiments_request,
            "ReloadExperiments",
            timeout,
        )

    def _wait(
        self,
        seq: str,
        field: str,
        want: str,
        refused_field: str,
        latest_request: Callable[[], tuple[str, Any] | None],
        what: str,
        timeout: float,
    ) -> list[str]:
        """Until every worker reports ``want`` in ``field``: the workers that refused
        request ``seq``, were superseded, or did not within ``timeout`` seconds, and why."""
        deadline = time.monotonic() + timeout
        while True:
            reports = self.control.reports()
            behind = [i for i in range(self.me.count) if reports.get(i, {}).get(field) != want]
            refused = [
                f"worker {i} (refused it: {reports[i][refused_field].get('error')})"
                for i in behind
                if (reports.get(i, {}).get(refused_field) or {}).get("seq") == seq
            ]
            if refused:
                return refused
            if not behind:
                return []
            latest = latest_request()
            if latest is not None and latest[0] != seq:
                return [f"workers {behind} (a later {what} asked for {latest[1]})"]
            if time.monotonic() > deadline:
                return [f"workers {behind} (not within {timeout:.0f} s; see their logs)"]
            time.sleep(_POLL / 2)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- the supervisor --------------------------------------------------------------------------


class RestartBudget:
    """At most ``limit`` restarts within any ``window`` seconds: a worker that dies on every
    start (a bundle that no longer loads, a port taken) stops the server instead of
    restarting for ever."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._times: list[float] = []

    def allow(self, now: float) -> bool:
        self._times = [t for t in self._times if now - t < self.window] + [now]
        return len(self._times) <= self.limit


_PREFIX = "tailored-serve-"  # a supervisor's control directory, in the temporary directory
_PID_FILE = "supervisor.pid"


def _newest_change(path: Path) -> float:
    paths = [path, *path.iterdir()]
    if (path / "metrics").is_dir():
        paths += list((path / "metrics").iterdir())
    return max(x.stat().st_mtime for x in paths)


def sweep_stale(root: Path, *, older_than: float = 60.0) -> list[Path]:
    """Remove the control directories in ``root`` of supervisors that are gone (a SIGKILL
    leaves a supervisor no chance to remove its own): those whose supervisor's pid is dead and
    in which nothing changed for ``older_than`` seconds (its workers, which stop by themselves
    once their supervisor is gone, have stopped writing). A directory without a pid file, or
    whose pid lives (or was reused), is left alone. Returns what was removed."""
    removed = []
    for d in root.glob(f"{_PREFIX}*"):
        try:
            pid = int((d / _PID_FILE).read_text())
            os.kill(pid, 0)
            continue  # alive (or the pid was reused): not ours to judge
        except ProcessLookupError:
            pass
        except (OSError, ValueError):  # no pid file, unreadable, another user's process
            continue
        try:
            if time.time() - _newest_change(d) < older_than:
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
        _log.info("serve: removed %s, left by a supervisor that was killed", d)
    return removed


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def supervise(
    worker_args: list[str],
    *,
    processes: int,
    host: str,
    port: int,
    metrics_port: int,
    verbose: bool = False,
    start_seconds: float = 600.0,
) -> int:
    """Run ``processes`` workers (``python -m tailored.serve.app`` with ``worker_args``, the
    port and their control options) until SIGTERM or SIGINT; returns the exit status."""
    sweep_stale(Path(tempfile.gettempdir()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sup = _Supervisor(worker_args, processes, host, port or _free_port(host), verbose, stop)
    try:
        sup.start_all()
        if not sup.wait_ready(start_seconds):
            return 130
        if metrics_port >= 0:
            sup.serve_metrics(metrics_port)
        sup.announce()
        sup.keep_alive()
        return 0
    except TailoredError as e:
        print(f"tailored serve: error: {e}", file=sys.stderr)
        return 2
    finally:
        sup.stop_all()


class _Supervisor:
    """The supervisor's workers, their control directory and their metrics directory."""

    def __init__(
        self,
        worker_args: list[str],
        processes: int,
        host: str,
        port: int,
        verbose: bool,
        stop: threading.Event,
    ) -> None:
        self.worker_args, self.processes, self.host, self.port = worker_args, processes, host, port
        self.verbose, self.stop = verbose, stop
        self.work = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.work / _PID_FILE).write_text(f"{os.getpid()}\n")
        self.control = Control(self.work)
        self.metrics_dir = self.work / "metrics"
        self.metrics_dir.mkdir()
        self.env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            SUPERVISOR_ENV: str(os.getpid()),
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, i: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tailored.serve.app", *(["-v"] if self.verbose else [])]
        cmd += [*self.worker_args, "--host", self.host, "--port", str(self.port)]
        cmd += ["--worker", f"{i}/{self.processes}", "--control", str(self.work)]
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL)

    def start_all(self) -> None:
        self.procs = [self.start(i) for i in range(self.processes)]

    def wait_ready(self, seconds: float) -> bool:
        """Until every worker reports ready; False if stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while len([r for r in self.control.reports().values() if r.get("ready")]) < len(self.procs):
            dead = [i for i, p in enumerate(self.procs) if p.poll() is not None]
            if dead:
                raise TailoredError(
                    f"serve: worker(s) {dead} exited while starting (their errors are above)"
                )
            if self.stop.wait(0.1):
                return False
            if time.monotonic() > deadline:
                raise TailoredError(f"serve: the workers were not ready in {seconds:.0f} s")
        return True

    def serve_metrics(self, port: int) -> None:
        """Every worker's metrics, merged, on ``port`` (prometheus-client multiprocess)."""
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
        server, _ = start_http_server(port, addr=self.host, registry=registry)
        _log.info(
            "metrics of %d workers on http://%s:%d/metrics",
            self.processes,
            self.host,
            server.server_port,
        )

    def announce(self) -> None:
        from tailored.serve.client import serving_line

        first = self.control.reports()[0]
        line = serving_line(
            first["version"], int(first["items"]), self.host, self.port, first["backend"]
        )
        print(f"{line} ({self.processes} processes)", flush=True)

    def keep_alive(self) -> None:
        """Restart a worker that exits, within :class:`RestartBudget`, until stopped."""
        from prometheus_client import multiprocess

        restarts = RestartBudget()
        while not self.stop.wait(0.5):
            for i, p in enumerate(self.procs):
                if p.poll() is None:
                    continue
                _log.error(
                    "serve: worker %d (pid %d) exited with %s; restarting it",
                    i,
                    p.pid,
                    p.returncode,
                )
                multiprocess.mark_process_dead(p.pid, str(self.metrics_dir))
                if not restarts.allow(time.monotonic()):
                    raise TailoredError(
                        f"serve: workers died {restarts.limit} times within "
                        f"{restarts.window:.0f} s; stopping (their errors are above)"
                    )
                if self.stop.wait(_RESTART_PAUSE):
                    return
                self.procs[i] = self.start(i)

    def stop_all(self) -> None:
        """SIGTERM to every worker, SIGKILL to one still there after 15 s; the control
        directory removed."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.work, ignore_errors=True)
