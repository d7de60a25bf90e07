"""k-anonymity report: figures computed by hand for small imported tables, the real command
line (text and JSON), bad input as a clear error, and MovieLens-100k before and after the
default coarsening."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pytest

from tailored.cli import main
from tailored.data.importer import import_dataset
from tailored.privacy.kanon import GroupStats, k_anonymity, privacy_report

KEY = bytes(range(32))

# 7 users; grouped by (age, gender, zip): (30,F,111) x2, (30,F,112) x1, (40,M,111) x3,
# (missing,M,111) x1 -> k = 1, 4 groups; at threshold 3 the groups of 2, 1 and 1 are small:
# 4 users. Dropping zip -> (30,F) 3, (40,M) 3, (-,M) 1: 1 user in small groups; dropping age
# -> (F,111) 2, (F,112) 1, (M,111) 4: 3; dropping gender -> (30,111) 2, (30,112) 1,
# (40,111) 3, (-,111) 1: 4. So zip drives it most, then age, then gender.
ROWS = [
    ("a", "30", "F", "111"),
    ("b", "30", "F", "111"),
    ("c", "30", "F", "112"),
    ("d", "40", "M", "111"),
    ("e", "40", "M", "111"),
    ("f", "40", "M", "111"),
    ("g", "", "M", "111"),
]


def _dataset(
    root: Path,
    rows: Sequence[tuple[str, ...]] = ROWS,
    *,
    with_users: bool = True,
    coarsen: str = "",
) -> Path:
    """Import ``rows`` (uid, age, sex, zip) with one event each through the real importer."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.csv").write_text("uid,age,sex,zip\n" + "".join(",".join(r) + "\n" for r in rows))
    events = "".join(f"{r[0]},i1,{i}\n" for i, r in enumerate(rows))
    (root / "events.csv").write_text("uid,item,ts\n" + events)
    users = (
        '[users]\nfile = "users.csv"\nid = "uid"\n'
        + coarsen
        + '\n[users.fields]\nage = { kind = "numeric" }\n'
        'gender = { column = "sex", kind = "categorical" }\nzip = { kind = "categorical" }\n'
    )
    (root / "m.toml").write_text(
        'name = "tiny"\n'
        + (users if with_users else "")
        + '[events]\nfile = "events.csv"\nuser = "uid"\nitem = "item"\ntimestamp = "ts"\n'
        'type_constant = "click"\n'
    )
    return import_dataset(root / "m.toml", root / "ds", key=KEY)


