"""Where the reference server keeps its ledger: in this process (the default) or in Redis
(:mod:`loadtests.server.store_redis`, shared by several uvicorn workers or hosts).

A store runs *units of work*: a function handed a :class:`Txn` (the ledger, plus the server's user
names) whose reads and writes take effect together. The server policy runs inside them unchanged;
only the store knows whether the ledger lives in a dict or in Redis.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Protocol, TypeVar

from sim.strategies.ledger import Ledger, LedgerObserver, Session, Token

T = TypeVar("T")


class Txn(Protocol):
    """What a unit of work sees: the ledger and the mapping of user names to ledger user numbers."""

    ledger: Ledger

    def user_id(self, username: str) -> int:
        """The ledger's user number for ``username`` (assigned on first use)."""

    def username(self, user: int) -> str:
        """The name behind user number ``user``."""


class LedgerRecorder(LedgerObserver):
    """Keeps the ledger's mint, reuse, revoke and displacement happenings as rows of ``protocol.RECORD_COLUMNS``
    (``t_s`` in scenario seconds, ``outcome`` per the vocabulary of :mod:`sim.metrics`)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def on_mint(self, token: Token, *, cause: str, duplicate: bool, now: float) -> None:
        self.rows.append(mint_row(token, cause, duplicate, now))

    def on_reuse(self, token: Token, *, outcome: str, now: float) -> None:
        self.rows.append((now, outcome, "", token.session, token.id, None))

    def on_revoke(self, session: Session, *, now: float) -> None:
        self.rows.append((now, "revoke", "", session.id, None, None))

    def on_displace(self, token: Token, *, now: float) -> None:
        self.rows.append((now, "displaced", "", token.session, token.id, None))


def mint_row(token: Token, cause: str, duplicate: bool, now: float) -> tuple:
    """The record row of one mint."""
    outcome = f"{token.kind}_{cause}" + ("_duplicate" if duplicate else "")
    return (now, "mint", outcome, token.session, token.id, token.basis)


class MemoryStore:
    """The ledger in this process. Units of work run on the event loop's thread without awaiting,
    so each one is atomic by construction.

    Receives ``retain_s`` (prune what expired that long ago, None: never) and whether to keep
    the record rows (only a server that serves them needs them: they grow with the run)."""

    shared = False

    def __init__(self, *, retain_s: float | None, records: bool) -> None:
        self.recorder = LedgerRecorder() if records else None
        self.ledger = Ledger(self.recorder, retain_s=retain_s)
        self._user_ids: dict[str, int] = {}
        self._usernames: list[str] = []
        self.instance = secrets.token_hex(8)

    async def run(self, work: Callable[[Txn], T], *, atomic: bool = True) -> T:
        """Run ``work`` on the ledger (``atomic`` has nothing to add here)."""
        return work(self)

    def user_id(self, username: str) -> int:
        if username not in self._user_ids:
            self._user_ids[username] = len(self._usernames)
            self._usernames.append(username)
        return self._user_ids[username]

    def username(self, user: int) -> str:
        return self._usernames[user]

    def shared_value(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A value every process of the server must agree on (a key, the start time): made here."""
        return make()

    def totals(self) -> dict[str, int]:
        return self.ledger.totals()

    def records(self) -> list[tuple]:
        return list(self.recorder.rows) if self.recorder else []

    def sizes(self) -> dict[str, Any]:
        """How much the ledger holds now (tokens, sessions): what pruning keeps bounded."""
        return {"tokens": len(self.ledger.tokens), "sessions": len(self.ledger.sessions),
                "records": len(self.recorder.rows) if self.recorder else 0}

    def close(self) -> None:
        pass


def open_store(url: str | None, *, retain_s: float | None, records: bool, namespace: str | None,
               wall: Callable[[float], float | None]):
    """The store a ``--store`` URL names: None or ``memory`` for :class:`MemoryStore`,
    ``redis://host:port/db`` for :class:`~loadtests.server.store_redis.RedisStore`. ``wall``
    turns scenario seconds into wall seconds (Redis expiries are wall time; None: no expiry)."""
    if url in (None, "", "memory"):
        return MemoryStore(retain_s=retain_s, records=records)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from loadtests.server.store_redis import RedisStore

        return RedisStore(url, retain_s=retain_s, records=records, namespace=namespace, wall=wall)
    raise ValueError(f"unknown store {url!r}; expected 'memory' or a redis:// URL")
