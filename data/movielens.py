"""MovieLens-100k: 943 users, 1,682 movies, 100,000 timestamped ratings (GroupLens).

Its license forbids redistribution, so tailored fetches it and never commits it. Sources, in
order: a path the user gives (GroupLens' ``ml-100k`` folder or zip, or a folder holding
RecBole's ``ml-100k.{inter,user,item}``); the official GroupLens archive; otherwise the copy
inside the ``recbole==1.2.1`` wheel on PyPI (``pip download --no-deps``; three files are
read out of the wheel, nothing is installed). The result is converted to tailored's schema
(user ids pseudonymized) and cached under ``$TAILORED_HOME/datasets/movielens-100k``.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from tailored.data.pseudonym import Pseudonymizer, load_key
from tailored.data.schema import DatasetMeta, DatasetSchema, FieldSpec, SchemaError
from tailored.data.store import DatasetWriter
from tailored.errors import TailoredError
from tailored.paths import dataset_dir

__all__ = ["MOVIELENS_SCHEMA", "fetch_movielens_100k"]

_log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_WHEEL = "recbole==1.2.1"
_RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/ml-100k."

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

MOVIELENS_SCHEMA = DatasetSchema(
    user_fields=(
        FieldSpec("age", "numeric"),
        FieldSpec("gender", "categorical"),
        FieldSpec("occupation", "categorical"),
        FieldSpec("zip", "categorical"),
    ),
    item_fields=(
        FieldSpec("title", "text"),
        FieldSpec("year", "numeric"),
        FieldSpec("genres", "multi_categorical"),
    ),
)


@dataclass
class _Raw:
    """The three files' text, in RecBole's or GroupLens' layout."""

    ratings: str
    users: str
    items: str
    layout: str  # "recbole" or "grouplens"
    origin: str


def fetch_movielens_100k(
    out: Path | None = None,
    *,
    source: Path | None = None,
    force: bool = False,
    key: bytes | None = None,
) -> Path:
    """Fetch, convert and cache MovieLens-100k; return the dataset directory."""
    out = Path(out) if out is not None else dataset_dir("movielens-100k")
    if (out / "dataset.json").is_file() and not force:
        _log.info("movielens-100k already in %s (use --force to fetch again)", out)
        return out
    raw = _read_source(source) if source is not None else _download()
    pseudo = Pseudonymizer(key if key is not None else load_key())
    users, items, events = _convert(raw, pseudo)
    meta = DatasetMeta(
        name="movielens-100k",
        schema=MOVIELENS_SCHEMA,
        key_fingerprint=pseudo.fingerprint,
        source=raw.origin,
    )
    with DatasetWriter(out, meta) as w:
        w.write_users(users, source=f"{raw.origin} (users)")
        w.write_items(items, source=f"{raw.origin} (items)")
        w.write_events(events, source=f"{raw.origin} (ratings)")
    _log.info(
        "movielens-100k: %d users, %d items, %d ratings from %s",
        users.num_rows,
        items.num_rows,
        events.num_rows,
        raw.origin,
    )
    return out


def _download() -> _Raw:
    tried = []
    for name, fn in (("GroupLens", _from_grouplens), ("PyPI recbole wheel", _from_recbole_wheel)):
        try:
            return fn()
        except (
            OSError,
            urllib.error.URLError,
            subprocess.SubprocessError,
            zipfile.BadZipFile,
            KeyError,
        ) as e:
            _log.info("movielens-100k: %s unavailable (%s)", name, e)
            tried.append(f"{name}: {e}")
    raise TailoredError(
        "could not fetch movielens-100k; tried "
        + "; ".join(tried)
        + ". Download ml-100k.zip yourself and pass --source PATH."
    )


def _from_grouplens() -> _Raw:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=20) as r:
        data = r.read()
    return _from_zip(zipfile.ZipFile(io.BytesIO(data)), GROUPLENS_URL)


def _from_recbole_wheel() -> _Raw:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",  # never run a build backend from the index
                "--quiet",
                "--dest",
                tmp,
                RECBOLE_WHEEL,
            ],
            check=True,
            timeout=300,
            capture_output=True,
        )
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        return _from_zip(zipfile.ZipFile(wheel), f"PyPI {RECBOLE_WHEEL} wheel")


