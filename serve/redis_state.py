"""The shared online state: one Redis that every server replica reads and writes.

Key layout (``P`` is the prefix, ``tailored`` unless the URL says ``?prefix=NAME``; ``U`` a
user pseudonym as the caller gives it; raw user ids never reach Redis):

- ``P:ev:U``       ZSET of U's kept events, scored by ``time_ms``; a member is
  ``SEQ|STREAM_ID|JSON`` with ``SEQ`` U's 16-digit zero-padded arrival number, so that
  events at the same time sort by arrival (Redis orders equal scores by member), and
  ``STREAM_ID`` the event's entry in ``P:events``. At most ``max_events_per_user`` are kept;
  the oldest by time go first.
- ``P:seq:U``      U's arrival counter (INCRBY).
- ``P:logged:U``   ZSET of the ``P:events`` ids of U's events that the per-user cap dropped
  from ``P:ev:U`` (scored by the id's milliseconds), so that an erasure still finds them in
  the log. Ids the log itself has dropped are pruned when U's next events are capped, and
  the whole set once the log has dropped its newest id (``P:logged-users``).
- ``P:logged-users`` ZSET of the users with a ``P:logged:U``, scored by its newest id's
  milliseconds: every Track deletes a few of those sets whose newest id the log has
  dropped, so that users who do not come back leave nothing behind.
- ``P:consent:U``  U's purposes, sorted and comma-joined (``""``: consent to nothing); no
  key: never set.
- ``P:consent-log:U`` LIST of U's consent changes, ``TIME_MS|PURPOSES``, oldest first.
- ``P:unavailable`` SET of site item ids not to recommend.
- ``P:page:R``     HASH of the page with request id R: ``rec`` its record (JSON,
  :meth:`tailored.serve.state.PageLog.encode`) and a field ``KIND:MODULE`` per feedback
  seen; it expires after ``[serve] page_log_days``.
- ``P:pages:U``    ZSET of U's logged page ids, scored by when they expire (an erasure's
  index).
- ``P:arm:A``      HASH of the bandit arm A's statistics, ``a<TAB>F<TAB>G`` and ``b<TAB>F``
  (HINCRBYFLOAT: replicas add to them at once without losing any).
- ``P:forgotten:T`` the time a user was erased or withdrew consent, T their tombstone
  (:func:`tailored.serve.state.tombstone`, a hash of the pseudonym).
- ``P:meta``       HASH: ``key_fingerprint``, the key the pseudonyms are under (re-keying).
- ``P:events``     STREAM of every accepted event (fields ``user`` and ``event``, the JSON
  array ``[item_id, type, time_ms, value, surface]``),
  the replicas' shared event log, capped near ``stream_maxlen`` (``MAXLEN ~``).

Atomicity: :meth:`RedisState.record` is one Lua script that checks each user's consent and
appends (or drops) their events; :meth:`~RedisState.set_consent` and
:meth:`~RedisState.forget` are one script each, so an event can never land between a
withdrawal and the erasure it implies. They also delete the user's entries still in
``P:events`` (the ids kept in ``P:ev:U`` and ``P:logged:U``), so that no command reads
anything of theirs again. What Redis itself keeps is the operator's to know: a deleted
stream entry's bytes stay in memory (and in an RDB snapshot or a replica's full sync) until
the rest of its node is deleted too, and an append-only file keeps the original writes until
it is rewritten (``BGREWRITEAOF``). Events the cap dropped before ``P:logged:U`` existed
stay in the log until its own cap drops them. The record script builds ``P:logged:U``
names from the prefix for the users it sweeps, and a script touches keys of
several users, so this needs one Redis (with replicas if wanted), not Redis Cluster.

Durability: Redis acknowledges a write once it is in Redis's memory, and :meth:`record`
returns then. Whether it is also on disk is Redis's own setting (``appendonly yes`` with
``appendfsync always`` for an fsync per write, ``everysec`` to lose at most about a second),
which the operator configures; with neither AOF nor snapshots a Redis restart loses it all.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import redis

from tailored.data.forget import RekeyError
from tailored.data.pseudonym import KeyMap
from tailored.experiments.bandit import ArmStats
from tailored.serve.state import (
    PERSONALIZATION,
    ArmUpdate,
    ConsentChange,
    Feedback,
    OnlineState,
    PageLog,
    RecordResult,
    StateError,
    StoredEvent,
    UserState,
    arm_stats,
    tombstone,
)

__all__ = ["RedisState"]

# KEYS: stream, users with logged ids, then per user: consent, seq, events, logged.
# ARGV: default_allows ('1'/'0'), cap, stream maxlen, purpose, key prefix, then per user:
# the user, n, then n pairs of (time_ms, json).
_RECORD = """
local default_allows = ARGV[1] == '1'
local cap = tonumber(ARGV[2])
local maxlen = ARGV[3]
local needle = ',' .. ARGV[4] .. ','
local prefix = ARGV[5]
local stream, users_key = KEYS[1], KEYS[2]

