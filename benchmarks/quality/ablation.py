"""Issue 20's ablation table: each change of the issue turned off alone, on the synthetic site
and on MovieLens-100k, against the shipped configuration with every change on.

``python -m benchmarks.quality.ablation --dataset synthetic --seeds 0 1 2``: for each seed,
train the baseline (``configs/synthetic.toml``; ``configs/movielens-100k.toml`` with
``--dataset movielens``) and one variant per row, each with one change off:

* ``no_impression_negatives``: ``[ranker] impression_negative_weight = 0``;
* ``no_position_debias``: ``[data] position_debias = false``;
* ``no_dwell``: a click (or view) counts whatever its dwell (``min_value`` dropped);
* ``no_merge``: ``[data] merge_repeat_seconds = 0``;
* ``no_availability``: serving ignores the catalog's availability windows (below);
* ``no_schedule``: ``[train] lr_schedule = "constant"``, ``val_checks_per_epoch = 1`` (no
  plateau patience, no warm-up);
* ``no_numeric_buckets``: ``[model] numeric_buckets = 0``: numeric user and item fields (age,
  price, release year) enter the towers as standardised values only, not also embedded by
  their quantile range (added after the issue's own changes, when the ablation showed the
  planted tastes per age band out of the towers' reach; it is part of ``all_off``);
* ``no_uniform_negatives`` / ``with_uniform_negatives``: ``[loss] uniform_negatives`` 0 /
  2,048, the towers' softmax against the batch's positives alone, or also against 2,048
  items drawn uniformly from the catalogue each step (mixed negative sampling, Yang et al.
  2020); the row that changes the shipped file runs (neither file samples any now; 0 is part
  of ``all_off``).

Rows of changes made after the issue's own, that the shipped configurations have off:

* ``with_tower_ensemble``: ``[model] ensemble = 2``, two pairs of towers, each a run of its
  own, their scores averaged (not part of ``all_off``);
* ``with_graded_labels``: ``[ranker] graded_labels = true``, each label of the ranker's
  training lists counts by its engagement's weight (a purchase 3, a cart 2, a click 1 on the
  synthetic site) rather than 1 (n/a where every positive weighs the same, as on MovieLens);
* ``no_popularity_penalty`` / ``with_popularity_penalty``: ``[ranker] popularity_penalty`` 0 /
  the value the synthetic site shipped until the ranker's exposure correction replaced it
  (:data:`POPULARITY_PENALTY`), the ranker's lists ordered by its score less that much of the
  items' popularity, each standardised within the list (the same ranker: only its order
  changes; neither configuration ships it now; 0 is part of ``all_off``);
* ``with_session_cooccurrence``: ``[ranker] cooccurrence = "sessions"``, the ranker's
  co-occurrence features count two items together where one visit of a user has both, not
  one user (n/a where the data logs no sessions, as MovieLens);
* ``with_tower_exposure_correction``: ``[loss] exposure_correction`` at
  :data:`EXPOSURE_CORRECTION`, the towers' training logits offset by that much of the log of
  each item's share of the site's impressions (n/a without exposure events, as MovieLens);
* ``with_ranker_exposure_correction``: ``[ranker] exposure_correction`` at
  :data:`EXPOSURE_CORRECTION` and no popularity penalty, the ranker's counterpart (it corrects
  the bias the penalty corrects, so not both);
* ``with_cohorts`` / ``no_cohorts``: ``[ranker] cohorts``, one definition per profile field
  (the synthetic site's gender, age band and region; MovieLens's gender, age band and
  occupation), the ranker's ``cohort_lift`` features / none, where the shipped configuration
  has them;
* ``no_ranker_exposure_correction``: ``[ranker] exposure_correction = 0``, where the shipped
  configuration corrects the ranker (the synthetic site's).

``all_off`` turns every change off at once: the state before the issue, as near as the code
allows (the ranker's ``shown_before`` feature stays), to read the goals against.

A change the shipped configuration has off is turned on instead: ``with_position_debias``
(``[data] position_debias = true``) and ``with_schedule`` (``lr_schedule = "plateau"``,
``lr_patience = 1``, validated 4 times an epoch), where the file trains at a constant rate.

A row that does not apply is marked n/a with its reason instead of being run, decided from
the data and the configuration: no exposure events (impressions), no positive that records
its page slot, a change that leaves every positive as it was (MovieLens has only ratings: no
dwell, no repeats), a catalog without windows, a change the shipped configuration already
has off (the schedule: a constant rate, validated once an epoch at this size). A key that
``load_config`` does not know skips its row, with the reason, in the JSON.

Each run is scored offline, without a bundle (a MovieLens bundle takes minutes to build):
the two towers are trained (:func:`~tailored.train.two_tower.fit.train`), the ranker is
fitted in memory on the run's validation candidates
(:func:`~tailored.train.ranker.fit.fit_ranker`), and the test requests are made as
``tailored evaluate BUNDLE`` makes them (:func:`~tailored.train.ranker.data.build_requests`
at each user's first test event, the history every training and validation positive):
exact retrieval's top ``[ranker] candidates``, then the ranker's top 10 (two-stage), and
retrieval's own top 10 of the same candidates. Per run: test Recall@10, NDCG@10, item
coverage@10 (distinct items in all users' top 10 over the catalog), new-item Recall@10 and,
on the synthetic site, planted-truth recall@10, for both lists.

* **The split.** The synthetic rows are split at fixed times, validation from 80% of the
  site's span and test from 90% (``[data] split = "global_time"``), not per user as the
  shipped file says: ``no_dwell`` and ``no_merge`` change which events are positives, and a
  per-user 80/10/10 cut of other events would give each row other test events, and a
  history that may run past the baseline's requests. With fixed times every row is scored
  on the baseline's test positives (the rows' positives are a superset of them), and "the
  test period" is one period. MovieLens keeps its shipped per-user split: the rows that run
  there change no data.
* **New items.** A test positive counts for new-item recall when its item launched in the
  test period: its catalog ``available_from`` (else its first sight in any event, an
  impression included) at or after the test period's start (the global split's
  ``test_start``; per user, their first test event). Recall over those positives, averaged
  over the users who have any; the JSON gives their count, and how many had launched by the
  user's request (the others no list made then could hold).
* **Availability, offline.** Where the catalog has windows, every row but
  ``no_availability`` serves as a server does at each request's time (the user's first test
  event): retrieval skips the items not launched yet or ended then
  (:meth:`~tailored.bundle.availability.ItemWindows.closed`; the candidates are the top
  open items, as ``Recommend`` passes them to the index), and with ``[serve]
  new_item_slots`` > 0 (``--new-item-slots``) the last places of both lists go to the items
  launched in the ``new_item_days`` before the request that the user's vector scores best,
  as ``Recommend``'s exploration does. The shipped serving configuration gives new items no
  slots, so by default the row measures the windows' filter alone. ``no_availability``
  scores every catalog item at every time, as ``tailored evaluate`` does: an item launched
  after the request may then count as a hit, though no server could have shown it then, so
  its figures are optimistic where they differ.
* **Planted truth** (synthetic only): the share of the true top 10 in each list, the truth
  as :func:`~tailored.train.truth.planted_truth_recall` defines it (the planted tastes at the
  end of the span; the user's training and validation items left out) but over the items
  open at the request's time (:func:`~tailored.data.synth_truth.true_topk`), for every test
  user, the same truth for every row. ``truth_references`` in the JSON gives the same recall
  of three lists scored by parts of the planted model (:func:`_references`): the item term
  alone, the user's segment centroid (the most a profile can tell), and their own taste at
  the start of the span. They bound what the goal asks of a model of the logged events.

**Time.** The defaults (20,000 users, 4,000 items, 30 events a user, 20% of the items
launched in the span and 5% ended, as ``tailored data synth`` makes them) give 2,800 test
users, 4,582 test positives and 41 of items launched in the test period. There one baseline
run took 196 s on this 2-core machine beside another busy process (the towers 43 s, the
ranker 139 s, scoring 14 s); ``no_dwell`` and ``no_merge`` train on 28% more positives,
``no_impression_negatives`` refits the ranker only, ``no_availability`` only scores again,
and the shipped configuration already has position debiasing off and a constant rate
validated once an epoch (n/a rows). So a seed should take about 13 minutes and 3 seeds
about 40 (were position debiasing shipped on, about 50). At 3,000 users and 800 items a run
takes 20-40 s, but only 347 users have test positives, too few to tell the rows apart; a
larger site gives more new-item positives too (``--users``). MovieLens-100k runs the
baseline and ``no_schedule``; by ``ranker_clock.json``'s figures (training 130-150 s, a
bundle with the shipped 5-member ranker 430-540 s) a run takes about 10 minutes there, 3
seeds about an hour.

JSON to ``benchmarks/results/ablation_<dataset>.json``: every run with its wall times, the
mean / min / max per row over seeds, the machine and the command line; a markdown table of
the means is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._machine import machine
from benchmarks._overrides import add_set_argument
from benchmarks._paths import RESULTS, ROOT
from benchmarks.quality.ablation_plan import (
    Base,
    K,
    Plan,
    Site,
    add_site_arguments,
    first_test_times,
    make_plan,
    movielens_site,
    row_metrics,
    synthetic_site,
)
from tailored.bundle.availability import ItemWindows
from tailored.bundle.evaluate import rerank
from tailored.config import Config, RankerConfig, load_config, load_serve_config
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import popularity_penalized
from tailored.data.schema import read_dataset_meta
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.errors import ConfigError
from tailored.paths import write_json_atomic
from tailored.train.ranker.data import Requests, Retriever, build_requests, exact_retriever
from tailored.train.ranker.fit import fit_ranker, run_user_embeddings
from tailored.train.ranker.task import RankerTables, RankerTrainResult, task_logits
from tailored.train.runs import LoadedRun, load_data, load_run
from tailored.train.threads import torch_threads
from tailored.train.two_tower.fit import train

__all__ = ["CHANGES", "Change", "SeedModels", "main", "test_requests"]

_DAY = 86_400
# the with_popularity_penalty row's strength (the synthetic site's shipped value)
POPULARITY_PENALTY = 0.3
# the with_*_exposure_correction rows' strength
EXPOSURE_CORRECTION = 0.5
# the with_uniform_negatives row's count (half the synthetic site's items)
UNIFORM_NEGATIVES = 2048
_DWELL_TYPES = ("click", "view")  # the event types whose value is dwell seconds
_LISTS = ("two_stage", "retrieval")


# -- the rows ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One change of issue 20 and how to turn it off: ``overrides`` of the baseline's
    configuration, or ``serve_windows`` False (serving's availability, an evaluation change).
    ``not_here`` says why it cannot apply (None: it may); ``idle`` why it changes nothing,
    where its data equals the baseline's."""

    name: str
    overrides: Callable[[Config], dict[str, Any]] = lambda cfg: {}
    serve_windows: bool = True
    not_here: Callable[[Base], str | None] = lambda base: None
    idle: str = "it changes no positive on this dataset"


