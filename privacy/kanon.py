"""k-anonymity of a dataset's users: how small the smallest crowd is.

Users who share the same values of some profile fields (the *quasi-identifiers*: age,
gender, occupation, zip code...) form a group; someone who knows a person's values can
narrow them down to that group and no further. ``k`` is the size of the smallest group:
``k = 1`` means at least one user is singled out by those fields alone. A dataset is
"k-anonymous" for the quasi-identifiers when every group holds at least k users.

:func:`k_anonymity` computes, for a users table, k and the users in groups smaller than a
``threshold`` (default 5) for the full combination of quasi-identifiers and for its
sub-combinations (all of them up to :data:`EXHAUSTIVE_UP_TO` fields; else every single
field, every pair, every combination missing one field), and which fields *drive* it: the
same figures with each field dropped, and with each field alone given the default
coarsening (:mod:`tailored.data.coarsen`). :func:`privacy_report` does this for a stored
dataset, as stored and, optionally, after the default coarsening.

A missing value counts as a value (an attacker sees that it is missing too); a list
(``multi_categorical``) counts as the set of its values.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tailored.data.coarsen import coarsen_table, default_coarsening, default_policy
from tailored.data.schema import DatasetMeta, FieldKind, read_dataset_meta
from tailored.data.store import read_table
from tailored.errors import TailoredError
from tailored.paths import dataset_dir

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXHAUSTIVE_UP_TO",
    "Driver",
    "GroupStats",
    "KAnonymity",
    "KAnonymityError",
    "PrivacyReport",
    "group_stats",
    "k_anonymity",
    "privacy_report",
]

DEFAULT_THRESHOLD = 5
EXHAUSTIVE_UP_TO = 6  # 2^6 - 1 = 63 combinations; beyond, a bounded selection


class KAnonymityError(TailoredError, ValueError):
    """The report cannot be made: not a dataset, no profile fields, an unknown field."""


@dataclass(frozen=True)
class GroupStats:
    """Users grouped by ``fields``: the smallest group (``k``), the number of groups, and the
    users (count and share of all users) in groups smaller than the threshold."""

    fields: tuple[str, ...]
    k: int
    groups: int
    users_below: int
    share_below: float


@dataclass(frozen=True)
class Driver:
    """What one field does to the full combination: the figures without it, and with it
    alone coarsened by the default policy (``None`` where it has no default or the report
    is already of coarsened data)."""

    field: str
    dropped: GroupStats
    coarsened: GroupStats | None


@dataclass(frozen=True)
class KAnonymity:
    """k-anonymity of ``users`` users for ``quasi_identifiers``. ``subsets`` are ordered by
    number of fields, then by the order of the quasi-identifiers; ``drivers`` by how many
    users the field puts in small groups, the strongest first."""

    users: int
    quasi_identifiers: tuple[str, ...]
    threshold: int
    full: GroupStats
    subsets: tuple[GroupStats, ...]
    drivers: tuple[Driver, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrivacyReport:
    """A dataset's k-anonymity as stored and (``coarsened``) after the default policy;
    ``coarsening`` is what that policy did per field, ``at_import`` what the import did."""

    dataset: str
    path: Path
    as_stored: KAnonymity
    coarsened: KAnonymity | None = None
    coarsening: dict[str, dict[str, Any]] | None = None
    at_import: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "path": str(self.path),
            "users": self.as_stored.users,
            "quasi_identifiers": list(self.as_stored.quasi_identifiers),
            "threshold": self.as_stored.threshold,
            "coarsened_at_import": self.at_import or {},
            "as_stored": self.as_stored.to_json(),
            "coarsening": self.coarsening,
            "coarsened": self.coarsened.to_json() if self.coarsened else None,
        }


def group_stats(table: pa.Table, fields: Sequence[str], threshold: int) -> GroupStats:
    """Group the rows of ``table`` by ``fields`` (no fields: one group of everyone)."""
    n = table.num_rows
    if not fields:
        sizes = np.array([n] if n else [], np.int64)
    else:
        counts = table.select(list(fields)).group_by(list(fields)).aggregate([([], "count_all")])
        sizes = counts.column("count_all").to_numpy()
    below = int(sizes[sizes < threshold].sum())
    return GroupStats(
        fields=tuple(fields),
        k=int(sizes.min()) if len(sizes) else 0,
        groups=len(sizes),
        users_below=below,
        share_below=below / n if n else 0.0,
    )


def k_anonymity(
    users: pa.Table,
    quasi_identifiers: Sequence[str],
    *,
    threshold: int = DEFAULT_THRESHOLD,
    kinds: dict[str, FieldKind] | None = None,
) -> KAnonymity:
    """k-anonymity of ``users`` (one row per user) for ``quasi_identifiers``.

    ``kinds`` (field -> declared kind) enables the "coarsened by default" driver; leave it
    out for data already coarsened. Raises :class:`KAnonymityError` for an unknown field or
    a threshold below 1.
    """
    qi = tuple(quasi_identifiers)
    if threshold < 1:
        raise KAnonymityError(f"threshold must be 1 or more, got {threshold}")
    if not qi:
        raise KAnonymityError("name at least one quasi-identifier")
    unknown = [f for f in qi if f not in users.column_names or f in ("user_id",)]
    if unknown:
        known = [c for c in users.column_names if c != "user_id"]
        raise KAnonymityError(f"no profile field(s) {unknown}; the users have {known}")
    table = _groupable(users.select(list(qi)))
    subsets = tuple(group_stats(table, s, threshold) for s in _subsets(qi))
    full = subsets[-1]
    drivers = [
        Driver(
            field=f,
            dropped=group_stats(table, [g for g in qi if g != f], threshold),
            coarsened=_coarsened_alone(users, qi, f, kinds, threshold) if kinds else None,
        )
        for f in qi
    ]
    drivers.sort(key=lambda d: (d.dropped.users_below, -d.dropped.k))
    return KAnonymity(users.num_rows, qi, threshold, full, subsets, tuple(drivers))


def privacy_report(
    dataset: str | Path,
    quasi_identifiers: Sequence[str] | None = None,
    *,
    coarsen: Literal["default"] | None = None,
    threshold: int = DEFAULT_THRESHOLD,
) -> PrivacyReport:
    """k-anonymity of a stored dataset's users (a path, or a name under
    ``$TAILORED_HOME/datasets``) for ``quasi_identifiers`` (default: every profile field),
    and, with ``coarsen="default"``, the same after the default coarsening of those fields.
    Raises :class:`KAnonymityError` naming what is wrong."""
    path = dataset_dir(dataset)
    meta, users = _load_users(path)
    kinds = {f.name: f.kind for f in meta.schema.user_fields}
    qi = _choose(quasi_identifiers, kinds, path)
    as_stored = k_anonymity(users, qi, threshold=threshold, kinds=kinds)
    report = PrivacyReport(meta.name, path, as_stored, at_import=meta.coarsening.get("users"))
    if coarsen is None:
        return report
    if coarsen != "default":
        raise KAnonymityError(f'--coarsen {coarsen!r}: the only policy is "default"')
    rules = default_policy([f for f in meta.schema.user_fields if f.name in qi])
    coarse, done = coarsen_table(users, rules, kinds)
    after = k_anonymity(coarse, qi, threshold=threshold)
    return PrivacyReport(meta.name, path, as_stored, after, done, report.at_import)


def _load_users(path: Path) -> tuple[DatasetMeta, pa.Table]:
    try:
        meta = read_dataset_meta(path)
        users = read_table(path, "users")
    except TailoredError as e:
        raise KAnonymityError(str(e)) from e
    except (pa.ArrowException, OSError) as e:
        raise KAnonymityError(f"{path}/users.parquet: not readable ({e})") from e
    if not meta.schema.user_fields:
        raise KAnonymityError(
            f"{path}: the users have no profile fields (only user_id), so there is nothing "
            "to re-identify them by; import a [users] table with fields to report on"
        )
    missing = [f.name for f in meta.schema.user_fields if f.name not in users.column_names]
    if missing:
        raise KAnonymityError(f"{path}/users.parquet: declared field(s) {missing} are missing")
    if not users.num_rows:
        raise KAnonymityError(f"{path}: the users table is empty")
    return meta, users


def _choose(
    named: Sequence[str] | None, kinds: dict[str, FieldKind], path: Path
) -> tuple[str, ...]:
    if named is None:
        return tuple(kinds)
    unknown = [f for f in named if f not in kinds]
    if unknown:
        raise KAnonymityError(
            f"{path}: no profile field(s) {unknown}; the users have {list(kinds)}"
        )
    twice = sorted({f for f in named if list(named).count(f) > 1})
    if twice:
        raise KAnonymityError(f"quasi-identifier(s) {twice} named more than once")
    if not named:
        raise KAnonymityError("name at least one quasi-identifier")
    return tuple(named)


def _subsets(qi: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every combination when there are few fields; else the single fields, the pairs and
    the combinations missing one field (what "drives it" needs). The full one is last."""
    n = len(qi)
    sizes = range(1, n + 1) if n <= EXHAUSTIVE_UP_TO else sorted({1, 2, n - 1, n})
    return [c for size in sizes for c in itertools.combinations(qi, size)]


def _groupable(table: pa.Table) -> pa.Table:
    """Lists (which Arrow cannot group by) become their sorted values joined by a control
    character; other columns as they are."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            joined = pc.binary_join(_sorted_lists(table.column(i)), "\x1f")
            table = table.set_column(i, f.name, joined)
    return table


def _sorted_lists(col: pa.ChunkedArray) -> pa.Array:
    return pa.array(
        [None if v is None else sorted(set(v)) for v in col.to_pylist()], pa.list_(pa.string())
    )


def _coarsened_alone(
    users: pa.Table,
    qi: tuple[str, ...],
    field: str,
    kinds: dict[str, FieldKind],
    threshold: int,
) -> GroupStats | None:
    rule = default_coarsening(field, kinds[field]) if field in kinds else None
    if rule is None:
        return None
    coarse, _ = coarsen_table(users.select(list(qi)), [rule], kinds)
    return group_stats(_groupable(coarse), qi, threshold)
