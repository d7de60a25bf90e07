"""A dataset's positive feedback as compact arrays, split, ready for training and evaluation.

:func:`load_interactions` streams ``events.parquet`` by record batch, keeps the events that
count as positive feedback (configured per event type with a weight; a view counts from a
minimum dwell time; a rating from a minimum value; see :class:`PositiveRule`), merges a
repeat of the same item soon after (a purchase after its click), maps ids to row indices and
assigns the split. Memory is a few bytes per kept event; the string columns never sit in
memory whole.

Conventions: users are 0-based rows of ``users.parquet``; items are **1-based** rows of
``items.parquet`` (0 is padding in histories and "no item" in the model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tailored.config import DataConfig, EventRole
from tailored.data.exposures import Exposures, SlotPropensity
from tailored.data.features import NUMERIC_BUCKETS, FeatureEncoder, FeatureTable
from tailored.data.ids import IdLookup
from tailored.data.schema import DatasetMeta, SchemaError, read_dataset_meta
from tailored.data.splits import TEST, TRAIN, VALID, global_time_split, user_temporal_split
from tailored.data.splits import user_time_order as _order
from tailored.data.tombstones import TombstoneList, tombstoned

__all__ = ["Interactions", "PositiveRule", "UserShard", "load_interactions", "read_users"]

_SPLIT_CODES = {"train": TRAIN, "valid": VALID, "test": TEST}
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PositiveRule:
    """Which events are positive feedback, and their weights: the ``positive`` roles of the
    configured event types (:meth:`tailored.config.DataConfig.event_roles`); every other type
    is left out. ``merge_seconds``: a positive of an item the user had a positive of at most
    this long before is merged into it (one example, the larger weight)."""

    roles: dict[str, EventRole]
    merge_seconds: int = 0
    # weight each positive that records its slot by 1 / the slot's examination
    # (:class:`~tailored.data.exposures.SlotPropensity`, from the training period)
    position_debias: bool = False

    @classmethod
    def from_config(cls, data: DataConfig) -> PositiveRule:
        return cls(data.event_roles(), data.merge_repeat_seconds, data.position_debias)

    @classmethod
    def weighted(cls, weights: dict[str, float], *, merge_seconds: int = 0) -> PositiveRule:
        """Every event of these types is a positive, whatever its value (tests, tools)."""
        return cls({n: EventRole("positive", w) for n, w in weights.items()}, merge_seconds)

    @property
    def positives(self) -> dict[str, EventRole]:
        return {n: r for n, r in self.roles.items() if r.role == "positive"}

    @property
    def exposures(self) -> frozenset[str]:
        return frozenset(n for n, r in self.roles.items() if r.role == "exposure")

    def mask(self, types: pa.Array, values: pa.Array) -> np.ndarray:
        """bool [E]: the events that are positives (type, then the value's threshold)."""
        t = np.asarray(types.to_numpy(zero_copy_only=False))
        v = np.asarray(pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False), np.float64)
        missing = np.isnan(v)
        keep = np.zeros(len(t), bool)
        for name, r in self.positives.items():
            ok = ~missing if r.min_value is None else ~missing & (v >= r.min_value)
            keep |= (t == name) & (ok | (missing & (not r.needs_value)))
        return keep

    def weight_of(self, types: np.ndarray) -> np.ndarray:
        w = np.zeros(len(types), np.float32)
        for name, r in self.positives.items():
            w[types == name] = r.weight
        return w


@dataclass(frozen=True)
class UserShard:
    """The users one of ``of`` readers keeps: those whose row (in the users table) is
    ``rank`` modulo ``of``. Rows interleave, so shards are near equal whatever order the users
    were imported in; ``of`` = 1 keeps every user."""

    rank: int = 0
    of: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.of:
            raise ValueError(f"UserShard: rank {self.rank} is not in 0..{self.of - 1}")

    @property
    def whole(self) -> bool:
        return self.of == 1

    def mine(self, rows: np.ndarray) -> np.ndarray:
        """bool [n]: which of these user rows are this shard's."""
        return rows % self.of == self.rank


