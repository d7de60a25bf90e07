"""``tailored data import``: the user's own CSV or Parquet files, through a column mapping.

Files are read in chunks (CSV block by block with :func:`pyarrow.csv.open_csv`, Parquet batch
by batch), renamed and converted to tailored's schema, user ids pseudonymized (session ids,
where mapped, stored as keyed hashes), and written by
:class:`~tailored.data.store.DatasetWriter`, which checks every table and moves the dataset
into place only when all of it was written. Any bad input raises
:class:`~tailored.data.schema.SchemaError` naming the file, the 1-based data row (header
excluded), the user's column and what is wrong; nothing half-written is left behind.

Profile fields the mapping coarsens (``[users.coarsen]``, :mod:`tailored.data.coarsen`) are
coarsened in memory, over the whole users table (rare values are counted across all of it),
before the table is written: the exact values never reach the disk. ``dataset.json``'s
``coarsening`` records what was done.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tailored.config import EVENT_NAME
from tailored.data.coarsen import CoarseningError, coarsen_table
from tailored.data.mapping import (
    EntityMapping,
    EventsMapping,
    ImportMapping,
    SourceFile,
    load_mapping,
)
from tailored.data.pseudonym import Pseudonymizer, load_key
from tailored.data.schema import (
    AVAILABILITY,
    DatasetMeta,
    DatasetSchema,
    SchemaError,
    arrow_schema,
)
from tailored.data.store import DatasetWriter
from tailored.data.tombstones import TombstoneList, tombstoned
from tailored.paths import tailored_home

__all__ = ["import_dataset"]

_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_ZONE = r"\d\d:\d\d(:\d\d(\.\d*)?)?(Z|[+-]\d\d(:?\d\d)?)$"  # a time, then a zone
_TS_WHAT = {
    "unix": "a unix timestamp",
    "unix_ms": "a unix timestamp in milliseconds",
    "iso": "an ISO-8601 timestamp",
}


def import_dataset(
    mapping: ImportMapping | Path,
    out: Path | None = None,
    *,
    key: bytes | None = None,
    chunk_rows: int = 1_000_000,
) -> Path:
    """Import the files a mapping names into dataset directory ``out`` and return it.

    ``out`` defaults to ``$TAILORED_HOME/datasets/NAME``; an existing dataset there is
    replaced only when the whole import succeeds. ``key`` pseudonymizes user ids (default
    :func:`~tailored.data.pseudonym.load_key`). Events are read ``chunk_rows`` rows at a time.
    """
    m = mapping if isinstance(mapping, ImportMapping) else load_mapping(Path(mapping))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    # not paths.dataset_dir(name): a folder of that name in the working directory would win
    out = Path(out) if out is not None else tailored_home() / "datasets" / m.name
    _check_out(out)
    _check_files(m)
    pseudo = Pseudonymizer(key if key is not None else load_key())
    meta = DatasetMeta(
        name=m.name,
        schema=m.schema(),
        key_fingerprint=pseudo.fingerprint,
        presplit=m.events.presplit,
        source=str(m.origin),
    )
    # users erased (or who withdrew consent) before: their rows are left out of every import
    stones = TombstoneList().read()
    with DatasetWriter(out, meta) as w:
        if m.users is not None:
            users = _entity(m.users, "users", pseudo, chunk_rows)
            gone = tombstoned(users.column("user_id"), stones)
            if gone.any():
                users = users.filter(pa.array(~gone))
            if m.users.coarsen:
                users, meta.coarsening["users"] = _coarsen(users, m.users, m.origin)
            with _their_columns(_entity_columns(m.users, "user_id")):
                w.write_users(users, source=m.users.file.label)
        if m.items is not None:
            items = _entity(m.items, "items", None, chunk_rows)
            with _their_columns(_entity_columns(m.items, "item_id")):
                w.write_items(items, source=m.items.file.label)
        seen_users, seen_items = _write_events(w, m.events, pseudo, chunk_rows, stones)
        label = " + ".join(src.label for _, src in m.events.files)
        if m.users is None:
            w.write_users(pa.table({"user_id": seen_users}), source=f"{label} (users)")
        if m.items is None:
            w.write_items(pa.table({"item_id": seen_items}), source=f"{label} (items)")
    return out


def _write_events(
    w: DatasetWriter,
    ev: EventsMapping,
    pseudo: Pseudonymizer,
    chunk_rows: int,
    stones: frozenset[str] = frozenset(),
) -> tuple[pa.Array, pa.Array]:
    """Append every events file; return the distinct user and item ids seen."""
    users, items = pa.array([], pa.string()), pa.array([], pa.string())
    renames = {
        "user_id": ev.user,
        "item_id": ev.item,
        "timestamp": ev.timestamp,
        "type": ev.type or "type",
        "value": ev.value or "value",
        "position": ev.position or "position",
        "session": ev.session or "session",
        **dict(ev.context),
    }
    for split, src in ev.files:
        rows = 0
        for offset, chunk in _chunks(src, _events_columns(ev), chunk_rows):
            rows += chunk.num_rows
            where = _Where(src.label, offset)
            chunk = _nulled(chunk, dict.fromkeys(_value_columns(ev), ev.null_values))
            t = _events(chunk, ev, pseudo, where)
            gone = tombstoned(t.column("user_id"), stones)
            if ev.types:
                gone |= pc.is_null(t.column("type")).to_numpy(zero_copy_only=False)
            if gone.any():
                t = t.filter(pa.array(~gone))
            if split is not None:
                t = t.append_column("split", pa.array([split] * t.num_rows, pa.string()))
            with _their_columns(renames):
                w.write_events(t, source=src.label, row_offset=offset)
            users = pc.unique(pa.concat_arrays([users, t.column("user_id").combine_chunks()]))
            items = pc.unique(pa.concat_arrays([items, t.column("item_id").combine_chunks()]))
        if not rows:  # a header alone: a dataset without behaviour is a mistake, not data
            raise SchemaError(
                f"{src.label}: no events (a header and no rows); nothing was imported"
            )
    return users, items


def _events(chunk: pa.Table, ev: EventsMapping, pseudo: Pseudonymizer, where: _Where) -> pa.Table:
    n = chunk.num_rows
    cols: dict[str, pa.Array] = {
        "user_id": _pseudonymize(_ids(chunk, ev.user, where), pseudo),
        "item_id": _ids(chunk, ev.item, where),
        "timestamp": _timestamps(chunk, ev.timestamp, ev.timestamp_format, where),
        "type": _types(chunk, ev, where),
        "value": (
            _numbers(chunk, ev.value, where) if ev.value is not None else pa.nulls(n, pa.float64())
        ),
    }
    for name, column in ev.context:
        cols[name] = _strings(chunk, column, where)
    if ev.position is not None:
        cols["position"] = _numbers(chunk, ev.position, where, "a slot number", pa.int32())
    if ev.session is not None:
        cols["session"] = _session_keys(_strings(chunk, ev.session, where), pseudo)
    return pa.table(cols)


def _value_columns(ev: EventsMapping) -> list[str]:
    """The events' columns ``null_values`` applies to: the value, the session and the context
    (not ids, times or types)."""
    cols = (ev.value, ev.session, *(col for _, col in ev.context))
    return [c for c in cols if c is not None]


def _types(chunk: pa.Table, ev: EventsMapping, where: _Where) -> pa.Array:
    """The stored type names (renamed; null where left out), each checked as a name."""
    if ev.type is None:
        return pa.array([ev.type_constant] * chunk.num_rows, pa.string())
    given = _strings(chunk, ev.type, where)
    types = _renamed(given, ev.types)
    bad = pc.fill_null(pc.invert(pc.match_substring_regex(types, f"^{EVENT_NAME.pattern}$")), True)
    dropped = [name for name, to in ev.types if to is None]
    if dropped:  # null by the mapping: left out
        bad = pc.and_(bad, pc.invert(pc.fill_null(pc.is_in(given, pa.array(dropped)), False)))
    if len(types) and pc.any(bad).as_py():
        row = _first(bad)
        cell = chunk.column(ev.type)[row].as_py()
        raise where.fail(
            row,
            ev.type,
            "is empty"
            if not cell
            else f"{cell!r} is not an event type name (a letter, then up to 63 letters, "
            "digits, '_', '.', ':' or '-'); rename it in the mapping's [events.types], or "
            "leave it out there with false",
        )
    return types


def _renamed(types: pa.Array, renames: tuple[tuple[str, str | None], ...]) -> pa.Array:
    """The type column with the mapping's ``[events.types]`` applied: a renamed type takes its
    new name, a dropped one is null (the caller leaves those rows out)."""
    if not renames:
        return types
    idx = pc.index_in(types, value_set=pa.array([name for name, _ in renames], pa.string()))
    new = pc.take(pa.array([to for _, to in renames], pa.string()), idx)
    return pc.if_else(pc.is_null(idx), types, new)


def _nulled(chunk: pa.Table, markers: dict[str, tuple[str, ...]]) -> pa.Table:
    """``chunk`` with the cells that mean "missing" (``null_values``, per column) made null."""
    for name, values in markers.items():
        col = chunk.column(name)
        if not values or not pa.types.is_string(col.type):
            continue
        hit = pc.is_in(col, value_set=pa.array(values, pa.string()))
        chunk = chunk.set_column(
            chunk.column_names.index(name), name, pc.if_else(hit, pa.scalar(None, col.type), col)
        )
    return chunk


def _entity(
    ent: EntityMapping, kind: str, pseudo: Pseudonymizer | None, chunk_rows: int
) -> pa.Table:
    """The whole users or items table (they are written at once), converted chunk by chunk;
    ``pseudo`` pseudonymizes the ids (users)."""
    key = "user_id" if kind == "users" else "item_id"
    parts = []
    window = [c for c in (ent.available_from, ent.available_until) if c is not None]
    columns = [ent.id, *(f.column for f in ent.fields), *window]
    for offset, chunk in _chunks(ent.file, columns, chunk_rows):
        where = _Where(ent.file.label, offset)
        chunk = _nulled(chunk, {**ent.nulls(), **dict.fromkeys(window, ent.null_values)})
        ids = _ids(chunk, ent.id, where)
        cols = {key: _pseudonymize(ids, pseudo) if pseudo is not None else ids}
        for f in ent.fields:
            if f.kind == "numeric":
                cols[f.name] = _numbers(chunk, f.column, where)
            elif f.kind == "multi_categorical":
                cols[f.name] = _lists(chunk, f.column, f.separator, where)
            else:
                cols[f.name] = _strings(chunk, f.column, where)
        if ent.has_window:  # the catalog's window: a missing column is no bound
            for name, column in zip(
                AVAILABILITY, (ent.available_from, ent.available_until), strict=True
            ):
                cols[name] = (
                    _timestamps(chunk, column, ent.time_format, where)
                    if column is not None
                    else pa.nulls(chunk.num_rows, pa.int64())
                )
        parts.append(pa.table(cols))
    if not parts:  # a header and no rows
        fields = tuple(f.spec for f in ent.fields)
        schema = (
            DatasetSchema(user_fields=fields)
            if kind == "users"
            else DatasetSchema(item_fields=fields)
        )
        return arrow_schema("users" if kind == "users" else "items", schema).empty_table()
    return pa.concat_tables(parts)


def _coarsen(
    users: pa.Table, ent: EntityMapping, origin: Path
) -> tuple[pa.Table, dict[str, dict[str, Any]]]:
    """The users table with the mapping's coarsening applied, and the record of it."""
    try:
        return coarsen_table(users, ent.coarsen, {f.name: f.kind for f in ent.fields})
    except CoarseningError as e:
        raise SchemaError(f"{ent.file.label}: {e} (coarsened as {origin.name} declares)") from e


