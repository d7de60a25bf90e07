"""Shared fixtures: a test key, an isolated $TAILORED_HOME, and the real MovieLens-100k
(fetched once into a cache outside the repo's tracked files; its license forbids committing
it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own $TAILORED_HOME, so no test reads or writes the user's."""
    home = tmp_path / "tailored-home"
    monkeypatch.setenv("TAILORED_HOME", str(home))
    monkeypatch.delenv("TAILORED_PSEUDONYM_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """MovieLens-100k in tailored's format (real data, fetched by the project)."""
    from tailored.data.movielens import fetch_movielens_100k

    cache = Path(os.environ.get("TAILORED_TEST_CACHE", ROOT / ".cache" / "tests"))
    return fetch_movielens_100k(out=cache / "movielens-100k", key=TEST_KEY)


@pytest.fixture(scope="module")
def faiss_one_thread() -> Iterator[None]:
    """FAISS at one OpenMP thread: its threads spin, and on a busy 2-core machine two of them
    run small index builds several times slower than one."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
