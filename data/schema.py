"""The three tables a website has — users, items, events — as Arrow schemas, and their checks.

A dataset is a directory::

    DATASET/
      dataset.json     name, format version, declared fields (``DatasetSchema``), key fingerprint
      users.parquet    user_id (pseudonym, string) + declared profile fields
      items.parquet    item_id (string) + declared metadata fields and, where the catalog
                       says when items can be shown (``item_availability``), available_from
                       and available_until (int64 unix seconds, nullable: no bound)
      events.parquet   user_id, item_id, timestamp (int64 unix seconds), type (a name: any
                       site's event type; its role is configuration), value (float64,
                       nullable), declared context fields (string, nullable), where
                       declared ``position`` (int32, the slot shown in) and ``session``
                       (int64, the keyed hash of the site's visit id), and, for data
                       imported already split, ``split`` in {"train", "valid", "test"}

Every entry point (fetch, import, synth, the API later) checks tables with
:func:`validate_table`; a bad one raises :class:`SchemaError` naming the file, the row
(1-based), the column and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tailored.config import EVENT_NAME, EVENT_TYPES
from tailored.errors import TailoredError

__all__ = [
    "AVAILABILITY",
    "EVENT_TYPES",
    "FIELD_KINDS",
    "SPLITS",
    "DatasetMeta",
    "DatasetSchema",
    "FieldSpec",
    "SchemaError",
    "arrow_schema",
    "read_dataset_meta",
    "validate_table",
    "write_dataset_meta",
]

FIELD_KINDS: tuple[str, ...] = ("categorical", "multi_categorical", "numeric", "text")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
# an item's window in the catalog: shown from available_from, until before available_until
AVAILABILITY: tuple[str, ...] = ("available_from", "available_until")
FORMAT_VERSION = 1

FieldKind = Literal["categorical", "multi_categorical", "numeric", "text"]
TableKind = Literal["users", "items", "events"]


class SchemaError(TailoredError, ValueError):
    """A table or file does not match tailored's schema; the message says where and why."""


@dataclass(frozen=True)
class FieldSpec:
    """One declared column: ``categorical`` (string), ``multi_categorical`` (list of
    strings, e.g. genres), ``numeric`` (float64) or ``text`` (string, e.g. a title; not a
    model feature)."""

    name: str
    kind: FieldKind

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise SchemaError(
                f"field {self.name!r}: kind {self.kind!r} is not one of {FIELD_KINDS}"
            )


@dataclass(frozen=True)
class DatasetSchema:
    """Which profile, metadata and context columns a dataset declares."""

    user_fields: tuple[FieldSpec, ...] = ()
    item_fields: tuple[FieldSpec, ...] = ()
    context_fields: tuple[str, ...] = ()
    # the items table has available_from / available_until (the catalog's launch and end)
    item_availability: bool = False
    # the events table has ``position``: the 0-based slot the item was shown in (an
    # impression's, and a click's or purchase's where the site logs it; null: not known)
    event_position: bool = False
    # the events table has ``session``: the keyed hash of the site's session (visit) id, int64
    # in [0, 2**63) (:meth:`~tailored.data.pseudonym.Pseudonymizer.session_keys`; null: none)
    event_session: bool = False

    def fields(self, table: TableKind) -> tuple[FieldSpec, ...]:
        if table == "users":
            return self.user_fields
        if table == "items":
            return self.item_fields
        return tuple(FieldSpec(c, "categorical") for c in self.context_fields)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DatasetSchema:
        return cls(
            user_fields=tuple(FieldSpec(f["name"], f["kind"]) for f in obj.get("user_fields", [])),
            item_fields=tuple(FieldSpec(f["name"], f["kind"]) for f in obj.get("item_fields", [])),
            context_fields=tuple(obj.get("context_fields", [])),
            item_availability=bool(obj.get("item_availability", False)),
            event_position=bool(obj.get("event_position", False)),
            event_session=bool(obj.get("event_session", False)),
        )


def _arrow_type(kind: str) -> pa.DataType:
    return {
        "categorical": pa.string(),
        "multi_categorical": pa.list_(pa.string()),
        "numeric": pa.float64(),
        "text": pa.string(),
    }[kind]


_KEY_COLUMNS: dict[str, list[pa.Field]] = {
    "users": [pa.field("user_id", pa.string(), nullable=False)],
    "items": [pa.field("item_id", pa.string(), nullable=False)],
    "events": [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
    ],
}