# --- checks before anything is written ---------------------------------------------------------


def _check_out(out: Path) -> None:
    """Refuse to replace a directory that is not a dataset (the writer would delete it)."""
    if (
        out.exists()
        and not (out / "dataset.json").is_file()
        and (not out.is_dir() or any(out.iterdir()))
    ):
        raise SchemaError(
            f"{out}: exists and is not a tailored dataset; refusing to replace it "
            "(choose another --out)"
        )


def _check_files(m: ImportMapping) -> None:
    """Every file exists and has every column the mapping names."""
    needs: list[tuple[str, SourceFile, list[str]]] = [
        (f"[events] {split or 'file'}", src, _events_columns(m.events))
        for split, src in m.events.files
    ]
    for section, ent in (("users", m.users), ("items", m.items)):
        if ent is not None:
            needs.append((f"[{section}] file", ent.file, [ent.id, *(f.column for f in ent.fields)]))
    for where, src, columns in needs:
        if not src.path.is_file():
            raise SchemaError(f"{m.origin.name}: {where} {src.label!r} does not exist ({src.path})")
        header = _header(src)
        missing = [c for c in dict.fromkeys(columns) if c not in header]
        if missing:
            raise SchemaError(
                f"{src.label}: no column(s) {missing} (named in "
                f"{m.origin.name}); the file has columns {header}"
            )


