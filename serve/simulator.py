"""Simulated users of a synthetic site calling a live server: the closed loop that experiments
are tested with (``tailored simulate``).

The users are those of a dataset written by ``tailored data synth``; their tastes are its
planted ground truth (:mod:`tailored.data.synth_truth`), and they behave as its generator's
users do (:mod:`tailored.data.synth_sessions`): each simulated day, each user comes
``Poisson(sessions_per_day)`` times, asks ``Recommend`` for a page of ``k`` items (or, given
page modules, ``Page`` for them, ``k`` items each: a module at position ``m`` is examined
with ``(1 + m) ** -examine_decay`` and its items as a list's, the two multiplied), examines
position ``p`` (0-based) with probability ``(1 + p) ** -examine_decay`` and clicks an examined
item with probability ``sigmoid(s(u, i, t) + click_bias)``, ``s`` being the planted affinity at
that moment. Fatigue: an item the user was already shown ``n`` times is clicked with
``fatigue ** n`` of that probability. A click is followed by a view whose dwell grows with
affinity, and sometimes by a purchase. Every impression, click, view and purchase goes back
through ``Track``, stamped with its simulated time; in page mode, an impression and a click
name their page (its request id) and module, which is what a page's bandit learns from.

Time: the simulated days end at the server's present (``Status.now_unix_ms`` when the admin
token is at hand, else this machine's clock, or ``end`` when given), so that every event falls
inside the window of times the server accepts. The run is bounded by ``max_seconds``; what it
did is returned (:class:`SimulationReport`), failed calls included.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq

from tailored.data.synth_truth import SynthTruth, load_truth
from tailored.errors import TailoredError

__all__ = ["SimulationReport", "simulate"]

_DAY_S = 86_400


@dataclass
class SimulationReport:
    """What a simulation did."""

    target: str
    users: int
    days: float
    start_unix_ms: int
    end_unix_ms: int
    requests: int = 0
    failed_recommend: int = 0
    failed_track: int = 0
    events: dict[str, int] = field(default_factory=dict)
    strategies: dict[str, int] = field(default_factory=dict)
    assignments: dict[str, int] = field(default_factory=dict)  # "experiment:variant" -> pages
    clicks_by_variant: dict[str, int] = field(default_factory=dict)
    # page mode: pages each module was shown on, its clicks, and where it was shown
    module_pages: dict[str, int] = field(default_factory=dict)
    module_clicks: dict[str, int] = field(default_factory=dict)
    module_positions: dict[str, int] = field(default_factory=dict)  # "MODULE@POSITION" -> pages
    # the same per experiment variant: "EXPERIMENT:VARIANT|MODULE" -> pages, clicks
    module_pages_by_variant: dict[str, int] = field(default_factory=dict)
    module_clicks_by_variant: dict[str, int] = field(default_factory=dict)
    # per variant and simulated day: pages, and modules with a click ("EXPERIMENT:VARIANT|DAY")
    pages_by_variant_day: dict[str, int] = field(default_factory=dict)
    clicked_modules_by_variant_day: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_early: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _Site:
    """The dataset's users and items as the truth indexes them."""

    def __init__(self, dataset: Path) -> None:
        self.truth: SynthTruth = load_truth(dataset)
        items = pq.read_table(dataset / "items.parquet", columns=["item_id"])
        self.item_row = {str(x): i for i, x in enumerate(items.column("item_id").to_pylist())}
        self.n_users = len(self.truth.user_taste_start)
        b = dict(self.truth.info.get("behaviour", {}))
        self.examine_decay = float(b.get("examine_decay", 0.8))
        self.click_bias = float(b.get("click_bias", -3.0))
        self.purchase_max = float(b.get("purchase_max", 0.1))
        self.purchase_bias = float(b.get("purchase_bias", -2.0))
        self.dwell_median = float(b.get("dwell_median_s", 20.0))
        self.dwell_slope = float(b.get("dwell_slope", 0.3))
        self.dwell_sigma = float(b.get("dwell_sigma", 0.6))

    def raw_id(self, row: int) -> str:
        """The site's id of user ``row`` (``tailored.data.synth_tables.pseudonyms``)."""
        return f"u{row:0{max(7, len(str(self.n_users - 1)))}d}"


