"""``tailored experiment list | status | report``: the experiments of a file, how far each has
got, and its result from the serving state's event log."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from tailored.cli._common import Sub, rpc

__all__ = ["register"]


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="A/B tests: list them, follow them, report their results",
        description="Experiments declared in a TOML file ([serve] experiments) and measured "
        "from the online state's events.",
    )
    group = p.add_subparsers(dest="experiment_command", metavar="SUBCOMMAND", required=True)
    ls = group.add_parser("list", help="every experiment of a file, and its status")
    _common(ls, state=False)
    ls.set_defaults(handler=_list)
    st = group.add_parser("status", help="an experiment's status, users and days so far")
    st.add_argument("name")
    _common(st, state=True)
    st.set_defaults(handler=_status)
    rep = group.add_parser(
        "report",
        help="an experiment's result: lifts with intervals, SRM, the daily chart",
        description="Analyze an experiment from the online state's exposures and events; "
        "print a summary, or --json, and/or write a self-contained --html page.",
    )
    rep.add_argument("name")
    _common(rep, state=True)
    rep.add_argument("--json", action="store_true", help="print every figure as JSON")
    rep.add_argument("--html", type=Path, help="write the readable page here")
    rep.add_argument(
        "--segments",
        type=Path,
        metavar="BUNDLE",
        help="also the lift in clicks per user within each user segment of this bundle "
        "(a version, or a root: its latest)",
    )
    rep.add_argument(
        "--event-types", nargs="*", default=[], metavar="TYPE", help="more per-user metrics"
    )
    rep.add_argument(
        "--pre-days", type=float, default=14.0, help="CUPED's pre-exposure window (days)"
    )
    rep.add_argument(
        "--planned-users", type=int, default=5000, help="the sequential test's planned users"
    )
    rep.set_defaults(handler=_report)
    pro = group.add_parser(
        "promote",
        help="make a variant everyone's experience, through the admin service, and audit it",
        description="Analyze the experiment (as report does), refuse when its split is "
        "broken (sample ratio mismatch) unless --force, call the server's Promote, and append "
        "the decision with its figures to the audit file.",
    )
    pro.add_argument("name")
    pro.add_argument("variant")
    _common(pro, state=True)
    pro.add_argument("--target", default="127.0.0.1:50051", help="the server, HOST:PORT")
    pro.add_argument(
        "--audit",
        type=Path,
        help="the audit file, JSON lines (default: $TAILORED_HOME/experiments/audit.jsonl)",
    )
    pro.add_argument("--reason", default="", help="why, in words, for the audit")
    pro.add_argument("--force", action="store_true", help="promote despite an SRM")
    pro.set_defaults(handler=_promote)


def _common(p: argparse.ArgumentParser, *, state: bool) -> None:
    p.add_argument("--experiments", type=Path, required=True, help="the experiments file")
    p.add_argument(
        "--now", help="the time to report at (ISO 8601 with offset; default: now)", default=None
    )
    if state:
        p.add_argument(
            "--state",
            help="the server's online state: sqlite:///PATH or redis://HOST:PORT/DB "
            "(default: $TAILORED_HOME/serve/state.db)",
        )
        p.add_argument(
            "--analytics-purpose",
            metavar="PURPOSE",
            help="count only users who consented to this purpose (e.g. analytics), or who "
            "never set their consent; a user who set it without the purpose is left out of "
            "every metric (default: everyone counts)",
        )


def _now(args: argparse.Namespace) -> float:
    from tailored.errors import TailoredError

    if args.now is None:
        return time.time()
    try:
        when = dt.datetime.fromisoformat(args.now)
    except ValueError as e:
        raise TailoredError(f"--now: not an ISO 8601 time ({args.now!r})") from e
    if when.tzinfo is None:
        raise TailoredError(f"--now: {args.now} has no UTC offset (write ...Z or +01:00)")
    return when.timestamp()


def _list(args: argparse.Namespace) -> int:
    from tailored.experiments import load_experiments

    exps = load_experiments(args.experiments)
    now = _now(args)
    for e in exps.experiments:
        variants = ", ".join(f"{v.name} {v.weight:g}" for v in e.variants)
        print(
            f"{e.name}\t{e.status(now)}\tlayer {e.layer}\ttraffic {e.traffic:g}\t"
            f"{e.start.date()} to {e.end.date()}\t{variants}"
        )
    if exps.holdout.share:
        print(f"holdout: {exps.holdout.share:.1%} of users in no experiment")
    return 0


def _events(args: argparse.Namespace) -> Callable[[Collection[str] | None], Iterator[Any]]:
    """The server's event log as the analysis reads it: a pass over the events of the types
    asked for, streamed from the online state (never all in memory)."""
    from tailored.paths import tailored_home
    from tailored.serve.state import open_state

    url = args.state or str(tailored_home() / "serve" / "state.db")

    def read(types: Collection[str] | None) -> Iterator[Any]:
        with open_state(url) as state:
            out = _left_out(state, args.analytics_purpose)
            for u, e in state.scan(types):
                if u not in out:
                    yield (u, e.type, e.item_id, e.time_ms, e.value)

    return read


def _pages(args: argparse.Namespace) -> Iterator[Any]:
    """The server's logged pages as the analysis reads them (time, variants, modules shown,
    modules clicked, user)."""
    from tailored.paths import tailored_home
    from tailored.serve.state import open_state

    with open_state(args.state or str(tailored_home() / "serve" / "state.db")) as state:
        out = _left_out(state, args.analytics_purpose)
        for g in state.pages():
            if g.user not in out:
                yield g.time_ms, g.variants, *g.outcome(), g.user


def _left_out(state: Any, purpose: str | None) -> frozenset[str]:
    """The users whose consent leaves them out of the metrics: they set it without
    ``purpose`` (None: no one is left out)."""
    if purpose is None:
        return frozenset()
    return frozenset(u for u, purposes in state.consents().items() if purpose not in purposes)


def _status(args: argparse.Namespace) -> int:
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import EXPOSURE, exposed_users

    e = load_experiments(args.experiments).get(args.name)
    now = _now(args)
    exposed = exposed_users(e, _events(args)({EXPOSURE}))
    first = min((t for _, t in exposed.values()), default=None)
    days = 0.0 if first is None else max(0.0, (now * 1000 - first) / 86_400_000)
    print(f"{e.name}: {e.status(now)}, {len(exposed):,} users exposed over {days:.1f} days")
    for v in e.variants:
        n = sum(1 for variant, _ in exposed.values() if variant == v.name)
        print(f"  {v.name}{' (control)' if v.name == e.control else ''}: {n:,} users")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import analyze, page_modules
    from tailored.experiments.report import render_html
    from tailored.paths import write_text_atomic

    e = load_experiments(args.experiments).get(args.name)
    result = analyze(
        e,
        _events(args),
        now_ms=int(_now(args) * 1000),
        extra_types=args.event_types,
        pre_days=args.pre_days,
        planned_n=args.planned_users,
        segments=_segments_of(args.segments) if args.segments is not None else None,
    )
    pages = page_modules(e.name, _pages(args))  # an experiment on the page's layout
    if pages:
        result["pages"] = pages
    if args.html is not None:
        write_text_atomic(args.html, render_html(result))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{e.name}: {result['status']}, {result['users']:,} users over {result['days']:.1f} days")
    for verdict in result["verdicts"]:
        print(f"  {verdict}")
    for variant, v in result.get("pages", {}).get("variants", {}).items():
        low, high = v["ci"]
        print(
            f"  module click-through, {variant}: {v['click_through']:.4f} "
            f"[{low:.4f}, {high:.4f}] over {v['pages']:,} pages"
        )
    if args.html is not None:
        print(f"wrote {args.html}")
    return 0


def _segments_of(bundle: Path) -> dict[str, str]:
    """Each of the bundle's users (pseudonym) -> their segment's number and label."""
    import pyarrow.parquet as pq

    from tailored.bundle.format import BUNDLE_FILES, resolve_bundle, verify_bundle
    from tailored.bundle.runtime import SegmentModel
    from tailored.errors import TailoredError

    m = verify_bundle(resolve_bundle(bundle))
    segments = SegmentModel.load(m.path)
    if segments is None:
        raise TailoredError(f"--segments: {m.path} has no segments ([segments] k = 0?)")
    names = [f"{i}: {label}" for i, label in enumerate(segments.labels)]
    ids = pq.read_table(m.path / BUNDLE_FILES["user_ids"]).column("user_id").to_pylist()
    return {str(u): names[int(s)] for u, s in zip(ids, segments.of_user.tolist(), strict=True)}


def _promote(args: argparse.Namespace) -> int:
    import os

    from tailored.errors import TailoredError
    from tailored.experiments import decisions_path, load_experiments
    from tailored.experiments.analysis import analyze
    from tailored.paths import tailored_home
    from tailored.serve.client import Client

    e = load_experiments(args.experiments).get(args.name)
    try:
        variant = e.variant(args.variant)
    except KeyError as err:
        raise TailoredError(
            f"{args.name}: no variant {args.variant!r} ({[v.name for v in e.variants]})"
        ) from err
    if e.decided is not None:
        raise TailoredError(
            f"{args.name}: decided already ({e.decided.variant!r} promoted at "
            f"{e.end.isoformat()}, recorded in {decisions_path(args.experiments)})"
        )
    now = _now(args)
    result = analyze(e, _events(args), now_ms=int(now * 1000))
    srm = result["srm"]
    if srm is not None and srm["mismatch"] and not args.force:
        raise TailoredError(
            f"{args.name}: sample ratio mismatch (p = {srm['p_value']:.2g}); the split is "
            "broken and its results cannot be trusted (--force to promote anyway)"
        )
    with Client(args.target, token=os.environ.get("TAILORED_ADMIN_TOKEN")) as client:
        resp = rpc(lambda: client.promote(args.name, args.variant, args.reason))
    record = {
        "time": dt.datetime.fromtimestamp(time.time(), dt.UTC).isoformat(),
        "experiment": e.name,
        "variant": variant.name,
        "changes": dict(variant.changes),
        "reason": args.reason,
        "forced": bool(args.force),
        "target": args.target,
        "bundle_version": resp.bundle_version,
        "defaults": dict(resp.defaults),
        "users": result["users"],
        "days": result["days"],
        "srm": srm,
        "verdicts": result["verdicts"],
    }
    audit = args.audit or tailored_home() / "experiments" / "audit.jsonl"
    audit.parent.mkdir(parents=True, exist_ok=True)
    with open(audit, "a") as f:  # append-only, on disk before this returns
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    print(
        f"{e.name}: {variant.name} promoted; the server serves bundle {resp.bundle_version}"
        + (f" with {dict(resp.defaults)}" if resp.defaults else "")
    )
    print(f"audit: {audit}")
    print(
        f"decision recorded in {decisions_path(args.experiments)}: every process serving "
        f"{args.experiments} applies it, after a restart too"
    )
    return 0
