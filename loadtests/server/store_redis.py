"""The reference server's ledger in Redis (redis-py), shared by every worker process and host.

Each unit of work gets a :class:`RedisLedger`: a :class:`~sim.strategies.ledger.Ledger` whose
tokens and sessions are read from Redis on first use and written back, with the counters, in one
``MULTI``/``EXEC``. An *atomic* unit ``WATCH``es every key it reads, so when another worker
changed one of them before ``EXEC`` the unit is run again on fresh data — a refresh token is then
rotated exactly once, however many workers receive it together. A non-atomic unit writes without
watching: a check-then-write server checked in an earlier unit, so concurrent refreshes all pass.

Keys (under ``<namespace>:``): ``t:<id>`` / ``s:<id>`` a token / session as JSON, expiring
``retain_s`` after the token or the session's last token does; ``b:<session>`` the bases the
session's access tokens were minted for (duplicate detection, ``SADD``); ``totals`` a hash of the
running totals (never expires); ``records`` the record rows (when kept); ``users`` / ``names`` the
user-name mapping; ``shared:<name>`` values every worker agrees on (signing key, start time).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any, Callable, TypeVar

import anyio.to_thread
import redis
from redis.exceptions import WatchError

from loadtests.server.store import Txn, mint_row
from sim.strategies.ledger import TOTALS, Ledger, LedgerObserver, Session, Token

T = TypeVar("T")

#: how many times an atomic unit of work is tried again after a concurrent change
MAX_ATTEMPTS = 1000


class _Buffer(LedgerObserver):
    """Holds a unit's observer calls until its writes are committed (a retried unit's never were)."""

    def __init__(self) -> None:
        self.mints: list[tuple[Token, str, float]] = []
        self.rows: list[tuple] = []

    def on_mint(self, token, *, cause, duplicate, now):
        self.mints.append((token, cause, now))

    def on_reuse(self, token, *, outcome, now):
        self.rows.append((now, outcome, "", token.session, token.id, None))

    def on_revoke(self, session, *, now):
        self.rows.append((now, "revoke", "", session.id, None, None))

    def on_displace(self, token, *, now):
        self.rows.append((now, "displaced", "", token.session, token.id, None))


class _Loaded(dict):
    """A dict filled from Redis on first access of a key (``KeyError`` when Redis has none)."""

    def __init__(self, load: Callable[[int], Any]) -> None:
        super().__init__()
        self._load = load

    def __missing__(self, key):
        value = self._load(key)
        if value is None:
            raise KeyError(key)
        self[key] = value
        return value

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


class RedisLedger(Ledger):
    """One unit of work's view of the ledger in Redis (see the module docstring)."""

    def __init__(self, store: "RedisStore", pipe: redis.client.Pipeline, watch: bool) -> None:
        super().__init__(_Buffer())
        self.store = store
        self.pipe = pipe
        self.watch = watch
        self.tokens = _Loaded(lambda key: self._load("t", key, Token))
        self.sessions = _Loaded(lambda key: self._load("s", key, Session))
        self._snapshots: dict[str, str] = {}
        self._new_bases: list[tuple[int, int]] = []

    # --- reads -------------------------------------------------------------------------------

    def _load(self, prefix: str, key: int, cls):
        name = self.store.key(f"{prefix}:{int(key)}")
        if self.watch:
            self.pipe.watch(name)
            raw = self.pipe.get(name)
        else:
            raw = self.store.client.get(name)
        if raw is None:
            return None
        self._snapshots[name] = raw.decode()
        fields = json.loads(raw)
        if cls is Token and fields.get("successor") is not None:
            fields["successor"] = tuple(fields["successor"])
        return cls(**fields)

    # --- what Ledger asks of its storage -----------------------------------------------------

    def _next_token_id(self) -> int:
        return int(self.store.client.incr(self.store.key("ids:token")))

    def _next_session_id(self) -> int:
        return int(self.store.client.incr(self.store.key("ids:session")))

    def _first_basis(self, session_id: int, basis: int) -> bool:
        # decided by SADD when the unit commits: concurrent units each see their own answer
        self._new_bases.append((session_id, basis))
        return True

    # --- commit ------------------------------------------------------------------------------

    def commit(self, now: float) -> None:
        """Write what changed in one ``MULTI``/``EXEC`` (``WatchError`` if a watched key moved),
        then count duplicates and keep the record rows."""
        store, pipe = self.store, self.pipe
        pipe.multi()
        for prefix, objects in (("t", self.tokens), ("s", self.sessions)):
            for key, obj in dict.items(objects):
                name = store.key(f"{prefix}:{key}")
                text = json.dumps(dataclasses.asdict(obj), separators=(",", ":"))
                if self._snapshots.get(name) != text:
                    pipe.set(name, text, px=store.ttl_ms(obj.expires_at_s, now))
        increments = {k: v for k, v in self.counters.items() if v}
        for name, amount in increments.items():
            pipe.hincrby(store.key("totals"), name, amount)
        for session_id, basis in self._new_bases:
            pipe.sadd(store.key(f"b:{session_id}"), basis)
            ttl = store.ttl_ms(self.sessions[session_id].expires_at_s, now)
            # two commands per basis either way: the results below pair up
            if ttl is None:
                pipe.persist(store.key(f"b:{session_id}"))
            else:
                pipe.pexpire(store.key(f"b:{session_id}"), ttl)
        results = pipe.execute()
        added = results[len(results) - 2 * len(self._new_bases)::2] if self._new_bases else []
        duplicates = {pair for pair, fresh in zip(self._new_bases, added) if not fresh}
        if duplicates:
            store.client.hincrby(store.key("totals"), "duplicate_tokens", len(duplicates))
        if store.keep_records:
            rows = [mint_row(token, cause, (token.session, token.basis) in duplicates and token.kind == "access", t)
                    for token, cause, t in self.observer.mints] + self.observer.rows
            rows.sort(key=lambda row: row[0])
            if rows:
                store.client.rpush(store.key("records"), *(json.dumps(row) for row in rows))


