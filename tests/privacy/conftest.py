"""Fixtures the privacy tests share: a small synthetic site and its bundle, built once, and a
fresh copy of both per test (erasure rewrites them)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TEST_KEY, synthetic_bundle
from tests.serve.helpers import drop_prefix


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic site of 300 users and its bundle (``site/`` and ``bundles/``), built once;
    each test erases from its own copy."""
    base = tmp_path_factory.mktemp("erasure-site")
    with pytest.MonkeyPatch.context() as mp:  # no tombstone list of anyone's home applies
        mp.setenv("TAILORED_PRIVACY_DIR", str(base / "no-privacy"))
        synthetic_bundle(base, users=300, items=100)
    return base


@pytest.fixture
def copy(site: Path, tmp_path: Path) -> Path:
    out = tmp_path / "stores"
    shutil.copytree(site / "site", out / "site")
    shutil.copytree(site / "bundles", out / "bundles")
    return out


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = "tailored-test-" + uuid.uuid4().hex
    yield prefix
    drop_prefix(redis_url, prefix)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(TEST_KEY.hex())
    return path
