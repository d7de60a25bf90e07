"""Data minimisation: users' profile fields coarsened before anything is written.

A profile field a site keeps exactly (age 37, zip code 94043, occupation "lawyer") is a
*quasi-identifier*: alone it is harmless, together with two others it often singles a
person out. Coarsening keeps what personalization needs (an age band, a region) and drops
the rest, at import, so the exact value never reaches the dataset, the model or a bundle.

Three transforms, declared per field in the import mapping (:mod:`tailored.data.mapping`)
and applied in this order:

- ``bands = [18, 25, 35]``: a numeric field becomes a categorical label, ``"<18"``,
  ``"18-24"``, ``"25-34"``, ``"35+"`` (band ``[a, b)`` is written ``a-(b-1)`` when every
  edge is a whole number, as ages are; otherwise ``"[a, b)"``). ``quantiles = 5`` instead
  computes the edges from the data (its quintiles, rounded to two significant figures so
  that no edge is one user's exact value) and records them.
- ``prefix = 3``: a categorical field keeps its first 3 characters (zip code 94043 -> 940).
- ``min_count = 10``: values held by fewer than 10 users become one value, ``other``
  (joining a value already called so). Counted after the transform above, over the whole
  users table.

Missing values stay missing. The **default policy** (``coarsen = "default"`` for a field
or the whole ``[users]`` table, and ``tailored privacy report --coarsen default``) is
:func:`default_coarsening`:

=========================================  ==================================================
field                                      default
=========================================  ==================================================
numeric named ``age``                      bands 18, 25, 35, 45, 55, 65 (``"<18"`` ...
                                           ``"65+"``: the usual survey bands; the top band
                                           also hides the oldest, rarest ages)
other numeric                              5 bands at the data's quintiles
categorical named ``zip``, ``zipcode``,    first 3 characters (the US HIPAA Safe Harbor
``zip_code``, ``postcode``,                rule keeps no more of a zip code), then
``postal_code``                            ``min_count = 10``
other categorical (occupation, gender...)  ``min_count = 10``
``multi_categorical``, ``text``            unchanged: no sensible default; name them in
                                           the report to see what they reveal
=========================================  ==================================================

Why 10: the report's "small group" threshold is 5 (k-anonymity with k = 5); a value shared
by at least 10 users still leaves groups of 5 after one more binary split (e.g. gender).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tailored.data.schema import FieldKind, FieldSpec, SchemaError

__all__ = [
    "AGE_BANDS",
    "AGE_NAMES",
    "DEFAULT_MIN_COUNT",
    "DEFAULT_QUANTILES",
    "DEFAULT_ZIP_PREFIX",
    "ZIP_NAMES",
    "Coarsening",
    "CoarseningError",
    "band_labels",
    "coarsen_table",
    "default_coarsening",
    "default_policy",
]

AGE_NAMES: tuple[str, ...] = ("age",)
AGE_BANDS: tuple[float, ...] = (18, 25, 35, 45, 55, 65)
ZIP_NAMES: tuple[str, ...] = ("zip", "zipcode", "zip_code", "postcode", "postal_code")
DEFAULT_ZIP_PREFIX = 3
DEFAULT_MIN_COUNT = 10
DEFAULT_QUANTILES = 5


class CoarseningError(SchemaError):
    """A coarsening declaration does not fit its field; the caller adds the file and key."""


@dataclass(frozen=True)
class Coarsening:
    """How one profile field is coarsened. At most one of ``bands`` (edges, increasing),
    ``quantiles`` (number of bands) and ``prefix`` (characters kept); ``min_count`` (0: off)
    merges the values held by fewer users into ``other``."""

    field: str
    bands: tuple[float, ...] = ()
    quantiles: int = 0
    prefix: int = 0
    min_count: int = 0
    other: str = "other"

    def check(self, kind: FieldKind) -> None:
        """Raise :class:`CoarseningError` (without the file: the caller knows it) when the
        declaration is empty, contradictory or does not fit a field of ``kind``."""
        if kind in ("multi_categorical", "text"):
            raise CoarseningError(f"a {kind} field cannot be coarsened")
        if not (self.bands or self.quantiles or self.prefix or self.min_count):
            raise CoarseningError("declares nothing; give bands, quantiles, prefix or min_count")
        if sum(bool(x) for x in (self.bands, self.quantiles, self.prefix)) > 1:
            raise CoarseningError("give at most one of bands, quantiles and prefix")
        banded = bool(self.bands or self.quantiles)
        if banded and kind != "numeric":
            raise CoarseningError(f"bands and quantiles apply to numeric fields, not {kind}")
        if self.prefix and kind != "categorical":
            raise CoarseningError(f"prefix applies to categorical fields, not {kind}")
        if self.min_count and kind == "numeric" and not banded:
            raise CoarseningError(
                "min_count merges categorical values; give a numeric field bands first"
            )
        edges = self.bands
        if any(not math.isfinite(e) for e in edges):
            raise CoarseningError(f"bands {list(edges)} must be finite numbers")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise CoarseningError(f"bands {list(edges)} must be strictly increasing")
        if self.quantiles and not 2 <= self.quantiles <= 100:
            raise CoarseningError(f"quantiles must be 2 to 100, got {self.quantiles}")
        if self.prefix < 0:
            raise CoarseningError(
                f"prefix must be a positive number of characters, got {self.prefix}"
            )
        if self.min_count < 0 or self.min_count == 1:
            raise CoarseningError(f"min_count must be 2 or more, got {self.min_count}")
        if not self.other:
            raise CoarseningError("other must be a non-empty label")

    def stored_kind(self, kind: FieldKind) -> FieldKind:
        """The kind the field is stored as: a banded number becomes a categorical label."""
        return "categorical" if self.bands or self.quantiles else kind

    def to_json(self) -> dict[str, Any]:
        """The declaration, without its unset parts (as recorded in ``dataset.json``)."""
        out: dict[str, Any] = {}
        if self.bands:
            out["bands"] = [_plain(e) for e in self.bands]
        for key in ("quantiles", "prefix", "min_count"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.min_count:
            out["other"] = self.other
        return out

    def describe(self) -> str:
        """In words, for a report: ``"age: bands 18, 25, 35 (<18, 18-24, ...)"``."""
        parts = []
        if self.bands:
            parts.append("bands " + ", ".join(str(_plain(e)) for e in self.bands))
        if self.quantiles:
            parts.append(f"{self.quantiles} bands at the data's quantiles")
        if self.prefix:
            parts.append(f"first {self.prefix} characters")
        if self.min_count:
            parts.append(f"values held by fewer than {self.min_count} users -> {self.other!r}")
        return f"{self.field}: " + "; ".join(parts)


def default_coarsening(name: str, kind: FieldKind) -> Coarsening | None:
    """The default policy for one field (see the module's table); ``None`` for a kind that
    has no default (``multi_categorical``, ``text``)."""
    lower = name.lower()
    if kind == "numeric":
        if lower in AGE_NAMES:
            return Coarsening(name, bands=AGE_BANDS)
        return Coarsening(name, quantiles=DEFAULT_QUANTILES)
    if kind == "categorical":
        prefix = DEFAULT_ZIP_PREFIX if lower in ZIP_NAMES else 0
        return Coarsening(name, prefix=prefix, min_count=DEFAULT_MIN_COUNT)
    return None


def default_policy(fields: Sequence[FieldSpec]) -> tuple[Coarsening, ...]:
    """:func:`default_coarsening` of every field that has a default."""
    rules = (default_coarsening(f.name, f.kind) for f in fields)
    return tuple(r for r in rules if r is not None)


def band_labels(edges: Sequence[float]) -> list[str]:
    """One label per band: ``len(edges) + 1`` of them, from "below the first edge" to
    "the last edge and above". Whole-number edges read as ages do (``"25-34"``)."""
    if not edges:
        return ["all"]
    whole = all(float(e).is_integer() for e in edges)
    shown = [str(_plain(e)) for e in edges]
    labels = [f"<{shown[0]}"]
    for i in range(len(edges) - 1):
        if whole:
            labels.append(f"{shown[i]}-{int(edges[i + 1]) - 1}")
        else:
            labels.append(f"[{shown[i]}, {shown[i + 1]})")
    labels.append(f"{shown[-1]}+" if whole else f">={shown[-1]}")
    return labels


def coarsen_table(
    table: pa.Table, rules: Sequence[Coarsening], kinds: Mapping[str, FieldKind]
) -> tuple[pa.Table, dict[str, dict[str, Any]]]:
    """Apply ``rules`` to the columns they name and return the table and, per field, what
    was done (the declaration, computed band edges, how many distinct values and users
    were merged into ``other``: counts only, never the rare values themselves).

    ``kinds`` gives each field's declared kind; a banded column comes back as strings.
    Raises :class:`CoarseningError` for a rule that does not fit its column.
    """
    record: dict[str, dict[str, Any]] = {}
    for rule in rules:
        if rule.field not in table.column_names or rule.field not in kinds:
            raise CoarseningError(
                f"no profile field {rule.field!r} to coarsen; fields: {list(kinds)}"
            )
        kind = kinds[rule.field]
        try:
            rule.check(kind)
        except CoarseningError as e:
            raise CoarseningError(f"field {rule.field!r}: {e}") from None
        col = table.column(rule.field).combine_chunks()
        col, done = _coarsen_column(col, rule)
        done = {**rule.to_json(), **done, "declared_kind": kind}
        table = table.set_column(table.schema.get_field_index(rule.field), rule.field, col)
        record[rule.field] = done
    return table, record


def _coarsen_column(col: pa.Array, rule: Coarsening) -> tuple[pa.Array, dict[str, Any]]:
    done: dict[str, Any] = {}
    if rule.bands or rule.quantiles:
        values = pc.cast(col, pa.float64())
        bad = pc.invert(pc.is_finite(values))
        if pc.any(pc.fill_null(bad, False)).as_py():
            row = int(np.argmax(pc.fill_null(bad, False).to_numpy(zero_copy_only=False)))
            raise CoarseningError(
                f"row {row + 1}, field {rule.field!r}: {values[row].as_py()!r} is not a finite "
                "number, so it has no band"
            )
        edges = rule.bands or _quantile_edges(values, rule.quantiles)
        if rule.quantiles:
            done["bands"] = [_plain(e) for e in edges]
        col = _band(values, edges)
    elif rule.prefix:
        col = pc.utf8_slice_codeunits(pc.cast(col, pa.string()), 0, rule.prefix)
    if rule.min_count:
        col, values_merged, users_merged = _merge_rare(col, rule.min_count, rule.other)
        done.update(merged_values=values_merged, merged_users=users_merged)
    return col, done


def _band(values: pa.Array, edges: Sequence[float]) -> pa.Array:
    """Each value's band label (null stays null): ``searchsorted(..., "right")`` puts a
    value equal to an edge in the band that edge opens."""
    labels = pa.array(band_labels(edges), pa.string())
    filled = pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False)
    idx = np.searchsorted(np.asarray(edges, np.float64), filled, side="right")
    banded = labels.take(pa.array(idx, pa.int32()))
    return pc.if_else(pc.is_null(values), pa.scalar(None, pa.string()), banded)


def _quantile_edges(values: pa.Array, bands: int) -> tuple[float, ...]:
    """Inner quantile edges of the non-missing values, two significant figures, distinct."""
    present = values.drop_null().to_numpy(zero_copy_only=False)
    if not len(present):
        return ()
    qs = np.quantile(present, np.arange(1, bands) / bands)
    rounded = sorted({_two_figures(float(q)) for q in qs})
    return tuple(rounded)


def _merge_rare(col: pa.Array, min_count: int, other: str) -> tuple[pa.Array, int, int]:
    """Values held by fewer than ``min_count`` rows -> ``other``; returns the column, the
    number of distinct values merged and the number of rows that changed."""
    col = pc.cast(col, pa.string())
    counts = pc.value_counts(col.drop_null())
    n = counts.field("counts").to_numpy(zero_copy_only=False)
    # ``other`` itself, if rare, has nowhere else to go
    rare_mask = (n < min_count) & (counts.field("values").to_numpy(zero_copy_only=False) != other)
    rare = counts.field("values").filter(pa.array(rare_mask))
    if not len(rare):
        return col, 0, 0
    hit = pc.fill_null(pc.is_in(col, value_set=rare), False)
    merged = pc.if_else(hit, pa.scalar(other, pa.string()), col)
    return merged, len(rare), int(n[rare_mask].sum())


def _two_figures(x: float) -> float:
    if x == 0:
        return 0.0
    return round(x, 1 - math.floor(math.log10(abs(x))))


def _plain(x: float) -> float | int:
    """``18.0`` -> ``18`` for labels and JSON; other numbers as they are."""
    return int(x) if float(x).is_integer() else float(x)