-- below the log's first entry: '(MS' (scores of ids the log has dropped), or everything
local function dropped_bound()
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 then
    return '+inf'
  end
  return '(' .. string.match(first[1][1], '^%d+')
end

local accepted, dropped = 0, 0
local a = 6
for k = 3, #KEYS, 4 do
  local consent_key, seq_key, events_key = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local logged_key = KEYS[k + 3]
  local user, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local consent = redis.call('GET', consent_key)
  local allowed = default_allows
  if consent then
    allowed = string.find(',' .. consent .. ',', needle, 1, true) ~= nil
  end
  if not allowed then
    dropped = dropped + n
    a = a + 2 * n
  elseif n > 0 then
    local seq = redis.call('INCRBY', seq_key, n) - n
    for i = 1, n do
      local time_ms, event = ARGV[a], ARGV[a + 1]
      a = a + 2
      local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
                            'user', user, 'event', event)
      redis.call('ZADD', events_key, time_ms,
                 string.format('%016d', seq + i) .. '|' .. id .. '|' .. event)
    end
    local extra = redis.call('ZCARD', events_key) - cap
    if extra > 0 then
      -- the dropped events stay in the log: remember their ids for an erasure
      for _, m in ipairs(redis.call('ZRANGE', events_key, 0, extra - 1)) do
        local id = string.match(m, '^%d+|([^|]+)|')
        redis.call('ZADD', logged_key, tonumber(string.match(id, '^%d+')), id)
      end
      redis.call('ZREMRANGEBYRANK', events_key, 0, extra - 1)
      -- and forget those the log has dropped since (its ids only grow)
      redis.call('ZREMRANGEBYSCORE', logged_key, '-inf', dropped_bound())
      local newest = redis.call('ZRANGE', logged_key, -1, -1, 'WITHSCORES')
      if #newest == 0 then
        redis.call('ZREM', users_key, user)
      else
        redis.call('ZADD', users_key, newest[2], user)
      end
    end
    accepted = accepted + n
  end
end
-- users whose newest remembered id the log has dropped: all of theirs are gone (a few each
-- call, so that users who never come back do not keep ids forever)
local stale = redis.call('ZRANGEBYSCORE', users_key, '-inf', dropped_bound(), 'LIMIT', 0, 64)
for _, user in ipairs(stale) do
  redis.call('DEL', prefix .. ':logged:' .. user)
end
if #stale > 0 then
  redis.call('ZREM', users_key, unpack(stale))
end
return {accepted, dropped}
"""

# KEYS: consent, seq, events, logged, stream, users with logged ids, logged pages, tombstone,
# consent history. ARGV: 'set' and the purposes, or 'forget'; then whether to erase the
# events and pages and leave the tombstone ('1'/'0'); then the user, the page keys' prefix and
# the time (ms). Returns what was erased: events (those kept for serving, and those only the
# log still held), pages, consent and consent history entries.
_ERASE = """
local consent, history = 0, 0
if ARGV[1] == 'set' then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('RPUSH', KEYS[9], ARGV[6] .. '|' .. ARGV[2])
else
  consent = redis.call('DEL', KEYS[1])
  history = redis.call('LLEN', KEYS[9])
  redis.call('DEL', KEYS[9])
end
if ARGV[3] ~= '1' then
  return {0, 0, consent, history}
