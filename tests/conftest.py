"""Shared fixtures: a test key, an isolated $TAILORED_HOME, and the real MovieLens-100k
(fetched once into a cache outside the repo's tracked files; its license forbids committing
it)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, TEST_KEY, small_config, synthetic_bundle


@pytest.fixture(autouse=True, scope="session")
def _session_privacy_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What module and session fixtures (a bundle trained once, a server kept for a module)
    see as the privacy directory: an empty one of the session's, never the user's tombstones
    and audit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAILORED_PRIVACY_DIR", str(tmp_path_factory.mktemp("privacy")))
        yield


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own $TAILORED_HOME and privacy directory (tombstones, audit), so no
    test reads or writes the user's, nor another test's."""
    home = tmp_path / "tailored-home"
    monkeypatch.setenv("TAILORED_HOME", str(home))
    monkeypatch.setenv("TAILORED_PRIVACY_DIR", str(home / "privacy"))
    monkeypatch.delenv("TAILORED_PSEUDONYM_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """MovieLens-100k in tailored's format (real data, fetched by the project)."""
    from tailored.data.movielens import fetch_movielens_100k

    cache = Path(os.environ.get("TAILORED_TEST_CACHE", ROOT / ".cache" / "tests"))
    return fetch_movielens_100k(out=cache / "movielens-100k", key=TEST_KEY)


@contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def faiss_one_thread() -> Iterator[None]:
    """FAISS at one OpenMP thread: its threads spin, and on a busy 2-core machine two of them
    run small index builds several times slower than one."""
    with _faiss_threads(1):
        yield


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis to test against: ``$TAILORED_REDIS_URL`` or ``redis://127.0.0.1:6379/0``.
    Skips the test if none answers, or fails it where ``TAILORED_REQUIRE_REDIS=1`` (CI)."""
    import redis

    url = os.environ.get("TAILORED_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        shown = re.sub(r"//[^@/]*@", "//***@", url)  # no password in the report
        message = f"no Redis reachable at {shown}: start one, or set TAILORED_REDIS_URL ({e})"
        if os.environ.get("TAILORED_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def serve_bundle(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundles root holding one small bundle (ranker included) of real MovieLens-100k, built
    once per test session for the serving tests; its data was written with ``TEST_KEY``."""
    from tailored.bundle.build import build_bundle
    from tailored.config import DataConfig, load_config
    from tailored.train.two_tower.fit import train

    base = tmp_path_factory.mktemp("serve-bundle")
    small = small_config(movielens_dir, train={"max_epochs": 2}).to_dict()
    # clicks tracked by the server count as history (the dataset itself has only ratings), and
    # a site's own types: add_to_cart a positive, hide a negative, share kept unused
    small["data"]["positive_events"] = DataConfig().positive_events
    small["data"]["events"] = {
        "rating": {"role": "positive"},
        "click": {"role": "positive"},
        "add_to_cart": {"role": "positive"},
        "impression": {"role": "exposure"},
        "hide": {"role": "negative"},
        "share": {"role": "ignored"},
    }
    ranker = {"max_epochs": 2, "candidates": 50, "max_users": 300, "hidden": 32, "patience": 1}
    cfg = load_config(values={**small, "ranker": ranker, "index": {"recall_queries": 100}})
    train(cfg, out=base / "run")
    build_bundle(base / "run", base / "bundles", progress_bar=False)
    return base / "bundles"


# cohorts by gender and by age x region, and the least users a cohort kept has
COHORT_DEFINITIONS = [["gender"], ["age", "region"]]
COHORT_MIN_USERS = 4


@pytest.fixture(scope="session")
def cohort_site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small synthetic site and a bundle (ranker included) with ``[ranker] cohorts``
    (:data:`COHORT_DEFINITIONS`), built once per test session: ``base``, ``version`` (the
    bundle's directory), ``cfg`` (its training configuration) and ``data`` (its
    interactions)."""
    from tailored.train.runs import load_data

    base = tmp_path_factory.mktemp("cohorts")
    with _faiss_threads(1):  # as faiss_one_thread, for the index build
        bundles, cfg = synthetic_bundle(
            base,
            users=400,
            items=120,
            overrides={
                "ranker.cohorts": COHORT_DEFINITIONS,
                "ranker.cohort_min_users": COHORT_MIN_USERS,
            },
        )
    return {"base": base, "version": bundles / "v000001", "cfg": cfg, "data": load_data(cfg)}