@dataclass
class Interactions:
    """Positive events sorted by (user, time, file position).

    ``user``: int32 [E] (0-based), ``item``: int32 [E] (1-based), ``timestamp``: int64 [E]
    seconds, ``split``: int8 [E] (TRAIN/VALID/TEST), ``weight``: float32 [E],
    ``context``: int64 [E, K] codes of the declared context fields (0 unknown).
    ``offsets``: int64 [U+1], user u's events are ``offsets[u]:offsets[u+1]``.

    Read as one ``shard`` of several (a DDP rank's), the event arrays hold that shard's users'
    events only; the user and item tables are whole, so rows mean the same on every shard.
    What is a fact about all events (item counts, context vocabularies, slot propensities) is
    then agreed between the shards and set with :meth:`agreed`.
    """

    meta: DatasetMeta
    user_ids: np.ndarray  # str [U] pseudonyms
    item_ids: np.ndarray  # str [N] site item ids (row i is item index i + 1)
    users: FeatureTable  # [U, ...]
    items: FeatureTable  # [N + 1, ...], row 0 padding
    user_encoder: FeatureEncoder
    item_encoder: FeatureEncoder
    context_vocabs: dict[str, list[str]]
    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray
    weight: np.ndarray
    context: np.ndarray
    offsets: np.ndarray
    item_titles: np.ndarray | None = None
    user_numeric_raw: dict[str, np.ndarray] = field(default_factory=dict)  # NaN = missing
    position: np.ndarray | None = None  # int32 [E]: the slot each was shown in (-1 unknown)
    # int64 [E]: the key of the session (visit) each belongs to, -1 where none was logged;
    # None: the dataset logs no sessions (``DatasetSchema.event_session``)
    session: np.ndarray | None = None
    exposures: Exposures | None = None  # what each user was shown (None: read no exposures)
    propensity: SlotPropensity = field(default_factory=SlotPropensity.uniform)
    debiased: bool = False  # the weights were divided by ``propensity`` (position_debias)
    shard: UserShard = field(default_factory=UserShard)
    # float64 [3, N + 1]: each split's item counts over every shard (None: counted from these
    # events, which are all of them unless sharded)
    dataset_item_counts: np.ndarray | None = None
    # float64 [3, N + 1]: each split's exposures per item over every shard (None: counted
    # from ``exposures``)
    dataset_exposure_counts: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of real items (indices 1..n_items)."""
        return len(self.item_ids)

    def item_popularity(self, splits: tuple[int, ...] = (TRAIN,)) -> np.ndarray:
        """Interaction counts per item index over the whole dataset (every shard), float64
        [N + 1] (index 0 is 0)."""
        counts = self.dataset_item_counts
        if counts is None:
            counts = self.item_counts()
        return counts[list(splits)].sum(0)

    def item_counts(self) -> np.ndarray:
        """float64 [3, N + 1]: each split's interaction counts per item in these events
        (this shard's, where sharded)."""
        return _split_counts(self.item, self.split, self.n_items)

    def item_exposure(self, splits: tuple[int, ...] = (TRAIN,)) -> np.ndarray:
        """Exposures (impressions) per item index over the whole dataset (every shard),
        float64 [N + 1]; zeros where the dataset logs none or they were not read."""
        counts = self.dataset_exposure_counts
        if counts is None:
            counts = self.exposure_counts()
        return counts[list(splits)].sum(0)

    def exposure_counts(self) -> np.ndarray:
        """float64 [3, N + 1]: each split's exposures per item in these events' exposures
        (this shard's, where sharded)."""
        shown = self.exposures or Exposures.empty(self.n_users)
        return _split_counts(shown.item, shown.split, self.n_items)

    def agreed(
        self,
        item_counts: np.ndarray,
        context_vocabs: dict[str, list[str]],
        propensity: SlotPropensity,
        exposure_counts: np.ndarray | None = None,
    ) -> Interactions:
        """This shard with what the shards agreed on: the item counts of every shard
        ([3, N + 1]) and their exposure counts (the same shape), the context vocabularies
        (each a superset of this shard's: the codes are mapped onto it) and the slot
        propensities (positives reweighted where ``position_debias`` weighed them by this
        shard's own)."""
        context = self.context.copy()
        for j, (name, vocab) in enumerate(self.context_vocabs.items()):
            where = {v: i + 1 for i, v in enumerate(context_vocabs[name])}
            code = np.array([0, *(where[v] for v in vocab)], np.int64)
            context[:, j] = code[self.context[:, j]]
        weight = self.weight
        if self.debiased and self.position is not None:
            ratio = self.propensity.of(self.position) / propensity.of(self.position)
            weight = (weight * ratio).astype(np.float32)
        return replace(
            self,
            dataset_item_counts=np.asarray(item_counts, np.float64),
            dataset_exposure_counts=(
                None if exposure_counts is None else np.asarray(exposure_counts, np.float64)
            ),
            context_vocabs={n: list(context_vocabs[n]) for n in self.context_vocabs},
            context=context,
            weight=weight,
            propensity=propensity,
        )

    def items_of(self, users: np.ndarray, splits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``users``' items in ``splits``, each user's time-ordered, as (indptr int64
        [B + 1], items [n]): user ``users[b]``'s are ``items[indptr[b]:indptr[b + 1]]``. Work
        in those users' events only (``per_user`` makes an array for every user: at 10M
        users, a gigabyte to evaluate 2,000 of them)."""
        users = np.asarray(users, np.int64)
        start = self.offsets[users]
        count = self.offsets[users + 1] - start
        ends = np.cumsum(count)
        idx = np.repeat(start - (ends - count), count) + np.arange(
            int(ends[-1]) if len(ends) else 0
        )
        keep = np.isin(self.split[idx], splits)
        per = np.bincount(np.repeat(np.arange(len(users)), count)[keep], minlength=len(users))
        return np.r_[0, np.cumsum(per)].astype(np.int64), self.item[idx[keep]]

    def cooccurrence_sessions(self, how: str) -> np.ndarray | None:
        """The events' session keys where co-occurrence is counted per session (``how``:
        ``[ranker] cooccurrence``, "users" or "sessions"), else None; raises
        :class:`SchemaError` for "sessions" on a dataset that logs none."""
        if how not in ("users", "sessions"):
            raise ValueError(f'cooccurrence: "users" or "sessions", not {how!r}')
        if how == "users":
            return None
        if self.session is None:
            raise SchemaError(
                f'dataset {self.meta.name!r}: [ranker] cooccurrence = "sessions" needs '
                "events with their session: import them with the mapping's [events] session "
                "= COLUMN (this dataset logs none)"
            )
        return self.session

    def per_user(self, splits: tuple[int, ...]) -> list[np.ndarray]:
        """Each user's items in ``splits``, time-ordered: a list of int arrays (1-based)."""
        keep = np.isin(self.split, splits)
        counts = np.bincount(self.user[keep], minlength=self.n_users)
        return np.split(self.item[keep], np.cumsum(counts)[:-1])


