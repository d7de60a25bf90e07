"""``tailored privacy forget | export | enforce | rekey | report``: the data subject's rights
(erasure, access), the site's rules (retention, key rotation) and what a dataset reveals
(k-anonymity)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tailored.cli._common import Sub

__all__ = ["register"]


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "privacy",
        help="erase or export a user's data, enforce retention, rotate the key, k-anonymity",
        description="Data subjects' rights and the site's privacy rules, across every store "
        "that holds user data.",
    )
    group = p.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND", required=True)
    _add_forget(group)
    _add_export(group)
    _add_enforce(group)
    _add_rekey(group)
    _add_report(group)


# ---- the stores a command works on ---------------------------------------------------------


def _stores(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        help="the online state: sqlite:///PATH or redis://HOST:PORT/DB (default: "
        "$TAILORED_HOME/serve/state.db where it exists)",
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a dataset directory (repeat for several)",
    )
    p.add_argument(
        "--bundles",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a bundles root, every version under it (or one version; repeat for several)",
    )
    p.add_argument(
        "--privacy-dir",
        type=Path,
        help="the tombstone list and audit log (default: $TAILORED_PRIVACY_DIR, else "
        "$TAILORED_HOME/privacy)",
    )


def _user_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", help="the site's user id (pseudonymized here with the site's key)")
    p.add_argument("--key-file", type=Path, help="the pseudonymization key (default: as for data)")


def _open_stores(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The online state (or None) and every store named, each checked to exist first: a
    typo names the path and nothing is touched."""
    from tailored.bundle.forget import BundleStore
    from tailored.data.forget import DatasetStore
    from tailored.data.schema import read_dataset_meta
    from tailored.errors import TailoredError
    from tailored.paths import dataset_dir, tailored_home
    from tailored.serve.state import open_state

    datasets = [dataset_dir(d) for d in args.dataset]
    for d in datasets:
        read_dataset_meta(d)  # "not a tailored dataset" before anything is erased
    for b in args.bundles:
        if not b.is_dir():
            raise TailoredError(f"--bundles {b}: no such directory")
    url = args.state
    if url is None and (tailored_home() / "serve" / "state.db").is_file():
        url = str(tailored_home() / "serve" / "state.db")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise TailoredError(
                f"--state {url}: no such file (an online state is created by `tailored serve`)"
            )
    state = open_state(url) if url is not None else None
    stores: list[Any] = [state] if state is not None else []
    stores += [DatasetStore(d) for d in datasets] + [BundleStore(b) for b in args.bundles]
    if not stores:
        raise TailoredError("no store given: name --state, --dataset or --bundles")
    return state, stores


def _pseudonym(args: argparse.Namespace) -> str:
    from tailored.data.pseudonym import Pseudonymizer, load_key
    from tailored.errors import TailoredError
    from tailored.serve.edge import RequestError, check_id

    try:
        check_id(args.user, "user")
    except RequestError as e:
        raise TailoredError(str(e)) from None
    pseudo = Pseudonymizer(load_key(args.key_file, create=False))
    for d in args.dataset:  # a wrong key finds nothing, and would say "nothing held"
        from tailored.data.schema import read_dataset_meta
        from tailored.paths import dataset_dir

        written = read_dataset_meta(dataset_dir(d)).key_fingerprint
        if written != pseudo.fingerprint:
            raise TailoredError(
                f"--dataset {d}: written with key {written}, this key is {pseudo.fingerprint}; "
                "give the site's key (--key-file, TAILORED_PSEUDONYM_KEY)"
            )
    return pseudo(args.user)


# ---- forget: erasure -----------------------------------------------------------------------


