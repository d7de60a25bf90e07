"""Writing and reading datasets atomically.

:class:`DatasetWriter` writes into a temporary directory beside the target and renames it
into place only when every table was written and checked, so a failure (bad row, full disk,
Ctrl-C) leaves the previous dataset — or nothing — never a half-written one. Events are
appended in chunks, so generators and importers run in bounded memory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tailored.data.schema import (
    DatasetMeta,
    SchemaError,
    arrow_schema,
    read_dataset_meta,
    validate_table,
    write_dataset_meta,
)

__all__ = ["DatasetWriter", "read_table"]


class DatasetWriter:
    """Context manager: ``users``/``items`` once, ``events`` in any number of chunks."""

    def __init__(self, directory: Path, meta: DatasetMeta, *, row_group_size: int = 1 << 20):
        self.directory = Path(directory)
        self.meta = meta
        self._row_group_size = row_group_size
        self._tmp: Path | None = None
        self._events: pq.ParquetWriter | None = None
        self._counts = {"users": 0, "items": 0, "events": 0}
        self._types: dict[str, int] = {}  # events per type
        self._ids: dict[str, pa.Array] = {}

    def __enter__(self) -> DatasetWriter:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=self.directory.parent)
        )
        return self

    @property
    def staging(self) -> Path:
        """The temporary directory being written: extra files (e.g. ground truth) go here and
        move into place with the tables."""
        if self._tmp is None:
            raise RuntimeError("use DatasetWriter as a context manager")
        return self._tmp

    def write_users(self, table: pa.Table, *, source: str, validated: bool = False) -> None:
        self._write_once("users", table, source, validated)

    def write_items(self, table: pa.Table, *, source: str, validated: bool = False) -> None:
        self._write_once("items", table, source, validated)

    def _write_once(self, kind: str, table: pa.Table, source: str, validated: bool) -> None:
        assert self._tmp is not None, "use DatasetWriter as a context manager"
        if not validated:
            table = validate_table(table, kind, self.meta.schema, source=source)  # type: ignore[arg-type]
        key = "user_id" if kind == "users" else "item_id"
        self._ids[key] = table.column(key).combine_chunks()
        pq.write_table(table, self._tmp / f"{kind}.parquet", row_group_size=self._row_group_size)
        self._counts[kind] = table.num_rows

    def write_events(
        self, table: pa.Table, *, source: str, row_offset: int = 0, validated: bool = False
    ) -> None:
        """Append a chunk of events. References to users and items are checked against the
        tables already written; an importer that derives those tables from the events writes
        them afterwards."""
        assert self._tmp is not None, "use DatasetWriter as a context manager"
        if not validated:
            table = validate_table(
                table,
                "events",
                self.meta.schema,
                source=source,
                row_offset=row_offset,
                known_ids=self._ids or None,
            )
        if self._events is None:
            target = arrow_schema("events", self.meta.schema, with_split=self.meta.presplit)
            self._events = pq.ParquetWriter(self._tmp / "events.parquet", target)
        if table.schema != self._events.schema:
            raise SchemaError(
                f"{source}: events chunk has schema {table.schema}, expected {self._events.schema}"
            )
        self._events.write_table(table, row_group_size=self._row_group_size)
        self._counts["events"] += table.num_rows
        for entry in pc.value_counts(table.column("type")).to_pylist():
            name = entry["values"]
            self._types[name] = self._types.get(name, 0) + entry["counts"]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tmp is not None
        tmp, self._tmp = self._tmp, None
        try:
            if self._events is not None:
                self._events.close()
            if exc_type is None:
                if self._events is None:
                    target = arrow_schema("events", self.meta.schema, with_split=self.meta.presplit)
                    pq.write_table(target.empty_table(), tmp / "events.parquet")
                for kind in ("users", "items"):
                    if not (tmp / f"{kind}.parquet").exists():
                        raise SchemaError(f"{self.directory}: no {kind} table was written")
                self.meta.counts = dict(self._counts)
                self.meta.event_types = dict(sorted(self._types.items()))
                write_dataset_meta(tmp, self.meta)
                _replace_dir(tmp, self.directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is replaced (rename, then delete)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)


def read_table(directory: Path, kind: str, columns: list[str] | None = None) -> pa.Table:
    """Read one table of a dataset (after checking ``dataset.json`` exists)."""
    read_dataset_meta(directory)
    path = Path(directory) / f"{kind}.parquet"
    if not path.is_file():
        raise SchemaError(f"{directory}: missing {kind}.parquet")
    return pq.read_table(path, columns=columns)