def load_interactions(
    directory: Path,
    rule: PositiveRule,
    *,
    split: str = "user_temporal",
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    valid_start: int = 0,
    test_start: int = 0,
    batch_rows: int = 1 << 20,
    exposures: bool = True,
    shard: UserShard | None = None,
    numeric_buckets: int = NUMERIC_BUCKETS,
) -> Interactions:
    """Read a dataset and return its split positive interactions (see module doc).
    ``exposures=False`` leaves the exposure events unread (``Interactions.exposures`` empty,
    slot propensities uniform): the two-tower model's training reads none unless
    ``position_debias`` weighs positives by them, and at 10M users they are 87M rows.
    ``shard``: keep only that shard's users' events (see :class:`Interactions`).
    ``numeric_buckets``: quantile ranges of each numeric user and item field (see
    :class:`~tailored.data.features.FeatureEncoder`; 0: none)."""
    shard = shard or UserShard()
    directory = Path(directory)
    meta = read_dataset_meta(directory)
    if split == "presplit" and not meta.presplit:
        raise SchemaError(
            f"{directory}: split 'presplit' needs data imported with train/valid/test files"
        )
    stones = TombstoneList().read()
    users_t = read_users(directory, stones)
    items_t = pq.read_table(directory / "items.parquet")
    user_ids = users_t.column("user_id").combine_chunks()
    item_ids = items_t.column("item_id").combine_chunks()
    user_enc = FeatureEncoder.fit(users_t, meta.schema.user_fields, numeric_buckets)
    item_enc = FeatureEncoder.fit(items_t, meta.schema.item_fields, numeric_buckets)
    ev = _read_positives(
        directory, meta, rule, user_ids, item_ids, split, batch_rows, stones, exposures, shard
    )
    if rule.merge_seconds > 0:
        ev = _merge_repeats(ev, rule.merge_seconds)
    if split == "presplit":
        labels = ev.split
    elif split == "global_time":
        labels = global_time_split(ev.timestamp, valid_start=valid_start, test_start=test_start)
    else:
        labels = user_temporal_split(
            ev.user, ev.timestamp, valid_ratio=valid_ratio, test_ratio=test_ratio
        )
    order = _order(ev.user, ev.timestamp)
    counts = np.bincount(ev.user, minlength=len(user_ids))
    shown = ev.exposures.split_by(ev.user, ev.timestamp, labels)
    train = labels == TRAIN
    propensity = SlotPropensity.estimate(shown.position[shown.split == TRAIN], ev.position[train])
    weight = ev.weight
    if rule.position_debias:  # inverse propensity: a click where few look counts more
        weight = (weight / propensity.of(ev.position)).astype(np.float32)
    return Interactions(
        meta=meta,
        user_ids=user_ids.to_numpy(zero_copy_only=False),
        item_ids=item_ids.to_numpy(zero_copy_only=False),
        users=user_enc.transform(users_t),
        items=item_enc.transform(items_t).with_padding_row(),
        user_encoder=user_enc,
        item_encoder=item_enc,
        context_vocabs=ev.context_vocabs,
        user=ev.user[order],
        item=ev.item[order],
        timestamp=ev.timestamp[order],
        split=labels[order],
        weight=weight[order],
        context=ev.context[order],
        offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        item_titles=(
            items_t.column("title").to_numpy(zero_copy_only=False)
            if "title" in items_t.column_names
            else None
        ),
        user_numeric_raw={
            name: users_t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            for name in user_enc.numeric
        },
        position=ev.position[order],
        session=ev.session[order] if meta.schema.event_session else None,
        exposures=shown,
        propensity=propensity,
        debiased=rule.position_debias,
        shard=shard,
    )


