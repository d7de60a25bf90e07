"""Keyed pseudonymization of user ids (HMAC-SHA256).

Every user id that enters tailored is replaced by ``HMAC-SHA256(key, raw_id)``, kept as its
first 128 bits in hex (32 characters: collisions are negligible at 10^9 users, and the ids
stay small in Parquet and in memory). Without the key a pseudonym cannot be linked back to
the site's id; with it, the site's own id (what the CLI and API accept) maps to the same
pseudonym every time.

Session ids (``[events] session`` of an import) go through the same key, in a domain of their
own, to a non-negative 63-bit integer (:meth:`Pseudonymizer.session_keys`): a site's session id
may embed its user id or a cookie, and the stored key reveals neither.

The key comes, in order, from an explicit file, the environment variable
``TAILORED_PSEUDONYM_KEY`` (hex), or ``$TAILORED_HOME/pseudonym.key``, which is created
(32 random bytes, mode 0600) the first time it is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tailored.errors import TailoredError
from tailored.paths import tailored_home

__all__ = ["KEY_ENV", "KeyError_", "KeyMap", "Pseudonymizer", "load_key"]

KEY_ENV = "TAILORED_PSEUDONYM_KEY"
_HEX_CHARS = 32
_SESSION_DOMAIN = b"tailored session id\x00"
_SESSION_REKEY_DOMAIN = b"tailored session key rotation\x00"


class KeyError_(TailoredError, ValueError):
    """The pseudonymization key is missing or malformed."""


def load_key(key_file: Path | None = None, *, create: bool = True) -> bytes:
    """Return the key (bytes) from ``key_file``, the environment, or ``$TAILORED_HOME``."""
    if key_file is not None:
        return _read_key(key_file)
    env = os.environ.get(KEY_ENV)
    if env:
        try:
            key = bytes.fromhex(env.strip())
        except ValueError as e:
            raise KeyError_(
                f"{KEY_ENV} must be hex, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`"
            ) from e
        if len(key) < 16:
            raise KeyError_(f"{KEY_ENV} is {len(key)} bytes; use at least 16")
        return key
    default = tailored_home() / "pseudonym.key"
    if default.is_file():
        return _read_key(default)
    if not create:
        raise KeyError_(f"no pseudonymization key: set {KEY_ENV} or create {default}")
    default.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pseudonym.key.", dir=default.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        # link, not rename: if another process created the key first, keep theirs
        with contextlib.suppress(FileExistsError):
            os.link(tmp, default)
    finally:
        os.unlink(tmp)
    return _read_key(default)


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as e:
        raise KeyError_(f"{path}: cannot read a hex key ({e})") from e
    if len(key) < 16:
        raise KeyError_(f"{path}: key is {len(key)} bytes; use at least 16")
    return key


class Pseudonymizer:
    """Maps raw user ids to pseudonyms with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @property
    def fingerprint(self) -> str:
        """Identifies the key (not secret): datasets record it so ids are looked up with the
        same key they were written with."""
        return hmac.new(self._key, b"tailored key fingerprint", hashlib.sha256).hexdigest()[:16]

    def __call__(self, raw_id: str) -> str:
        if not isinstance(raw_id, str) or not raw_id:
            raise ValueError(f"user id must be a non-empty string, got {raw_id!r}")
        digest = hmac.new(self._key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:_HEX_CHARS]

    def many(self, raw_ids: Iterable[str]) -> np.ndarray:
        """Pseudonyms of ``raw_ids`` as a numpy array of ``str`` (fixed width)."""
        # one HMAC object per key, copied per id: about twice as fast as hmac.new each time
        base = hmac.new(self._key, digestmod=hashlib.sha256)
        out = []
        for raw in raw_ids:
            if not isinstance(raw, str) or not raw:
                raise ValueError(f"user id must be a non-empty string, got {raw!r}")
            h = base.copy()
            h.update(str(raw).encode("utf-8"))
            out.append(h.hexdigest()[:_HEX_CHARS])
        return np.asarray(out, dtype=f"<U{_HEX_CHARS}")

    def session_keys(self, raw_ids: Iterable[str]) -> np.ndarray:
        """int64 [n], each in [0, 2**63): the stored key of each session id, the first 63
        bits of its HMAC-SHA256 in a domain apart from user ids'. Equal ids get equal keys;
        among 10^9 distinct ids about 0.05 pairs are expected to share one."""

        def encoded(raw: str) -> bytes:
            if not isinstance(raw, str) or not raw:
                raise ValueError(f"session id must be a non-empty string, got {raw!r}")
            return raw.encode("utf-8")

        return self._keys63(_SESSION_DOMAIN, (encoded(raw) for raw in raw_ids))

    def rekey_sessions(self, old_keys: np.ndarray) -> np.ndarray:
        """int64 [n] in [0, 2**63): session keys written under another key, moved under this
        one (HMAC of the old key's value in a domain of its own). The raw session ids are
        not at hand when a key is rotated; equal keys stay equal, and without this key a
        stored key cannot be linked to the old one, nor so to a session id."""
        olds = np.asarray(old_keys, np.int64).reshape(-1).tolist()
        return self._keys63(
            _SESSION_REKEY_DOMAIN, (int(k).to_bytes(8, "big", signed=True) for k in olds)
        )

    def _keys63(self, domain: bytes, messages: Iterable[bytes]) -> np.ndarray:
        """int64 [n] in [0, 2**63): the first 63 bits of each message's HMAC-SHA256 under
        this key, after ``domain``."""
        base = hmac.new(self._key, domain, digestmod=hashlib.sha256)
        keys = []
        for message in messages:
            h = base.copy()
            h.update(message)
            keys.append(int.from_bytes(h.digest()[:8], "big") >> 1)
        return np.asarray(keys, np.int64).reshape(-1)


