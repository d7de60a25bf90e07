"""How much of the synthetic site's planted tastes a model can learn from its logs: two
models that are not the shipped pipeline, fitted straight on the site's events, scored on the
ablation's test users against the same planted top 10. An exploration for issue 20's goal
(planted-truth recall@10 at least 1.3x the configuration before the issue, two-stage).

The site generates a click as ``P(click | shown in slot k) = examination(k) * sigmoid(s + c)``
with ``s`` the planted score the truth ranks by (:mod:`tailored.data.synth_sessions`). So:

* ``click_given_shown``: a logistic factorisation of every impression of the training and
  validation periods, label 1 where the user clicked it: ``user · item + item bias + slot
  bias``, the slot's term absorbing the examination. Conditioned on being shown, its logit
  is the planted score's up to a constant: the unbiased way to learn ``s`` from what the site
  logs, whatever showed the items (a popularity, a taste and a random policy).
* ``clicks_softmax``: a softmax over all items of each positive (a click, cart or purchase)
  of those periods: what a retrieval model learns, exposure included.

Users are their profile fields (each categorical field, each numeric one by decile, and the
full combination of them: the planted segment is gender x age band x region), with or without
an id vector of their own; items their id and categorical fields. L2 on every table. Every
item open at a user's request is ranked, their training and validation positives left out,
as the ablation's truth does; figures per epoch (:func:`benchmarks.quality.ablation_plan.
row_metrics`), the best epoch chosen *on the test figures*: an optimistic ceiling, not a
result.

    python -m benchmarks.explorations.synthetic_truth_ceiling [--epochs 12]

JSON to ``benchmarks/results/synthetic_truth_ceiling.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.quality.ablation_plan import (
    Base,
    K,
    Plan,
    add_site_arguments,
    first_test_times,
    make_plan,
    row_metrics,
    synthetic_site,
)
from tailored.config import load_config
from tailored.data.interactions import Interactions
from tailored.data.splits import TRAIN, VALID
from tailored.paths import write_json_atomic
from tailored.train.runs import load_data

__all__ = ["main"]

OUT = RESULTS / "synthetic_truth_ceiling.json"
_CLICK_WITHIN = 3600  # an impression counts as clicked by a click of its item this soon after


def _user_codes(data: Interactions) -> np.ndarray:
    """int64 [U, F + 1]: each user's categorical codes, each numeric field's decile, and the
    combination of all of them (one code per distinct profile)."""
    t = data.users
    cols = [t.categorical[:, j] for j in range(t.categorical.shape[1])]
    for j in range(t.numeric.shape[1]):
        x = np.nan_to_num(t.numeric[:, j])
        cols.append(np.digitize(x, np.quantile(x, np.linspace(0.1, 0.9, 9))))
    codes = np.stack(cols, 1).astype(np.int64)
    combo = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    return np.concatenate([codes, combo[:, None]], 1)


class _Factors(nn.Module):
    """Users as the sum of their fields' vectors (+ their own), items as id + fields."""

    def __init__(
        self, users: np.ndarray, items: np.ndarray, n_slots: int, own: bool, dim: int = 32
    ) -> None:
        super().__init__()
        self.u_off = torch.from_numpy(np.r_[0, np.cumsum(users.max(0) + 1)[:-1]])
        self.i_off = torch.from_numpy(np.r_[0, np.cumsum(items.max(0) + 1)[:-1]])
        self.users, self.items = torch.from_numpy(users), torch.from_numpy(items)
        self.u_fields = nn.Embedding(int(users.max(0).sum() + users.shape[1]), dim)
        self.u_own = nn.Embedding(len(users), dim) if own else None
        self.i_fields = nn.Embedding(int(items.max(0).sum() + items.shape[1]), dim)
        self.i_bias = nn.Embedding(int(items.max(0).sum() + items.shape[1]), 1)
        self.slot = nn.Embedding(n_slots, 1)
        for e in (self.u_fields, self.i_fields, *((self.u_own,) if own else ())):
            nn.init.normal_(e.weight, 0.0, 0.01)
        nn.init.zeros_(self.i_bias.weight)
        nn.init.zeros_(self.slot.weight)

    def user(self, u: Tensor) -> Tensor:
        v = self.u_fields(self.users[u] + self.u_off).sum(1)
        return v + self.u_own(u) if self.u_own is not None else v

    def item(self, i: Tensor) -> tuple[Tensor, Tensor]:
        codes = self.items[i] + self.i_off
        return self.i_fields(codes).sum(-2), self.i_bias(codes).sum((-2, -1))

    def all_items(self) -> tuple[Tensor, Tensor]:
        return self.item(torch.arange(len(self.items)))


def _item_codes(data: Interactions) -> np.ndarray:
    """int64 [N+1, 1 + C]: each item's own id (row 0 padding) and its categorical codes."""
    cat = data.items.categorical
    return np.concatenate([np.arange(len(cat))[:, None], cat], 1).astype(np.int64)


