"""The column mapping of ``tailored data import``: a TOML file, loaded and checked once.

A mapping says which of the user's files and columns become tailored's ``users``, ``items``
and ``events`` tables (see :mod:`tailored.data.schema`)::

    name = "my-shop"
    [users]                          # optional: else the distinct users of the events
    file = "users.csv"               # .csv, .tsv or .parquet; relative to this file
    id = "uid"
    [users.fields]
    age = { column = "age", kind = "numeric" }
    zip = { column = "zipcode", kind = "categorical" }
    [users.coarsen]                  # optional: data minimisation (tailored.data.coarsen)
    age = { bands = [18, 25, 35, 45, 55, 65] }   # -> "<18", "18-24", ..., "65+"
    zip = { prefix = 3, min_count = 10 }         # 94043 -> "940"; rare ones -> "other"
    [items]                          # optional: else the distinct items of the events
    file = "items.parquet"
    id = "movie_id"
    available_from = "launched"      # optional: when an item may first be shown, and until
    available_until = "withdrawn"    # when (blank: no bound); time_format as the events'
    [items.fields]
    genres = { column = "genres", kind = "multi_categorical", separator = "|" }
    [events]
    file = "ratings.csv"             # or train = ..., valid = ..., test = ... (pre-split)
    user = "uid"
    item = "movie_id"
    timestamp = "ts"
    timestamp_format = "unix"        # "unix" (seconds), "unix_ms" or "iso" (ISO-8601)
    type = "event_type"              # a column, or type_constant = "rating"
    value = "rating"                 # optional
    position = "slot"                # optional: the 0-based slot the item was shown in
    session = "session_id"           # optional: the visit the event belongs to (stored as
                                     # a keyed hash of it, never as given)
    [events.types]                   # optional: the file's type name = the stored name,
    ProductView = "view"             # or false to leave those events out
    AddToCart = "add_to_cart"
    debug_ping = false
    [events.context]
    surface = "page"                 # context name = column (stored as strings)

An event type is any name (its role, positive, exposure, negative or ignored, is training
configuration: ``[data.events]``). Every table also takes ``delimiter`` (CSV only; default
``,``, and tab for ``.tsv``) and ``null_values``, the cells of its file that mean "missing"
(``null_values = ["unknown", "V"]``; a blank cell always does); a field takes its own
``null_values`` too.
``[users]`` also takes ``coarsen = "default"`` (the default policy for every field; see
:mod:`tailored.data.coarsen`), or a ``[users.coarsen]`` table whose entries are
``"default"`` or ``{ bands = [...] | quantiles = N | prefix = N, min_count = N, other = "..." }``.
A mistake raises :class:`MappingError` naming the file and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from tailored.config import EVENT_NAME
from tailored.data.coarsen import Coarsening, CoarseningError, default_coarsening
from tailored.data.schema import (
    FIELD_KINDS,
    SPLITS,
    DatasetSchema,
    FieldKind,
    FieldSpec,
    SchemaError,
)
from tailored.errors import ConfigError

__all__ = [
    "TIMESTAMP_FORMATS",
    "EntityMapping",
    "EventsMapping",
    "FieldMapping",
    "ImportMapping",
    "MappingError",
    "SourceFile",
    "load_mapping",
]

TIMESTAMP_FORMATS: tuple[str, ...] = ("unix", "unix_ms", "iso")
TimestampFormat = Literal["unix", "unix_ms", "iso"]
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENT_COLUMNS = (
    "user_id",
    "item_id",
    "timestamp",
    "type",
    "value",
    "position",
    "session",
    "split",
)
_EVENTS_KEYS = ("file", *SPLITS, "delimiter", "user", "item", "timestamp", "timestamp_format")
_EVENTS_KEYS += ("type", "type_constant", "value", "position", "session", "context", "types")
_EVENTS_KEYS += ("null_values",)


class MappingError(SchemaError, ConfigError):
    """The mapping file is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class SourceFile:
    """One input file: ``path`` resolved, ``label`` as written in the mapping (for messages)."""

    path: Path
    label: str
    format: Literal["csv", "parquet"]
    delimiter: str = ","


@dataclass(frozen=True)
class FieldMapping:
    """Column ``column`` of the user's file becomes field ``name`` of kind ``kind``;
    ``separator`` splits a ``multi_categorical`` string (a Parquet list column needs none)."""

    name: str
    column: str
    kind: FieldKind
    separator: str = "|"
    null_values: tuple[str, ...] = ()  # cells of this column that mean "missing"

    @property
    def spec(self) -> FieldSpec:
        return FieldSpec(self.name, self.kind)