def _header(src: SourceFile) -> list[str]:
    if src.format == "parquet":
        try:
            return list(pq.ParquetFile(src.path).schema_arrow.names)
        except (pa.ArrowException, OSError) as e:
            raise SchemaError(f"{src.label}: not a readable Parquet file ({e})") from e
    try:
        with src.path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f, delimiter=src.delimiter), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SchemaError(f"{src.label}: cannot read the header row ({e})") from e
    if not header:
        raise SchemaError(f"{src.label}: is empty; the first row must name the columns")
    return header


def _events_columns(ev: EventsMapping) -> list[str]:
    optional = [c for c in (ev.type, ev.value, ev.position, ev.session) if c is not None]
    return [ev.user, ev.item, ev.timestamp, *optional, *(c for _, c in ev.context)]


def _entity_columns(ent: EntityMapping, key: str) -> dict[str, str]:
    window = zip(AVAILABILITY, (ent.available_from, ent.available_until), strict=True)
    return {
        key: ent.id,
        **{f.name: f.column for f in ent.fields},
        **{name: column for name, column in window if column is not None},
    }


# --- reading in chunks -------------------------------------------------------------------------


def _chunks(src: SourceFile, columns: list[str], chunk_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """``(rows before this chunk, chunk)`` of at most ``chunk_rows`` rows; CSV cells as strings."""
    columns = list(dict.fromkeys(columns))
    buffer: list[pa.RecordBatch] = []
    buffered = offset = 0
    try:
        for batch in _batches(src, columns, chunk_rows):
            while batch.num_rows:
                take = min(batch.num_rows, chunk_rows - buffered)
                buffer.append(batch.slice(0, take))
                batch, buffered = batch.slice(take), buffered + take
                if buffered == chunk_rows:
                    yield offset, pa.Table.from_batches(buffer)
                    buffer, offset, buffered = [], offset + buffered, 0
    except (pa.ArrowException, OSError) as e:
        ragged = _ragged_row(src) if src.format == "csv" else None
        if ragged is not None:
            raise SchemaError(f"{src.label}: {ragged}") from e
        raise SchemaError(
            f"{src.label}: cannot read the rows after row {offset + buffered} ({e})"
        ) from e
    if buffer:
        yield offset, pa.Table.from_batches(buffer)


def _batches(src: SourceFile, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    if src.format == "parquet":
        return pq.ParquetFile(src.path).iter_batches(batch_size=chunk_rows, columns=columns)
    return iter(
        pacsv.open_csv(
            src.path,
            parse_options=pacsv.ParseOptions(delimiter=src.delimiter),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types=dict.fromkeys(columns, pa.string()),
                strings_can_be_null=True,
            ),
        )
    )


def _ragged_row(src: SourceFile) -> str | None:
    """Arrow's parse errors give no row number: find the first row whose field count differs
    from the header's (read again with :mod:`csv`; only on the error path)."""
    try:
        with src.path.open(encoding="utf-8-sig", newline="") as f:
            rows = (row for row in csv.reader(f, delimiter=src.delimiter) if row)  # as Arrow
            width = len(next(rows, []))
            for n, row in enumerate(rows, start=1):
                if len(row) != width:
                    return f"row {n}: has {len(row)} fields, the header has {width}"
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


# --- converting columns ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """A chunk's file and the number of data rows before it, for messages."""

    label: str
    offset: int

    def fail(self, row: int, column: str, what: str) -> SchemaError:
        return SchemaError(f"{self.label}: row {self.offset + row + 1}, column {column!r}: {what}")

    def whole(self, column: str, what: str) -> SchemaError:
        return SchemaError(f"{self.label}: column {column!r}: {what}")


def _strings(chunk: pa.Table, column: str, where: _Where) -> pa.Array:
    col = chunk.column(column).combine_chunks()
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise where.whole(column, f"holds {col.type}, which cannot be read as text") from e


def _ids(chunk: pa.Table, column: str, where: _Where) -> pa.Array:
    ids = _strings(chunk, column, where)
    empty = pc.fill_null(pc.equal(pc.utf8_length(ids), 0), True)
    if len(ids) and pc.any(empty).as_py():
        raise where.fail(_first(empty), column, "is empty")
    return ids


def _pseudonymize(ids: pa.Array, pseudo: Pseudonymizer) -> pa.Array:
    """Each distinct id is hashed once per chunk."""
    enc = ids.dictionary_encode()
    names = pseudo.many(enc.dictionary.to_pylist())
    return pc.take(pa.array(names.tolist(), pa.string()), enc.indices)


def _session_keys(ids: pa.Array, pseudo: Pseudonymizer) -> pa.Array:
    """The stored keys of session ids (null, or a blank cell: no session; spaces around an
    id are not part of it), each distinct id hashed once per chunk."""
    ids = pc.utf8_trim_whitespace(ids)
    ids = pc.if_else(pc.equal(ids, ""), pa.scalar(None, pa.string()), ids)
    enc = ids.dictionary_encode()
    keys = pa.array(pseudo.session_keys(enc.dictionary.to_pylist()), pa.int64())
    return pc.take(keys, enc.indices)


def _numbers(
    chunk: pa.Table,
    column: str,
    where: _Where,
    what: str = "a number",
    target: pa.DataType | None = None,
) -> pa.Array:
    """Float64 (or ``target``) from a numeric column or from text; blank cells are null."""
    target = target or pa.float64()
    col = chunk.column(column).combine_chunks()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.utf8_trim_whitespace(col)
        col = pc.if_else(pc.equal(pc.utf8_length(col), 0), pa.scalar(None, col.type), col)
    elif not (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_boolean(col.type)
        or pa.types.is_decimal(col.type)
    ):
        raise where.whole(column, f"holds {col.type}, not numbers")
    try:
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = _first_failure(col, lambda a: pc.cast(a, target))
        raise where.fail(row, column, f"{col[row].as_py()!r} is not {what}") from None


def _lists(chunk: pa.Table, column: str, separator: str, where: _Where) -> pa.Array:
    """A list column as is; a string column split at ``separator``, blanks trimmed and dropped."""
    col = chunk.column(column).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        try:
            return pc.cast(col, pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise where.whole(column, f"holds {col.type}, not lists of text") from e
    col = _strings(chunk, column, where)
    parts = pc.split_pattern(col, pattern=separator)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    keep = pc.greater(pc.utf8_length(flat), 0)
    parents = pc.list_parent_indices(parts).filter(keep).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parents, minlength=len(col)))])
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), flat.filter(keep), mask=pc.is_null(col)
    )


