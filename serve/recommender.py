"""The request path of one loaded bundle (no torch, no gRPC):

user state -> user tower (onnxruntime) -> index top-N -> filters (already interacted,
excluded, unavailable) -> ranker (onnxruntime) -> diversity -> top k, each with a reason.

A user the bundle does not know and who has no events starts cold: from the profile fields
and context the request gives, through the same towers; with neither, or without consent to
personalization, the result is what is popular in the request's context (the bundle counts
positives per context value: this device, this surface), then overall. Never an error for an
unknown user.

With consent, a page leaves out what the user already engaged with and, with ``[serve]
hide_after_impressions = N``, what they were shown N times (among their events read) without
a click; so does an experiment's popularity control (popular in context, less what this user
consumed or passed over), so that it differs from the personalized page in the ranking only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tailored.bundle.runtime import LoadedBundle
from tailored.config import ServeConfig, from_dict
from tailored.data.exposures import shown_counts
from tailored.data.features import BUCKET_SUFFIX, MAX_MULTI, FeatureTable, user_hash_buckets
from tailored.data.ranking_features import dense_features, item_tags
from tailored.errors import TailoredError
from tailored.serve.diversity import category_cap, mmr
from tailored.serve.state import StoredEvent

__all__ = ["Recommendation", "Recommender", "Request", "RequestError"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_REASON_RECENT = 20  # history items a reason may point at
# a category module scores at most this many of the value's items (its most popular), as
# retrieval reads at most `candidates` of the whole catalogue: bounded work per request
_ONLY_CANDIDATES = 20_000


class RequestError(TailoredError, ValueError):
    """A malformed request argument (the server answers INVALID_ARGUMENT)."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument}: {problem}")
        self.argument = argument


@dataclass(frozen=True)
class Request:
    """One Recommend call after the edge: ``user`` is the pseudonym; ``time`` unix seconds;
    ``context`` maps context field names (``surface``, ``device``, ``locale``, extras) to
    values; ``online`` the user's events from the online state (empty without consent)."""

    user: str
    k: int
    surface: str
    time: float
    personalized: bool
    context: Mapping[str, str] = None  # type: ignore[assignment]
    exclude: Collection[str] = ()
    profile: Mapping[str, str] = None  # type: ignore[assignment]
    online: tuple[StoredEvent, ...] = ()
    # False for a user who erased their data or withdrew consent (a tombstone in the online
    # state): what the bundle holds of them (their rows, their segment, the id embedding
    # trained on them) is not theirs any more, and they are served as a new user
    bundle_rows: bool = True
    # an experiment variant's changes (tailored.experiments.VARIANT_KEYS): candidates,
    # ranker, mmr_lambda, popularity_penalty(_below), popularity, hide_after_impressions; {}
    # serves as configured
    variant: Mapping[str, Any] = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    titles: list[str]
    scores: list[float]
    reasons: list[str]
    strategy: str  # "personalized" | "cold_start" | "popular"