def _server_now(target: str, token: str | None) -> float:
    from tailored.serve.client import Client

    if not token:
        return time.time()
    with Client(target, token=token) as c:
        return c.status().now_unix_ms / 1000


def simulate(
    target: str,
    dataset: Path,
    *,
    users: int,
    days: float,
    seed: int = 0,
    k: int = 10,
    sessions_per_day: float = 1.0,
    fatigue: float = 0.5,
    surface: str = "home",
    end: float | None = None,
    token: str | None = None,
    concurrency: int = 4,
    max_seconds: float = 600.0,
    timeout: float = 10.0,
    modules: Sequence[Any] = (),
) -> SimulationReport:
    """Run ``users`` simulated users (the dataset's first) for ``days`` simulated days
    against the server at ``target`` (see the module docstring). With ``modules``
    (``PageModule`` messages), each visit asks ``Page`` for them, ``k`` items each,
    instead of ``Recommend``."""
    from tailored.serve.client import Client
    from tailored.serve.v1 import personalization_pb2 as pb

    site = _Site(Path(dataset))
    if not 0 < users <= site.n_users:
        raise TailoredError(f"--users: must be in 1..{site.n_users} (the dataset's), got {users}")
    if not days > 0 or not sessions_per_day > 0 or not 0 <= fatigue <= 1:
        raise TailoredError("days and sessions_per_day must be > 0, fatigue in [0, 1]")
    end_s = end if end is not None else _server_now(target, token)
    start_s = end_s - days * _DAY_S
    report = SimulationReport(target, users, days, int(start_s * 1000), int(end_s * 1000))
    lock = threading.Lock()
    shown: list[Counter[str]] = [Counter() for _ in range(users)]
    deadline = time.monotonic() + max_seconds
    started = time.perf_counter()
    # every (user, session time) of the whole run, in time order, users interleaved
    rng = np.random.default_rng(seed)
    sessions: list[tuple[float, int]] = []
    for day in range(math.ceil(days)):
        lo, hi = start_s + day * _DAY_S, min(end_s, start_s + (day + 1) * _DAY_S)
        if hi <= lo:
            break
        counts = rng.poisson(sessions_per_day * (hi - lo) / _DAY_S, users)
        for user in range(users):
            sessions += [(float(t), user) for t in rng.uniform(lo, hi - 2.0, counts[user])]
    sessions.sort()
    # each user's sessions run in order on one worker; workers take users by row
    by_worker: list[list[tuple[float, int]]] = [[] for _ in range(max(1, concurrency))]
    for t, user in sessions:
        by_worker[user % len(by_worker)].append((t, user))

    def count(field_name: str, key: str, n: int = 1) -> None:
        with lock:
            table = getattr(report, field_name)
            table[key] = table.get(key, 0) + n

    def run(worker: int) -> None:
        wrng = np.random.default_rng([seed, worker])
        with Client(target, timeout=timeout, own_connection=True) as client:
            for t, user in by_worker[worker]:
                if time.monotonic() > deadline:
                    with lock:
                        report.stopped_early = True
                    return
                session(client, wrng, user, t, shown[user])

    end_ms = int(end_s * 1000)

    def session(
        client: Any, r: np.random.Generator, user: int, t: float, seen: Counter[str]
    ) -> None:
        """One visit: a page, the user's reaction, its events (never after the end)."""
        raw = site.raw_id(user)
        t_ms = int(t * 1000)
        ctx = pb.Context(time_unix_ms=t_ms)
        try:
            if modules:
                resp = client.page(raw, modules, k, page_type=surface, context=ctx)
            else:
                resp = client.recommend(raw, k, surface=surface, context=ctx)
        except grpc.RpcError as e:  # counted; the user comes back next session
            count("errors", f"{'Page' if modules else 'Recommend'} {e.code().name}")
            with lock:
                report.failed_recommend += 1
            return
        with lock:
            report.requests += 1
        count("strategies", resp.strategy)
        tags = [f"{a.experiment}:{a.variant}" for a in resp.assignments]
        for tag in tags:
            count("assignments", tag)
        if modules:  # modules top down, each examined less than the one above
            ids = [i.item_id for m in resp.modules for i in m.items]
            module_of = [m.id for m in resp.modules for _ in m.items]
            within = np.array([j for m in resp.modules for j in range(len(m.items))], np.float64)
            row_at = np.array([m.position for m in resp.modules for _ in m.items], np.float64)
            examine: np.ndarray = (1.0 + row_at) ** -site.examine_decay * (
                1.0 + within
            ) ** -site.examine_decay
            for m in resp.modules:
                count("module_pages", m.id)
                count("module_positions", f"{m.id}@{m.position}")
                for tag in tags:
                    count("module_pages_by_variant", f"{tag}|{m.id}")
        else:
            ids = [i.item_id for i in resp.items]
            module_of = [""] * len(ids)
            examine = (1.0 + np.arange(len(ids), dtype=np.float64)) ** -site.examine_decay
        rows = np.array([site.item_row.get(i, -1) for i in ids], np.int64)
        known = rows >= 0
        aff = np.full(len(ids), -np.inf)
        if known.any():
            aff[known] = site.truth.affinity(np.full(int(known.sum()), user), rows[known], int(t))
        repeat = np.array([fatigue ** seen[i] for i in ids])
        p_click = examine * _sigmoid(aff + site.click_bias) * repeat
        clicked = r.random(len(ids)) < p_click
        for p in np.flatnonzero(clicked).tolist():
            if module_of[p]:
                count("module_clicks", module_of[p])
                for tag in tags:
                    count("module_clicks_by_variant", f"{tag}|{module_of[p]}")
        if modules:
            day = int((t - start_s) // _DAY_S)
            hit = len({module_of[p] for p in np.flatnonzero(clicked).tolist()})
            for tag in tags:
                count("pages_by_variant_day", f"{tag}|{day}")
                count("clicked_modules_by_variant_day", f"{tag}|{day}", hit)
        # in page mode, every event names its page and module: the bandit learns from them
        page_id = resp.request_id if modules else ""
        events = []
        for slot, item in enumerate(ids):
            seen[item] += 1
            events.append(
                pb.Event(
                    user_id=raw,
                    item_id=item,
                    type=pb.IMPRESSION,
                    time_unix_ms=t_ms,
                    value=float(slot),
                    surface=surface,
                    request_id=page_id,
                    module=module_of[slot],
                )
            )
        for p in np.flatnonzero(clicked).tolist():
            at = min(t_ms + 1000 * (1 + p), end_ms - 2)
            dwell = float(
                np.clip(
                    math.exp(
                        math.log(site.dwell_median)
                        + site.dwell_slope * aff[p]
                        + site.dwell_sigma * r.standard_normal()
                    ),
                    1.0,
                    3600.0,
                )
            )
            events.append(
                pb.Event(
                    user_id=raw,
                    item_id=ids[p],
                    type=pb.CLICK,
                    time_unix_ms=at,
                    surface=surface,
                    request_id=page_id,
                    module=module_of[p],
                )
            )
            events.append(
                pb.Event(
                    user_id=raw,
                    item_id=ids[p],
                    type=pb.VIEW,
                    time_unix_ms=at + 1,
                    value=round(dwell, 1),
                    surface=surface,
                )
            )
            if r.random() < site.purchase_max * float(_sigmoid(aff[p] + site.purchase_bias)):
                events.append(
                    pb.Event(
                        user_id=raw,
                        item_id=ids[p],
                        type=pb.PURCHASE,
                        time_unix_ms=min(at + 2 + int(dwell * 1000), end_ms),
                        value=1.0,
                        surface=surface,
                    )
                )
        try:
            client.track(events)
        except grpc.RpcError as e:
            count("errors", f"Track {e.code().name}")
            with lock:
                report.failed_track += 1
            return
        kinds = Counter(pb.EventType.Name(e.type).lower() for e in events)
        for kind, n in kinds.items():
            count("events", kind, n)
        for tag in tags:
            count("clicks_by_variant", tag, int(clicked.sum()))

    with ThreadPoolExecutor(len(by_worker), thread_name_prefix="simulated-user") as pool:
        for f in [pool.submit(run, w) for w in range(len(by_worker))]:
            f.result()
    report.seconds = round(time.perf_counter() - started, 2)
    return report