def read_users(directory: Path, stones: frozenset[str] | None = None) -> pa.Table:
    """The dataset's users table without the users erased (or who withdrew consent) since the
    import (``stones``, default the tombstone list): they are not learned from again."""
    users_t = pq.read_table(Path(directory) / "users.parquet")
    gone = tombstoned(
        users_t.column("user_id"), TombstoneList().read() if stones is None else stones
    )
    return users_t.filter(pa.array(~gone)) if gone.any() else users_t


@dataclass
class _Positives:
    """The positive events of a dataset in file order: user and item indices (items
    1-based), times, weights, encoded context, and the imported split labels (presplit)."""

    user: np.ndarray  # int32 [E]
    item: np.ndarray  # int32 [E]
    timestamp: np.ndarray  # int64 [E]
    weight: np.ndarray  # float32 [E]
    context: np.ndarray  # int64 [E, K]
    context_vocabs: dict[str, list[str]]
    split: np.ndarray  # int8 [E], or [0] unless presplit
    position: np.ndarray  # int32 [E], the slot (-1: not known)
    session: np.ndarray  # int64 [E], the session's key (-1: none logged); [0] if none logged
    exposures: Exposures  # the exposure events, every one labelled TRAIN


def _read_positives(
    directory: Path,
    meta: DatasetMeta,
    rule: PositiveRule,
    user_ids: pa.Array,
    item_ids: pa.Array,
    split: str,
    batch_rows: int,
    stones: frozenset[str] = frozenset(),
    exposures: bool = True,
    shard: UserShard | None = None,
) -> _Positives:
    """``events.parquet`` read in batches of ``batch_rows``, keeping what ``rule`` counts as
    positives, and the exposures (unless ``exposures`` is False); of ``shard``'s users only,
    where given (each batch is cut to them first: the rest of the work is the shard's)."""
    shard = shard or UserShard()
    ctx_names = list(meta.schema.context_fields)
    cols = ["user_id", "item_id", "timestamp", "type", "value", *ctx_names]
    cols += ["split"] if split == "presplit" else []
    has_slot = meta.schema.event_position
    cols += ["position"] if has_slot else []
    has_session = meta.schema.event_session
    cols += ["session"] if has_session else []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("u", "i", "t", "w", "s", "p", "v")}
    shown: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "item", "timestamp", "position")}
    exposure_types = pa.array(sorted(rule.exposures) if exposures else [], pa.string())
    users, items = IdLookup(user_ids), IdLookup(item_ids)  # hashed once for every batch
    ctx_raw: list[pa.Table] = []
    unnamed: dict[str, int] = {}  # event types no rule names: ignored, and said so
    for batch in pq.ParquetFile(directory / "events.parquet").iter_batches(
        batch_size=batch_rows, columns=cols
    ):
        for entry in pc.value_counts(batch.column("type")).to_pylist():
            if entry["values"] not in rule.roles:
                unnamed[entry["values"]] = unnamed.get(entry["values"], 0) + entry["counts"]
        rows = None  # the users' rows, where looked up before the batch is cut
        if not shard.whole:
            rows = users.rows(batch.column("user_id"))
            # an unknown id stays in every shard: erased, or an error each shard reports
            mine = (rows < 0) | shard.mine(rows)
            batch, rows = batch.filter(pa.array(mine)), rows[mine]
        erased = tombstoned(batch.column("user_id"), stones)
        is_shown = pc.is_in(batch.column("type"), value_set=exposure_types).to_numpy(
            zero_copy_only=False
        )
        if (is_shown & ~erased).any():
            e = pa.Table.from_batches([batch]).filter(pa.array(is_shown & ~erased))
            shown["user"].append(_user_rows(e, users, rows, is_shown & ~erased, directory))
            shown["item"].append(_index(e.column("item_id"), items, directory, "item_id") + 1)
            shown["timestamp"].append(e.column("timestamp").to_numpy())
            shown["position"].append(_slots(e, has_slot))
        keep = rule.mask(batch.column("type"), batch.column("value"))
        keep = keep & ~erased
        if not keep.any():
            continue
        b = pa.Table.from_batches([batch]).filter(pa.array(keep))
        parts["u"].append(_user_rows(b, users, rows, keep, directory))
        parts["i"].append(_index(b.column("item_id"), items, directory, "item_id") + 1)
        parts["t"].append(b.column("timestamp").to_numpy())
        parts["p"].append(_slots(b, has_slot))
        if has_session:  # none held for a dataset that logs no sessions
            parts["v"].append(_sessions(b))
        parts["w"].append(rule.weight_of(b.column("type").to_numpy(zero_copy_only=False)))
        if split == "presplit":
            s = b.column("split").to_numpy(zero_copy_only=False)
            parts["s"].append(np.vectorize(_SPLIT_CODES.__getitem__, otypes=[np.int8])(s))
        if ctx_names:
            ctx_raw.append(b.select(ctx_names))
    if unnamed:
        _log.info(
            "%s: event types without a role in [data.events] are ignored: %s",
            directory,
            ", ".join(f"{n} ({c:,})" for n, c in sorted(unnamed.items())),
        )
    if not parts["u"] and shard.whole:  # a shard may hold none: the ranks agree on the total
        raise SchemaError(
            f"{directory}: no positive events (types {sorted(rule.positives)}); the dataset "
            f"holds {sorted(unnamed) or 'only those types, below their min_value'}"
        )
    user = _joined(parts["u"]).astype(np.int32, copy=False)
    context, ctx_vocabs = _encode_context(ctx_raw, ctx_names, len(user))
    return _Positives(
        user=user,
        item=_joined(parts["i"]).astype(np.int32, copy=False),
        timestamp=_joined(parts["t"]).astype(np.int64, copy=False),
        weight=_joined(parts["w"]),
        context=context,
        context_vocabs=ctx_vocabs,
        split=_joined(parts["s"]) if parts["s"] else np.zeros(0, np.int8),
        position=_joined(parts["p"]),
        session=_joined(parts["v"]).astype(np.int64, copy=False),
        exposures=Exposures.from_parts(shown, len(user_ids)),
    )


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The parts end to end; the list is emptied, so that they and the whole are not both
    held for long (at 100M events each column is a gigabyte)."""
    out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    parts.clear()
    return out


def _slots(t: pa.Table, has_slot: bool) -> np.ndarray:
    """int32 [rows]: the events' slots, -1 where not known."""
    if not has_slot:
        return np.full(t.num_rows, -1, np.int32)
    return pc.fill_null(t.column("position"), -1).to_numpy().astype(np.int32)


