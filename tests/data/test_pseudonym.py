from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from tailored.data.pseudonym import KEY_ENV, KeyError_, Pseudonymizer, load_key


def test_pseudonym_is_keyed_hmac_sha256_truncated_to_128_bits() -> None:
    key = b"k" * 32
    expected = hmac.new(key, b"user-42", hashlib.sha256).hexdigest()[:32]
    p = Pseudonymizer(key)
    assert p("user-42") == expected
    assert list(p.many(["user-42", "x"])) == [expected, p("x")]
    assert Pseudonymizer(b"j" * 32)("user-42") != expected
    assert p.fingerprint != Pseudonymizer(b"j" * 32).fingerprint


def test_empty_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Pseudonymizer(b"k" * 32)("")


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "ab" * 16)
    assert load_key() == bytes.fromhex("ab" * 16)
    monkeypatch.setenv(KEY_ENV, "not hex")
    with pytest.raises(KeyError_, match=KEY_ENV):
        load_key()
    monkeypatch.setenv(KEY_ENV, "abcd")
    with pytest.raises(KeyError_, match="at least 16"):
        load_key()


def test_default_key_is_created_once_and_private(_isolated_home: Path) -> None:
    key = load_key()
    path = _isolated_home / "pseudonym.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key() == key and len(key) == 32


def test_missing_key_without_create(_isolated_home: Path) -> None:
    with pytest.raises(KeyError_, match="no pseudonymization key"):
        load_key(create=False)
