"""An experiment's result as a page a product manager can read: one self-contained HTML file
(inline CSS and SVG, nothing fetched), from :func:`tailored.experiments.analysis.analyze`'s
JSON.

The page opens with the verdicts (a sample ratio mismatch first, when there is one), then
the users per variant against the declared split, a table per metric with each variant's
lift and its intervals (fixed-horizon and always-valid), and a chart of the cumulative lift
in clicks per user day by day with its always-valid interval: the line a team may look at
every day without fooling itself.
"""

from __future__ import annotations

import html
from typing import Any

from tailored.experiments.analysis import difference_shown

__all__ = ["render_html"]

_W, _H, _PAD = 640, 260, 44


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1%}"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _ci(ci: list[float | None] | None, pct: bool = True) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    f = _pct if pct else _num
    return f"{f(ci[0])} to {f(ci[1])}"


def _metric_rows(result: dict[str, Any]) -> str:
    rows = []
    for metric, by_variant in result["metrics"].items():
        for variant, r in by_variant.items():
            name = html.escape(f"{metric} ({'ratio' if metric == 'ctr' else 'per user'})")
            if "error" in r:
                rows.append(
                    f"<tr><td>{name}</td><td>{html.escape(variant)}</td>"
                    f"<td colspan=6>{html.escape(r['error'])}</td></tr>"
                )
                continue
            fixed, seq = r["fixed"], r["sequential"]
            shown = difference_shown(r)
            state = "significant" if shown else "not yet"
            reduction = fixed.get("variance_reduction")
            cuped = "–" if reduction is None else f"{reduction:.0%}"
            rows.append(
                f"<tr class='{'sig' if shown else ''}'><td>{name}</td>"
                f"<td>{html.escape(variant)}</td>"
                f"<td>{_num(fixed['mean_control'])} → {_num(fixed['mean_treatment'])}</td>"
                f"<td>{_pct(fixed['rel_lift'])}</td><td>{_ci(fixed['rel_ci'])}</td>"
                f"<td>{_ci(seq['rel_ci'])}</td><td>{state}</td><td>{cuped}</td></tr>"
            )
    return "\n".join(rows)


def _chart(result: dict[str, Any]) -> str:
    """The cumulative relative lift in clicks per user, with its always-valid interval."""
    daily = result.get("daily") or []
    variants = [v for v in result["variants"] if v != result["control"]]
    points = [
        (row["day"], row[v]["rel_lift"], *row[v]["rel_ci"])
        for v in variants[:1]
        for row in daily
        if v in row and None not in (row[v]["rel_lift"], *row[v]["rel_ci"])
    ]
    if not points:
        return "<p class='muted'>Not enough data for the daily chart yet.</p>"
    days = max(p[0] for p in points)
    lo = min(min(p[2] for p in points), 0.0)
    hi = max(max(p[3] for p in points), 0.0)
    span = (hi - lo) or 1.0

    def x(day: float) -> float:
        return _PAD + (day - 1) / max(days - 1, 1) * (_W - 2 * _PAD)

    def y(v: float) -> float:
        return _H - _PAD - (v - lo) / span * (_H - 2 * _PAD)

    band = " ".join(f"{x(d):.1f},{y(h):.1f}" for d, _, _, h in points)
    band += " " + " ".join(f"{x(d):.1f},{y(low):.1f}" for d, _, low, _ in reversed(points))
    line = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v, _, _ in points)
    ticks = "".join(
        f"<text x='{_PAD - 6}' y='{y(v) + 4:.1f}' text-anchor='end'>{v:+.0%}</text>"
        for v in (lo, 0.0, hi)
    )
    return (
        f"<svg viewBox='0 0 {_W} {_H}' width='{_W}' height='{_H}' role='img' "
        f"aria-label='cumulative lift in clicks per user'>"
        f"<polygon points='{band}' fill='#9ecae1' opacity='0.6'/>"
        f"<line x1='{_PAD}' x2='{_W - _PAD}' y1='{y(0):.1f}' y2='{y(0):.1f}' stroke='#555' "
        "stroke-dasharray='4 3'/>"
        f"<polyline points='{line}' fill='none' stroke='#08519c' stroke-width='2'/>"
        f"{ticks}<text x='{_W / 2}' y='{_H - 8}' text-anchor='middle'>day 1 to {days} "
        f"({html.escape(variants[0])} against {html.escape(result['control'])})</text></svg>"
    )


