"""``tailored serve``, ``tailored recommend``, ``page`` and ``track``, and ``tailored
simulate``: the server (assembled in :mod:`tailored.serve.app`), a client for people trying
it by hand, and simulated users. gRPC and the serving
modules are imported inside handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tailored.cli._common import Sub, rpc
from tailored.errors import TailoredError

__all__ = ["register"]


def register(sub: Sub) -> None:
    _add_serve(sub)
    _add_recommend(sub)
    _add_page(sub)
    _add_track(sub)
    _add_simulate(sub)


# --- serve ------------------------------------------------------------------------------------


def _add_serve(sub: Sub) -> None:
    from tailored.serve.app import add_arguments

    p = sub.add_parser(
        "serve",
        help="serve a bundle over gRPC (Recommend, Track, SetConsent, Admin)",
        description="Verify and load a bundle and serve it over gRPC, with the health and "
        "reflection services and Prometheus metrics. BUNDLE is a version directory or a "
        "bundles root; a root is watched and new versions are swapped in under load.",
    )
    add_arguments(p)
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from tailored.serve.app import run

    return run(args, verbose=args.verbose)


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
        resp = rpc(
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


def _add_page(sub: Sub) -> None:
    p = sub.add_parser(
        "page",
        help="ask a running server for a page of modules",
        description="Call Page on a running `tailored serve`: the modules in the order its "
        "policy chose, each with its items and the propensity of its place.",
    )
    _add_target(p)
    p.add_argument("--user", help="the site's user id (required)")
    p.add_argument(
        "--module",
        nargs="+",
        metavar="ID=TYPE[:PARAM]",
        help="the candidate modules (required), like for-you=recommended trending=trending "
        "horror=category:Horror more=similar:50 byw=because_you_watched",
    )
    p.add_argument("--k", type=int, default=5, help="items per module")
    p.add_argument("--page-type", default="home")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(handler=_page)
    more = p.add_subparsers(dest="page_command", metavar="{evaluate}")
    e = more.add_parser(
        "evaluate",
        help="estimate a page policy's click-through from a server's logged pages",
        description="Off-policy evaluation: a page-ordering policy's clicked modules per "
        "page (and module click-through) estimated with IPS, self-normalised IPS and doubly "
        "robust estimators, with 95%% intervals, from the pages a server logged under a "
        "random order, beside what each logged policy was observed to get.",
    )
    e.add_argument("log", help="the server's online state: sqlite:///PATH, PATH or redis://...")
    e.add_argument("--policy", type=Path, required=True, help="the policy file (TOML)")
    e.add_argument("--page-type", default="home")
    e.add_argument("--logged", default="random", help="whose logged pages (default random)")
    e.add_argument("--slots", type=int, default=None, help="evaluate the first N slots")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--since-ms", type=int, default=0, help="only pages shown from this time (unix ms) on"
    )
    e.add_argument("--json", action="store_true")
    e.set_defaults(handler=_page_evaluate)


def _page_evaluate(args: argparse.Namespace) -> int:
    from tailored.serve.page_evaluate import evaluate_log, read_policy
    from tailored.serve.state import open_state

    spec = read_policy(args.policy)
    with open_state(args.log) as state:
        out = evaluate_log(
            state,
            spec,
            page_type=args.page_type,
            logged=args.logged,
            slots=args.slots,
            seed=args.seed,
            since_ms=args.since_ms,
        )
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    est = out["estimate"]
    print(
        f"policy {spec.policy} from {est['pages']} {args.logged!r} pages "
        f"(effective {est['effective_pages']:.0f}), first {est['slots']} slots: "
        "clicked modules per page"
    )
    for name in ("ips", "snips", "dr"):
        v = est[name]
        print(f"  {name:>5}: {v['value']:.4f}  [{v['low']:.4f}, {v['high']:.4f}]")
    if out["pages_that_taught_it"]:
        print(
            f"  warning: {out['pages_that_taught_it']} of these pages taught the bandit being "
            "evaluated (page_learn), so the estimate is optimistic; evaluate from pages that "
            'did not, or with statistics = "log"'
        )
    print("observed in the log:")
    for policy, v in out["observed"].items():
        print(
            f"  {policy:>8}: {v['value']:.4f}  [{v['low']:.4f}, {v['high']:.4f}]  "
            f"({v['pages']} pages)"
        )
    return 0


def _page(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from tailored.serve.client import Client

    if not args.user or not args.module:
        raise TailoredError("page: --user and --module are required (or: page evaluate LOG)")
    modules = _page_modules(args.module)
    with Client(args.target, timeout=args.timeout) as client:
        resp = rpc(lambda: client.page(args.user, modules, args.k, page_type=args.page_type))
    if args.json:
        print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=1))
        return 0
    print(
        f"bundle {resp.bundle_version}, {resp.policy} order, {resp.strategy}, "
        f"request {resp.request_id}"
    )
    for m in resp.modules:
        print(f"{m.position + 1}. {m.title or m.id} ({m.type}, propensity {m.propensity:.3f})")
        for item in m.items:
            print(f"     {item.title or item.item_id:<45.45} {item.score:8.3f}  {item.reason}")
    return 0


def _page_modules(specs: list[str]) -> list[Any]:
    """``--module ID=TYPE[:PARAM]`` values as PageModule messages."""
    from tailored.serve.v1 import personalization_pb2 as pb

    modules = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise TailoredError(f"--module {spec!r}: expected ID=TYPE or ID=TYPE:PARAM")
        kind, _, param = rest.partition(":")
        modules.append(pb.PageModule(id=name, type=kind, param=param))
    return modules


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
    p.add_argument("--request-id", default="", help="the page the event happened on")
    p.add_argument("--module", default="", help="the module of that page it concerns")
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
            request_id=args.request_id,
            module=args.module,
        )
        for item in args.item
    ]
    with Client(args.target, timeout=args.timeout) as client:
        resp = rpc(lambda: client.track(events))
    print(f"accepted {resp.accepted}, dropped {resp.dropped} (no consent)")
    return 0


# --- simulate ---------------------------------------------------------------------------------


def _add_simulate(sub: Sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulated users of a synthetic site calling a live server (the closed loop)",
        description="The users of a dataset written by `tailored data synth`, whose tastes "
        "are its planted truth, ask the server for pages over simulated days, click by a "
        "choice model with position bias and fatigue, dwell and sometimes buy, and send every "
        "impression, click, view and purchase through Track. The days end at the server's "
        "present (its Status, with TAILORED_ADMIN_TOKEN set; else this machine's clock).",
    )
    p.add_argument("--target", default="127.0.0.1:50051", help="the server, HOST:PORT")
    p.add_argument("--dataset", type=Path, required=True, help="a `tailored data synth` dataset")
    p.add_argument("--users", type=int, required=True, help="how many of its users")
    p.add_argument("--days", type=float, required=True, help="simulated days")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10, help="items per page")
    p.add_argument("--sessions-per-day", type=float, default=1.0)
    p.add_argument("--fatigue", type=float, default=0.5, help="click odds kept per repeat")
    p.add_argument(
        "--module",
        nargs="*",
        default=[],
        metavar="ID=TYPE[:PARAM]",
        help="ask Page for these modules (k items each) instead of Recommend",
    )
    p.add_argument("--concurrency", type=int, default=4, help="simulated users at once")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    import os

    from tailored.serve.simulator import simulate

    report = simulate(
        args.target,
        args.dataset,
        users=args.users,
        days=args.days,
        seed=args.seed,
        k=args.k,
        sessions_per_day=args.sessions_per_day,
        fatigue=args.fatigue,
        token=os.environ.get("TAILORED_ADMIN_TOKEN"),
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
        modules=_page_modules(args.module),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        ev = report.events
        print(
            f"{report.users} users, {report.days:g} days: {report.requests} pages "
            f"({report.failed_recommend} failed), {sum(ev.values())} events tracked "
            f"({report.failed_track} calls failed): {ev.get('click', 0)} clicks on "
            f"{ev.get('impression', 0)} impressions, {ev.get('purchase', 0)} purchases; "
            f"{report.seconds:.0f} s" + (" (stopped early)" if report.stopped_early else "")
        )
    failed = report.failed_recommend + report.failed_track
    return 1 if failed and not report.requests else 0
