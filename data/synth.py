"""A synthetic website at scale, seeded, with its ground truth kept: ``tailored data synth``.

Users have demographics that correlate with latent tastes; items have categories, tags,
prices and Zipf popularity; sessions show slates of impressions with position bias, and
clicks, views (dwell) and purchases follow the tastes, which drift over time (the model is in
:mod:`tailored.data.synth_truth`, the behaviour in :mod:`tailored.data.synth_sessions`).

Events stream to Parquet one chunk of ``chunk_users`` users at a time, so memory holds one
chunk's events plus a few dozen bytes per user (ids, demographics) — never all events, never
a users x items matrix. The same arguments (seed, sizes, ``chunk_users``) give identical files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from tailored.data.pseudonym import Pseudonymizer, load_key
from tailored.data.schema import DatasetMeta, DatasetSchema, FieldSpec, arrow_schema
from tailored.data.store import DatasetWriter
from tailored.data.synth_sessions import (
    DEVICE_SHARES,
    DEVICES,
    EVENT_KINDS,
    SURFACES,
    Behaviour,
    EventArrays,
    Sampler,
    simulate_chunk,
)
from tailored.data.synth_truth import (
    AGE_BANDS,
    GENDERS,
    REGIONS,
    TruthWriter,
    World,
    draw_tastes,
    make_world,
    segment_of,
)
from tailored.errors import TailoredError
from tailored.paths import dataset_dir

__all__ = ["SYNTH_SCHEMA", "Behaviour", "SynthError", "SynthSummary", "generate_synthetic"]

_log = logging.getLogger(__name__)

SYNTH_SCHEMA = DatasetSchema(
    user_fields=(
        FieldSpec("age", "numeric"),
        FieldSpec("gender", "categorical"),
        FieldSpec("region", "categorical"),
    ),
    item_fields=(
        FieldSpec("category", "categorical"),
        FieldSpec("tags", "multi_categorical"),
        FieldSpec("price", "numeric"),
        FieldSpec("title", "text"),
    ),
    context_fields=("surface", "device"),
)
_GENDER_P = (0.49, 0.48, 0.03)
_AGE_P = (0.06, 0.16, 0.24, 0.2, 0.15, 0.11, 0.08)
_REGION_P = (0.2, 0.1, 0.22, 0.08, 0.18, 0.12, 0.06, 0.04)
_TAGS_PER_CATEGORY = 6
_PILOT_USERS = 2000
_POPULARITY_STRENGTH = 0.25  # weight of log-popularity in the true score
# independent random streams, so e.g. adding a user field does not change the items
_ITEMS, _USERS, _PILOT, _CHUNKS = range(4)


class SynthError(TailoredError, ValueError):
    """An argument of :func:`generate_synthetic` is out of range; the message names it."""


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_synthetic` wrote."""

    out: Path
    n_users: int
    n_items: int
    n_events: int
    events_by_type: dict[str, int]
    seconds: float