def _add_forget(group: Sub) -> None:
    p = group.add_parser(
        "forget",
        help="erase a user from every store named, leave their tombstone and an audit record",
        description="Erase USER (the site's id) from the online state (events, the event log, "
        "consent and its history, logged pages), each dataset (profile and events) and "
        "every bundle version (their rows), in that order after writing their tombstone "
        "(later imports and training runs leave them out); append the audit record. With "
        "--server, the running server erases what it holds (its online state and bundles) "
        "and this command the datasets named. A store that fails is named and the command "
        "exits 2: run it again to finish.",
    )
    _user_arguments(p)
    _stores(p)
    p.add_argument("--server", metavar="HOST:PORT", help="ask this server (the admin Forget call)")
    p.add_argument(
        "--admin-token-env",
        default="TAILORED_ADMIN_TOKEN",
        help="the environment variable holding the admin token (with --server)",
    )
    p.add_argument("--json", action="store_true", help="print what was removed as JSON")
    p.set_defaults(handler=_forget)


def _forget(args: argparse.Namespace) -> int:
    from tailored.data.forget import DatasetStore
    from tailored.data.tombstones import TombstoneList
    from tailored.errors import TailoredError
    from tailored.paths import dataset_dir
    from tailored.privacy.audit import AuditLog
    from tailored.privacy.erasure import erase, failures, summary

    user = _pseudonym(args)
    audit, stones = AuditLog(args.privacy_dir), TombstoneList(args.privacy_dir)
    removed: dict[str, dict[str, int]] = {}
    held = False
    if args.server:
        import os

        from tailored.cli._common import rpc
        from tailored.serve.client import Client

        token = os.environ.get(args.admin_token_env)
        if not token:
            raise TailoredError(f"--server needs the admin token in ${args.admin_token_env}")
        with Client(args.server, token=token) as c:
            resp = rpc(lambda: c.forget(args.user))
        held = resp.held
        for key, n in resp.removed.items():
            store, _, kind = key.partition(": ")
            removed.setdefault(f"{args.server} {store}", {})[kind] = int(n)
        if args.state or args.bundles:
            raise TailoredError(
                "--server erases the server's own state and bundles; name only --dataset beside it"
            )
        stores: list[Any] = [DatasetStore(dataset_dir(d)) for d in args.dataset]
    else:
        _, stores = _open_stores(args)
    if stores:
        try:
            done = erase(user, stores, audit=audit, tombstones=stones)
        finally:
            for s in stores:
                close = getattr(s, "close", None)
                if close is not None:
                    close()
        removed.update(done.removed)
        held = held or done.held
        if done.failed:
            what = failures(done.failed)
            raise TailoredError(
                f"erasure incomplete ({what}); the rest was erased and recorded: run the "
                "same command again to finish"
            )
    if args.json:
        print(json.dumps({"pseudonym": user, "held": held, "removed": removed}, indent=2))
    elif not held:
        print(
            f"nothing held about this user in any store named (pseudonym {user}); "
            "their tombstone is written, so later imports leave them out"
        )
    else:
        print(f"erased (pseudonym {user}): {summary(removed)}")
    return 0


# ---- export: access ------------------------------------------------------------------------


def _add_export(group: Sub) -> None:
    p = group.add_parser(
        "export",
        help="everything held about a user, as JSON",
        description="Everything the stores named hold about USER (the site's id): profile, "
        "consent and its history, events, logged pages, bundle rows (recent items, items "
        "engaged with, segment), experiment assignments (with --experiments), why they see "
        "what they see, and the audit's records of them. 'held': false says explicitly that "
        "nothing is held.",
    )
    _user_arguments(p)
    _stores(p)
    p.add_argument("--experiments", type=Path, help="the experiments file (their assignments)")
    p.add_argument("--out", type=Path, help="write the JSON here (default: standard output)")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    import time

    from tailored.paths import write_text_atomic
    from tailored.privacy.audit import AuditLog
    from tailored.privacy.export import export_user

    user = _pseudonym(args)
    state, stores = _open_stores(args)
    extra: dict[str, Any] = {}
    try:
        if args.experiments is not None:
            from tailored.experiments import Assigner, load_experiments

            assigned = Assigner(load_experiments(args.experiments)).assign(user, time.time())
            extra["experiments"] = [
                {"experiment": a.experiment, "variant": a.variant} for a in assigned
            ]
        doc = export_user(user, stores, audit=AuditLog(args.privacy_dir), extra=extra)
    finally:
        if state is not None:
            state.close()
    doc["why"] = _why(doc)
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"
    if args.out is not None:
        write_text_atomic(args.out, text)
        print(f"wrote {args.out} ({'data held' if doc['held'] else 'nothing held'})")
    else:
        print(text, end="")
    return 0