def _cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["privacy", "report", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_k_and_small_groups_match_a_hand_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = _dataset(tmp_path)
    doc = _cli_json([str(ds), "--threshold", "3"], capsys)
    assert (doc["users"], doc["quasi_identifiers"], doc["threshold"]) == (
        7,
        ["age", "gender", "zip"],
        3,
    )
    full = doc["as_stored"]["full"]
    assert (full["k"], full["groups"], full["users_below"]) == (1, 4, 4)
    assert full["share_below"] == pytest.approx(4 / 7)
    subsets = {
        tuple(s["fields"]): (s["k"], s["groups"], s["users_below"])
        for s in doc["as_stored"]["subsets"]
    }
    assert len(subsets) == 7  # every combination of 3 fields
    assert subsets[("gender",)] == (3, 2, 0)  # F x3, M x4
    assert subsets[("zip",)] == (1, 2, 1)  # 111 x6, 112 x1
    assert subsets[("age",)] == (1, 3, 1)  # 30 x3, 40 x3, missing x1: a value of its own
    drivers = [(d["field"], d["dropped"]["users_below"]) for d in doc["as_stored"]["drivers"]]
    assert drivers == [("zip", 1), ("age", 3), ("gender", 4)]
    assert doc["coarsened"] is None


def test_the_default_coarsening_raises_k_as_counted_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ages 20..29 and zips 94040..94049, all distinct: k = 1. The default bands put 20-24 in
    # 18-24 and 25-29 in 25-34 (5 each); zip prefix "940" is shared by all 10 (not rare at
    # min_count 10): k = 5. With gender too: F and M are held by 5 users each, fewer than
    # min_count 10, so both become "other" and the groups stay the two bands: still k = 5.
    rows = [(f"u{i}", str(20 + i), "FM"[i % 2], f"9404{i}") for i in range(10)]
    ds = _dataset(tmp_path, rows)
    doc = _cli_json([str(ds), "--coarsen", "default", "--quasi-identifiers", "age,zip"], capsys)
    assert doc["as_stored"]["full"]["k"] == 1 and doc["as_stored"]["full"]["users_below"] == 10
    after = doc["coarsened"]["full"]
    assert (after["k"], after["groups"], after["users_below"]) == (5, 2, 0)
    assert doc["coarsening"]["zip"]["prefix"] == 3 and doc["coarsening"]["zip"]["merged_users"] == 0
    assert set(doc["coarsening"]) == {"age", "zip"}  # only the quasi-identifiers named
    doc = _cli_json([str(ds), "--coarsen", "default"], capsys)
    assert doc["coarsening"]["gender"]["merged_users"] == 10
    assert doc["coarsened"]["full"]["k"] == 5 and doc["coarsened"]["full"]["groups"] == 2


def test_text_report_says_what_drives_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = _dataset(tmp_path)
    assert main(["privacy", "report", str(ds), "--threshold", "3", "--coarsen", "default"]) == 0
    out = capsys.readouterr().out
    assert "k-anonymity of tiny: 7 users; quasi-identifiers: age, gender, zip" in out
    assert "Users in small groups: 4 (57.1%)." in out
    assert "Strongest driver: zip (without it, 1 (14.3%)" in out
    assert "After the default coarsening" in out and "Summary: k 1 -> " in out


def test_a_dataset_coarsened_at_import_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = _dataset(tmp_path, coarsen='coarsen = "default"')
    doc = _cli_json([str(ds)], capsys)
    assert set(doc["coarsened_at_import"]) == {"age", "gender", "zip"}
    # 30 -> 25-34 x3, 40 -> 35-44 x3, missing x1; zip "111"/"112" -> "111"/"112" (3 chars),
    # then both rare at min_count 10 -> "other"; gender F x3, M x4 also rare -> "other":
    # (band) groups only: 3, 3, 1
    full = doc["as_stored"]["full"]
    assert (full["k"], full["groups"]) == (1, 3)


def test_lists_group_as_sets_and_many_fields_are_bounded() -> None:
    users = pa.table(
        {
            "user_id": ["a", "b", "c"],
            "tags": pa.array([["x", "y"], ["y", "x"], None], pa.list_(pa.string())),
            **{f"f{i}": ["v", "v", "w"] for i in range(7)},
        }
    )
    r = k_anonymity(users, ["tags"], threshold=2)
    assert r.full == GroupStats(("tags",), k=1, groups=2, users_below=1, share_below=1 / 3)
    # 8 fields: the 8 single ones, 28 pairs, 8 missing one, and the full one
    r = k_anonymity(users, ["tags", *(f"f{i}" for i in range(7))], threshold=2)
    assert len(r.subsets) == 8 + 28 + 8 + 1 and r.subsets[-1] == r.full
    assert len(r.drivers) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{nowhere}"], "not a tailored dataset (no dataset.json)"),
        (["{plain}"], "not a tailored dataset (no dataset.json)"),
        (["{ds}", "--quasi-identifiers", "age,zipp"], "no profile field(s) ['zipp']"),
        (["{ds}", "--quasi-identifiers", "age,age"], "named more than once"),
        (["{ds}", "--quasi-identifiers", ","], "name at least one quasi-identifier"),
        (["{ds}", "--threshold", "0"], "threshold must be 1 or more"),
        (["{bare}"], "the users have no profile fields"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "plain").mkdir()
    places = {
        "nowhere": str(tmp_path / "nowhere"),
        "plain": str(tmp_path / "plain"),
        "ds": str(_dataset(tmp_path / "one")),
        "bare": str(_dataset(tmp_path / "two", with_users=False)),
    }
    assert main(["privacy", "report", *(a.format(**places) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tailored privacy: error: ") and message in err
    assert "Traceback" not in err


def test_movielens_before_and_after_the_default_coarsening(movielens_dir: Path) -> None:
    r = privacy_report(movielens_dir, coarsen="default")
    before, after = r.as_stored, r.coarsened
    assert after is not None and r.coarsening is not None
    assert before.users == 943
    assert before.quasi_identifiers == ("age", "gender", "occupation", "zip")
    # exact zip codes are nearly unique: every user is in a group smaller than 5
    assert before.full.users_below == 943 and before.drivers[0].field == "zip"
    assert after.full.users_below < 0.5 * before.full.users_below
    assert r.coarsening["age"]["bands"] == [18, 25, 35, 45, 55, 65]