class KeyMap:
    """Re-keying: each of the site's users' pseudonym under the old key and under the new one.

    Built from the site's raw ids (:meth:`of`): a pseudonym cannot be turned into another
    without the id it was made from, which is the point of keying it. Stores map their user
    ids through :meth:`apply`; an id the map does not hold (a user the site no longer lists)
    is left as it is and counted. Session keys move through :meth:`apply_sessions` (with
    the new key's :meth:`Pseudonymizer.rekey_sessions`)."""

    def __init__(
        self,
        old: pa.Array,
        new: pa.Array,
        old_fingerprint: str,
        new_fingerprint: str,
        new_key: Pseudonymizer | None = None,
    ) -> None:
        self.old, self.new = old, new
        self.old_fingerprint, self.new_fingerprint = old_fingerprint, new_fingerprint
        self._new_key = new_key

    @classmethod
    def of(cls, raw_ids: Iterable[str], old: Pseudonymizer, new: Pseudonymizer) -> KeyMap:
        raw = sorted(set(raw_ids))
        return cls(
            pa.array(old.many(raw).tolist(), pa.string()),
            pa.array(new.many(raw).tolist(), pa.string()),
            old.fingerprint,
            new.fingerprint,
            new,
        )

    def __len__(self) -> int:
        return len(self.old)

    def apply(self, ids: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, int]:
        """``ids`` under the new key (those the map lacks unchanged), and how many it lacked."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        where = pc.index_in(ids, value_set=self.old)
        missing = int(where.null_count) - int(ids.null_count)
        mapped = pc.take(self.new, pc.fill_null(where, 0)) if len(self.new) else ids
        return pc.if_else(pc.is_null(where), ids, mapped), missing

    def apply_sessions(self, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Session keys (int64, null: none) under the new key, each distinct one hashed once."""
        if self._new_key is None:
            raise KeyError_("this key map was made without the new key: it cannot move sessions")
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        enc = keys.dictionary_encode()
        moved = self._new_key.rekey_sessions(enc.dictionary.to_numpy(zero_copy_only=False))
        return pc.take(pa.array(moved, pa.int64()), enc.indices)

    def pairs(self) -> Iterator[tuple[str, str]]:
        yield from zip(self.old.to_pylist(), self.new.to_pylist(), strict=True)