def arrow_schema(table: TableKind, schema: DatasetSchema, *, with_split: bool = False) -> pa.Schema:
    """The exact Arrow schema a ``users``, ``items`` or ``events`` table is stored with."""
    fields = list(_KEY_COLUMNS[table])
    fields += [pa.field(f.name, _arrow_type(f.kind)) for f in schema.fields(table)]
    if table == "items" and schema.item_availability:
        fields += [pa.field(name, pa.int64()) for name in AVAILABILITY]
    if table == "events" and schema.event_position:
        fields.append(pa.field("position", pa.int32()))
    if table == "events" and schema.event_session:
        fields.append(pa.field("session", pa.int64()))
    if table == "events" and with_split:
        fields.append(pa.field("split", pa.string(), nullable=False))
    return pa.schema(fields)


def _first_row(mask: pa.Array | pa.ChunkedArray) -> int:
    """Index of the first true entry of a boolean mask (nulls count as false)."""
    filled = pc.fill_null(mask, False)
    arr = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)
    return int(np.argmax(arr))


def _fail(source: str, row: int, column: str, what: str, row_offset: int) -> SchemaError:
    return SchemaError(f"{source}: row {row + 1 + row_offset}, column {column!r}: {what}")


def validate_table(
    table: pa.Table,
    kind: TableKind,
    schema: DatasetSchema,
    *,
    source: str,
    row_offset: int = 0,
    known_ids: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """Check ``table`` against the schema and return it cast to the stored Arrow types.

    ``source`` names the file in messages; ``row_offset`` is added to 1-based row numbers
    when a file is read in chunks. ``known_ids`` (``{"user_id": ..., "item_id": ...}``)
    makes events referring to unknown users or items an error. Raises :class:`SchemaError`.
    """
    with_split = kind == "events" and "split" in table.column_names
    target = arrow_schema(kind, schema, with_split=with_split)
    missing = [f.name for f in target if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing}; has {table.column_names}")
    extra = [c for c in table.column_names if c not in target.names]
    if extra:
        raise SchemaError(
            f"{source}: column(s) {extra} are not declared; declare them in the dataset schema "
            "or drop them"
        )
    columns = []
    for f in target:
        col = table.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            bad = _first_uncastable(col, f.type)
            raise _fail(
                source,
                bad,
                f.name,
                f"cannot read {_repr_at(col, bad)} as {f.type} ({e})",
                row_offset,
            ) from e
        if not f.nullable and col.null_count:
            raise _fail(source, _first_row(pc.is_null(col)), f.name, "is empty", row_offset)
        if pa.types.is_string(f.type) and f.name in ("user_id", "item_id") and len(col):
            empty = pc.equal(pc.utf8_length(col), 0)
            if pc.any(empty).as_py():
                raise _fail(source, _first_row(empty), f.name, "is an empty string", row_offset)
        if pa.types.is_floating(f.type) and len(col):
            bad_num = pc.invert(pc.is_finite(col))
            if pc.any(pc.fill_null(bad_num, False)).as_py():
                row = _first_row(bad_num)
                raise _fail(
                    source, row, f.name, f"{_repr_at(col, row)} is not a finite number", row_offset
                )
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=target)
    _check_rows(out, kind, source, row_offset, known_ids)
    return out