def generate_synthetic(
    out: Path | None = None,
    *,
    n_users: int,
    n_items: int,
    events_per_user: float = 30.0,
    n_categories: int = 50,
    dim: int = 16,
    seed: int = 0,
    key: bytes | None = None,
    chunk_users: int = 50_000,
    start_time: int = 1_700_000_000,
    days: int = 90,
    drift: float = 0.6,
    zipf: float = 1.0,
    missing_demographics: float = 0.05,
    behaviour: Behaviour | None = None,
) -> SynthSummary:
    """Generate a synthetic website's dataset into ``out`` (default
    ``$TAILORED_HOME/datasets/synthetic``), replacing what is there only on success.

    ``events_per_user`` is the mean over users of all events, impressions included.
    ``days`` is the span (from ``start_time``, unix seconds) over which tastes drift by
    ``delta``, of size about ``drift`` in the units of the score. ``missing_demographics`` is
    the share of users whose age and gender are null (their segment still shapes tastes).
    Raises :class:`SynthError` for an argument out of range.
    """
    b = behaviour or Behaviour()
    _check(
        n_users,
        n_items,
        events_per_user,
        n_categories,
        dim,
        chunk_users,
        days,
        drift,
        zipf,
        missing_demographics,
        b,
    )
    t_begin = time.perf_counter()
    out = Path(out) if out is not None else dataset_dir("synthetic")
    pseudo = Pseudonymizer(key if key is not None else load_key())
    span = days * 86_400

    def rng(stream: int, *more: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, *more)))

    world = make_world(
        rng(_ITEMS),
        n_items=n_items,
        n_categories=n_categories,
        dim=dim,
        zipf=zipf,
        popularity_strength=_POPULARITY_STRENGTH,
    )
    items = _items_table(rng(_ITEMS, 1), world)
    sampler = Sampler(world, items.column("price").to_numpy())
    demo = _demographics(rng(_USERS), n_users, missing_demographics)
    user_ids = _pseudonyms(pseudo, n_users)
    per_user = events_per_user / _events_per_impression(
        rng(_PILOT), sampler, demo.segment, drift, start_time, span, b
    )
    meta = DatasetMeta(
        name=out.name,
        schema=SYNTH_SCHEMA,
        key_fingerprint=pseudo.fingerprint,
        source=f"tailored data synth (seed {seed})",
    )
    schema = arrow_schema("events", SYNTH_SCHEMA)
    item_ids = items.column("item_id").combine_chunks()
    by_type = dict.fromkeys(EVENT_KINDS, 0)
    info = {
        "t0": start_time,
        "span": span,
        "seed": seed,
        "dim": dim,
        "n_users": n_users,
        "n_items": n_items,
        "n_categories": n_categories,
        "drift": drift,
        "zipf": zipf,
        "popularity_strength": _POPULARITY_STRENGTH,
        "events_per_user": events_per_user,
        "impressions_per_user": per_user,
        "chunk_users": chunk_users,
        "behaviour": asdict(b),
    }
    with DatasetWriter(out, meta) as w:
        w.write_users(_users_table(user_ids, demo), source="synthetic users")
        w.write_items(items, source="synthetic items")
        truth = TruthWriter(w.staging / "truth", world, demo.segment, info)
        for c, lo in enumerate(range(0, n_users, chunk_users)):
            hi = min(lo + chunk_users, n_users)
            r = rng(_CHUNKS, c)
            u_start, delta = draw_tastes(r, demo.segment[lo:hi], world, drift)
            truth.append(u_start, delta)
            ev = simulate_chunk(
                r,
                sampler,
                u_start=u_start,
                delta=delta,
                activity=_activity(r, hi - lo, b),
                device=demo.device[lo:hi],
                impressions_per_user=per_user,
                t0=start_time,
                span=span,
                behaviour=b,
            )
            table = _events_table(ev, user_ids.slice(lo, hi - lo), item_ids, schema)
            # the first chunk is checked in full; later ones are built the same way
            w.write_events(table, source=f"synthetic events, users {lo}..{hi - 1}", validated=c > 0)
            for k, n in zip(EVENT_KINDS, np.bincount(ev.kind, minlength=4), strict=True):
                by_type[k] += int(n)
            _log.debug("synth: users %d..%d, %d events", lo, hi - 1, len(ev.kind))
        truth.close()
    summary = SynthSummary(
        out, n_users, n_items, sum(by_type.values()), by_type, time.perf_counter() - t_begin
    )
    _log.info(
        "synthetic: %d users, %d items, %d events in %.1f s -> %s",
        n_users,
        n_items,
        summary.n_events,
        summary.seconds,
        out,
    )
    return summary


def _check(
    n_users: int,
    n_items: int,
    events_per_user: float,
    n_categories: int,
    dim: int,
    chunk_users: int,
    days: int,
    drift: float,
    zipf: float,
    missing_demographics: float,
    b: Behaviour,
) -> None:
    problems = [
        f"{name}={value} must be at least {least}"
        for name, value, least in (
            ("n_users", n_users, 1),
            ("n_items", n_items, 2),
            ("n_categories", n_categories, 1),
            ("dim", dim, 1),
            ("chunk_users", chunk_users, 1),
            ("days", days, 1),
            ("slate_size", b.slate_size, 1),
            ("candidates", b.candidates, 1),
        )
        if value < least
    ]
    if not events_per_user > 0:
        problems.append(f"events_per_user={events_per_user} must be positive")
    if not 0.0 <= missing_demographics <= 1.0:
        problems.append(f"missing_demographics={missing_demographics} must be in [0, 1]")
    if drift < 0 or zipf < 0:
        problems.append(f"drift={drift} and zipf={zipf} must not be negative")
    if min(b.policy_mix) < 0 or sum(b.policy_mix) <= 0:
        problems.append(f"policy_mix={b.policy_mix} must be shares (not negative, some positive)")
    if chunk_users >= 1 << 23:
        problems.append(f"chunk_users={chunk_users} must be below {1 << 23}")
    if problems:
        raise SynthError("synthetic data: " + "; ".join(problems))


@dataclass(frozen=True)
class _Demographics:
    age: np.ndarray  # float64 [n], NaN where missing
    gender: np.ndarray  # int8 [n], -1 where missing
    region: np.ndarray  # int8 [n]
    segment: np.ndarray  # int32 [n], from the true (also hidden) gender and age
    device: np.ndarray  # int8 [n], usual device


def _demographics(rng: np.random.Generator, n: int, missing: float) -> _Demographics:
    gender = rng.choice(len(GENDERS), size=n, p=_GENDER_P).astype(np.int8)
    band = rng.choice(len(AGE_BANDS), size=n, p=_AGE_P)
    lo, hi = np.array(AGE_BANDS).T
    age = (lo[band] + np.floor(rng.random(n) * (hi[band] - lo[band] + 1))).astype(np.float64)
    region = rng.choice(len(REGIONS), size=n, p=_REGION_P).astype(np.int8)
    segment = segment_of(gender, band, region)
    hidden = rng.random(n) < missing
    age[hidden] = np.nan
    gender[hidden] = -1
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_SHARES).astype(np.int8)
    return _Demographics(age, gender, region, segment, device)