end
local members = redis.call('ZRANGE', KEYS[3], 0, -1)
local ids = {}
for _, m in ipairs(members) do
  ids[#ids + 1] = string.match(m, '^%d+|([^|]+)|')
  if #ids == 500 then
    redis.call('XDEL', KEYS[5], unpack(ids))
    ids = {}
  end
end
if #ids > 0 then
  redis.call('XDEL', KEYS[5], unpack(ids))
end
local logged = 0
local old = redis.call('ZRANGE', KEYS[4], 0, -1)
for i = 1, #old, 500 do
  logged = logged + redis.call('XDEL', KEYS[5], unpack(old, i, math.min(i + 499, #old)))
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[6], ARGV[4])
local pages = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[7], 0, -1)) do
  pages = pages + redis.call('DEL', ARGV[5] .. id)
end
redis.call('DEL', KEYS[7])
redis.call('SET', KEYS[8], ARGV[6])
return {#members + logged, pages, consent, history}
"""

# KEYS: the old name's consent, consent history, seq, events, logged ids, pages; the same six
# of the new name; the log, the users with logged ids, the old and the new tombstone. ARGV:
# the old and the new pseudonym. Moves one user to the new pseudonym in one step: the keys
# renamed, each of their entries in the log re-added under the new name (a new id, which
# their events then name), their tombstone copied. Returns the events moved.
_REKEY = """
for i = 1, 6 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 6])
  end
end
local stream = KEYS[13]
local evs = redis.call('ZRANGE', KEYS[10], 0, -1, 'WITHSCORES')
for i = 1, #evs, 2 do
  local m, score = evs[i], evs[i + 1]
  local seq, id, event = string.match(m, '^(%d+)|([^|]+)|(.*)$')
  local newid = id
  if #redis.call('XRANGE', stream, id, id) > 0 then
    redis.call('XDEL', stream, id)
    newid = redis.call('XADD', stream, '*', 'user', ARGV[2], 'event', event)
  end
  redis.call('ZREM', KEYS[10], m)
  redis.call('ZADD', KEYS[10], score, seq .. '|' .. newid .. '|' .. event)
end
local newest = nil
for _, id in ipairs(redis.call('ZRANGE', KEYS[11], 0, -1)) do
  local entry = redis.call('XRANGE', stream, id, id)
  redis.call('ZREM', KEYS[11], id)
  if #entry > 0 then
    redis.call('XDEL', stream, id)
    local newid = redis.call('XADD', stream, '*', 'user', ARGV[2], 'event', entry[1][2][4])
    newest = tonumber(string.match(newid, '^%d+'))
    redis.call('ZADD', KEYS[11], newest, newid)
  end
end
redis.call('ZREM', KEYS[14], ARGV[1])
if newest then  -- scored by the newest id it remembers, as the record script keeps it
  redis.call('ZADD', KEYS[14], newest, ARGV[2])
end
local gone = redis.call('GET', KEYS[15])
if gone then
  redis.call('SET', KEYS[16], gone)
