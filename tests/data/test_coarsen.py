"""Data minimisation at import: profile fields coarsened before anything is written, through
the real importer and mapping, and declarations that do not fit refused with the file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from tailored.cli import main
from tailored.data.coarsen import Coarsening, band_labels, coarsen_table, default_coarsening
from tailored.data.importer import import_dataset
from tailored.data.mapping import MappingError, load_mapping
from tailored.data.schema import SchemaError, read_dataset_meta
from tailored.data.store import read_table

KEY = bytes(range(32))

# 12 users; by hand: ages fall in bands <18: 1 (u0), 18-24: 4, 25-34: 3, 35-44: 1, 65+: 2,
# missing: 1. Zip prefixes: "940" x7, "100" x3, "021" x1, "606" x1. Jobs: nurse x6, lawyer x3,
# pilot x1, other x1, missing x1.
USERS = [
    ("u0", "15", "F", "94043", "nurse", "a|b", "10"),
    ("u1", "18", "F", "94045", "nurse", "b|a", "20"),
    ("u2", "24", "M", "94046", "nurse", "", "30"),
    ("u3", "24.9", "M", "94040", "lawyer", "c", "40"),
    ("u4", "19", "F", "94041", "lawyer", "", "50"),
    ("u5", "25", "M", "94042", "lawyer", "", "60"),
    ("u6", "34", "F", "94044", "pilot", "", "70"),
    ("u7", "30", "M", "10001", "nurse", "", "80"),
    ("u8", "44", "F", "10002", "nurse", "", "90"),
    ("u9", "65", "M", "10003", "nurse", "", "100"),
    ("u10", "80", "F", "02139", "other", "", "110"),
    ("u11", "", "M", "60601", "", "", "120"),
]
HEADER = "uid,age,sex,zipcode,job,tags,income\n"
FIELDS = """\
[users.fields]
age = { kind = "numeric" }
gender = { column = "sex", kind = "categorical" }
zip = { column = "zipcode", kind = "categorical" }
job = { kind = "categorical" }
tags = { kind = "multi_categorical" }
income = { kind = "numeric" }
"""


def _site(root: Path, coarsen: str, *, fields: str = FIELDS, users: str | None = None) -> Path:
    """A users file, one event per user, and a mapping whose [users] ends with ``coarsen``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = users if users is not None else "".join(",".join(u) + "\n" for u in USERS)
    (root / "users.csv").write_text(HEADER + rows)
    events = "".join(f"{u[0]},i1,{1000 + i}\n" for i, u in enumerate(USERS))
    (root / "events.csv").write_text("uid,item,ts\n" + events)
    (root / "mapping.toml").write_text(
        'name = "shop"\n[users]\nfile = "users.csv"\nid = "uid"\n'
        + coarsen
        + "\n"
        + fields
        + '[events]\nfile = "events.csv"\nuser = "uid"\nitem = "item"\ntimestamp = "ts"\n'
        'type_constant = "click"\n'
    )
    return root / "mapping.toml"


def _column(ds: Path, name: str) -> list[object]:
    return read_table(ds, "users", [name]).column(0).to_pylist()


def test_band_labels_read_as_ages_for_whole_edges_and_as_intervals_otherwise() -> None:
    assert band_labels([18, 25, 35]) == ["<18", "18-24", "25-34", "35+"]
    assert band_labels([1.5, 2.5]) == ["<1.5", "[1.5, 2.5)", ">=2.5"]
    assert band_labels([]) == ["all"]


def test_declared_coarsening_is_applied_before_anything_is_written(tmp_path: Path) -> None:
    mapping = _site(
        tmp_path / "in",
        "[users.coarsen]\n"
        "age = { bands = [18, 25, 35, 45, 55, 65] }\n"
        "zip = { prefix = 3, min_count = 2 }\n"
        'job = { min_count = 3, other = "misc" }\n',
    )
    ds = import_dataset(mapping, tmp_path / "ds", key=KEY, chunk_rows=5)
    # 24.9 is below 25: band 18-24; 65 opens the top band; a missing age stays missing
    assert _column(ds, "age") == [
        "<18",
        "18-24",
        "18-24",
        "18-24",
        "18-24",
        "25-34",
        "25-34",
        "25-34",
        "35-44",
        "65+",
        "65+",
        None,
    ]
    # prefixes counted over the whole table, not per chunk of 5: "021" and "606" are rare
    assert _column(ds, "zip") == ["940"] * 7 + ["100"] * 3 + ["other"] * 2
    # pilot (1) and other (1) are rare; the missing job stays missing
    assert _column(ds, "job") == ["nurse"] * 3 + ["lawyer"] * 3 + ["misc"] + ["nurse"] * 3 + [
        "misc",
        None,
    ]
    assert _column(ds, "income")[:2] == [10.0, 20.0]  # not declared: exact
    meta = read_dataset_meta(ds)
    kinds = {f.name: f.kind for f in meta.schema.user_fields}
    assert kinds["age"] == "categorical" and kinds["income"] == "numeric"
    done = meta.coarsening["users"]
    assert done["zip"] == {
        "prefix": 3,
        "min_count": 2,
        "other": "other",
        "merged_values": 2,
        "merged_users": 2,
        "declared_kind": "categorical",
    }
    assert (done["job"]["merged_values"], done["job"]["merged_users"]) == (2, 2)
    assert done["age"]["bands"] == [18, 25, 35, 45, 55, 65]
    assert "94043" not in json.dumps(done)  # counts only, never the rare values


