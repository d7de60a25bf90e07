"""What the serving tests (and the fault benchmark) share: a real server on a loopback port
over a bundle, and a private ``redis-server`` to stop and pause."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from tailored.config import load_serve_config
from tailored.data.pseudonym import Pseudonymizer
from tailored.serve.bundles import LiveBundle
from tailored.serve.client import Client
from tailored.serve.experiments import reserved_versions
from tailored.serve.server import Service, create_server
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import OnlineState
from tests.helpers import TEST_KEY

__all__ = ["TOKEN", "PrivateRedis", "Running", "drop_prefix", "with_prefix"]

TOKEN = "test-admin-token"


class Running:
    """A server on a loopback port over ``bundles``, its state the SQLite file ``state_path``
    (or ``state``, a backend already open, which :meth:`stop` closes)."""

    def __init__(
        self,
        bundles: Path,
        state_path: Path | None = None,
        *,
        state: OnlineState | None = None,
        key: bytes = TEST_KEY,
        **overrides: object,
    ) -> None:
        # the session's shared bundle is not rewritten by one test's erasures (the privacy
        # tests, on copies, ask for it)
        defaults = {"clock": "bundle", "erase_bundle_rows": False}
        self.cfg = load_serve_config(overrides={**defaults, **overrides})
        if state is None:
            assert state_path is not None, "a state file or an open state"
            state = SQLiteState(state_path)
        self.service = Service(
            LiveBundle(bundles, self.cfg, reserved=reserved_versions(self.cfg.experiments)),
            state,
            Pseudonymizer(key),
            self.cfg,
            admin_token=TOKEN,
        )
        self.server, self.port = create_server("127.0.0.1:0", self.service)
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"
        self.client = Client(self.target, token=TOKEN)

    def stop(self) -> None:
        self.client.close()
        self.server.stop(None)
        self.service.close()


class PrivateRedis:
    """``redis-server`` on a free loopback port (never the machine's shared one) that a test
    or benchmark may stop, pause and start again. In memory only, or with ``durable`` an
    append-only file fsync'd on every write in ``workdir``, which a restart reads back."""

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        binary = self.binary()
        if binary is None:
            raise RuntimeError("no redis-server binary to start a private Redis with")
        self.path, self.workdir, self.durable = binary, workdir, durable
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.workdir), "--appendonly"]
        args += ["yes", "--appendfsync", "always"] if self.durable else ["no"]
        self.proc = subprocess.Popen([self.path, *args], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.RedisError:  # not listening yet, or reading its append-only file
                time.sleep(0.05)
        raise RuntimeError("the private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def pause(self, paused: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)


def with_prefix(url: str, prefix: str) -> str:
    """A Redis URL whose online state keeps its keys under ``prefix``."""
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` on the Redis at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
