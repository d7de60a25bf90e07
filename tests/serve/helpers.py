"""What the serving tests share: a real server on a loopback port over a bundle."""

from __future__ import annotations

from pathlib import Path

from tailored.config import load_serve_config
from tailored.data.pseudonym import Pseudonymizer
from tailored.serve.bundles import LiveBundle
from tailored.serve.client import Client
from tailored.serve.server import Service, create_server
from tailored.serve.sqlite_state import SQLiteState
from tests.helpers import TEST_KEY

__all__ = ["TOKEN", "Running"]

TOKEN = "test-admin-token"


class Running:
    def __init__(self, bundles: Path, state_path: Path, **overrides: object) -> None:
        self.cfg = load_serve_config(overrides={"clock": "bundle", **overrides})
        self.service = Service(
            LiveBundle(bundles, self.cfg),
            SQLiteState(state_path),
            Pseudonymizer(TEST_KEY),
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