def _no_dwell(cfg: Config) -> dict[str, Any]:
    """A click or view counts whatever its dwell: their rules' ``min_value`` dropped."""
    if not cfg.data.events:  # the legacy keys: a view counts from min_view_seconds
        return {"data.min_view_seconds": 0.0}
    events = {
        name: {k: v for k, v in rule.items() if not (k == "min_value" and name in _DWELL_TYPES)}
        for name, rule in cfg.data.events.items()
    }
    return {"data.events": events}


def _no_exposures(base: Base) -> str | None:
    if base.data.exposures is None or not len(base.data.exposures):
        return "the dataset has no exposure events (impressions)"
    return None


def _no_slots(base: Base) -> str | None:
    if base.data.position is None or not (base.data.position >= 0).any():
        return "no positive records the page slot it was shown in"
    return None


def _no_windows(base: Base) -> str | None:
    return None if base.windows else "the catalog has no availability windows"


def _constant_already(base: Base) -> str | None:
    t = base.cfg.train
    if t.schedule == "constant" and not t.lr_warmup_steps and base.val_checks == 1:
        return (
            "the shipped configuration already trains at a constant rate and, at this size, "
            "validates once an epoch"
        )
    return None


def _all_off(cfg: Config) -> dict[str, Any]:
    """Every change of the issue off at once (what the configuration did before it, but for
    the ranker's ``shown_before`` feature, which cannot be turned off): skipped impressions
    no negatives, no position debiasing, every click whatever its dwell, no merging, a
    constant rate validated once an epoch, no uniform negatives in the towers' loss (and, as
    the row says, no availability)."""
    return {
        "ranker.impression_negative_weight": 0.0,
        "data.position_debias": False,
        "data.merge_repeat_seconds": 0,
        **_no_dwell(cfg),
        "train.lr_schedule": "constant",
        "train.lr_patience": 0,
        "train.lr_warmup_steps": 0,
        "train.val_checks_per_epoch": 1,
        "model.numeric_buckets": 0,
        "loss.uniform_negatives": 0,
        "ranker.popularity_penalty": 0.0,
        "loss.exposure_correction": 0.0,
        "ranker.exposure_correction": 0.0,
        "ranker.cohorts": [],
    }