class Recommender:
    """A verified bundle made ready for requests (lookup tables built once, at load)."""

    def __init__(self, bundle: LoadedBundle, cfg: ServeConfig) -> None:
        self.bundle = bundle
        self.cfg = cfg
        self.index_device = "cpu"  # "gpu" where the index searches on one (load_recommender)
        self.item_row = {str(v): i + 1 for i, v in enumerate(bundle.item_ids)}
        titles = bundle.item_titles
        self.labels = [
            str(t) if t is not None and str(t) else str(i)
            for t, i in zip(
                titles if titles is not None else [None] * bundle.n_items,
                bundle.item_ids,
                strict=True,
            )
        ]
        self.tags = item_tags(bundle.items, len(bundle.item_encoder().categorical))
        act = bundle.activity.table
        # best first: recent popularity, then all-time; row 0 (padding) last
        self.popular = np.lexsort((-act[1:, 0], -act[1:, 2])).astype(np.int64) + 1
        self.popular_rank = np.empty(bundle.n_items + 1, np.int64)  # row -> place in popular
        self.popular_rank[self.popular] = np.arange(len(self.popular))
        self.popular_rank[0] = len(self.popular)
        self.user_encoder = bundle.user_encoder()
        # profile value -> code per categorical user field, built once (not per request)
        self.profile_codes = {
            name: {v: j + 1 for j, v in enumerate(self.user_encoder.vocabs[name])}
            for name in self.user_encoder.categorical
        }
        self.context_vocabs = {
            name: {v: j + 1 for j, v in enumerate(vocab)}
            for name, vocab in bundle.info.get("context_vocabs", {}).items()
        }
        self.context_values = [list(v) for v in bundle.info.get("context_vocabs", {}).values()]
        data_cfg = from_dict(bundle.manifest.config, where="bundle config").data
        # what each event type means: the roles the bundle was trained with
        self.roles = data_cfg.event_roles()
        self.exposure_types = frozenset(n for n, r in self.roles.items() if r.role == "exposure")
        self.categories = self._cap_categories()
        self.by_value = self._attribute_index()  # attribute value -> item rows (pages)
        # names this bundle's segmentation (a refresh fits new segments: new names)
        segments = bundle.segments
        self.segments_id = (
            hashlib.sha256(np.ascontiguousarray(segments.centroids).tobytes()).hexdigest()[:8]
            if segments is not None
            else ""
        )

    def _cap_categories(self) -> np.ndarray:
        """Per item row, its value of the category-cap field (0 = none), int64 [N+1]."""
        items = self.bundle.items
        enc = self.bundle.info["item_encoder"]
        cats = [f["name"] for f in enc["fields"] if f["kind"] == "categorical"]
        multis = [f["name"] for f in enc["fields"] if f["kind"] == "multi_categorical"]
        name = self.cfg.cap_field or (cats or multis or [""])[0]
        if name in cats:
            return items.categorical[:, cats.index(name)].astype(np.int64)
        if name in multis:  # a multi-valued field (genres): its first value
            return items.multi[:, multis.index(name), 0].astype(np.int64)
        if self.cfg.cap_field:
            raise TailoredError(
                f"[serve] cap_field: {name!r} is no categorical item field of this bundle "
                f"(it has {cats + multis})"
            )
        return np.zeros(self.bundle.n_items + 1, np.int64)

    # -- the request path --------------------------------------------------------------------
    def recommend(
        self, req: Request, unavailable: Collection[str] = (), only: np.ndarray | None = None
    ) -> Recommendation:
        """The page for ``req``; ``only`` (bundle rows) restricts it to those items (a
        page's category module): scored exactly, then ranked like the whole list."""
        excluded = self._rows(req.exclude) | self._rows(unavailable) | self._closed(req.time)
        user_cat, user_num, has_profile = self._profile(req.profile or {})  # always checked
        context, has_context = self._context(req)
        variant = req.variant or {}
        if not req.personalized:  # no behaviour of theirs; the page's context is no profile
            return self._fallback(req.k, excluded, context[0], only)
        hide = int(variant.get("hide_after_impressions", self.cfg.hide_after_impressions))
        excluded |= self._passed_over(req.online, hide) | self._turned_down(req.online)
        row = self._row(req)
        user_cat, user_num = self._user_fields(row, user_cat, user_num)
        hist, times = self._history(row, req.online)
        seen = self._seen(row, hist)
        if variant.get("popularity"):  # the experiment's non-personalized control
            return self._fallback(req.k, excluded | seen, context[0], only)
        if row is None and not len(hist) and not has_profile and not has_context:
            return self._fallback(req.k, excluded, context[0], only)
        emb = self.bundle.user_embeddings(
            user_hash=self._id_bucket(req, row),
            user_cat=user_cat,
            user_num=user_num,
            context=context,
            history=self._window(hist),
        )
        depth = int(variant.get("candidates", self.cfg.candidates))
        if only is not None:  # exact over the few items allowed
            scores, cands = self._score_only(emb, only, depth, seen | excluded)
        else:
            scores, cands = self.bundle.retrieve(emb, depth, [seen | excluded])
        keep = cands[0] > 0
        cands, scores = cands[0][keep], scores[0][keep]
        if not len(cands):
            return self._fallback(req.k, excluded | seen, context[0], only)
        dense = self._dense(req, row, hist, times, cands, scores, user_cat)
        users = FeatureTable(user_cat, np.zeros((1, 0, MAX_MULTI), np.int64), user_num)
        if variant.get("ranker", True):
            ranked = self.bundle.rank(
                users=users,
                context=context,
                candidates=cands[None],
                dense=dense[None],
                user_emb=emb,
                popularity_penalty=variant.get("popularity_penalty"),
                popularity_penalty_below=variant.get("popularity_penalty_below"),
            )[0]
        else:  # the experiment's "no re-ranker": the two towers' own order
            ranked = scores.astype(np.float32)
        picked = self._diversify(ranked, cands, req.k, variant.get("mmr_lambda"))
        rows = cands[picked]
        personal = row is not None or len(hist) > 0
        scores_out = [float(ranked[p]) for p in picked]
        reasons = self._reasons(rows, hist) if len(hist) else [self._like_you(emb)] * len(rows)
        slots = int(variant.get("new_item_slots", self.cfg.new_item_slots))
        if slots > 0 and only is None:
            rows, scores_out, reasons = self._explore(
                rows, scores_out, reasons, emb[0], req, slots, seen | excluded
            )
        return Recommendation(
            item_ids=[str(self.bundle.item_ids[r - 1]) for r in rows],
            titles=self._titles(rows),
            scores=scores_out,
            reasons=reasons,
            strategy="personalized" if personal else "cold_start",
        )

    def ranking_features(
        self, req: Request, candidates: np.ndarray, scores: np.ndarray
    ) -> np.ndarray:
        """The ranker's dense features float32 [C, F] (:data:`~tailored.data.ranking_features.
        DENSE_FEATURES`) of ``candidates`` int64 [C] (bundle rows) with retrieval ``scores``
        float32 [C], for ``req``'s user at ``req.time``, as :meth:`recommend` computes them."""
        row = self._row(req)
        user_cat, _ = self._user_fields(row, *self._profile(req.profile or {})[:2])
        hist, times = self._history(row, req.online)
        return self._dense(req, row, hist, times, candidates, scores, user_cat)

    def _user_fields(
        self, row: int | None, user_cat: np.ndarray, user_num: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The user's categorical and numeric fields, [1, Cu] and [1, Fu]: the bundle's
        profile of them where it knows the user (``row``), else the request's (``user_cat``,
        ``user_num``, parsed by :meth:`_profile`)."""
        snap = self.bundle.users
        if row is not None and snap is not None:
            return snap.categorical[row : row + 1], snap.numeric[row : row + 1]
        return user_cat, user_num

    def _dense(
        self,
        req: Request,
        row: int | None,
        hist: np.ndarray,
        times: np.ndarray,
        cands: np.ndarray,
        scores: np.ndarray,
        user_cat: np.ndarray,
    ) -> np.ndarray:
        """:meth:`ranking_features`, given the user's row, positives (:meth:`_history`) and
        categorical fields ``user_cat`` int64 [1, Cu] (:meth:`_user_fields`)."""
        return dense_features(
            candidates=cands,
            scores=scores,
            history=hist,
            history_times=times,
            now=req.time,
            tags=self.tags,
            activity=self.bundle.activity,
            neighbors=self.bundle.item_neighbors,
            item_emb=self.bundle.item_embeddings,
            regression=self.bundle.item_regression,
            shown=self._shown(row, req.online, cands, req.time),
            cohorts=self.bundle.cohorts,
            cohort=self._cohort(user_cat),
        )

    def _cohort(self, user_cat: np.ndarray) -> np.ndarray:
        """The user's cohorts (:meth:`~tailored.data.ranking_features.CohortCounts.keys`),
        int64 [G], from their categorical fields ``user_cat`` int64 [1, Cu]
        (:meth:`_user_fields`)."""
        cohorts = self.bundle.cohorts
        if cohorts is None or not len(cohorts.columns):
            return np.zeros(0, np.int64)
        return cohorts.keys(user_cat)[0]

    def _shown(
        self, row: int | None, online: tuple[StoredEvent, ...], cands: np.ndarray, now: float
    ) -> np.ndarray:
        """How many times each of ``cands`` int [C] was shown to the user at least
        :data:`~tailored.data.exposures.EXPOSURE_GAP` before ``now`` (s), int64 [C], as the
        ranker learnt it: the bundle's snapshot of their exposures and the online events of
        an ``exposure`` type, merged; an online one that repeats a snapshot one (same item,
        same second: the site's log fed the bundle too) is counted once."""
        users = self.bundle.users
        if row is not None and users is not None:
            items, times = users.shown(row)
        else:
            items, times = np.zeros(0, np.int32), np.zeros(0, np.int64)
        online_pairs = [
            (r, e.time_ms // 1000)
            for e in online
            if e.type in self.exposure_types and (r := self.item_row.get(e.item_id)) is not None
        ]
        if online_pairs:
            o_items, o_times = np.array(online_pairs, np.int64).T
            width = self.bundle.n_items + 1  # (time, row) as one int64 key
            repeat = np.isin(o_times * width + o_items, times.astype(np.int64) * width + items)
            items = np.concatenate([items, o_items[~repeat]])
            times = np.concatenate([times, o_times[~repeat]])
        return shown_counts(cands, items, times, now)

    def _closed(self, t: float) -> set[int]:
        """The rows of the items not served at ``t`` (unix s): not launched yet, or ended."""
        windows = self.bundle.windows
        return set() if windows is None else set(windows.closed(t).tolist())

    def _explore(
        self,
        rows: np.ndarray,
        scores: list[float],
        reasons: list[str],
        user: np.ndarray,
        req: Request,
        slots: int,
        ban: set[int],
    ) -> tuple[np.ndarray, list[float], list[str]]:
        """The list with its last ``slots`` places (or free places up to ``req.k``) given to
        the new items ``user`` (float32 [D]) scores best: launched in the last
        ``new_item_days``, served now, not banned or listed already. Reason "new"."""
        windows = self.bundle.windows
        if windows is None:
            return rows, scores, reasons
        new = windows.launched(req.time - self.cfg.new_item_days * 86_400, req.time)
        taken = np.fromiter(ban | set(rows.tolist()), np.int64)
        new = new[~np.isin(new, taken)]
        if not len(new):
            return rows, scores, reasons
        dots = self.bundle.item_embeddings[new] @ user
        best = np.argsort(-dots, kind="stable")[:slots]
        keep = max(0, min(len(rows), req.k - len(best)))
        return (
            np.concatenate([rows[:keep], new[best]]).astype(np.int64),
            scores[:keep] + [float(d) for d in dots[best]],
            reasons[:keep] + ["new"] * len(best),
        )

    # -- what a page's modules need (tailored.serve.page) ---------------------------------------
    def attribute_rows(self, value: str) -> np.ndarray:
        """The bundle rows of the items that have ``value`` in any categorical or
        multi-categorical item field (a genre, a category), int64, most popular first;
        empty if none."""
        return self.by_value.get(value, np.zeros(0, np.int64))

    def _attribute_index(self) -> dict[str, np.ndarray]:
        """Attribute value -> its items' rows, over every categorical and multi-categorical
        item field (built once, at load: vectorized, one sort per field)."""
        enc = self.bundle.item_encoder()
        cat, multi = self.bundle.items.categorical, self.bundle.items.multi
        pairs: list[tuple[np.ndarray, np.ndarray, list[str]]] = []  # (rows, codes, vocab)
        for j, name in enumerate(enc.categorical):
            rows = np.flatnonzero(cat[:, j] > 0)
            pairs.append((rows, cat[rows, j], enc.vocabs[name]))
        for j, name in enumerate(enc.multi):
            rows, slots = np.nonzero(multi[:, j, :] > 0)
            pairs.append((rows, multi[rows, j, slots], enc.vocabs[name]))
        out: dict[str, list[np.ndarray]] = {}
        for rows, codes, vocab in pairs:
            order = np.argsort(codes, kind="stable")
            codes, rows = codes[order], rows[order]
            cuts = np.flatnonzero(np.diff(codes)) + 1
            for group_rows, group_codes in zip(
                np.split(rows, cuts), np.split(codes, cuts), strict=True
            ):
                if len(group_codes):
                    out.setdefault(vocab[int(group_codes[0]) - 1], []).append(group_rows)
        rank = self.popular_rank
        index = {}
        for v, rs in out.items():
            rows = np.unique(np.concatenate(rs)).astype(np.int64)
            index[v] = rows[np.argsort(rank[rows], kind="stable")]  # most popular first
        return index

    def latest_positive(self, req: Request) -> int | None:
        """The bundle row of the user's most recent positive (snapshot or online), if any."""
        if not req.personalized:
            return None
        hist, _ = self._history(self._row(req), req.online)
        return int(hist[-1]) if len(hist) else None

    def neighbours(
        self, req: Request, anchor: int | None, unavailable: Collection[str], verb: str
    ) -> Recommendation:
        """The co-occurrence neighbours of item row ``anchor`` (best first), less what the
        request excludes and the user engaged with; reason "VERB <title of the anchor>"."""
        if anchor is None:
            return Recommendation([], [], [], [], "related")
        ban = self._rows(req.exclude) | self._rows(unavailable) | {anchor}
        ban |= self._closed(req.time)
        if req.personalized:
            row = self._row(req)
            ban |= self._seen(row, self._history(row, req.online)[0])
            ban |= self._turned_down(req.online)
        nb = self.bundle.item_neighbors
        ids, weights = nb.ids[anchor], nb.weights[anchor]
        keep = (ids > 0) & ~np.isin(ids, np.fromiter(ban, np.int64, len(ban)))
        rows, scores = ids[keep][: req.k], weights[keep][: req.k]
        reason = f"{verb} {self.labels[anchor - 1]}"
        return Recommendation(
            item_ids=[str(self.bundle.item_ids[r - 1]) for r in rows],
            titles=self._titles(rows),
            scores=[float(x) for x in scores],
            reasons=[reason] * len(rows),
            strategy="related",
        )

    def _fallback(
        self, k: int, excluded: set[int], context: np.ndarray, only: np.ndarray | None
    ) -> Recommendation:
        """The popular page: in the request's context, or the most popular of ``only``."""
        if only is None:
            return self._popular(k, excluded, context)
        ban = np.fromiter(excluded, np.int64, len(excluded))
        head = only[: k + len(ban)]  # most popular first: k are among these
        rows = head[~np.isin(head, ban)][:k]
        scores = np.log1p(self.bundle.activity.table[rows, 0].astype(np.float64))
        return Recommendation(
            item_ids=[str(self.bundle.item_ids[r - 1]) for r in rows],
            titles=self._titles(rows),
            scores=[float(x) for x in np.minimum.accumulate(scores)] if len(rows) else [],
            reasons=["popular right now"] * len(rows),
            strategy="popular",
        )

    def _score_only(
        self, emb: np.ndarray, only: np.ndarray, depth: int, ban: set[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``bundle.retrieve`` for one user, over the rows ``only`` alone (exact)."""
        rows = only[:_ONLY_CANDIDATES]  # most popular first: the candidates of a big value
        rows = rows[~np.isin(rows, np.fromiter(ban, np.int64, len(ban)))]
        scores = self.bundle.item_embeddings[rows] @ emb[0]
        if len(rows) > depth:
            part = np.argpartition(-scores, depth - 1)[:depth]
            top = part[np.argsort(-scores[part], kind="stable")]
        else:
            top = np.argsort(-scores, kind="stable")
        return scores[top][None].astype(np.float32), rows[top][None]

    def _titles(self, rows: np.ndarray) -> list[str]:
        titles = self.bundle.item_titles
        if titles is None:
            return [""] * len(rows)
        return [str(t) if t is not None else "" for t in titles[rows - 1]]

    def _rows(self, item_ids: Collection[str]) -> set[int]:
        get = self.item_row.get
        return {r for r in (get(i) for i in item_ids) if r is not None}

    def _popular(self, k: int, excluded: set[int], context: np.ndarray) -> Recommendation:
        """The most popular items in the request's context (``context``: codes [K], 0 = not
        given) where the bundle has them, then overall; scores descending."""
        ban = np.fromiter(excluded, np.int64, len(excluded))
        rows, counts = (
            self.bundle.context_popular.top(context)
            if self.bundle.context_popular is not None
            else (np.zeros(0, np.int64), np.zeros(0, np.float32))
        )
        keep = ~np.isin(rows, ban)
        rows, counts = rows[keep][:k], counts[keep][:k]
        reasons = [self._context_reason(context)] * len(rows)
        if len(rows) < k:  # then the overall list, without what is already there
            top = self.popular[: k + len(excluded) + len(rows)]
            top = top[~np.isin(top, np.concatenate([ban, rows]))][: k - len(rows)]
            rows = np.concatenate([rows, top])
            counts = np.concatenate([counts, self.bundle.activity.table[top, 0]])
            reasons += ["popular right now"] * len(top)
        # log(1 + positives), never above the score before it: the context's counts and the
        # overall list's (ordered by recent positives) are not on one scale, the page order is
        scores = np.minimum.accumulate(np.log1p(np.asarray(counts, np.float64)))
        return Recommendation(
            item_ids=[str(self.bundle.item_ids[r - 1]) for r in rows],
            titles=self._titles(rows),
            scores=[float(x) for x in scores],
            reasons=reasons,
            strategy="popular",
        )

    def _context_reason(self, context: np.ndarray) -> str:
        values = [
            vocab[c - 1]
            for vocab, c in zip(self.context_values, context.tolist(), strict=True)
            if 0 < c <= len(vocab)
        ]
        return f"popular on {', '.join(values)}"

    def _passed_over(self, online: tuple[StoredEvent, ...], times: int) -> set[int]:
        """The rows of items shown ``times`` times or more among ``online`` and never
        engaged with there (0: none)."""
        if times <= 0:
            return set()
        shown: dict[str, int] = {}
        engaged: set[str] = set()
        for e in online:
            role = self.roles.get(e.type)
            if role is not None and role.role == "exposure":
                shown[e.item_id] = shown.get(e.item_id, 0) + 1
            elif e.type == "click" or self._is_positive(e):  # a 1 s view or a low rating: no
                engaged.add(e.item_id)
        return self._rows([i for i, n in shown.items() if n >= times and i not in engaged])

    def _turned_down(self, online: tuple[StoredEvent, ...]) -> set[int]:
        """The rows of items the user turned down (an event of a ``negative`` type: hide,
        dislike): not shown to them again."""
        return self._rows(
            [e.item_id for e in online if (r := self.roles.get(e.type)) and r.role == "negative"]
        )

    def segment(self, req: Request) -> int | None:
        """The segment the bundle put the request's user in; None for a user it does not
        know (or whose rows are not theirs any more), or a bundle without segments."""
        row = self._row(req)
        segments = self.bundle.segments
        if row is None or segments is None:
            return None
        return int(segments.of_user[row])

    def _id_bucket(self, req: Request, row: int | None) -> np.ndarray:
        """The user's hashed id bucket [1]: the one they were trained with where the bundle
        keeps it (users re-keyed since), else their pseudonym's; a tombstoned user's is 0, the
        "no id" row, not the bucket trained on them."""
        snap = self.bundle.users
        if row is not None and snap is not None and snap.id_buckets is not None:
            return snap.id_buckets[row : row + 1]
        if not req.bundle_rows:
            return np.zeros(1, np.int64)
        return user_hash_buckets(np.array([req.user]), self.bundle.info["user_id_buckets"])

    def _row(self, req: Request) -> int | None:
        """The user's row in the bundle's snapshot, or None for a user it does not know (or
        whose rows are not theirs any more: ``req.bundle_rows``)."""
        if self.bundle.users is None or not req.bundle_rows:
            return None
        return self.bundle.users.row(req.user)

    def _seen(self, row: int | None, hist: np.ndarray) -> set[int]:
        """What the user engaged with: ``hist`` (the snapshot's recent positives and the
        online ones) and every older positive of the snapshot."""
        seen = set(hist.tolist())
        if row is not None and self.bundle.users is not None:
            seen.update(self.bundle.users.seen(row).tolist())
        return seen

    def _is_positive(self, e: StoredEvent) -> bool:
        """Whether ``e`` is a positive by its type's role. Track's value 0 is "no value" for a
        type that does not need one (a click whose dwell the site did not measure)."""
        role = self.roles.get(e.type)
        if role is None:
            return False
        return role.counts(None if e.value == 0 and not role.needs_value else e.value)

    def _history(
        self, row: int | None, online: tuple[StoredEvent, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The user's positives, oldest first: bundle rows int64 [H], times int64 [H] (s).

        The bundle's snapshot and the online events merged by time. An online event may be
        older than the bundle's data (a late or backfilled event): it takes its place in time
        order. One that repeats a snapshot event (same item, same second: the site's log fed
        the bundle too) is counted once."""
        pairs: list[tuple[int, int]] = []  # (time, row)
        users = self.bundle.users
        if row is not None and users is not None:
            snap, times = users.history.of(row)
            pairs += zip(times.tolist(), snap.tolist(), strict=True)
        snapshot = set(pairs)
        for e in online:
            r = self.item_row.get(e.item_id)
            if r is None or not self._is_positive(e):
                continue
            pair = (e.time_ms // 1000, r)
            if pair not in snapshot:
                pairs.append(pair)
        pairs.sort(key=lambda tr: tr[0])  # stable: ties keep the snapshot, then arrival order
        return (
            np.fromiter((r for _, r in pairs), np.int64, len(pairs)),
            np.fromiter((t for t, _ in pairs), np.int64, len(pairs)),
        )

    def _window(self, hist: np.ndarray) -> np.ndarray:
        length = self.bundle.history_length
        out = np.zeros((1, length), np.int64)
        recent = hist[-length:]
        if len(recent):
            out[0, length - len(recent) :] = recent
        return out

    def _profile(self, profile: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray, bool]:
        """The request's profile fields encoded, [1, C] and [1, F], and whether any was given;
        checked even for users the bundle knows (whose own profile is then used)."""
        enc = self.user_encoder
        cat = np.zeros((1, len(enc.columns)), np.int64)
        num = np.zeros((1, len(enc.numeric)), np.float32)
        for name, value in profile.items():
            if name in enc.categorical:
                cat[0, enc.categorical.index(name)] = self.profile_codes[name].get(value, 0)
            elif name in enc.numeric:
                try:
                    x = float(value)
                except ValueError:
                    x = math.nan
                if not math.isfinite(x):
                    raise RequestError(f"profile[{name!r}]", f"{value!r} is not a finite number")
                mean, std = enc.stats[name]
                z = (x - mean) / std
                if not abs(z) < _FLOAT32_MAX:  # the towers read float32
                    raise RequestError(f"profile[{name!r}]", f"{value!r} is out of range")
                num[0, enc.numeric.index(name)] = z
                if name in enc.edges:  # its bucket column (encoders saved with buckets)
                    bucket = enc.columns.index(name + BUCKET_SUFFIX)
                    cat[0, bucket] = enc.bucket(name, np.array([x]))[0]
            else:
                known = sorted(enc.categorical + enc.numeric)
                raise RequestError(f"profile[{name!r}]", f"no such profile field (known: {known})")
        return cat, num, bool(profile)

    def _context(self, req: Request) -> tuple[np.ndarray, bool]:
        """Context codes int64 [1, K] in the model's field order, and whether any is known."""
        given = {"surface": req.surface, **(req.context or {})}
        codes = [vocab.get(given.get(name, ""), 0) for name, vocab in self.context_vocabs.items()]
        return np.asarray([codes], np.int64).reshape(1, len(codes)), any(codes)

    def _diversify(
        self, scores: np.ndarray, cands: np.ndarray, k: int, mmr_lambda: float | None = None
    ) -> np.ndarray:
        if mmr_lambda is not None or self.cfg.diversity == "mmr":
            strength = self.cfg.mmr_lambda if mmr_lambda is None else float(mmr_lambda)
            return mmr(scores, self.bundle.item_embeddings[cands], k, strength)
        if self.cfg.diversity == "category_cap":
            return category_cap(scores, self.categories[cands], k, self.cfg.cap_per_value)
        return np.argsort(-scores, kind="stable")[:k].astype(np.int64)

    def _like_you(self, emb: np.ndarray) -> str:
        """The reason for a page from a profile and context alone: the people like this user
        are the segment nearest their embedding, named where the bundle has segments."""
        segments = self.bundle.segments
        if segments is None:
            return "popular with people like you"
        return f"popular with people like you ({segments.labels[segments.nearest(emb)]})"

    def _reasons(self, rows: np.ndarray, hist: np.ndarray) -> list[str]:
        """ "because you <verb> <title>": the recent history item most like each result."""
        recent = hist[-_REASON_RECENT:]
        emb = self.bundle.item_embeddings
        nearest = recent[np.argmax(emb[rows] @ emb[recent].T, axis=1)]
        verb = self.cfg.history_verb
        return [f"because you {verb} {self.labels[r - 1]}" for r in nearest]
