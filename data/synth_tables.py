"""The synthetic website as tailored's three tables: schema, profiles, catalog, event chunks.

The catalog says when items can be shown (``available_from`` / ``available_until``, null where
there is no bound); every event carries its session's ``surface`` and ``device`` (context) and
the ``position`` (0..9, the slot) of the impression it comes from and its ``session`` (an
opaque key, as an import stores a site's visit ids).

Every builder produces Arrow data with exactly the stored schema (:func:`arrow_schema`), from
numpy arrays, without Python loops over events: a chunk of a million events becomes a table
in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tailored.data.pseudonym import Pseudonymizer
from tailored.data.schema import DatasetSchema, FieldSpec, arrow_schema
from tailored.data.synth_sessions import DEVICE_SHARES, DEVICES, EVENT_KINDS, SURFACES, EventArrays
from tailored.data.synth_truth import (
    AGE_BANDS,
    GENDERS,
    NO_END,
    NO_START,
    REGIONS,
    Windows,
    World,
    segment_of,
)

__all__ = [
    "SYNTH_SCHEMA",
    "Demographics",
    "draw_demographics",
    "events_table",
    "items_table",
    "pseudonyms",
    "session_keys",
    "users_table",
]

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
    item_availability=True,
    event_position=True,
    event_session=True,
)
_GENDER_P = (0.49, 0.48, 0.03)
_AGE_P = (0.06, 0.16, 0.24, 0.2, 0.15, 0.11, 0.08)
_REGION_P = (0.2, 0.1, 0.22, 0.08, 0.18, 0.12, 0.06, 0.04)
_TAGS_PER_CATEGORY = 6


@dataclass(frozen=True)
class Demographics:
    """Users' profiles as codes (a few bytes per user), and what they imply."""

    age: np.ndarray  # float64 [n], NaN where missing
    gender: np.ndarray  # int8 [n], -1 where missing
    region: np.ndarray  # int8 [n]
    segment: np.ndarray  # int32 [n], from the true (also hidden) gender and age
    device: np.ndarray  # int8 [n], usual device


def draw_demographics(rng: np.random.Generator, n: int, missing: float) -> Demographics:
    """Gender, age (years, uniform within an age band) and region of ``n`` users; for a share
    ``missing`` of them age and gender are withheld (null), their segment stays."""
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
    return Demographics(age, gender, region, segment, device)


def pseudonyms(pseudo: Pseudonymizer, n: int, block: int = 200_000) -> pa.Array:
    """Pseudonyms of raw ids ``u0000000``.., as one Arrow string array (32 B per user)."""
    width = max(7, len(str(n - 1)))
    parts = [
        pa.array(pseudo.many(f"u{i:0{width}d}" for i in range(lo, min(lo + block, n))))
        for lo in range(0, n, block)
    ]
    return pa.concat_arrays(parts)


def _codes_to_strings(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """Strings from int codes; a negative code becomes null."""
    mask = codes < 0
    return pa.array(names).take(pa.array(np.where(mask, 0, codes), mask=mask))


def users_table(user_ids: pa.Array, d: Demographics) -> pa.Table:
    return pa.Table.from_arrays(
        [
            user_ids,
            pa.array(d.age, mask=np.isnan(d.age)),
            _codes_to_strings(d.gender, GENDERS),
            _codes_to_strings(d.region, REGIONS),
        ],
        schema=arrow_schema("users", SYNTH_SCHEMA),
    )


def items_table(rng: np.random.Generator, world: World, windows: Windows | None = None) -> pa.Table:
    """Items ``i000000``..: category, 1-3 tags (mostly the category's own), price, title, and
    their window in the catalog (``windows``; none: all there all along)."""
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
    w = windows or Windows.always(n)
    return pa.Table.from_arrays(
        [
            pa.array(ids),
            pa.array([f"cat{c:03d}" for c in range(n_cat)]).take(pa.array(cat)),
            pa.ListArray.from_arrays(pa.array(offsets), tag_strings.take(pa.array(tags))),
            pa.array(price),
            pa.array([f"Item {i}" for i in range(n)]),
            pa.array(w.opens, pa.int64(), mask=w.opens == NO_START),
            pa.array(w.closes, pa.int64(), mask=w.closes == NO_END),
        ],
        schema=arrow_schema("items", SYNTH_SCHEMA),
    )


def session_keys(chunk: int, number: np.ndarray, salt: int) -> np.ndarray:
    """int64 [n] in [0, 2**63): opaque keys of chunk ``chunk``'s sessions ``number`` (their
    0-based numbers within it), as an import stores a site's session ids: a hash (splitmix64
    of the chunk and number, ``salt`` mixed in, its top bit dropped): two sessions share a key
    by a chance of 2**-63 per pair."""
    z = (np.uint64(chunk) << np.uint64(32)) + number.astype(np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64, as splitmix64 means it
        z = z + np.uint64(salt % (1 << 64)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)


def events_table(
    ev: EventArrays, user_ids: pa.Array, item_ids: pa.Array, schema: pa.Schema, sessions: np.ndarray
) -> pa.Table:
    """The Arrow table of a chunk's events, with exactly the stored schema; ``sessions``
    int64 [E] the events' session keys (:func:`session_keys`)."""
    return pa.Table.from_arrays(
        [
            user_ids.take(pa.array(ev.user)),
            item_ids.take(pa.array(ev.item)),
            pa.array(ev.timestamp, pa.int64()),
            pa.array(EVENT_KINDS).take(pa.array(ev.kind)),
            pa.array(ev.value, mask=np.isnan(ev.value)),
            pa.array(SURFACES).take(pa.array(ev.surface)),
            pa.array(DEVICES).take(pa.array(ev.device)),
            pa.array(ev.position, pa.int32()),
            pa.array(sessions, pa.int64()),
        ],
        schema=schema,
    )