class RedisStore:
    """The ledger in the Redis at ``url``, under ``namespace`` (a fresh one when None).

    Units of work run in a worker thread (redis-py is blocking), so the event loop keeps serving
    while one waits for Redis."""

    shared = True

    def __init__(self, url: str, *, retain_s: float | None, records: bool, namespace: str | None,
                 wall: Callable[[float], float | None]) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ValueError(f"store {url}: Redis does not answer ({exc})") from None
        self.url = url
        self.namespace = namespace or f"refreshlab:{secrets.token_hex(8)}"
        self.instance = self.namespace.rpartition(":")[2] or self.namespace
        self.retain_s = retain_s or 0.0
        self.keep_records = records
        self.wall = wall

    def key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    def ttl_ms(self, expires_at_s: float, now: float) -> int | None:
        """Milliseconds until ``retain_s`` after scenario time ``expires_at_s``; None (no expiry)
        when the server's clock does not move by itself (a test clock)."""
        wall_s = self.wall(expires_at_s - now + self.retain_s)
        return None if wall_s is None else max(1, int(wall_s * 1000) + 1)

    async def run(self, work: Callable[[Txn], T], *, atomic: bool = True) -> T:
        """Run ``work`` as one unit of work: watched and retried when ``atomic``."""
        return await anyio.to_thread.run_sync(self._run, work, atomic)

    def _run(self, work: Callable[[Txn], T], atomic: bool) -> T:
        for _ in range(MAX_ATTEMPTS):
            with self.client.pipeline(transaction=True) as pipe:
                txn = _RedisTxn(self, pipe, atomic)
                try:
                    result = work(txn)
                    txn.ledger.commit(self.now())
                    return result
                except WatchError:
                    continue
        raise RuntimeError(f"a unit of work conflicted {MAX_ATTEMPTS} times in a row")

    def now(self) -> float:
        """Scenario seconds now (for expiries); the server sets this to its clock's."""
        return 0.0

    def user_id(self, username: str) -> int:
        users = self.key("users")
        found = self.client.hget(users, username)
        if found is None:
            candidate = int(self.client.incr(self.key("ids:user")))
            if self.client.hsetnx(users, username, candidate):
                self.client.hset(self.key("names"), candidate, username)
            found = self.client.hget(users, username)
        return int(found)

    def username(self, user: int) -> str:
        name = self.client.hget(self.key("names"), user)
        if name is None:
            raise KeyError(user)
        return name.decode()

    def shared_value(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The value every worker agrees on: the first worker's ``make()`` wins."""
        self.client.set(self.key(f"shared:{name}"), make(), nx=True)
        return self.client.get(self.key(f"shared:{name}"))

    def totals(self) -> dict[str, int]:
        raw = self.client.hgetall(self.key("totals"))
        values = {k.decode(): int(v) for k, v in raw.items()}
        return {k: values.get(k, 0) for k in TOTALS}

    def records(self) -> list[tuple]:
        return [tuple(json.loads(row)) for row in self.client.lrange(self.key("records"), 0, -1)]

    def sizes(self) -> dict[str, Any]:
        tokens = sum(1 for _ in self.client.scan_iter(self.key("t:*"), count=1000))
        sessions = sum(1 for _ in self.client.scan_iter(self.key("s:*"), count=1000))
        return {"tokens": tokens, "sessions": sessions, "records": int(self.client.llen(self.key("records")))}

    def join_auth_tier(self) -> None:
        """Count one more server process (each has an auth tier of its own) in the shared
        auth-tier statistics."""
        self.client.incr(self.key("auth:processes"))

    async def add_auth_stats(self, counts: dict[str, int], busy: dict[int, float], queued: dict[int, float],
                             waits: list[tuple[float, float]]) -> None:
        """Add one process's auth-tier increments to the shared statistics (one round trip)."""
        def add() -> None:
            with self.client.pipeline(transaction=False) as pipe:
                for name, n in counts.items():
                    pipe.hincrby(self.key("auth:counts"), name, n)
                for i, seconds in busy.items():
                    pipe.hincrbyfloat(self.key("auth:busy"), i, seconds)
                for i, seconds in queued.items():
                    pipe.hincrbyfloat(self.key("auth:queued"), i, seconds)
                if waits:
                    pipe.rpush(self.key("auth:waits"), *(json.dumps(w) for w in waits))
                pipe.execute()

        await anyio.to_thread.run_sync(add)

    async def auth_stats(self, waits: bool) -> dict[str, Any]:
        """The auth-tier statistics every process added: ``processes``, ``counts``, per-second
        ``busy`` and ``queued`` lists and (with ``waits``) the call waits."""
        def read() -> dict[str, Any]:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.key("auth:processes"))
                pipe.hgetall(self.key("auth:counts"))
                pipe.hgetall(self.key("auth:busy"))
                pipe.hgetall(self.key("auth:queued"))
                if waits:
                    pipe.lrange(self.key("auth:waits"), 0, -1)
                got = pipe.execute()
            return {"processes": int(got[0] or 0), "counts": {k.decode(): int(v) for k, v in got[1].items()},
                    "busy": _bins(got[2]), "queued": _bins(got[3]),
                    "waits": [tuple(json.loads(w)) for w in got[4]] if waits else []}

        return await anyio.to_thread.run_sync(read)

    def close(self) -> None:
        self.client.close()


def _bins(fields: dict[bytes, bytes]) -> list[float]:
    """A hash of one-second bin -> seconds as a list indexed by bin."""
    values = {int(k): float(v) for k, v in fields.items()}
    out = [0.0] * (max(values) + 1 if values else 0)
    for i, v in values.items():
        out[i] = v
    return out


class _RedisTxn:
    """A unit of work over Redis: its :class:`RedisLedger` and the store's user names."""

    def __init__(self, store: RedisStore, pipe, watch: bool) -> None:
        self.ledger = RedisLedger(store, pipe, watch)
        self.user_id = store.user_id
        self.username = store.username