def _why(doc: dict[str, Any]) -> dict[str, Any]:
    """What a request starts from for this user: their recent events in the online state
    (most recent last) and, from the newest bundle that knows them, its recent items and
    their segment."""
    out: dict[str, Any] = {"online_recent_items": [], "bundle_recent_items": [], "segment": None}
    for part in doc["stores"].values():
        if "consent_history" in part:  # the online state
            out["online_recent_items"] = [
                {"item_id": e["item_id"], "type": e["type"], "time_ms": e["time_ms"]}
                for e in part["events"][-20:]
            ]
            out["personalized"] = part["consent"] is None or "personalization" in part["consent"]
        for version in part.get("versions", [])[-1:]:
            out["bundle_recent_items"] = version["recent_items"]
            out["segment"] = version.get("segment")
            out["bundle_version"] = version["version"]
    return out


# ---- enforce: retention and pending erasures -----------------------------------------------


def _add_enforce(group: Sub) -> None:
    p = group.add_parser(
        "enforce",
        help="purge what is older than the retention limit, and apply every tombstone",
        description="Remove every event older than --days (or the configuration's [serve] "
        "retention_days) from the stores named: the online state's events and logged "
        "pages, each dataset's events, each bundle's user histories; and remove every "
        "tombstoned user (erased or withdrawn) still in a dataset or bundle. Each run "
        "appends its counts to the audit log.",
    )
    _stores(p)
    p.add_argument("--days", type=float, help="the retention limit in days")
    p.add_argument("--config", type=Path, help="a serving configuration ([serve] retention_days)")
    p.add_argument("--json", action="store_true", help="print what was removed as JSON")
    p.set_defaults(handler=_enforce)


def _enforce(args: argparse.Namespace) -> int:
    from tailored.config import load_serve_config
    from tailored.data.tombstones import TombstoneList
    from tailored.errors import TailoredError
    from tailored.privacy.audit import AuditLog
    from tailored.privacy.erasure import enforce_retention, failures, summary

    days = args.days
    if days is None and args.config is not None:
        days = load_serve_config(args.config).retention_days
    if days is not None and days <= 0:
        raise TailoredError(f"--days: must be > 0, got {days}")
    state, stores = _open_stores(args)
    audit = AuditLog(args.privacy_dir)
    report: dict[str, Any] = {}
    try:
        stones = TombstoneList(args.privacy_dir).read()
        swept: dict[str, dict[str, int]] = {}
        for s in stores:
            if stones and hasattr(s, "forget_tombstoned"):
                swept[s.store] = s.forget_tombstoned(stones)
        if any(n for c in swept.values() for n in c.values()):
            audit.append("sweep", removed=swept, failed={})
        report["tombstones"] = {"listed": len(stones), "removed": swept}
        if days is not None:
            done = enforce_retention(stores, days=days, audit=audit)
            report["retention"] = {
                "days": days,
                "before_ms": done.before_ms,
                "removed": done.removed,
                "failed": done.failed,
            }
            if done.failed:
                what = failures(done.failed)
                raise TailoredError(f"retention incomplete ({what}); run again to finish")
    finally:
        if state is not None:
            state.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"tombstones: {len(stones)} listed; {summary(swept) or 'no store to sweep'}")
        if "retention" in report:
            print(f"retention ({days:g} days): {summary(report['retention']['removed'])}")
        else:
            print("retention: no limit given (--days or --config with [serve] retention_days)")
    return 0


# ---- rekey: key rotation -------------------------------------------------------------------