@dataclass(frozen=True)
class EntityMapping:
    """The ``[users]`` or ``[items]`` table: a file, its id column, its declared fields and
    (users only) how fields are coarsened at import."""

    file: SourceFile
    id: str
    fields: tuple[FieldMapping, ...] = ()
    coarsen: tuple[Coarsening, ...] = ()
    null_values: tuple[str, ...] = ()  # cells of the file that mean "missing"
    # items: the columns of the catalog's availability window, and their time format
    available_from: str | None = None
    available_until: str | None = None
    time_format: TimestampFormat = "unix"

    @property
    def has_window(self) -> bool:
        return self.available_from is not None or self.available_until is not None

    def nulls(self) -> dict[str, tuple[str, ...]]:
        """Column -> the cells read as missing there (the file's and the field's own)."""
        return {f.column: (*self.null_values, *f.null_values) for f in self.fields}

    def specs(self) -> tuple[FieldSpec, ...]:
        """The fields as stored: a banded number is stored as a categorical label."""
        rules = {r.field: r for r in self.coarsen}
        return tuple(
            FieldSpec(f.name, rules[f.name].stored_kind(f.kind)) if f.name in rules else f.spec
            for f in self.fields
        )


@dataclass(frozen=True)
class EventsMapping:
    """The ``[events]`` table: ``files`` pairs a split (``None`` when not pre-split) with a file.
    Exactly one of ``type`` (a column) and ``type_constant`` is set."""

    files: tuple[tuple[str | None, SourceFile], ...]
    user: str
    item: str
    timestamp: str
    timestamp_format: TimestampFormat = "unix"
    type: str | None = None
    type_constant: str | None = None
    value: str | None = None
    position: str | None = None  # the 0-based slot the item was shown in
    session: str | None = None  # the site's session (visit) id; stored as its keyed hash
    context: tuple[tuple[str, str], ...] = ()
    # the file's type name -> the stored one, or None: those events are left out
    types: tuple[tuple[str, str | None], ...] = ()
    null_values: tuple[str, ...] = ()

    @property
    def presplit(self) -> bool:
        return self.files[0][0] is not None


@dataclass(frozen=True)
class ImportMapping:
    """A whole mapping; ``origin`` is the mapping file it came from."""

    name: str
    events: EventsMapping
    users: EntityMapping | None = None
    items: EntityMapping | None = None
    origin: Path = Path("mapping.toml")

    def schema(self) -> DatasetSchema:
        """The dataset schema the import declares."""
        return DatasetSchema(
            user_fields=self.users.specs() if self.users else (),
            item_fields=self.items.specs() if self.items else (),
            context_fields=tuple(name for name, _ in self.events.context),
            item_availability=self.items is not None and self.items.has_window,
            event_position=self.events.position is not None,
            event_session=self.events.session is not None,
        )