def _check_rows(
    t: pa.Table, kind: str, source: str, off: int, known: dict[str, pa.Array] | None
) -> None:
    if kind == "events" and t.num_rows:
        bad = pc.invert(pc.match_substring_regex(t.column("type"), f"^{EVENT_NAME.pattern}$"))
        if pc.any(bad).as_py():
            row = _first_row(bad)
            raise _fail(
                source,
                row,
                "type",
                f"{_repr_at(t.column('type'), row)} is not an event type name (a letter, then "
                "up to 63 letters, digits, '_', '.', ':' or '-'); rename it in the mapping's "
                "[events.types]",
                off,
            )
        neg = pc.less(t.column("timestamp"), 0)
        if pc.any(neg).as_py():
            raise _fail(source, _first_row(neg), "timestamp", "is negative", off)
        if "position" in t.column_names:
            neg = pc.fill_null(pc.less(t.column("position"), 0), False)
            if pc.any(neg).as_py():
                raise _fail(source, _first_row(neg), "position", "is negative", off)
        if "session" in t.column_names:
            neg = pc.fill_null(pc.less(t.column("session"), 0), False)
            if pc.any(neg).as_py():
                raise _fail(source, _first_row(neg), "session", "is negative (not a key)", off)
        if "split" in t.column_names:
            bad = pc.invert(pc.is_in(t.column("split"), value_set=pa.array(SPLITS)))
            if pc.any(bad).as_py():
                row = _first_row(bad)
                raise _fail(
                    source,
                    row,
                    "split",
                    f"{_repr_at(t.column('split'), row)} is not one of {SPLITS}",
                    off,
                )
        for key in ("user_id", "item_id"):
            if known and key in known:
                unknown = pc.invert(pc.is_in(t.column(key), value_set=known[key]))
                if pc.any(unknown).as_py():
                    row = _first_row(unknown)
                    raise _fail(
                        source,
                        row,
                        key,
                        f"refers to no row of the {'users' if key == 'user_id' else 'items'} table",
                        off,
                    )
    if kind == "items" and "available_from" in t.column_names and t.num_rows:
        start, end = t.column("available_from"), t.column("available_until")
        for name, col in (("available_from", start), ("available_until", end)):
            neg = pc.less(col, 0)
            if pc.any(pc.fill_null(neg, False)).as_py():
                raise _fail(source, _first_row(neg), name, "is negative", off)
        wrong = pc.less_equal(end, start)
        if pc.any(pc.fill_null(wrong, False)).as_py():
            row = _first_row(wrong)
            raise _fail(
                source,
                row,
                "available_until",
                f"{end[row].as_py()} is not after available_from ({start[row].as_py()})",
                off,
            )
    if kind in ("users", "items") and t.num_rows:
        key = "user_id" if kind == "users" else "item_id"
        col = t.column(key)
        if pc.count_distinct(col).as_py() != t.num_rows:
            counts = pc.value_counts(col)
            dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
            row = _first_row(pc.equal(col, dup))
            later = np.flatnonzero(pc.equal(col, dup).to_numpy(zero_copy_only=False))[1]
            raise _fail(source, int(later), key, f"duplicates row {row + 1 + off}", off)


def _first_uncastable(col: pa.ChunkedArray, typ: pa.DataType) -> int:
    values = col.to_pylist()
    for i, v in enumerate(values):
        try:
            pa.array([v]).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return i
    return 0


def _repr_at(col: pa.ChunkedArray | pa.Array, row: int) -> str:
    return repr(col[row].as_py())


@dataclass
class DatasetMeta:
    """The contents of ``dataset.json``. ``coarsening`` records the data minimisation done at
    import, ``{"users": {field: {what was done}}}`` (:func:`tailored.data.coarsen.coarsen_table`);
    empty when fields were kept exact."""

    name: str
    schema: DatasetSchema
    key_fingerprint: str
    presplit: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    coarsening: dict[str, dict[str, Any]] = field(default_factory=dict)
    event_types: dict[str, int] = field(default_factory=dict)  # events per type
    format_version: int = FORMAT_VERSION


def write_dataset_meta(directory: Path, meta: DatasetMeta) -> None:
    obj = asdict(meta)
    obj["schema"] = meta.schema.to_json()
    (directory / "dataset.json").write_text(json.dumps(obj, indent=2) + "\n")


def read_dataset_meta(directory: Path) -> DatasetMeta:
    path = directory / "dataset.json"
    if not path.is_file():
        raise SchemaError(f"{directory}: not a tailored dataset (no dataset.json)")
    try:
        obj = json.loads(path.read_text())
        if obj.get("format_version") != FORMAT_VERSION:
            raise SchemaError(
                f"{path}: format_version {obj.get('format_version')!r}, "
                f"this tailored reads {FORMAT_VERSION}"
            )
        return DatasetMeta(
            name=obj["name"],
            schema=DatasetSchema.from_json(obj["schema"]),
            key_fingerprint=obj["key_fingerprint"],
            presplit=bool(obj.get("presplit", False)),
            counts=dict(obj.get("counts", {})),
            source=obj.get("source", ""),
            coarsening=dict(obj.get("coarsening", {})),
            event_types=dict(obj.get("event_types", {})),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SchemaError(f"{path}: malformed ({e})") from e