def _sessions(t: pa.Table) -> np.ndarray:
    """int64 [rows]: the events' session keys, -1 where none was logged."""
    return pc.fill_null(t.column("session"), -1).to_numpy().astype(np.int64)


def _merge_repeats(ev: _Positives, seconds: int) -> _Positives:
    """``ev`` with each positive of an item the user had a positive of at most ``seconds``
    before merged into that earlier one (which takes the larger weight): a purchase after its
    click is one example, not two. File order is kept."""
    order = np.lexsort((np.arange(len(ev.user)), ev.timestamp, ev.item, ev.user))
    u, i, t = ev.user[order], ev.item[order], ev.timestamp[order]
    repeat = np.zeros(len(u), bool)
    repeat[1:] = (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] - t[:-1] <= seconds)
    if not repeat.any():
        return ev
    starts = np.flatnonzero(~repeat)
    weight = np.maximum.reduceat(ev.weight[order], starts)
    kept = np.sort(order[starts])  # back in file order
    new_weight = np.empty(len(ev.user), np.float32)
    new_weight[order[starts]] = weight
    return replace(
        ev,
        user=ev.user[kept],
        item=ev.item[kept],
        timestamp=ev.timestamp[kept],
        weight=new_weight[kept],
        context=ev.context[kept],
        position=ev.position[kept],
        session=ev.session[kept] if len(ev.session) else ev.session,
        split=ev.split[kept] if len(ev.split) else ev.split,
    )


