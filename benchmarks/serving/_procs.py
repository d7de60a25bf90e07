"""Server processes for ``benchmarks/serving/serve_load.py``: ``tailored serve`` on a bundle with
SQLite state, and the no-op ceiling (:mod:`benchmarks.serving._noop`), each a child process on
loopback whose port is read from the line it prints once listening. Their stderr goes to a
log file beside the state (the server logs no raw user id)."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._paths import ROOT
from tailored.serve.client import Serving

__all__ = ["ServerGroup", "ServerProcess", "noop_server", "tailored_server"]

_NOOP = re.compile(r"listening on (\d+)")


def free_port() -> int:
    """A free loopback port (a server restarted on it binds the same one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serving_port(line: str) -> int | None:
    serving = Serving.parse(line)
    return None if serving is None else serving.port


def _noop_port(line: str) -> int | None:
    m = _NOOP.search(line)
    return None if m is None else int(m[1])


class ServerProcess:
    """A child server; :attr:`target` is ``127.0.0.1:PORT`` once :meth:`wait_ready` returned."""

    def __init__(
        self,
        cmd: list[str],
        log: Path,
        env: dict[str, str],
        port_of: Callable[[str], int | None],
    ):
        self.cmd = cmd
        self.log = log
        self._log_file = log.open("ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log_file, env=env, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._port_of = port_of
        self._port: int | None = None
        self.startup_seconds = 0.0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while self._port is None:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.cmd[2:4]} did not start; see {self.log}")
            self._port = self._port_of(line or "")
        self.startup_seconds = time.perf_counter() - self.started
        return self

    @property
    def port(self) -> int:
        assert self._port is not None, "not ready"
        return self._port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (the durability phase)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.wait()
        self._log_file.close()


def tailored_server(
    bundle: Path,
    state: Path,
    env: dict[str, str],
    *,
    timeout: float = 900,
    config: Path | None = None,
    state_url: str | None = None,
) -> ServerProcess:
    """``tailored serve BUNDLE --port 0 --state sqlite:///STATE --clock bundle --no-watch``
    (``--config CONFIG`` where given; ``--state STATE_URL`` instead where given, the log
    still beside ``STATE``)."""
    cmd = [sys.executable, "-m", "tailored.cli", "serve", str(bundle), "--port", "0"]
    cmd += ["--state", state_url or f"sqlite:///{state}", "--clock", "bundle", "--no-watch"]
    if config is not None:
        cmd += ["--config", str(config)]
    log = state.with_suffix(".log")
    return ServerProcess(cmd, log, env, _serving_port).wait_ready(timeout)


class ServerGroup:
    """Server processes sharing one port (``SO_REUSEPORT``); the first chose it."""

    def __init__(self, members: list[ServerProcess]) -> None:
        self.members = members
        self.startup_seconds = max(m.startup_seconds for m in members)

    @property
    def target(self) -> str:
        return self.members[0].target

    def stop(self, timeout: float = 30) -> None:
        for m in self.members:
            m.stop(timeout)


def noop_server(
    template: Path, env: dict[str, str], *, workers: int, max_rpcs: int, processes: int = 1
) -> ServerGroup:
    """The no-op ceiling, as ``processes`` processes on one port when more than one."""
    cmd = [sys.executable, "-m", "benchmarks.serving._noop", str(template)]
    cmd += ["--workers", str(workers), "--max-concurrent-rpcs", str(max_rpcs)]
    root = str(ROOT)
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))}
    log = template.with_suffix(".log")
    first = ServerProcess(cmd, log, env, _noop_port).wait_ready(60)
    members = [first]
    try:
        rest = [
            ServerProcess([*cmd, "--port", str(first.port)], log, env, _noop_port)
            for _ in range(processes - 1)
        ]
        members += rest
        for m in rest:
            m.wait_ready(60)
    except BaseException:
        for m in members:
            m.stop()
        raise
    return ServerGroup(members)
