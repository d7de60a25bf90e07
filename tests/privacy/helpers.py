"""Searching stores for a user's ids, shared by the erasure tests and the erasure benchmark:
every file's bytes (and a Parquet file's decoded values: compressed, dictionary-encoded,
its raw bytes can hide a value), and every Redis key and value read by its type."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import pyarrow.parquet as pq
import redis

__all__ = ["holding_files", "holding_redis"]


def holding_files(roots: Collection[Path], needles: Collection[str]) -> dict[str, set[str]]:
    """Each file under ``roots`` that holds any of ``needles``, and which."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            blob = path.read_bytes()
            hits = {n for n in needles if n.encode() in blob}
            if path.suffix == ".parquet":
                text = json.dumps(pq.read_table(path).to_pylist(), default=str)
                hits |= {n for n in needles if n in text}
            if hits:
                found[str(path)] = hits
    return found


def holding_redis(url: str, needles: Collection[str], prefix: str = "") -> dict[str, set[str]]:
    """Every key (under ``prefix``, if given) whose name or value holds a needle."""
    client = redis.Redis.from_url(url, decode_responses=True)
    readers = {
        "string": lambda k: client.get(k),
        "hash": lambda k: client.hgetall(k),
        "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        "list": lambda k: client.lrange(k, 0, -1),
        "set": lambda k: client.smembers(k),
        "stream": lambda k: client.xrange(k),
    }
    found: dict[str, set[str]] = {}
    try:
        for key in client.scan_iter(match=f"{prefix}:*" if prefix else "*", count=1000):
            text = key + json.dumps(readers[str(client.type(key))](key), default=str)
            hits = {n for n in needles if n in text}
            if hits:
                found[key] = hits
    finally:
        client.close()
    return found
