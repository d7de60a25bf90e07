"""The server's Prometheus metrics, in a registry of its own (several servers can live in one
process, as in tests), exposed over HTTP by :meth:`ServerMetrics.serve_http`."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServerMetrics"]

_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5)  # fmt: skip


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tailored_requests",
            "RPCs answered, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tailored_request_seconds",
            "Time to answer an RPC, by method",
            ["method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "tailored_events",
            "Tracked events, by outcome (accepted: durable; dropped: no consent)",
            ["outcome"],
            registry=self.registry,
        )
        self.bundle = Gauge(
            "tailored_bundle_info",
            "The bundle being served (1 for the current version)",
            ["version"],
            registry=self.registry,
            # several processes ([serve] processes): the number of live ones serving it
            multiprocess_mode="livesum",
        )
        self.exposures = Counter(
            "tailored_exposures",
            "Experiment exposures handed to the state, by outcome (written; failed or "
            "dropped: written again on the user's next request)",
            ["outcome"],
            registry=self.registry,
        )
        self.pages_logged = Counter(
            "tailored_pages_logged",
            "Pages' decisions handed to the state, by outcome (written; erased: their user "
            "was erased before the write; failed or dropped: lost, and Track events naming "
            "them learn nothing)",
            ["outcome"],
            registry=self.registry,
        )
        self.erasures = Counter(
            "tailored_erasures",
            "Users erased from every store this server holds, by reason (erasure: the Forget "
            "call; consent-withdrawal: SetConsent without personalization)",
            ["reason"],
            registry=self.registry,
        )
        self.page_feedback = Counter(
            "tailored_page_feedback",
            "Track clicks and impressions naming a page's module, by whether they were new "
            "(a retry, a second click on one module of a page: not new; unknown_page: the "
            "page is not kept, nothing learned)",
            ["new"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "tailored_bundle_reloads",
            "Bundle loads after the first, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.degraded = Counter(
            "tailored_degraded_responses",
            "Answers given without the online state (unreachable), by method",
            ["method"],
            registry=self.registry,
        )
        self.state_up = Gauge(
            "tailored_online_state_up",
            "1 while the online state answers, 0 while it is unreachable",
            registry=self.registry,
            multiprocess_mode="livemin",  # a dead worker's last value does not linger
        )
        self.state_up.set(1)
        self._version: str | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def count(self, method: str, code: str) -> None:
        """A call answered before the servicer (refused on arrival, or undecodable): counted
        like the others, not timed."""
        self.requests.labels(method, code).inc()

    def set_bundle(self, version: str) -> None:
        if self._version is not None and self._version != version:
            # several processes: the value lives in a file, which remove() would leave (and
            # warn): 0 says this process no longer serves it
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                self.bundle.labels(self._version).set(0)
            else:
                self.bundle.remove(self._version)
        self.bundle.labels(version).set(1)
        self._version = version

    def serve_http(self, port: int, addr: str = "127.0.0.1") -> tuple[Any, int]:
        """Start the /metrics endpoint on ``addr:port`` (0: any free port); returns
        (server, port)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server, int(server.server_port)