def render_html(result: dict[str, Any]) -> str:
    """The page for ``result`` (:func:`tailored.experiments.analysis.analyze`)."""
    srm = result.get("srm")
    if srm is None:
        srm_line = "No exposed users yet."
    elif srm["mismatch"]:
        srm_line = (
            f"<strong class='bad'>Sample ratio mismatch</strong> (p = {srm['p_value']:.2g}): "
            "the users per variant do not match the declared split; do not trust the results."
        )
    else:
        srm_line = f"The split matches the declared weights (p = {srm['p_value']:.2g})."
    counts = "".join(
        f"<tr><td>{html.escape(name)}{' (control)' if name == result['control'] else ''}</td>"
        f"<td>{v['weight']:.0%}</td><td>{v['users']:,}</td></tr>"
        for name, v in result["variants"].items()
    )
    verdicts = "".join(f"<li>{html.escape(v)}</li>" for v in result["verdicts"])
    title = html.escape(f"Experiment {result['experiment']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222 }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left }}
tr.sig td {{ background: #eef6ee }}
.bad {{ color: #b00 }} .muted {{ color: #777 }}
text {{ font-size: 12px; fill: #333 }}
</style></head><body>
<h1>{title}</h1>
<p class="muted">Layer {html.escape(result["layer"])}, {html.escape(result["status"])};
{result["users"]:,} users exposed over {result["days"]:.1f} days; as of
{html.escape(result["now"])}. Intervals at {1 - result["alpha"]:.0%}.</p>
<h2>Verdicts</h2><ul>{verdicts}</ul>
<h2>Assignment</h2><p>{srm_line}</p>
<table><tr><th>variant</th><th>declared</th><th>users</th></tr>{counts}</table>
<h2>Metrics</h2>
<p class="muted">"Always-valid" intervals stay correct however often the result is looked
at; decide on them. The fixed-horizon interval holds only for one look planned in advance.
CUPED: the variance removed using each user's same metric before exposure.</p>
<table><tr><th>metric</th><th>variant</th><th>control → variant</th><th>lift</th>
<th>95% interval (fixed)</th><th>always-valid interval</th><th>decision</th><th>CUPED</th></tr>
{_metric_rows(result)}</table>
<h2>Cumulative lift in clicks per user</h2>{_chart(result)}
{_segment_section(result.get("segments"))}
{_page_section(result.get("pages"))}
</body></html>
"""


def _segment_section(seg: dict[str, Any] | None) -> str:
    """Clicks per user by user segment, with the multiple-comparison caveat first."""
    if not seg:
        return ""
    rows = []
    for label, row in seg["by_segment"].items():
        users = ", ".join(f"{html.escape(v)} {n:,}" for v, n in row["users"].items())
        for variant, r in row["variants"].items():
            if "error" in r:
                cells = f"<td colspan=3>{html.escape(r['error'])}</td>"
            else:
                called = "yes" if r["significant_after_bonferroni"] else "no"
                cells = (
                    f"<td>{_pct(r['rel_lift'])}</td><td>{_ci(r['rel_ci'])}</td><td>{called}</td>"
                )
            rows.append(
                f"<tr><td>{html.escape(label)}</td><td>{users}</td>"
                f"<td>{html.escape(variant)}</td>{cells}</tr>"
            )
    return (
        f"<h2>By user segment ({html.escape(seg['metric'])})</h2>"
        f"<p class='muted'>{html.escape(seg['caveat'])}.</p>"
        "<table><tr><th>segment</th><th>users</th><th>variant</th><th>lift</th>"
        "<th>95% interval (fixed)</th><th>called (Bonferroni)</th></tr>"
        + "".join(rows)
        + "</table>"
    )


_COLOURS = ("#08519c", "#e6550d", "#31a354", "#756bb1", "#636363", "#d6616b")


def _page_section(pages: dict[str, Any] | None) -> str:
    """The module click-through of each variant: a table, and a line per variant by day."""
    if not pages:
        return ""
    variants = list(pages["variants"])
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{v['pages']:,}</td>"
        f"<td>{v['clicked_modules_per_page']:.3f}</td><td>{v['click_through']:.4f}</td>"
        f"<td>{_ci(v['ci'], pct=False)}</td></tr>"
        for name, v in pages["variants"].items()
    )
    lines = {
        name: [
            (row["day"], row[name]["click_through"])
            for row in pages["daily"]
            if name in row and row[name]["click_through"] is not None
        ]
        for name in variants
    }
    points = [p for ps in lines.values() for p in ps]
    chart = "<p class='muted'>Not enough days for the chart yet.</p>"
    if len({d for d, _ in points}) > 1:
        days = max(d for d, _ in points)
        lo = 0.0
        hi = max(v for _, v in points) * 1.1 or 1.0

        def x(day: float) -> float:
            return _PAD + (day - 1) / max(days - 1, 1) * (_W - 2 * _PAD)

        def y(v: float) -> float:
            return _H - _PAD - (v - lo) / (hi - lo) * (_H - 2 * _PAD)

        paths = "".join(
            f"<polyline points='{' '.join(f'{x(d):.1f},{y(v):.1f}' for d, v in ps)}' "
            f"fill='none' stroke='{_COLOURS[i % len(_COLOURS)]}' stroke-width='2'/>"
            f"<text x='{_W - _PAD + 4}' y='{y(ps[-1][1]) + 4:.1f}' "
            f"fill='{_COLOURS[i % len(_COLOURS)]}'>{html.escape(name)}</text>"
            for i, (name, ps) in enumerate(lines.items())
            if ps
        )
        ticks = "".join(
            f"<text x='{_PAD - 6}' y='{y(v) + 4:.1f}' text-anchor='end'>{v:.3f}</text>"
            for v in (lo, hi / 2, hi)
        )
        chart = (
            f"<svg viewBox='0 0 {_W + 60} {_H}' width='{_W + 60}' height='{_H}' role='img' "
            "aria-label='module click-through by day and variant'>"
            f"{paths}{ticks}<text x='{_W / 2}' y='{_H - 8}' text-anchor='middle'>day 1 to "
            f"{days}: module click-through (modules clicked / modules shown)</text></svg>"
        )
    return (
        "<h2>Page modules</h2><p class='muted'>A module is clicked on a page when any of its "
        "items is. The interval treats pages as independent, which a user's many pages are "
        "not: decide on the per-user metrics above.</p>"
        "<table><tr><th>variant</th><th>pages</th><th>clicked modules per page</th>"
        "<th>module click-through</th><th>95% interval</th></tr>"
        f"{rows}</table>{chart}"
    )