def _no_numbers(base: Base) -> str | None:
    if not (base.data.users.numeric.shape[1] or base.data.items.numeric.shape[1]):
        return "no user or item field is numeric"
    return None


def _scheduled_already(base: Base) -> str | None:
    if base.cfg.train.schedule != "constant":
        return "the shipped configuration has a schedule (its row: no_schedule)"
    return None


def _ensemble_already(base: Base) -> str | None:
    if base.cfg.model.ensemble > 1:
        return "the shipped configuration already trains several pairs of towers"
    return None


def _no_uniform(base: Base) -> str | None:
    if base.cfg.loss.uniform_negatives == 0:
        return "the shipped configuration samples none (its row: with_uniform_negatives)"
    return None


def _uniform_already(base: Base) -> str | None:
    if base.cfg.loss.uniform_negatives > 0:
        return "the shipped configuration samples some (its row: no_uniform_negatives)"
    return None


def _ungraded(base: Base) -> str | None:
    if base.cfg.ranker.graded_labels:
        return "the shipped configuration grades the ranker's labels already"
    if len(np.unique(base.data.weight)) < 2:
        return "every positive of this dataset weighs the same"
    return None


def _no_penalty(base: Base) -> str | None:
    if base.cfg.ranker.popularity_penalty == 0:
        return "the shipped configuration has none (its row: with_popularity_penalty)"
    return None