def _index(col: pa.ChunkedArray, ids: IdLookup, directory: Path, name: str) -> np.ndarray:
    """int32 [rows]: each value's row in ``ids``; a value in none is an error."""
    return _checked(ids.rows(col), col, directory, name)


def _user_rows(
    t: pa.Table, users: IdLookup, rows: np.ndarray | None, which: np.ndarray, directory: Path
) -> np.ndarray:
    """int32: the users' rows of ``t``, the batch's events ``which``: looked up, or taken from
    the batch's ``rows`` where they were looked up already."""
    if rows is None:
        return _index(t.column("user_id"), users, directory, "user_id")
    return _checked(rows[which], t.column("user_id"), directory, "user_id")


def _checked(idx: np.ndarray, col: pa.ChunkedArray, directory: Path, name: str) -> np.ndarray:
    """``idx``, the rows of ``col``'s values, as int32; a value in no row is an error."""
    if (idx < 0).any():
        row = int(np.argmax(idx < 0))
        raise SchemaError(
            f"{directory}/events.parquet: {name} {col[row].as_py()!r} refers to "
            f"no row of the {'users' if name == 'user_id' else 'items'} table"
        )
    return idx.astype(np.int32)


def _encode_context(
    tables: list[pa.Table], names: list[str], rows: int
) -> tuple[np.ndarray, dict[str, list[str]]]:
    out = np.zeros((rows, len(names)), np.int64)
    vocabs: dict[str, list[str]] = {name: [] for name in names}
    if not names or not tables:
        return out, vocabs
    t = pa.concat_tables(tables)
    for j, name in enumerate(names):
        col = t.column(name)
        vocab = sorted(str(v) for v in pc.unique(pc.drop_null(col)).to_pylist())
        vocabs[name] = vocab
        idx = pc.index_in(col, value_set=pa.array(vocab, pa.string()))
        out[:, j] = pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False)
    return out, vocabs


def _split_counts(item: np.ndarray, split: np.ndarray, n_items: int) -> np.ndarray:
    """float64 [3, N + 1]: how often each item index occurs in each split's rows."""
    out = np.zeros((3, n_items + 1))
    for s in (TRAIN, VALID, TEST):
        out[s] = np.bincount(item[split == s], minlength=n_items + 1)
    return out