def _activity(rng: np.random.Generator, n: int, b: Behaviour) -> np.ndarray:
    """Log-normal activity levels with mean 1, float64 [n]."""
    return np.exp(b.activity_sigma * rng.standard_normal(n) - 0.5 * b.activity_sigma**2)


def _pseudonyms(pseudo: Pseudonymizer, n: int, block: int = 200_000) -> pa.Array:
    """Pseudonyms of raw ids ``u0000000``.., as one Arrow string array (32 B per user)."""
    width = max(7, len(str(n - 1)))
    parts = [
        pa.array(pseudo.many(f"u{i:0{width}d}" for i in range(lo, min(lo + block, n))))
        for lo in range(0, n, block)
    ]
    return pa.concat_arrays(parts)


def _events_per_impression(
    rng: np.random.Generator,
    sampler: Sampler,
    segment: np.ndarray,
    drift: float,
    t0: int,
    span: int,
    b: Behaviour,
) -> float:
    """Events per impression (1 + clicks, views, purchases), from a pilot of a few thousand
    users: it sets how many impressions give the requested events per user."""
    seg = segment[:_PILOT_USERS]
    u_start, delta = draw_tastes(rng, seg, sampler.world, drift)
    ev = simulate_chunk(
        rng,
        sampler,
        u_start=u_start,
        delta=delta,
        activity=np.ones(len(seg)),
        device=np.zeros(len(seg), np.int8),
        impressions_per_user=100.0,
        t0=t0,
        span=span,
        behaviour=b,
    )
    n_imp = int(np.count_nonzero(ev.kind == 0))
    return len(ev.kind) / n_imp if n_imp else 1.0


def _codes_to_strings(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """Strings from int codes; a negative code becomes null."""
    mask = codes < 0
    return pa.array(names).take(pa.array(np.where(mask, 0, codes), mask=mask))


def _users_table(user_ids: pa.Array, d: _Demographics) -> pa.Table:
    return pa.Table.from_arrays(
        [
            user_ids,
            pa.array(d.age, mask=np.isnan(d.age)),
            _codes_to_strings(d.gender, GENDERS),
            _codes_to_strings(d.region, REGIONS),
        ],
        schema=arrow_schema("users", SYNTH_SCHEMA),
    )


def _items_table(rng: np.random.Generator, world: World) -> pa.Table:
    """Items ``i000000``..: category, 1-3 tags (mostly the category's own), price, title."""
    n, cat = world.n_items, world.item_category.astype(np.int64)
    n_cat = len(world.category_centroids)
    width = max(6, len(str(n - 1)))
    ids = [f"i{i:0{width}d}" for i in range(n)]
    tag_names = rng.permutation(n_cat * _TAGS_PER_CATEGORY)  # category c owns labels [6c, 6c+6)
    n_tags = rng.integers(1, 4, n)
    owner = np.repeat(np.arange(n), n_tags)
    j = np.arange(len(owner)) - np.repeat(np.cumsum(n_tags) - n_tags, n_tags)
    tag_cat = cat[owner]
    # an item's last tag of two or more is, one time in five, another category's (cross-tag)
    cross = (j == n_tags[owner] - 1) & (j > 0) & (rng.random(len(owner)) < 0.2) & (n_cat > 1)
    tag_cat = np.where(
        cross, (tag_cat + rng.integers(1, max(n_cat, 2), len(owner))) % n_cat, tag_cat
    )
    slot = (rng.integers(0, _TAGS_PER_CATEGORY, n)[owner] + j) % _TAGS_PER_CATEGORY
    tags = tag_names[tag_cat * _TAGS_PER_CATEGORY + slot]
    offsets = np.concatenate([[0], np.cumsum(n_tags)]).astype(np.int32)
    base = np.exp(rng.normal(3.0, 0.8, n_cat))  # each category has its price level
    price = np.round(np.maximum(base[cat] * np.exp(rng.normal(0.0, 0.4, n)), 0.5), 2)
    tag_strings = pa.array([f"tag{t:04d}" for t in range(n_cat * _TAGS_PER_CATEGORY)])
    return pa.Table.from_arrays(
        [
            pa.array(ids),
            pa.array([f"cat{c:03d}" for c in range(n_cat)]).take(pa.array(cat)),
            pa.ListArray.from_arrays(pa.array(offsets), tag_strings.take(pa.array(tags))),
            pa.array(price),
            pa.array([f"Item {i}" for i in range(n)]),
        ],
        schema=arrow_schema("items", SYNTH_SCHEMA),
    )


def _events_table(
    ev: EventArrays, user_ids: pa.Array, item_ids: pa.Array, schema: pa.Schema
) -> pa.Table:
    """The Arrow table of a chunk's events, with exactly the stored schema."""
    return pa.Table.from_arrays(
        [
            user_ids.take(pa.array(ev.user)),
            item_ids.take(pa.array(ev.item)),
            pa.array(ev.timestamp, pa.int64()),
            pa.array(EVENT_KINDS).take(pa.array(ev.kind)),
            pa.array(ev.value, mask=np.isnan(ev.value)),
            pa.array(SURFACES).take(pa.array(ev.surface)),
            pa.array(DEVICES).take(pa.array(ev.device)),
        ],
        schema=schema,
    )
