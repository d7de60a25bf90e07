"""``tailored experiment list | status | report``: the experiments of a file, how far each has
got, and its result from the serving state's event log."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from tailored.cli._common import Sub

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
        "--event-types", nargs="*", default=[], metavar="TYPE", help="more per-user metrics"
    )
    rep.add_argument(
        "--pre-days", type=float, default=14.0, help="CUPED's pre-exposure window (days)"
    )
    rep.add_argument(
        "--planned-users", type=int, default=5000, help="the sequential test's planned users"
    )
    rep.set_defaults(handler=_report)


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


def _events(args: argparse.Namespace, types: set[str] | None = None) -> list[Any]:
    from tailored.paths import tailored_home
    from tailored.serve.state import open_state

    url = args.state or str(tailored_home() / "serve" / "state.db")
    with open_state(url) as state:
        return [(u, e.type, e.item_id, e.time_ms, e.value) for u, e in state.scan(types)]


def _status(args: argparse.Namespace) -> int:
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import EXPOSURE, exposed_users

    e = load_experiments(args.experiments).get(args.name)
    now = _now(args)
    exposed = exposed_users(e, _events(args, {EXPOSURE}))
    first = min((t for _, t in exposed.values()), default=None)
    days = 0.0 if first is None else max(0.0, (now * 1000 - first) / 86_400_000)
    print(f"{e.name}: {e.status(now)}, {len(exposed):,} users exposed over {days:.1f} days")
    for v in e.variants:
        n = sum(1 for variant, _ in exposed.values() if variant == v.name)
        print(f"  {v.name}{' (control)' if v.name == e.control else ''}: {n:,} users")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import analyze
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
    )
    if args.html is not None:
        write_text_atomic(args.html, render_html(result))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{e.name}: {result['status']}, {result['users']:,} users over {result['days']:.1f} days")
    for verdict in result["verdicts"]:
        print(f"  {verdict}")
    if args.html is not None:
        print(f"wrote {args.html}")
    return 0