def _add_rekey(group: Sub) -> None:
    p = group.add_parser(
        "rekey",
        help="move every store named to a new pseudonymization key",
        description="Re-key the stores named (the online state, datasets, every bundle "
        "version) from the current key (--key-file, or as for data) to --new-key-file, "
        "mapping the pseudonyms of the site's users listed in --users (one raw id a line: a "
        "pseudonym cannot be re-keyed without the id it was made from). Each store moves "
        "whole or not at all; a run that stops halfway leaves every store readable and is "
        "finished by running it again with the same keys. Stop the servers first, and "
        "serve with the new key afterwards (--install writes it to $TAILORED_HOME).",
    )
    _stores(p)
    p.add_argument("--key-file", type=Path, help="the current key (default: as for data)")
    p.add_argument("--new-key-file", type=Path, required=True, help="the new key (hex)")
    p.add_argument("--users", type=Path, required=True, help="the site's raw user ids, a line each")
    p.add_argument(
        "--install",
        action="store_true",
        help="once every store has moved, make the new key $TAILORED_HOME/pseudonym.key",
    )
    p.add_argument("--json", action="store_true", help="print what moved as JSON")
    p.set_defaults(handler=_rekey)


def _rekey(args: argparse.Namespace) -> int:
    from tailored.data.pseudonym import KeyMap, Pseudonymizer, load_key
    from tailored.data.tombstones import TombstoneList
    from tailored.errors import TailoredError
    from tailored.paths import tailored_home, write_text_atomic
    from tailored.privacy.audit import AuditLog
    from tailored.privacy.erasure import failures, summary
    from tailored.privacy.rekey import rekey

    old_key, new_key = load_key(args.key_file), load_key(args.new_key_file)
    try:
        raw = [line.strip() for line in args.users.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise TailoredError(f"--users {args.users}: cannot read it ({e})") from None
    if not raw:
        raise TailoredError(f"--users {args.users}: no user ids")
    keys = KeyMap.of(raw, Pseudonymizer(old_key), Pseudonymizer(new_key))
    state, stores = _open_stores(args)
    try:
        done = rekey(
            stores,
            keys,
            audit=AuditLog(args.privacy_dir),
            tombstones=TombstoneList(args.privacy_dir),
        )
    finally:
        if state is not None:
            state.close()
    if done.failed:
        what = failures(done.failed)
        raise TailoredError(
            f"re-keying incomplete ({what}); every store is readable under one key or the "
            "other: run the same command again to finish"
        )
    if args.install:
        write_text_atomic(tailored_home() / "pseudonym.key", new_key.hex() + "\n")
    if args.json:
        print(
            json.dumps(
                {"from": keys.old_fingerprint, "to": keys.new_fingerprint, "moved": done.moved},
                indent=2,
            )
        )
    else:
        print(f"re-keyed {keys.old_fingerprint} -> {keys.new_fingerprint}: {summary(done.moved)}")
        if not args.install:
            print("serve and import with the new key from now on (or run with --install)")
    return 0


# ---- report: k-anonymity of a dataset's users ---------------------------------------------


def _add_report(group: Sub) -> None:
    p = group.add_parser(
        "report",
        help="k-anonymity of a dataset's users, and which profile fields drive it",
        description="How small the smallest group of users sharing the same profile values "
        "is (k), for every combination of the quasi-identifiers, how many users are in "
        "small groups, and which fields drive it; --coarsen default shows the same after "
        "the default coarsening (tailored.data.coarsen).",
    )
    p.add_argument("dataset", help="dataset directory, or a name under $TAILORED_HOME/datasets")
    p.add_argument(
        "--quasi-identifiers",
        type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
        default=None,
        metavar="F1,F2,...",
        help="profile fields an outsider could know (default: every profile field)",
    )
    p.add_argument(
        "--coarsen",
        choices=["default"],
        default=None,
        help="also report after the default coarsening of those fields",
    )
    p.add_argument(
        "--threshold",
        type=int,
        default=None,
        help="a group smaller than this is small (default 5)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from tailored.privacy.kanon import privacy_report
    from tailored.privacy.kanon_text import render

    # the threshold's default lives in tailored.privacy.kanon, not imported for --help
    threshold = {} if args.threshold is None else {"threshold": args.threshold}
    report = privacy_report(args.dataset, args.quasi_identifiers, coarsen=args.coarsen, **threshold)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(report), end="")
    return 0