def _penalty_already(base: Base) -> str | None:
    if base.cfg.ranker.popularity_penalty > 0:
        return "the shipped configuration has one (its row: no_popularity_penalty)"
    return None


def _no_sessions(base: Base) -> str | None:
    if base.cfg.ranker.cooccurrence == "sessions":
        return "the shipped configuration counts co-occurrence within sessions already"
    if base.data.session is None:
        return "the dataset logs no sessions"
    return None


def _exposure_corrected(section: str) -> Callable[[Base], str | None]:
    def not_here(base: Base) -> str | None:
        if (reason := _no_exposures(base)) is not None:
            return reason
        if getattr(base.cfg, section).exposure_correction > 0:
            return f"the shipped configuration has [{section}] exposure_correction already"
        return None

    return not_here


def _cohorts(cfg: Config) -> list[list[str]]:
    """The cohorts of the ``with_cohorts`` row, one definition per profile field: MovieLens's
    gender, age band and occupation; the synthetic site's gender, age band and region, the
    fields its tastes are planted by (each a part of them, plus a little of their
    combination)."""
    if Path(cfg.data.dataset).name.startswith("movielens"):  # a name, or the fetched path
        return [["gender"], ["age"], ["occupation"]]
    return [["gender"], ["age"], ["region"]]


def _cohorts_already(base: Base) -> str | None:
    if base.cfg.ranker.cohorts:
        return "the shipped configuration has cohorts (its row: no_cohorts)"
    return None


def _no_cohorts(base: Base) -> str | None:
    if not base.cfg.ranker.cohorts:
        return "the shipped configuration has none (its row: with_cohorts)"
    return None


def _no_ranker_correction(base: Base) -> str | None:
    if base.cfg.ranker.exposure_correction == 0:
        return "the shipped configuration has none (its row: with_ranker_exposure_correction)"
    return None


CHANGES: tuple[Change, ...] = (
    Change("baseline"),
    Change(
        "no_impression_negatives",
        lambda cfg: {"ranker.impression_negative_weight": 0.0},
        not_here=_no_exposures,
    ),
    Change(
        "no_position_debias",
        lambda cfg: {"data.position_debias": False},
        not_here=_no_slots,
        idle="the shipped configuration has it off (its row: with_position_debias)",
    ),
    Change(  # the row of a change the shipped configuration has off: turned on
        "with_position_debias",
        lambda cfg: {"data.position_debias": True},
        not_here=_no_slots,
        idle="the shipped configuration has it on (its row: no_position_debias)",
    ),
    Change("no_dwell", _no_dwell, idle="no positive on this dataset is held back by its dwell"),
    Change(
        "no_merge",
        lambda cfg: {"data.merge_repeat_seconds": 0},
        idle="no positive on this dataset repeats an item within merge_repeat_seconds",
    ),
    Change("no_availability", serve_windows=False, not_here=_no_windows),
    Change(
        "no_schedule",
        lambda cfg: {
            "train.lr_schedule": "constant",
            "train.lr_patience": 0,  # the constant schedule refuses a plateau's patience
            "train.lr_warmup_steps": 0,
            "train.val_checks_per_epoch": 1,
        },
        not_here=_constant_already,
    ),
    Change(  # where the shipped configuration trains at a constant rate
        "with_schedule",
        lambda cfg: {
            "train.lr_schedule": "plateau",
            "train.lr_patience": 1,
            "train.val_checks_per_epoch": 4,
        },
        not_here=_scheduled_already,
    ),
    Change(
        "no_numeric_buckets",
        lambda cfg: {"model.numeric_buckets": 0},
        not_here=_no_numbers,
        idle="the shipped configuration has no numeric buckets",
    ),
    Change(
        "with_tower_ensemble",
        lambda cfg: {"model.ensemble": 2},
        not_here=_ensemble_already,
    ),
    Change(
        "no_uniform_negatives",
        lambda cfg: {"loss.uniform_negatives": 0},
        not_here=_no_uniform,
    ),
    Change(  # where the shipped configuration samples none: MovieLens's
        "with_uniform_negatives",
        lambda cfg: {"loss.uniform_negatives": UNIFORM_NEGATIVES},
        not_here=_uniform_already,
    ),
    Change(
        "with_graded_labels",
        lambda cfg: {"ranker.graded_labels": True},
        not_here=_ungraded,
    ),
    Change(
        "with_session_cooccurrence",
        lambda cfg: {"ranker.cooccurrence": "sessions"},
        not_here=_no_sessions,
    ),
    Change(
        "with_tower_exposure_correction",
        lambda cfg: {"loss.exposure_correction": EXPOSURE_CORRECTION},
        not_here=_exposure_corrected("loss"),
    ),
    Change(
        "with_ranker_exposure_correction",
        lambda cfg: {
            "ranker.exposure_correction": EXPOSURE_CORRECTION,
            "ranker.popularity_penalty": 0.0,
        },
        not_here=_exposure_corrected("ranker"),
    ),
    Change(
        "no_popularity_penalty",
        lambda cfg: {"ranker.popularity_penalty": 0.0},
        not_here=_no_penalty,
    ),
    Change(  # where the shipped configuration has none: MovieLens's
        "with_popularity_penalty",
        lambda cfg: {"ranker.popularity_penalty": POPULARITY_PENALTY},
        not_here=_penalty_already,
    ),
    Change(
        "with_cohorts",
        lambda cfg: {"ranker.cohorts": _cohorts(cfg)},
        not_here=_cohorts_already,
    ),
    Change(  # where the shipped configuration has cohorts: the synthetic site's
        "no_cohorts",
        lambda cfg: {"ranker.cohorts": []},
        not_here=_no_cohorts,
    ),
    Change(  # where the shipped configuration corrects the ranker: the synthetic site's
        "no_ranker_exposure_correction",
        lambda cfg: {"ranker.exposure_correction": 0.0},
        not_here=_no_ranker_correction,
    ),
    Change("all_off", _all_off, serve_windows=False),
)


