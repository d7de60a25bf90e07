"""A k-anonymity report in words, for the person who decides which profile fields a site keeps
(``tailored privacy report``; ``--json`` gives :meth:`PrivacyReport.to_json` instead)."""

from __future__ import annotations

from typing import Any

from tailored.privacy.kanon import GroupStats, KAnonymity, PrivacyReport

__all__ = ["render"]

_MAX_COMBINATIONS = 20  # rows of the combinations table; --json has them all


def render(report: PrivacyReport) -> str:
    """The report as plain text: what k means here, what drives it, each combination."""
    a = report.as_stored
    lines = [
        f"k-anonymity of {report.dataset}: {a.users} users; quasi-identifiers: "
        + ", ".join(a.quasi_identifiers),
        "A group is the users who share the same values of these fields; a small group has "
        f"fewer than {a.threshold} users, whom these fields nearly identify.",
    ]
    if report.at_import:
        lines.append("Coarsened at import: " + ", ".join(sorted(report.at_import)) + ".")
    lines += ["", "As stored", *_section(a, coarsen_column=True)]
    if report.coarsened is not None and report.coarsening is not None:
        c = report.coarsened
        lines += ["", "After the default coarsening"]
        for name, done in report.coarsening.items():
            lines.append(f"  {name}: {_done(done)}")
        lines += _section(c, coarsen_column=False)
        lines += [
            "",
            f"Summary: k {a.full.k} -> {c.full.k}; users in small groups "
            f"{_users(a.full)} -> {_users(c.full)}.",
        ]
    return "\n".join(lines) + "\n"


def _section(r: KAnonymity, *, coarsen_column: bool) -> list[str]:
    f = r.full
    alone = "is alone in" if f.k == 1 else f"is in a group of {f.k} in"
    lines = [
        f"  k = {f.k}: the most exposed user {alone} their group; {f.groups} groups.",
        f"  Users in small groups: {_users(f)}.",
        "  What drives it (users in small groups):",
    ]
    top = r.drivers[0]
    if len(r.drivers) > 1 and top.dropped.users_below < f.users_below:
        lines.insert(
            2,
            f"  Strongest driver: {top.field} (without it, {_users(top.dropped)} users in small "
            f"groups instead of {_users(f)}).",
        )
    singles = {s.fields[0]: s for s in r.subsets if len(s.fields) == 1}
    head = f"    {'field':<16}{'by itself':>18}{'without it':>18}"
    lines.append(head + (f"{'coarsened alone':>22}" if coarsen_column else ""))
    for d in r.drivers:
        row = f"    {d.field:<16}{_users(singles[d.field]):>18}{_users(d.dropped):>18}"
        if coarsen_column:
            row += f"{_users(d.coarsened) if d.coarsened else 'no default':>22}"
        lines.append(row)
    shown = r.subsets[:_MAX_COMBINATIONS]
    lines += [
        "  Combinations:",
        f"    {'k':>5}  {'groups':>7}  {'users in small groups':>22}  fields",
    ]
    for s in shown:
        lines.append(f"    {s.k:>5}  {s.groups:>7}  {_users(s):>22}  {', '.join(s.fields)}")
    if len(r.subsets) > len(shown):
        lines.append(f"    ... {len(r.subsets) - len(shown)} more with --json")
    return lines


def _users(s: GroupStats) -> str:
    return f"{s.users_below} ({100 * s.share_below:.1f}%)"


def _done(done: dict[str, Any]) -> str:
    parts = []
    if "bands" in done:
        parts.append("bands at " + ", ".join(str(e) for e in done["bands"]))
    if "prefix" in done:
        parts.append(f"first {done['prefix']} characters")
    if "min_count" in done:
        parts.append(
            f"values of fewer than {done['min_count']} users -> {done['other']!r} "
            f"({done['merged_values']} values, {done['merged_users']} users)"
        )
    return "; ".join(parts)