def test_default_for_the_whole_table_follows_the_documented_policy(tmp_path: Path) -> None:
    users = "".join(",".join(u) + "\n" for u in USERS)
    many = "".join(f"v{i},30,F,94043,nurse,,{i}\n" for i in range(1, 102))
    mapping = _site(tmp_path / "in", 'coarsen = "default"', users=users + many)
    ds = import_dataset(mapping, tmp_path / "ds", key=KEY)
    done = read_dataset_meta(ds).coarsening["users"]
    assert set(done) == {"age", "gender", "zip", "job", "income"}  # tags: no default
    assert done["zip"]["prefix"] == 3 and done["zip"]["min_count"] == 10
    assert done["income"]["quantiles"] == 5
    # the quintile edges come from the data, so they are recorded
    assert len(done["income"]["bands"]) == 4
    assert _column(ds, "tags")[:2] == [["a", "b"], ["b", "a"]]
    zips = _column(ds, "zip")
    assert zips.count("940") == 7 + 101 and zips.count("other") == 5  # 100 x3, 021, 606: rare
    assert _column(ds, "job")[6] == "other"  # the single pilot


def test_quantile_bands_have_two_significant_figure_edges() -> None:
    table = pa.table({"x": pa.array([float(i) for i in range(1, 102)])})
    out, done = coarsen_table(table, [Coarsening("x", quantiles=4)], {"x": "numeric"})
    assert done["x"]["bands"] == [26, 51, 76]
    labels = out.column("x").to_pylist()
    assert labels[:25] == ["<26"] * 25 and labels[25] == "26-50" and labels[-1] == "76+"
    assert default_coarsening("Age", "numeric") == Coarsening("Age", bands=(18, 25, 35, 45, 55, 65))
    assert default_coarsening("tags", "multi_categorical") is None


BAD = [
    ("[users.coarsen]\nagee = { bands = [1, 2] }", "[users.coarsen.agee]", "no field 'agee'"),
    ("[users.coarsen]\njob = { bands = [1, 2] }", "[users.coarsen.job]", "apply to numeric"),
    ("[users.coarsen]\nage = { bands = [30, 20] }", "[users.coarsen.age]", "strictly increasing"),
    ("[users.coarsen]\nage = { bands = [] }", "[users.coarsen.age]", "at least one edge"),
    ("[users.coarsen]\nage = { bands = ['a'] }", "[users.coarsen.age]", "list of numbers"),
    ("[users.coarsen]\nage = { prefix = 2 }", "[users.coarsen.age]", "prefix applies"),
    ("[users.coarsen]\nage = { min_count = 5 }", "[users.coarsen.age]", "bands first"),
    ("[users.coarsen]\nzip = { min_count = 1 }", "[users.coarsen.zip]", "2 or more"),
    ("[users.coarsen]\nzip = { prefix = 0 }", "[users.coarsen.zip]", "positive whole number"),
    ("[users.coarsen]\nzip = { prefix = true }", "[users.coarsen.zip]", "positive whole"),
    ("[users.coarsen]\nzip = { digits = 3 }", "[users.coarsen.zip]", "unknown key 'digits'"),
    ("[users.coarsen]\nzip = {}", "[users.coarsen.zip]", "declares nothing"),
    ("[users.coarsen]\nage = { bands = [1], quantiles = 3 }", "[users.coarsen.age]", "at most one"),
    ("[users.coarsen]\ntags = 'default'", "[users.coarsen.tags]", "no default coarsening"),
    ("[users.coarsen]\ntags = { min_count = 3 }", "[users.coarsen.tags]", "cannot be coarsened"),
    ("coarsen = 'everything'", "[users]", 'coarsen must be "default"'),
]


@pytest.mark.parametrize(("coarsen", "where", "what"), BAD, ids=[b[2] for b in BAD])
def test_bad_declarations_name_the_mapping_file_and_field(
    tmp_path: Path, coarsen: str, where: str, what: str
) -> None:
    mapping = _site(tmp_path, coarsen)
    with pytest.raises(MappingError) as err:
        load_mapping(mapping)
    assert str(err.value).startswith(f"mapping.toml: {where} ")
    assert what in str(err.value)


def test_items_cannot_be_coarsened(tmp_path: Path) -> None:
    mapping = _site(tmp_path, "")
    text = mapping.read_text().replace(
        "[events]", '[items]\nfile = "users.csv"\nid = "uid"\ncoarsen = "default"\n[events]'
    )
    mapping.write_text(text)
    with pytest.raises(MappingError, match=r"mapping.toml: \[items\] coarsen applies to \[users\]"):
        load_mapping(mapping)


def test_a_value_with_no_band_names_the_file_and_row(tmp_path: Path) -> None:
    rows = "".join(",".join(u) + "\n" for u in USERS).replace("u3,24.9,", "u3,inf,")
    mapping = _site(tmp_path / "in", "[users.coarsen]\nage = 'default'", users=rows)
    with pytest.raises(SchemaError) as err:
        import_dataset(mapping, tmp_path / "ds", key=KEY)
    assert "users.csv: row 4, field 'age': inf is not a finite number" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_cli_import_reports_a_bad_declaration_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = _site(tmp_path / "in", "[users.coarsen]\njob = { bands = [1, 2] }")
    assert main(["data", "import", "--mapping", str(mapping), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "mapping.toml: [users.coarsen.job] bands and quantiles apply to numeric" in err
    assert "Traceback" not in err