def _timestamps(chunk: pa.Table, column: str, fmt: str, where: _Where) -> pa.Array:
    """Unix seconds (int64) from a timestamp/date column, numbers (``unix``, ``unix_ms``) or
    ISO-8601 strings (``iso``; without a zone offset, UTC)."""
    col = chunk.column(column).combine_chunks()
    if pa.types.is_date(col.type):
        col = pc.cast(col, pa.timestamp("s"))
    if pa.types.is_timestamp(col.type):
        return _floor_div(pc.cast(col, pa.int64()), _UNITS[col.type.unit])
    what = _TS_WHAT[fmt]
    is_text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    if fmt == "iso":
        if not is_text:
            raise where.whole(
                column,
                f"holds {col.type}, not {what} strings; set "
                "timestamp_format to 'unix' or 'unix_ms'",
            )
        try:
            return _floor_div(_iso_ns(col), _UNITS["ns"])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row = _first_failure(col, _iso_ns)
            raise where.fail(row, column, f"{col[row].as_py()!r} is not {what}") from None
    divisor = 1_000 if fmt == "unix_ms" else 1
    one = chunk.select([column])
    try:
        return _floor_div(_numbers(one, column, where, what, pa.int64()), divisor)
    except SchemaError:  # not whole numbers: fractional seconds are floored
        seconds = _numbers(one, column, where, what)

    def floor(a: pa.Array) -> pa.Array:
        return pc.cast(pc.floor(pc.divide(a, float(divisor))), pa.int64())

    try:
        return floor(seconds)
    except pa.ArrowInvalid:  # NaN, infinite or beyond int64
        row = _first_failure(seconds, floor)
        raise where.fail(row, column, f"{col[row].as_py()!r} is not {what}") from None