# -- one run's lists and figures ----------------------------------------------------------------
@dataclass(frozen=True)
class Towers:
    """A trained run: training's wall time (s; 0 where reused from another row), its epochs
    and validations an epoch."""

    run: LoadedRun
    seconds: float
    epochs: int
    val_checks: int


@dataclass(frozen=True)
class Fitted:
    """A row's towers and its ranker, fitted in memory (``seconds``: 0 where reused)."""

    towers: Towers
    ranker: RankerTrainResult
    tables: RankerTables
    seconds: float


def _open_only(retrieve: Retriever, closed: list[np.ndarray]) -> Retriever:
    """``retrieve`` that also leaves out ``closed[i]`` (1-based items) for the i-th request
    it is asked about, as the server's index search leaves out the items closed at the
    request's time (:func:`build_requests` asks for its requests in order)."""
    asked = 0

    def retrieve_open(
        user_emb: np.ndarray, exclude: list[np.ndarray], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        nonlocal asked
        mine = closed[asked : asked + len(exclude)]
        asked += len(exclude)
        return retrieve(user_emb, [np.union1d(e, c) for e, c in zip(exclude, mine, strict=True)], n)

    return retrieve_open


@dataclass(frozen=True)
class Exploration:
    """``[serve] new_item_slots`` and ``new_item_days``, as :meth:`explore` applies them."""

    slots: int
    days: float

    def explore(
        self,
        top: np.ndarray,
        user_emb: np.ndarray,
        item_emb: np.ndarray,
        now: np.ndarray,
        windows: ItemWindows,
        seen: list[np.ndarray],
    ) -> np.ndarray:
        """``top`` (0-based, int64 [U, 10], -1 empty) with its last ``slots`` places given
        to the new items each user's vector (``user_emb`` [U, D] against ``item_emb``
        [N + 1, D]) scores best: launched in the ``days`` before ``now`` int64 [U] (unix s)
        and open then, neither in ``seen`` (1-based) nor listed, as ``Recommend`` does."""
        out = np.full_like(top, -1)
        for row in range(len(top)):
            listed = top[row][top[row] >= 0]
            t = float(now[row])
            new = windows.launched(t - self.days * _DAY, t)
            new = new[~np.isin(new, seen[row]) & ~np.isin(new - 1, listed)]
            best = new[np.argsort(-(item_emb[new] @ user_emb[row]), kind="stable")[: self.slots]]
            keep = max(0, min(len(listed), K - len(best)))
            picked = np.r_[listed[:keep], best - 1]
            out[row, : len(picked)] = picked
        return out


def test_requests(
    fitted: Fitted, r: RankerConfig, plan: Plan, windows: ItemWindows | None
) -> tuple[Requests, np.ndarray, np.ndarray]:
    """The test requests of ``plan.users`` from ``fitted``'s run as ``tailored evaluate``
    makes them (``r`` the row's ranker settings; with ``windows``, retrieval skips the items
    closed at each request's time), with the user [U, D] and item [N + 1, D] embeddings."""
    run = fitted.towers.run
    data = run.data
    item_emb = run.model.all_item_embeddings().float().numpy()
    user_emb = run_user_embeddings(run, plan.users, (TRAIN, VALID))
    now = first_test_times(data, plan.users)
    retrieve = exact_retriever(item_emb)
    closed = [windows.closed(float(t)) for t in now] if windows is not None else []
    if windows is not None:
        retrieve = _open_only(retrieve, closed)
    req = build_requests(
        data,
        plan.users,
        user_emb,
        retrieve,
        item_emb=item_emb,
        history_splits=(TRAIN, VALID),
        target=TEST,
        n_candidates=max(r.candidates, K),
        ease_items=r.ease_items,
        ease_l2=r.ease_l2,
        cooccurrence=r.cooccurrence,
        cohorts=r.cohorts,
        cohort_min_users=r.cohort_min_users,
    )
    # _open_only counts on being asked for the requests in order; check that it was
    if any(np.isin(c, shut).any() for c, shut in zip(req.candidates, closed, strict=False)):
        raise RuntimeError("a request's candidates hold an item closed at its time")
    return req, user_emb, item_emb


@torch.no_grad()
def _lists(
    fitted: Fitted,
    r: RankerConfig,
    plan: Plan,
    windows: ItemWindows | None,
    exploration: Exploration,
) -> dict[str, np.ndarray]:
    """The two-stage and retrieval top 10 of ``plan.users`` (0-based, int64 [U, 10]) from
    the test requests of ``fitted``'s run, ``r`` the row's ranker settings; with
    ``windows``, served as a server serves at each request's time (see the module doc)."""
    data = fitted.towers.run.data
    req, user_emb, item_emb = test_requests(fitted, r, plan, windows)
    ranked = [
        rerank(
            popularity_penalized(
                task_logits(fitted.ranker.model, fitted.tables.batch(b)).numpy(),
                b.dense,
                b.candidates,
                r.popularity_penalty,
                r.popularity_penalty_below,
            ),
            b.candidates,
            K,
        )
        for b in req.batches(256)
    ]
    order = -np.arange(req.candidates.shape[1], dtype=np.float32)
    out = {
        "two_stage": np.concatenate(ranked),
        "retrieval": rerank(np.broadcast_to(order, req.candidates.shape), req.candidates, K),
    }
    if windows is not None and exploration.slots > 0:
        now = first_test_times(data, plan.users)
        seen = data.per_user((TRAIN, VALID))
        mine = [seen[u] for u in plan.users]
        for name, top in out.items():
            out[name] = exploration.explore(top, user_emb, item_emb, now, windows, mine)
    return out


# -- training, shared where rows share it -------------------------------------------------------
class SeedModels:
    """One seed's runs and rankers by configuration: a row whose towers are configured as
    another's reuses its run (``no_impression_negatives`` refits the ranker only), and one
    configured wholly as another, the popularity penalty aside, reuses its ranker too
    (``no_availability``, ``with_popularity_penalty``)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.towers: dict[str, Towers] = {}
        self.fitted: dict[str, Fitted] = {}

    def fit(self, cfg: Config, data: Interactions) -> Fitted:
        whole = cfg.to_dict()
        # the popularity penalty orders the fitted ranker's lists: the same ranker
        whole["ranker"] = {
            k: v for k, v in whole["ranker"].items() if not k.startswith("popularity_penalty")
        }
        key = _key(whole)
        if key in self.fitted:
            done = self.fitted[key]
            return Fitted(replace(done.towers, seconds=0.0), done.ranker, done.tables, 0.0)
        towers = self._towers(cfg, data)
        start = time.perf_counter()
        ranker, tables, _ = fit_ranker(towers.run, cfg.ranker, progress_bar=False)
        self.fitted[key] = Fitted(towers, ranker, tables, time.perf_counter() - start)
        return self.fitted[key]

    def _towers(self, cfg: Config, data: Interactions) -> Towers:
        """``cfg``'s towers (its ranker section aside), trained, or reused from a row."""
        key = _key({k: v for k, v in cfg.to_dict().items() if k != "ranker"})
        if key in self.towers:
            return replace(self.towers[key], seconds=0.0)
        start = time.perf_counter()
        result = train(cfg, out=self.work / f"run{len(self.towers)}", data=data)
        run = load_run(result.out, data=data)
        seconds = time.perf_counter() - start
        self.towers[key] = Towers(run, seconds, result.epochs, result.val_checks_per_epoch)
        return self.towers[key]


def _key(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


# -- the rows' runs -----------------------------------------------------------------------------
def _same_positives(a: Interactions, b: Interactions) -> bool:
    fields = ("user", "item", "timestamp", "weight", "split")
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)


@dataclass
class SeedRows:
    """One seed's rows: the baseline they are judged against, what they are scored on, the
    overrides every row of the seed has, and the runs and data they share."""

    site: Site
    base: Base
    plan: Plan
    overrides: dict[str, Any]
    models: SeedModels
    exploration: Exploration
    data: dict[str, Interactions] = field(default_factory=dict)

    def config(self, change: Change) -> Config:
        """The baseline's configuration with ``change`` off (ConfigError: a key it lacks)."""
        overrides = {**self.overrides, **change.overrides(self.base.cfg)}
        return load_config(self.site.config, overrides=overrides)

    def reason_not_run(self, change: Change, cfg: Config) -> str | None:
        """Why ``change`` does not apply here (None: it does)."""
        if (reason := change.not_here(self.base)) is not None:
            return reason
        if change.name != "baseline" and change.serve_windows and cfg == self.base.cfg:
            return "the shipped configuration already has it off"
        if cfg.data != self.base.cfg.data and _same_positives(self._data(cfg), self.base.data):
            return change.idle
        return None

    def _data(self, cfg: Config) -> Interactions:
        """``cfg``'s positives and encoded fields (the baseline's, where its data section and
        numeric buckets are the baseline's)."""
        buckets = cfg.model.numeric_buckets
        if cfg.data == self.base.cfg.data and buckets == self.base.cfg.model.numeric_buckets:
            return self.base.data
        key = _key({**cfg.to_dict()["data"], "numeric_buckets": buckets})
        if key not in self.data:
            self.data[key] = load_data(cfg)
        return self.data[key]

    def run(self, change: Change, cfg: Config) -> tuple[dict[str, Any], Fitted]:
        """``change``'s run: its figures and wall times, and what it fitted."""
        start = time.perf_counter()
        data = self._data(cfg)
        missing = ~np.isin(self.plan.users, data.user[data.split == TEST])
        if missing.any():  # build_requests needs a test positive of each user in the row's data
            raise RuntimeError(
                f"{change.name}: {int(missing.sum())} of the baseline's test users have no test "
                "positive under this row's rule, so it cannot be scored on the same users"
            )
        fitted = self.models.fit(cfg, data)
        scoring = time.perf_counter()
        windows = self.plan.windows if change.serve_windows else None
        with torch_threads(cfg.train.threads):
            lists = _lists(fitted, cfg.ranker, self.plan, windows, self.exploration)
        result = {
            "seed": cfg.train.seed,
            **{name: row_metrics(top, self.plan, self.base.data) for name, top in lists.items()},
            "ranker_holdout_ndcg@10": fitted.ranker.holdout_ndcg10,
            "epochs": fitted.towers.epochs,
            "train_seconds": round(fitted.towers.seconds, 1),  # 0: the towers were reused
            "ranker_seconds": round(fitted.seconds, 1),  # 0: the ranker was reused
            "score_seconds": round(time.perf_counter() - scoring, 1),
            "wall_seconds": round(time.perf_counter() - start, 1),
        }
        return result, fitted

    def row(self, change: Change, row: dict[str, Any]) -> None:
        """``change``'s run into ``row``, or why it is not run (decided at the first seed)."""
        if row["status"] != "ran":
            return
        try:
            cfg = self.config(change)
        except ConfigError as e:
            row.update(status="skipped", reason=f"the configuration refuses it: {e}")
            print(f"{change.name}: skipped ({row['reason']})", flush=True)
            return
        row["overrides"] = json.loads(_key(change.overrides(self.base.cfg)))
        if not change.serve_windows:
            row["serving"] = "availability windows ignored, no new-item slots"
        if (reason := self.reason_not_run(change, cfg)) is not None:
            row.update(status="n/a", reason=reason)
            print(f"{change.name}: n/a ({reason})", flush=True)
            return
        result, fitted = self.run(change, cfg)
        if change.name == "baseline":  # the schedule's row is judged by what the baseline ran
            self.base = replace(self.base, val_checks=fitted.towers.val_checks)
        row["runs"].append(result)
        print(json.dumps({"row": change.name, **result}), flush=True)


# -- the command ----------------------------------------------------------------------------------
def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _rows(
    site: Site, changes: list[Change], args: argparse.Namespace, work: Path
) -> tuple[dict[str, dict[str, Any]], Plan, Exploration]:
    """Every row's status and runs over the seeds (the baseline first in each: the schedule's
    row is judged by its run), with the plan they are scored on and the exploration."""
    shared = {**site.overrides, **dict(args.set), "train.progress_bar": False}
    first = load_config(site.config, overrides={**shared, "train.seed": args.seeds[0]})
    windows = read_dataset_meta(site.dataset).schema.item_availability
    base = Base(first, load_data(first), windows)
    plan = make_plan(site, base)
    print(f"{site.name}: {json.dumps(plan.describe())}", flush=True)
    if plan.references:
        print(f"planted-truth recall@10 of the references: {plan.references}", flush=True)
    serve = load_serve_config(site.config)
    slots = serve.new_item_slots if args.new_item_slots is None else args.new_item_slots
    exploration = Exploration(slots, serve.new_item_days)
    rows: dict[str, dict[str, Any]] = {c.name: {"status": "ran", "runs": []} for c in changes}
    for seed in args.seeds:
        overrides = {**shared, "train.seed": seed}
        seeded = replace(base, cfg=load_config(site.config, overrides=overrides))
        models = SeedModels(work / f"seed{seed}")
        seed_rows = SeedRows(site, seeded, plan, overrides, models, exploration)
        for change in changes:
            seed_rows.row(change, rows[change.name])
    for row in rows.values():
        runs = row.pop("runs")
        if runs:
            row["runs"] = runs
            row["summary"] = {
                name: {m: _summary([r[name][m] for r in runs]) for m in runs[0][name]}
                for name in _LISTS
            }
    return rows, plan, exploration


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", choices=("synthetic", "movielens"), default="synthetic")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    names = [c.name for c in CHANGES]
    p.add_argument("--rows", nargs="+", choices=names, default=names, help="the baseline always")
    add_site_arguments(p)
    p.add_argument(
        "--new-item-slots",
        type=int,
        default=None,
        help="places of each list given to new items (default: the configuration's [serve])",
    )
    add_set_argument(p)
    p.add_argument("--out-json", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    changes = [c for c in CHANGES if c.name == "baseline" or c.name in args.rows]
    out_json = args.out_json or RESULTS / f"ablation_{args.dataset}.json"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tailored-ablation-") as tmp:
        work = Path(tmp)
        site = synthetic_site(args, work) if args.dataset == "synthetic" else movielens_site()
        shipped = site.config
        # every seed and row reads this copy: an edit of the file during the run (which takes
        # an hour) changes none of them
        snapshot = work / f"shipped-{shipped.name}"
        snapshot.write_bytes(shipped.read_bytes())
        config_sha256 = hashlib.sha256(snapshot.read_bytes()).hexdigest()
        rows, plan, exploration = _rows(replace(site, config=snapshot), changes, args, work)
    command = sys.argv[1:] if argv is None else argv
    out = {
        "machine": machine(),
        "command": shlex.join(["python", "-m", "benchmarks.quality.ablation", *command]),
        "dataset": args.dataset,
        "config": str(shipped.relative_to(ROOT)),
        "config_sha256": config_sha256,
        "site": site.info,
        "overrides": dict(args.set),
        "plan": plan.describe(),
        "truth_references": plan.references,
        "new_item_slots": exploration.slots,
        "new_item_days": exploration.days,
        "seconds": round(time.perf_counter() - began, 1),
        "rows": rows,
    }
    write_json_atomic(out_json, out)
    print(_table(rows, site.truth))
    return out


_COLUMNS = (
    ("ndcg", "NDCG@10"),
    ("recall", "Recall@10"),
    ("itemcoverage", "coverage@10"),
    ("new_item_recall", "new-item Recall@10"),
    ("truth_recall", "planted-truth recall@10"),
)


def _table(rows: dict[str, dict[str, Any]], truth: bool) -> str:
    """A markdown table of the means over seeds, "two-stage / retrieval" in each cell, and
    the two-stage NDCG@10's spread over the seeds."""
    columns = [c for c in _COLUMNS if truth or c[0] != "truth_recall"]
    head = ["row", *(label for _, label in columns), "two-stage NDCG@10 min-max", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        if row["status"] != "ran":
            cells = [f"{row['status']}: {row['reason']}", *[""] * (len(head) - 2)]
        else:
            s = row["summary"]
            cells = [
                f"{s['two_stage'][m]['mean']:.4f} / {s['retrieval'][m]['mean']:.4f}"
                if m in s["two_stage"]
                else "-"
                for m, _ in columns
            ]
            ndcg = s["two_stage"]["ndcg"]
            cells += [f"{ndcg['min']:.4f}-{ndcg['max']:.4f}", str(len(row["runs"]))]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n\n(two-stage / retrieval alone; means over the seeds)"


if __name__ == "__main__":
    main()