end
return #evs / 2
"""

# KEYS: a user's events. ARGV: the bound (ms). Returns the stream ids of the user's events
# from before the bound, now removed from the user's events (the caller deletes them from the
# log).
_PURGE = """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local ids = {}
for _, m in ipairs(old) do
  ids[#ids + 1] = string.match(m, '^%d+|([^|]+)|')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return ids
"""

# ARGV: a JSON document {pages: [[key, record, ttl_ms, user index key or "", id, tombstone
# key or "", served_ms, [[arm key, field, amount]]]], feedback: [[page key, flag, [[arm key,
# field, amount]]]]}, then the time (ms). Returns the pages kept and the new feedback.
_PAGES = """
local doc = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
local function apply(incs)
  for _, i in ipairs(incs) do
    redis.call('HINCRBYFLOAT', i[1], i[2], i[3])
  end
end
local kept = 0
for _, p in ipairs(doc.pages) do
  local gone = false
  if p[6] ~= '' then
    local at = redis.call('GET', p[6])
    gone = at and tonumber(at) >= tonumber(p[7])
  end
  if not gone then  -- a user erased after the page was served: the erasure wins
    redis.call('DEL', p[1])
    redis.call('HSET', p[1], 'rec', p[2])
    redis.call('PEXPIRE', p[1], p[3])
    if p[4] ~= '' then
      redis.call('ZADD', p[4], now + p[3], p[5])
      redis.call('ZREMRANGEBYSCORE', p[4], '-inf', now)
      redis.call('PEXPIRE', p[4], p[3])
    end
    apply(p[8])
    kept = kept + 1
  end
end
local new = 0
for _, f in ipairs(doc.feedback) do
  if redis.call('EXISTS', f[1]) == 1 and redis.call('HSETNX', f[1], f[2], '1') == 1 then
    new = new + 1
    apply(f[3])
  end
end
return {kept, new}
"""


class RedisState(OnlineState):
    """Online state in Redis ``client`` (which must decode responses as str) under
    ``prefix``; see the module docstring for the keys."""

    backend = "redis"

    @property
    def store(self) -> str:
        return f"online state {self.where} (prefix {self.prefix!r})"

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "tailored",
        *,
        max_events_per_user: int = 1000,
        stream_maxlen: int = 1_000_000,
    ) -> None:
        if not prefix:
            raise StateError("redis online state: the key prefix must not be empty")
        if max_events_per_user < 1 or stream_maxlen < 1:
            raise StateError(
                "redis online state: max_events_per_user and stream_maxlen must be at least 1"
            )
        self._client = client
        self.prefix = prefix
        self.max_events_per_user = max_events_per_user
        self.stream_maxlen = stream_maxlen
        self.where = _describe(client)
        self._closed = False
        self._record = client.register_script(_RECORD)
        self._erase = client.register_script(_ERASE)
        self._pages = client.register_script(_PAGES)
        self._purge = client.register_script(_PURGE)
        self._rekey = client.register_script(_REKEY)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_events_per_user: int = 1000,
        stream_maxlen: int = 1_000_000,
        timeout: float | None = None,
    ) -> RedisState:
        """``redis://[:PASSWORD@]HOST:PORT/DB[?prefix=NAME]`` (also ``rediss://``,
        ``unix://``); checks that Redis answers. ``timeout``: seconds to connect or to get
        an answer (a hung Redis fails a call in that time, not never)."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [v for k, v in query if k == "prefix"]
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        try:
            client = redis.Redis.from_url(
                urlunsplit(parts._replace(query=rest)),
                decode_responses=True,
                **(
                    {"socket_timeout": timeout, "socket_connect_timeout": timeout}
                    if timeout
                    else {}
                ),
            )
        except (ValueError, redis.RedisError) as e:
            raise StateError(f"{_redact(url)}: not a Redis URL ({e})") from e
        state = cls(
            client,
            prefixes[-1] if prefixes else "tailored",
            max_events_per_user=max_events_per_user,
            stream_maxlen=stream_maxlen,
        )
        try:
            state._call("connect", client.ping)
        except StateError:
            state.close()
            raise
        return state

    # -- keys and calls --------------------------------------------------------------------
    def _keys(self, user: str) -> list[str]:
        p = self.prefix
        return [f"{p}:consent:{user}", f"{p}:seq:{user}", f"{p}:ev:{user}", f"{p}:logged:{user}"]

    def _erase_keys(self, user: str) -> list[str]:
        p = self.prefix
        return [
            *self._keys(user),
            f"{p}:events",
            f"{p}:logged-users",
            f"{p}:pages:{user}",
            f"{p}:forgotten:{tombstone(user)}",
            f"{p}:consent-log:{user}",
        ]

    def _page_key(self, request_id: str) -> str:
        return f"{self.prefix}:page:{request_id}"

    def _arm_key(self, arm: str) -> str:
        return f"{self.prefix}:arm:{arm}"

    def _incs(self, update: ArmUpdate) -> list[list[str]]:
        key = self._arm_key(update.arm)
        return [[key, name, repr(float(v))] for name, v in update.increments()]

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise StateError(f"redis online state at {self.where} is closed")
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            raise StateError(f"redis online state at {self.where}: {what} failed ({e})") from e

    # -- the interface ---------------------------------------------------------------------
    def record(
        self, events: Mapping[str, Sequence[StoredEvent]], *, default_allows: bool
    ) -> RecordResult:
        keys = [f"{self.prefix}:events", f"{self.prefix}:logged-users"]
        args: list[Any] = [
            "1" if default_allows else "0",
            self.max_events_per_user,
            self.stream_maxlen,
            PERSONALIZATION,
            self.prefix,
        ]
        for user, evs in events.items():
            keys += self._keys(user)
            args += [user, len(evs)]
            for e in evs:
                args += [int(e.time_ms), _encode(e)]
        if len(keys) == 2:
            return RecordResult(0, 0)
        accepted, dropped = self._call("record", self._record, keys=keys, args=args)
        return RecordResult(int(accepted), int(dropped))

    def user(self, user: str, limit: int) -> UserState:
        consent_key, _, events_key, _ = self._keys(user)
        limit = max(int(limit), 0)

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)  # one snapshot, one round trip
            pipe.get(consent_key)
            pipe.exists(f"{self.prefix}:forgotten:{tombstone(user)}")
            if limit:  # ZRANGE -0 -1 would be everything
                pipe.zrange(events_key, -limit, -1)
            return pipe.execute()

        consent, gone, *members = self._call("read user", read)
        return UserState(
            consent=None if consent is None else _split(consent),
            events=tuple(_decode(m) for m in (members[0] if members else [])),
            forgotten=bool(gone),
        )

    def scan(self, types: Collection[str] | None = None) -> Iterator[tuple[str, StoredEvent]]:
        chosen = None if types is None else frozenset(types)
        pattern = f"{self.prefix}:ev:*"
        start = len(self.prefix) + len(":ev:")
        keys = self._call("scan users", lambda: sorted(self._client.scan_iter(pattern, 1000)))
        for key in keys:
            members = self._call("scan user", self._client.zrange, key, 0, -1)
            for m in members:
                event = _decode(m)
                if chosen is None or event.type in chosen:
                    yield key[start:], event

    def set_consent(self, user: str, purposes: Iterable[str]) -> int:
        chosen = frozenset(purposes)
        erase = PERSONALIZATION not in chosen
        keys = [*self._erase_keys(user)]
        args = ["set", ",".join(sorted(chosen)), "1" if erase else "0", user, self._page_key("")]
        args.append(str(int(time.time() * 1000)))
        return int(self._call("set consent", self._erase, keys=keys, args=args)[0])

    def forget(self, user: str) -> dict[str, int]:
        keys = [*self._erase_keys(user)]
        args = ["forget", "", "1", user, self._page_key(""), str(int(time.time() * 1000))]
        events, pages, consent, history = self._call("forget", self._erase, keys=keys, args=args)
        return {
            "consent": int(consent),
            "consent_history": int(history),
            "events": int(events),
            "pages": int(pages),
        }

    def purge(self, before_ms: int) -> dict[str, int]:
        """Each user's events from before ``before_ms`` (one script per user), then the log's
        entries of events from before it that no user's events named any more (those the
        per-user cap dropped), then the logged pages served before it."""
        p = self.prefix
        stream = f"{p}:events"
        bound = str(int(before_ms))
        events = 0
        for key in self._call(
            "scan users", lambda: list(self._client.scan_iter(f"{p}:ev:*", 1000))
        ):
            ids = self._call("purge", self._purge, keys=[key], args=[bound])
            events += len(ids)
            for i in range(0, len(ids), 500):
                self._call("purge log", self._client.xdel, stream, *ids[i : i + 500])
        logged = 0
        last = "-"
        while True:
            # after the last entry read (exclusive: it may have been deleted just now)
            start = last if last == "-" else f"({last}"
            entries = self._call("read log", self._client.xrange, stream, start, "+", 1000)
            if not entries:
                break
            old = [i for i, f in entries if json.loads(f["event"])[2] < before_ms]
            if old:
                logged += int(self._call("purge log", self._client.xdel, stream, *old))
            last = entries[-1][0]
        pages = 0
        for key in self._call(
            "scan pages", lambda: list(self._client.scan_iter(f"{p}:page:*", 1000))
        ):
            rec = self._call("read page", self._client.hget, key, "rec")
            if rec is not None and PageLog.decode(rec, ()).time_ms < before_ms:
                pages += int(self._call("purge page", self._client.delete, key))
        return {"events": events, "log_only_events": logged, "pages": pages}

    def key_fingerprint(self) -> str | None:
        value = self._call("read meta", self._client.hget, f"{self.prefix}:meta", "key_fingerprint")
        return None if value is None else str(value)

    def rekey(self, keys: KeyMap) -> dict[str, int]:
        """Every user moved to the new pseudonym, each in one script (their keys renamed,
        their entries in the log re-added under the new name, their tombstone copied), then
        their logged pages' records, then the key's fingerprint recorded. A run that stops
        halfway leaves each user wholly under one name or the other, readable; the next run
        moves those left (users already moved are not in the old key's map)."""
        now = self.key_fingerprint()
        if now == keys.new_fingerprint:
            return {"users": 0, "unmapped_users": 0, "already": 1}
        if now not in (None, keys.old_fingerprint):
            raise RekeyError(
                f"{self.store}: written with key {now}, neither the old key "
                f"({keys.old_fingerprint}) nor the new ({keys.new_fingerprint})"
            )
        p = self.prefix
        users: set[str] = set()
        for kind in ("ev", "consent", "consent-log", "seq", "logged", "pages"):
            start = len(p) + len(kind) + 2
            found = self._call(
                "scan users", lambda k=kind: list(self._client.scan_iter(f"{p}:{k}:*", 1000))
            )
            users.update(key[start:] for key in found)
        # erased users have nothing left but their tombstone: carried over for every pair
        pairs = list(keys.pairs())
        for i in range(0, len(pairs), 1000):
            chunk = pairs[i : i + 1000]
            found = self._call(
                "read tombstones",
                self._client.mget,
                [f"{p}:forgotten:{tombstone(old)}" for old, _ in chunk],
            )
            for (_, new), when in zip(chunk, found, strict=True):
                if when is not None:
                    self._call(
                        "rekey tombstone", self._client.set, f"{p}:forgotten:{tombstone(new)}", when
                    )
        names = sorted(users)
        mapped, _ = keys.apply(pa.array(names, pa.string()))
        moved = unmapped = 0
        new_names = set(keys.new.to_pylist())
        for old, new in zip(names, mapped.to_pylist(), strict=True):
            if old == new:
                unmapped += old not in new_names  # a user moved by an earlier run is not
                continue
            keys_ = [*self._user_keys(old), *self._user_keys(new)]
            keys_ += [f"{p}:events", f"{p}:logged-users"]
            keys_ += [f"{p}:forgotten:{tombstone(old)}", f"{p}:forgotten:{tombstone(new)}"]
            self._call("rekey", self._rekey, keys=keys_, args=[old, new])
            for rid in self._call("read pages", self._client.zrange, f"{p}:pages:{new}", 0, -1):
                rec = self._call("read page", self._client.hget, self._page_key(rid), "rec")
                if rec is not None:
                    page = dataclasses.replace(PageLog.decode(rec, ()), user=new)
                    self._call(
                        "rekey page", self._client.hset, self._page_key(rid), "rec", page.encode()
                    )
            moved += 1
        self._call(
            "write meta",
            self._client.hset,
            f"{p}:meta",
            "key_fingerprint",
            keys.new_fingerprint,
        )
        return {"users": moved, "unmapped_users": unmapped, "already": 0}

    def _user_keys(self, user: str) -> list[str]:
        p = self.prefix
        return [
            f"{p}:consent:{user}",
            f"{p}:consent-log:{user}",
            f"{p}:seq:{user}",
            f"{p}:ev:{user}",
            f"{p}:logged:{user}",
            f"{p}:pages:{user}",
        ]

    def consent_history(self, user: str) -> list[ConsentChange]:
        rows = self._call(
            "read consent history", self._client.lrange, f"{self.prefix}:consent-log:{user}", 0, -1
        )
        out = []
        for row in rows:
            t, _, purposes = row.partition("|")
            out.append(ConsentChange(int(t), _split(purposes)))
        return out

    def consents(self) -> dict[str, frozenset[str]]:
        pattern = f"{self.prefix}:consent:*"
        start = len(self.prefix) + len(":consent:")
        keys = self._call("scan consent", lambda: list(self._client.scan_iter(pattern, 1000)))
        out: dict[str, frozenset[str]] = {}
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            values = self._call("read consent", self._client.mget, chunk)
            out.update(
                {k[start:]: _split(v) for k, v in zip(chunk, values, strict=True) if v is not None}
            )
        return out

    def user_pages(self, user: str) -> list[PageLog]:
        ids = self._call("read pages", self._client.zrange, f"{self.prefix}:pages:{user}", 0, -1)
        out = []
        for rid in ids:
            fields = self._call("read page", self._client.hgetall, self._page_key(rid))
            if fields and "rec" in fields:
                out.append(_page(fields))
        out.sort(key=lambda g: (g.time_ms, g.request_id))
        return out

    def set_available(self, item_ids: Iterable[str], available: bool) -> int:
        ids = list(item_ids)
        key = f"{self.prefix}:unavailable"

        def write() -> int:
            pipe = self._client.pipeline(transaction=True)
            if ids:
                (pipe.srem if available else pipe.sadd)(key, *ids)
            pipe.scard(key)
            return int(pipe.execute()[-1])

        return int(self._call("set availability", write))

    def unavailable(self) -> frozenset[str]:
        key = f"{self.prefix}:unavailable"
        return frozenset(self._call("read unavailable", self._client.smembers, key))

    # -- pages and arms --------------------------------------------------------------------
    def log_pages(
        self,
        pages: Sequence[PageLog],
        updates: Mapping[str, Sequence[ArmUpdate]],
        ttl_ms: int,
    ) -> int:
        p = self.prefix
        doc = {
            "pages": [
                [
                    self._page_key(g.request_id),
                    g.encode(),
                    int(ttl_ms),
                    f"{p}:pages:{g.user}" if g.user else "",
                    g.request_id,
                    f"{p}:forgotten:{tombstone(g.user)}" if g.user else "",
                    str(int(g.served_ms)),
                    [i for u in updates.get(g.request_id, ()) for i in self._incs(u)],
                ]
                for g in pages
            ],
            "feedback": [],
        }
        return self._run_pages("log pages", doc)[0]

    def _run_pages(self, what: str, doc: dict[str, Any]) -> tuple[int, int]:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        now = int(time.time() * 1000)
        kept, new = self._call(what, self._pages, keys=[], args=[text, now])
        return int(kept), int(new)

    def page(self, request_id: str) -> PageLog | None:
        fields = self._call("read page", self._client.hgetall, self._page_key(request_id))
        return _page(fields) if fields and "rec" in fields else None

    def page_feedback(self, feedback: Sequence[Feedback]) -> int:
        doc = {
            "pages": [],
            "feedback": [
                [
                    self._page_key(f.request_id),
                    f.mark,
                    self._incs(f.update) if f.update is not None else [],
                ]
                for f in feedback
            ],
        }
        return self._run_pages("page feedback", doc)[1]

    def arms(self, arms: Collection[str]) -> dict[str, ArmStats]:
        chosen = list(dict.fromkeys(arms))

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            for arm in chosen:
                pipe.hgetall(self._arm_key(arm))
            return pipe.execute()

        got = self._call("read arms", read) if chosen else []
        return {
            arm: arm_stats((k, float(v)) for k, v in fields.items())
            for arm, fields in zip(chosen, got, strict=True)
            if fields
        }

    def pages(self) -> Iterator[PageLog]:
        pattern = self._page_key("*")
        keys = self._call("scan pages", lambda: list(self._client.scan_iter(pattern, 1000)))
        out: list[PageLog] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]

            def read(chunk: list[str] = chunk) -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                for key in chunk:
                    pipe.hgetall(key)
                return pipe.execute()

            out += [_page(f) for f in self._call("read pages", read) if f and "rec" in f]
        out.sort(key=lambda g: (g.time_ms, g.request_id))
        yield from out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
        self._client.connection_pool.disconnect()


def _encode(e: StoredEvent) -> str:
    event = [e.item_id, e.type, int(e.time_ms), float(e.value), e.surface]
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def _decode(member: str) -> StoredEvent:
    item, kind, time_ms, value, surface = json.loads(member.split("|", 2)[2])
    return StoredEvent(item, kind, int(time_ms), float(value), surface)


def _page(fields: Mapping[str, str]) -> PageLog:
    return PageLog.decode(fields["rec"], (f for f in fields if f != "rec"))


def _split(purposes: str) -> frozenset[str]:
    return frozenset(p for p in purposes.split(",") if p)


def _describe(client: redis.Redis) -> str:
    """Where ``client`` connects, without credentials."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))