def _impressions(data: Interactions) -> tuple[np.ndarray, ...]:
    """The training and validation periods' impressions: user, item (1-based), slot, and
    whether a positive of the same item followed within :data:`_CLICK_WITHIN`."""
    x = data.exposures
    assert x is not None and len(x)
    keep = x.split <= VALID
    user, item, t, slot = x.user[keep], x.item[keep], x.timestamp[keep], x.position[keep]
    pos = np.isin(data.split, (TRAIN, VALID))
    p_key = data.user[pos].astype(np.int64) * (data.n_items + 1) + data.item[pos]
    p_t = data.timestamp[pos]
    order = np.lexsort((p_t, p_key))
    p_key, p_t = p_key[order], p_t[order]
    key = user.astype(np.int64) * (data.n_items + 1) + item
    # the first positive of the same (user, item) at or after the impression
    t0 = min(int(p_t.min()), int(t.min()))  # keys and offsets in one int64: key << 34 | time
    at = np.searchsorted(p_key * (1 << 34) + (p_t - t0), key * (1 << 34) + (t - t0))
    found = at < len(p_key)
    at = np.minimum(at, len(p_key) - 1)
    clicked = found & (p_key[at] == key) & (p_t[at] - t <= _CLICK_WITHIN)
    return user, item.astype(np.int64), np.maximum(slot, 0), clicked.astype(np.float32)


def _fit(
    model: _Factors,
    kind: str,
    data: Interactions,
    plan: Plan,
    exclude: list[np.ndarray],
    epochs: int,
    l2: float,
    seed: int,
) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if kind == "click_given_shown":
        user, item, slot, label = _impressions(data)
    else:
        pos = np.isin(data.split, (TRAIN, VALID))
        user, item = data.user[pos], data.item[pos].astype(np.int64)
        slot, label = np.zeros(len(user), np.int64), np.ones(len(user), np.float32)
    u_t, i_t = torch.from_numpy(user.astype(np.int64)), torch.from_numpy(item)
    s_t, y_t = torch.from_numpy(slot.astype(np.int64)), torch.from_numpy(label)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n, batch = len(user), 4096 if kind == "click_given_shown" else 512
    history = []
    for epoch in range(epochs):
        for b in np.array_split(rng.permutation(n), max(1, n // batch)):
            idx = torch.from_numpy(b)
            uv = model.user(u_t[idx])
            if kind == "click_given_shown":
                iv, ib = model.item(i_t[idx])
                logit = (uv * iv).sum(-1) + ib + model.slot(s_t[idx])[:, 0]
                loss = nn.functional.binary_cross_entropy_with_logits(logit, y_t[idx])
            else:
                iv, ib = model.all_items()
                loss = nn.functional.cross_entropy(uv @ iv.T + ib, i_t[idx])
            reg = sum((w**2).sum() for name, w in model.named_parameters() if name != "slot.weight")
            opt.zero_grad()
            (loss + l2 * reg).backward()
            opt.step()
        history.append({"epoch": epoch + 1, **_score(model, data, plan, exclude)})
        print(kind, history[-1], flush=True)
    return history


@torch.no_grad()
def _score(
    model: _Factors, data: Interactions, plan: Plan, exclude: list[np.ndarray]
) -> dict[str, float]:
    iv, ib = model.all_items()
    scores = (model.user(torch.from_numpy(plan.users)) @ iv.T + ib).numpy()
    scores[:, 0] = -np.inf
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K] - 1
    return row_metrics(top, plan, data)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_site_arguments(p)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--l2", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tailored-ceiling-") as tmp:
        site = synthetic_site(args, Path(tmp))
        cfg = load_config(site.config, overrides=site.overrides)
        data = load_data(cfg)
        plan = make_plan(site, Base(cfg, data, True))
    seen = data.per_user((TRAIN, VALID))
    now = first_test_times(data, plan.users)
    assert plan.windows is not None
    exclude = [
        np.union1d(seen[u], plan.windows.closed(float(t)))
        for u, t in zip(plan.users, now, strict=True)
    ]
    users, items = _user_codes(data), _item_codes(data)
    n_slots = int(max(data.exposures.position.max(), 0)) + 1 if data.exposures else 1
    models: dict[str, Any] = {}
    for kind in ("click_given_shown", "clicks_softmax"):
        for own in (False, True):
            name = f"{kind}{'_own_vectors' if own else ''}"
            model = _Factors(users, items, n_slots, own)
            history = _fit(model, kind, data, plan, exclude, args.epochs, args.l2, args.seed)
            best = max(history, key=lambda h: h["truth_recall"])
            models[name] = {"best_on_test": best, "epochs": history}
    out = {
        "machine": machine(),
        "site": site.info,
        "plan": plan.describe(),
        "truth_references": plan.references,
        "l2": args.l2,
        "seconds": round(time.perf_counter() - started, 1),
        "models": models,
    }
    write_json_atomic(args.out, out)
    print(f"references: {plan.references}")
    for name, m in models.items():
        print(f"{name}: best epoch on test {m['best_on_test']}")
    return out


if __name__ == "__main__":
    main()