def load_mapping(path: Path) -> ImportMapping:
    """Read and check a mapping file; raises :class:`MappingError` naming the key."""
    path = Path(path)
    try:
        obj = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MappingError(f"{path}: cannot read the mapping ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise MappingError(f"{path}: not valid TOML ({e})") from e
    return _Loader(path).mapping(obj)


class _Loader:
    """Turns the parsed TOML into dataclasses; each error names ``[table] key``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, what: str) -> MappingError:
        return MappingError(
            f"{self.path.name}: [{where}] {what}" if where else f"{self.path.name}: {what}"
        )

    def keys(self, obj: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
        for k in obj:
            if k not in allowed:
                raise self.fail(where, f"unknown key {k!r}; expected one of {allowed}")

    def text(self, obj: dict[str, Any], where: str, key: str, default: str | None = None) -> str:
        """A required non-empty string (``default`` when absent, if given)."""
        value = self.optional(obj, where, key, default)
        if value is None:
            raise self.fail(where, f"{key} is required")
        return value

    def optional(
        self, obj: dict[str, Any], where: str, key: str, default: str | None = None
    ) -> str | None:
        value = obj.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.fail(where, f"{key} must be a non-empty string, got {value!r}")
        return value

    def table(self, obj: dict[str, Any], key: str) -> dict[str, Any] | None:
        value = obj.get(key)
        if value is not None and not isinstance(value, dict):
            raise self.fail("", f"{key} must be a table ([{key}]), got {value!r}")
        return value

    def mapping(self, obj: dict[str, Any]) -> ImportMapping:
        self.keys(obj, "", ("name", "users", "items", "events"))
        name = self.text(obj, "", "name")
        if not _NAME.match(name):
            raise self.fail("", f"name {name!r} must be letters, digits, '.', '_' or '-'")
        events = self.table(obj, "events")
        if events is None:
            raise self.fail("", "an [events] table is required")
        users, items = self.table(obj, "users"), self.table(obj, "items")
        return ImportMapping(
            name=name,
            events=self.events(events),
            users=self.entity(users, "users", "user_id") if users is not None else None,
            items=self.entity(items, "items", "item_id") if items is not None else None,
            origin=self.path,
        )

    def source(self, obj: dict[str, Any], where: str, key: str) -> SourceFile:
        label = self.text(obj, where, key)
        fmt = _SUFFIXES.get(Path(label).suffix.lower())
        if fmt is None:
            raise self.fail(where, f"{key} {label!r}: use a .csv, .tsv or .parquet file")
        default = "\t" if label.lower().endswith(".tsv") else ","
        delimiter = self.text(obj, where, "delimiter", default)
        if len(delimiter) != 1:
            raise self.fail(where, f"delimiter must be one character, got {delimiter!r}")
        path = (self.path.parent / Path(label).expanduser()).resolve()
        return SourceFile(path, label, cast(Literal["csv", "parquet"], fmt), delimiter)

    def entity(self, obj: dict[str, Any], where: str, key_column: str) -> EntityMapping:
        if where != "users" and "coarsen" in obj:
            raise self.fail(where, "coarsen applies to [users] only (profile fields)")
        allowed = ("file", "id", "delimiter", "fields", "null_values")
        window = ("available_from", "available_until", "time_format")
        self.keys(obj, where, (*allowed, "coarsen") if where == "users" else (*allowed, *window))
        fmt = self.text(obj, where, "time_format", "unix")
        if fmt not in TIMESTAMP_FORMATS:
            raise self.fail(where, f"time_format {fmt!r} is not one of {TIMESTAMP_FORMATS}")
        fields_obj = obj.get("fields", {})
        if not isinstance(fields_obj, dict):
            raise self.fail(where, "fields must be a table")
        fields = tuple(
            self.field(f"{where}.fields.{n}", n, spec, key_column) for n, spec in fields_obj.items()
        )
        coarsen = self.coarsen(obj["coarsen"], fields) if "coarsen" in obj else ()
        return EntityMapping(
            self.source(obj, where, "file"),
            self.text(obj, where, "id"),
            fields,
            coarsen,
            self.null_values(obj, where),
            self.optional(obj, where, "available_from"),
            self.optional(obj, where, "available_until"),
            cast(TimestampFormat, fmt),
        )

    def null_values(self, obj: dict[str, Any], where: str) -> tuple[str, ...]:
        values = obj.get("null_values", [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise self.fail(where, f"null_values must be a list of strings, got {values!r}")
        return tuple(values)

    def coarsen(self, obj: Any, fields: tuple[FieldMapping, ...]) -> tuple[Coarsening, ...]:
        """``"default"`` (every field that has a default) or a table, one entry per field."""
        kinds = {f.name: f.kind for f in fields}
        if obj == "default":
            rules = (default_coarsening(name, kind) for name, kind in kinds.items())
            return tuple(r for r in rules if r is not None)
        if not isinstance(obj, dict):
            raise self.fail(
                "users", f'coarsen must be "default" or a table ([users.coarsen]), got {obj!r}'
            )
        return tuple(self.coarsening(f"users.coarsen.{n}", n, v, kinds) for n, v in obj.items())

    def coarsening(
        self, where: str, name: str, spec: Any, kinds: dict[str, FieldKind]
    ) -> Coarsening:
        if name not in kinds:
            raise self.fail(where, f"no field {name!r} in [users.fields]; declared: {list(kinds)}")
        kind = kinds[name]
        if spec == "default":
            rule = default_coarsening(name, kind)
            if rule is None:
                raise self.fail(where, f"there is no default coarsening for a {kind} field")
            return rule
        if not isinstance(spec, dict):
            raise self.fail(where, f'write "default" or {{ bands = [...] }} etc., got {spec!r}')
        self.keys(spec, where, ("bands", "quantiles", "prefix", "min_count", "other"))
        bands = spec.get("bands", [])
        if not isinstance(bands, list) or not all(
            isinstance(e, int | float) and not isinstance(e, bool) for e in bands
        ):
            raise self.fail(where, f"bands must be a list of numbers, got {bands!r}")
        if "bands" in spec and not bands:
            raise self.fail(where, "bands must name at least one edge")
        counts = {}
        for key in ("quantiles", "prefix", "min_count"):
            value = spec.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or (key in spec and value < 1):
                raise self.fail(where, f"{key} must be a positive whole number, got {value!r}")
            counts[key] = value
        other = self.text(spec, where, "other", "other")
        rule = Coarsening(name, bands=tuple(float(e) for e in bands), other=other, **counts)
        try:
            rule.check(kind)
        except CoarseningError as e:
            raise self.fail(where, f"{e} (field {name!r} is {kind})") from None
        return rule

    def field(self, where: str, name: str, spec: Any, key_column: str) -> FieldMapping:
        if not _FIELD.match(name) or name == key_column:
            raise self.fail(
                where, f"field name {name!r} must be an identifier other than {key_column!r}"
            )
        if not isinstance(spec, dict):
            raise self.fail(where, 'write { column = "...", kind = "..." }')
        self.keys(spec, where, ("column", "kind", "separator", "null_values"))
        column = self.text(spec, where, "column", name)
        kind = self.text(spec, where, "kind")
        if kind not in FIELD_KINDS:
            raise self.fail(where, f"kind {kind!r} is not one of {FIELD_KINDS}")
        separator = self.optional(spec, where, "separator")
        if separator is not None and kind != "multi_categorical":
            raise self.fail(where, "separator applies only to kind 'multi_categorical'")
        return FieldMapping(
            name, column, cast(FieldKind, kind), separator or "|", self.null_values(spec, where)
        )

    def events(self, obj: dict[str, Any]) -> EventsMapping:
        w = "events"
        self.keys(obj, w, _EVENTS_KEYS)
        split_keys = [s for s in SPLITS if s in obj]
        if "file" in obj and split_keys:
            raise self.fail(w, "give either file or train/valid/test (pre-split), not both")
        if "file" not in obj and not split_keys:
            raise self.fail(w, "give file, or train/valid/test for pre-split events")
        if split_keys and "train" not in split_keys:
            raise self.fail(w, "a pre-split import needs at least train")
        files: tuple[tuple[str | None, SourceFile], ...] = (
            tuple((s, self.source(obj, w, s)) for s in split_keys)
            if split_keys
            else ((None, self.source(obj, w, "file")),)
        )
        fmt = self.text(obj, w, "timestamp_format", "unix")
        if fmt not in TIMESTAMP_FORMATS:
            raise self.fail(w, f"timestamp_format {fmt!r} is not one of {TIMESTAMP_FORMATS}")
        type_col = self.optional(obj, w, "type")
        constant = self.optional(obj, w, "type_constant")
        if (type_col is None) == (constant is None):
            raise self.fail(w, "give exactly one of type (a column) and type_constant")
        if constant is not None and not EVENT_NAME.fullmatch(constant):
            raise self.fail(w, f"type_constant {constant!r} is not an event type name")
        session = self.optional(obj, w, "session")
        context = self.context(obj.get("context", {}))
        for name, column in context:  # stored as given there, which a session id must not be
            if column == session:
                raise self.fail(
                    f"events.context.{name}",
                    f"column {column!r} is the session's; a session id is stored only as its "
                    "keyed hash ([events] session), never as a context value",
                )
        return EventsMapping(
            files=files,
            user=self.text(obj, w, "user"),
            item=self.text(obj, w, "item"),
            timestamp=self.text(obj, w, "timestamp"),
            timestamp_format=cast(TimestampFormat, fmt),
            type=type_col,
            type_constant=constant,
            value=self.optional(obj, w, "value"),
            position=self.optional(obj, w, "position"),
            session=session,
            context=context,
            types=self.types(obj.get("types", {})),
            null_values=self.null_values(obj, w),
        )

    def types(self, obj: Any) -> tuple[tuple[str, str | None], ...]:
        """``[events.types]``: each file type name -> a stored name, or false (left out)."""
        if not isinstance(obj, dict):
            raise self.fail("events", "types must be a table ([events.types])")
        out: list[tuple[str, str | None]] = []
        for name, to in obj.items():
            where = f"events.types.{name}"
            if to is False:
                out.append((name, None))
            elif isinstance(to, str) and EVENT_NAME.fullmatch(to):
                out.append((name, to))
            else:
                raise self.fail(
                    where,
                    f"write the stored type's name (a letter, then letters, digits, '_', '.', "
                    f"':' or '-') or false to leave these events out, got {to!r}",
                )
        return tuple(out)

    def context(self, obj: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(obj, dict):
            raise self.fail("events", "context must be a table ([events.context])")
        out = []
        for name in obj:
            if not _FIELD.match(name) or name in _EVENT_COLUMNS:
                raise self.fail(
                    f"events.context.{name}",
                    f"context name {name!r} must be an identifier other than {_EVENT_COLUMNS}",
                )
            out.append((name, self.text(obj, f"events.context.{name}", name)))
        return tuple(out)
