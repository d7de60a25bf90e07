"""The bandit that orders a page's modules, through the real server and simulator: against
the site's fixed order and a random one as an experiment's variants, then off-policy
evaluation against the truth.

Site: the serving benchmark's small synthetic site (2,000 users, 5,000 items, trained 20
epochs, its planted tastes kept). A page offers six modules of ``--k`` items: trending,
recommended for you, because you watched, and the three largest item categories, in that
order (the site's editorial order: what is trending first, as many sites do). The simulated
users scan modules top down with position bias and click items by their planted tastes.

Phase 1 (``--days``, 14): one ``tailored serve`` runs experiment ``layout``, a third each:
``fixed`` (the editorial order), ``random`` (a uniform order) and ``bandit`` (``[serve]
page_policy = "bandit"``, epsilon-greedy at 0.1 over the user's segment, the module and its
type, and the position).
Only the bandit's own pages teach it (``page_learn = false`` on the others), so it learns
from a third of the traffic, as it would deployed beside the others. Reported: each
variant's module click-through (modules clicked / modules shown) with intervals, by day
(the chart in the experiment report, ``results/experiment_page_bandit.html``), and the
per-user analysis of clicks (lift against ``fixed``, always-valid interval).

Phase 2 (``--ope-days``, 7): the same server (its bandit as phase 1 left it) runs
experiment ``ope``, half ``random`` and half ``bandit``, neither learning now, over later
simulated days. ``tailored page evaluate`` estimates the frozen bandit's clicked modules per
page from the random half's logged pages (IPS, SNIPS, DR); the bandit half measures the same
online. The question: is the online value inside the estimate's interval? The same logs
also estimate the site's fixed order and the bandit without exploration (greedy) over the
same days.

    python -m benchmarks.experiments.page_bandit     # writes results/experiment_page_bandit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.experiments._loop import TOKEN
from benchmarks.serving._bundle import Sizes, ensure_bundle, env
from benchmarks.serving._procs import ServerProcess, _serving_port
from tailored.paths import write_json_atomic, write_text_atomic
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]

_DAY_S = 86_400
SERVE_TOML = """[serve]
hide_after_impressions = 3
bandit_exploration = "{exploration}"
bandit_epsilon = 0.1
bandit_temperature = 0.05
bandit_thompson_scale = 1.0
bandit_features = ["segment"]
"""


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.experiments.page_bandit", description=__doc__
    )
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=float, default=14.0)
    p.add_argument("--ope-days", type=float, default=7.0)
    p.add_argument("--k", type=int, default=5, help="items per module")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exploration", default="epsilon", choices=("epsilon", "softmax", "thompson"))
    p.add_argument("--out", type=Path, default=RESULTS / "experiment_page_bandit.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tailored.config import load_serve_config
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import analyze, page_modules
    from tailored.experiments.bandit import BanditSettings
    from tailored.experiments.report import render_html
    from tailored.serve.bundles import load_recommender
    from tailored.serve.client import Client
    from tailored.serve.page_evaluate import PolicySpec, evaluate_log
    from tailored.serve.simulator import simulate
    from tailored.serve.sqlite_state import SQLiteState
    from tailored.serve.v1 import personalization_pb2 as pb

    a = _args(argv)
    started = time.perf_counter()
    built = ensure_bundle(Sizes(2000, 5000, 30.0, 20, 6.0, 500, 2, batch_size=1024), versions=1)
    version = built.versions[0]
    rec = load_recommender(version, load_serve_config(overrides={"clock": "bundle"}))
    sizes = sorted(((len(rows), v) for v, rows in rec.by_value.items()), reverse=True)
    categories = [v for _, v in sizes[:3]]
    del rec
    modules = [
        pb.PageModule(id="trending", type="trending"),
        pb.PageModule(id="for-you", type="recommended"),
        pb.PageModule(id="because", type="because_you_watched"),
        *(
            pb.PageModule(id=f"cat-{i}", type="category", param=c, title=c)
            for i, c in enumerate(categories)
        ),
    ]
    layout = experiment_toml(
        "layout",
        "page",
        "layout-bandit-1",
        [
            ("fixed", 0.34, {"page_policy": "fixed", "page_learn": False}),
            ("random", 0.33, {"page_policy": "random", "page_learn": False}),
            ("bandit", 0.33, {"page_policy": "bandit"}),
        ],
        control="fixed",
    )
    ope = experiment_toml(
        "ope",
        "page",
        "ope-1",
        [
            ("random", 0.5, {"page_policy": "random", "page_learn": False}),
            ("bandit", 0.5, {"page_policy": "bandit", "page_learn": False}),
        ],
        control="random",
    )
    with tempfile.TemporaryDirectory(prefix="page-bandit.") as d:
        tmp = Path(d)
        (tmp / "layout.toml").write_text(layout)
        (tmp / "ope.toml").write_text(ope)
        serve_toml = SERVE_TOML.format(exploration=a.exploration)
        (tmp / "serve.toml").write_text(serve_toml)
        state = tmp / "state.db"
        cmd = [sys.executable, "-m", "tailored.cli", "serve", str(version), "--port", "0"]
        cmd += ["--state", f"sqlite:///{state}", "--clock", "bundle", "--no-watch"]
        cmd += ["--experiments", str(tmp / "layout.toml"), "--config", str(tmp / "serve.toml")]
        e = {**env(), "TAILORED_ADMIN_TOKEN": TOKEN}
        server = ServerProcess(cmd, tmp / "server.log", e, _serving_port).wait_ready(600)
        try:
            with Client(server.target, token=TOKEN) as admin:
                now = admin.status().now_unix_ms / 1000
                split = now - a.ope_days * _DAY_S  # phase 1 ends here, phase 2 begins
                sim1 = simulate(
                    server.target,
                    built.dataset,
                    users=a.users,
                    days=a.days,
                    seed=a.seed,
                    k=a.k,
                    end=split,
                    token=TOKEN,
                    modules=modules,
                    max_seconds=3000,
                )
                admin.reload_experiments(str(tmp / "ope.toml"))
                sim2 = simulate(
                    server.target,
                    built.dataset,
                    users=a.users,
                    days=a.ope_days,
                    seed=a.seed + 1,
                    k=a.k,
                    end=admin.status().now_unix_ms / 1000,
                    token=TOKEN,
                    modules=modules,
                    max_seconds=3000,
                )
        finally:
            server.stop()
        split_ms = int(split * 1000)
        with SQLiteState(state) as s:
            events = [(u, ev.type, ev.item_id, ev.time_ms, ev.value) for u, ev in s.scan()]
            pages = [(g.time_ms, g.variants, *g.outcome(), g.user) for g in s.pages()]
            # what a position is worth: click-through by shown position, random pages only
            by_position: dict[int, list[int]] = {}
            for g in s.pages():
                if g.policy == "random":
                    for m in g.modules:
                        if m.position >= 0:
                            cell = by_position.setdefault(m.position, [0, 0])
                            cell[0] += 1
                            cell[1] += m.id in g.clicked
            position_ctr = {str(k): round(c / n, 4) for k, (n, c) in sorted(by_position.items())}
            learned = s.arms(["home"])["home"]  # as phase 1 left it (phase 2 learns nothing)
            arms = {
                m.id: {"shown": learned.shown(m.id), "clicks": learned.clicks(m.id)}
                for m in modules
            }
            settings = BanditSettings(
                exploration=a.exploration, epsilon=0.1, temperature=0.05, scale=1.0
            )
            ope_result = evaluate_log(
                s, PolicySpec("bandit", settings, "store", 200), since_ms=split_ms, seed=a.seed
            )
            fixed_result = evaluate_log(
                s, PolicySpec("fixed", settings), since_ms=split_ms, seed=a.seed
            )
            # the same bandit without exploring: what its exploration costs
            greedy = BanditSettings(exploration="epsilon", epsilon=0.0)
            greedy_result = evaluate_log(
                s, PolicySpec("bandit", greedy, "store", 1), since_ms=split_ms, seed=a.seed
            )
        experiment = load_experiments(tmp / "layout.toml").get("layout")
    result = analyze(experiment, events, now_ms=split_ms, pre_days=0)
    result["pages"] = page_modules("layout", [p for p in pages if p[0] < split_ms])
    html_path = a.out.with_suffix(".html")
    write_text_atomic(html_path, render_html(result))
    online = ope_result["observed"]["bandit"]
    estimate = ope_result["estimate"]
    inside = {
        k: estimate[k]["low"] <= online["value"] <= estimate[k]["high"]
        for k in ("ips", "snips", "dr")
    }
    out = {
        "benchmark": "experiment_page_bandit",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "serve_toml": serve_toml,
        "modules": [{"id": m.id, "type": m.type, "param": m.param} for m in modules],
        "phase1": {
            "simulation": sim1.to_dict(),
            "users": result["users"],
            "srm": result["srm"],
            "clicks_per_user": result["metrics"]["clicks"],
            "verdicts": result["verdicts"],
            "module_click_through": result["pages"]["variants"],
            "daily": result["pages"]["daily"],
            "bandit_arms": arms,
            "random_order_click_through_by_position": position_ctr,
        },
        "phase2": {
            "simulation": sim2.to_dict(),
            "offpolicy_bandit": ope_result,
            "offpolicy_fixed": fixed_result,
            "offpolicy_bandit_greedy": greedy_result,
            "online_inside_interval": inside,
        },
        "report": html_path.name,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(a.out, out)
    print("\n".join(result["verdicts"]))
    print(json.dumps(result["pages"]["variants"], indent=1))
    print(json.dumps({"estimate": estimate, "online": online, "inside": inside}, indent=1))
    print(f"wrote {a.out} and {html_path}")
    return out


if __name__ == "__main__":
    main()