def _from_zip(z: zipfile.ZipFile, origin: str) -> _Raw:
    names = z.namelist()
    rec = [n for n in names if n.startswith(_RECBOLE_PREFIX)]
    if rec:

        def read(ext: str) -> str:
            return z.read(_RECBOLE_PREFIX + ext).decode("utf-8")

        return _Raw(read("inter"), read("user"), read("item"), "recbole", origin)
    base = next((n[: -len("u.data")] for n in names if n.endswith("u.data")), None)
    if base is None:
        raise SchemaError(f"{origin}: no ml-100k files (u.data or ml-100k.inter) inside")
    return _Raw(
        z.read(base + "u.data").decode("latin-1"),
        z.read(base + "u.user").decode("latin-1"),
        z.read(base + "u.item").decode("latin-1"),
        "grouplens",
        origin,
    )


def _read_source(source: Path) -> _Raw:
    source = Path(source)
    if source.suffix == ".zip":
        return _from_zip(zipfile.ZipFile(source), str(source))
    if (source / "ml-100k.inter").is_file():

        def read(ext: str) -> str:
            return (source / f"ml-100k.{ext}").read_text(encoding="utf-8")

        return _Raw(read("inter"), read("user"), read("item"), "recbole", str(source))
    if (source / "u.data").is_file():

        def read_gl(name: str) -> str:
            return (source / name).read_text(encoding="latin-1")

        return _Raw(
            read_gl("u.data"), read_gl("u.user"), read_gl("u.item"), "grouplens", str(source)
        )
    raise SchemaError(
        f"{source}: expected ml-100k.zip, a folder with u.data/u.user/u.item, "
        "or a folder with ml-100k.inter/.user/.item"
    )


def _rows(text: str, sep: str, ncols: int, origin: str, skip_header: bool) -> list[list[str]]:
    lines = text.splitlines()[1 if skip_header else 0 :]
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < ncols:
            raise SchemaError(f"{origin}: row {i}: expected {ncols} fields, found {len(parts)}")
        out.append(parts)
    return out


def _num(value: str, origin: str, row: int, column: str, parse: Callable[[str], float]) -> float:
    try:
        return parse(value)
    except ValueError as e:
        raise SchemaError(
            f"{origin}: row {row}, column {column!r}: {value!r} is not a number"
        ) from e


def _year(text: str) -> float | None:
    """A release year, or None where the source has none (MovieLens has a few)."""
    try:
        return float(text)
    except ValueError:
        return None


def _convert(raw: _Raw, pseudo: Pseudonymizer) -> tuple[pa.Table, pa.Table, pa.Table]:
    rec = raw.layout == "recbole"
    sep = "\t" if rec else "|"
    o = raw.origin
    urows = _rows(raw.users, sep, 5, f"{o} users", rec)
    user_raw = [r[0] for r in urows]
    users = pa.table(
        {
            "user_id": pa.array(pseudo.many(user_raw).tolist(), pa.string()),
            "age": [_num(r[1], o, i, "age", float) for i, r in enumerate(urows, 1)],
            "gender": [r[2] for r in urows],
            "occupation": [r[3] for r in urows],
            "zip": [r[4] for r in urows],
        }
    )
    irows = _rows(raw.items, "\t" if rec else "|", 4 if rec else 24, f"{o} items", rec)
    if rec:
        titles = [r[1] for r in irows]
        years = [_year(r[2]) for r in irows]  # one row says 'unkonwn'
        genres = [r[3].split() for r in irows]
    else:
        titles = [r[1] for r in irows]
        years = [_year(r[2][-4:]) for r in irows]
        genres = [
            [g for g, flag in zip(GENRES, r[5:24], strict=True) if flag == "1"] for r in irows
        ]
    items = pa.table(
        {
            "item_id": [r[0] for r in irows],
            "title": titles,
            "year": years,
            "genres": pa.array(genres, pa.list_(pa.string())),
        }
    )
    erows = _rows(raw.ratings, "\t", 4, f"{o} ratings", rec)
    ev_users = np.array([r[0] for r in erows])
    uniq, inverse = np.unique(ev_users, return_inverse=True)
    pseudo_ids = pseudo.many(uniq.tolist())[inverse]
    events = pa.table(
        {
            "user_id": pa.array(pseudo_ids.tolist(), pa.string()),
            "item_id": [r[1] for r in erows],
            "timestamp": pa.array(
                [int(_num(r[3], o, i, "timestamp", float)) for i, r in enumerate(erows, 1)],
                pa.int64(),
            ),
            "type": pa.array(["rating"] * len(erows), pa.string()),
            "value": [_num(r[2], o, i, "rating", float) for i, r in enumerate(erows, 1)],
        }
    )
    return users, items, events