def _iso_ns(col: pa.Array) -> pa.Array:
    """Nanoseconds since the epoch; strings with and without a zone offset may mix."""
    text = pc.utf8_trim_whitespace(col)
    zoned = pc.fill_null(pc.match_substring_regex(text, _ZONE), False)
    null = pa.scalar(None, text.type)
    naive = pc.cast(pc.if_else(zoned, null, text), pa.timestamp("ns"))
    aware = pc.cast(pc.if_else(zoned, text, null), pa.timestamp("ns", tz="UTC"))
    return pc.if_else(zoned, pc.cast(aware, pa.int64()), pc.cast(naive, pa.int64()))


def _floor_div(values: pa.Array, divisor: int) -> pa.Array:
    if divisor == 1:
        return values
    ints = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    return pa.array(
        np.floor_divide(ints, divisor),
        pa.int64(),
        mask=pc.is_null(values).to_numpy(zero_copy_only=False),
    )


def _first(mask: pa.Array) -> int:
    return int(np.argmax(pc.fill_null(mask, False).to_numpy(zero_copy_only=False)))


def _first_failure(col: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """Index of the first value ``convert`` rejects: binary search over prefixes, so a bad row
    in a million costs about twenty conversions rather than a million."""
    lo, hi = 0, len(col)  # the prefix [0, hi) fails; [0, lo) converts
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(col.slice(0, mid))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


@contextmanager
def _their_columns(renames: dict[str, str]) -> Iterator[None]:
    """Rewrite ``column 'ours'`` in a writer's message to the user's column name."""
    try:
        yield
    except SchemaError as e:
        msg = re.sub(
            r"column '([^']*)'",
            lambda mt: f"column {renames.get(mt.group(1), mt.group(1))!r}",
            str(e),
            count=1,
        )
        if msg == str(e):
            raise
        raise SchemaError(msg) from e
