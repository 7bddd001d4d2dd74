"""Task claims with leases, so several ``branchpoint sample`` processes (on one machine or
several) sharing one store split the trees of a run between them.

A ``claims`` table sits in the store's database beside the events (created on first use,
in both schemas: SQLite and PostgreSQL), one row per tree of a run::

    tree_id TEXT PRIMARY KEY, run TEXT, worker TEXT, host TEXT, pid INTEGER,
    expires_at (seconds since the epoch), finished INTEGER

A worker claims the next unfinished tree whose lease is free or expired: on PostgreSQL
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (workers never wait on each other's rows), on
SQLite inside ``BEGIN IMMEDIATE`` (one writer at a time). A lease lasts ``lease_seconds``
and is renewed every third of that while the worker lives, so no tree is sampled by two
workers at once; the tree of a worker that died is taken over when its lease expires and
finished from what it stored. A worker also takes over at once the leases of dead
processes of its own host (same host name, process gone), so a run restarted on the same
machine does not wait for them. A finished tree is marked so; a run exits when no tree is
left that it could claim (trees still leased by live workers are theirs to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from branchpoint.store.errors import StoreUnavailable

__all__ = ["Claims", "MemoryClaims", "SqlClaims", "Worker", "open_claims", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Worker:
    """Who holds a lease: a name, the host and the process id."""

    name: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def here(cls) -> Worker:
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}-{pid}", host, pid)


class Claims(Protocol):
    async def register(self, run: str, tree_ids: Sequence[str]) -> None: ...
    async def claim(self, run: str, exclude: frozenset[str] = frozenset()
                    ) -> str | None: ...
    async def renew(self) -> None: ...
    async def finish(self, tree_id: str) -> None: ...
    async def close(self) -> None: ...


def _claimable(row: tuple[Any, ...], now: float, me: Worker) -> bool:
    """Row (tree_id, worker, host, pid, expires_at): free, expired, or held by a dead
    process of this host. (A row this worker holds is not: it is being sampled.)"""
    _, worker, host, pid, expires = row
    if worker is None or float(expires) < now:
        return True
    return bool(host == me.host and pid != me.pid and pid is not None
                and not pid_alive(int(pid)))


class MemoryClaims:
    """Claims for a ``memory://`` store (one process)."""

    def __init__(self, worker: Worker, lease_seconds: float = 300.0) -> None:
        self.worker, self.lease = worker, lease_seconds
        self.rows: dict[str, list[Any]] = {}

    async def register(self, run: str, tree_ids: Sequence[str]) -> None:
        for t in tree_ids:
            self.rows.setdefault(t, [run, None, None, None, 0.0, 0])

    async def claim(self, run: str, exclude: frozenset[str] = frozenset()
                    ) -> str | None:
        now = time.time()
        for t, (r, worker, host, pid, expires, finished) in sorted(self.rows.items()):
            row = (t, worker, host, pid, expires)
            if r == run and not finished and t not in exclude \
                    and _claimable(row, now, self.worker):
                w = self.worker
                self.rows[t] = [r, w.name, w.host, w.pid, now + self.lease, 0]
                return t
        return None

    async def renew(self) -> None:
        now = time.time()
        for row in self.rows.values():
            if row[1] == self.worker.name and not row[5]:
                row[4] = now + self.lease

    async def finish(self, tree_id: str) -> None:
        self.rows[tree_id][5] = 1

    async def close(self) -> None:
        pass


_SQLITE_DDL = """CREATE TABLE IF NOT EXISTS claims (
    tree_id TEXT PRIMARY KEY, run TEXT NOT NULL, worker TEXT, host TEXT, pid INTEGER,
    expires_at REAL NOT NULL DEFAULT 0, finished INTEGER NOT NULL DEFAULT 0)"""
_PG_DDL_LOCK = 0x62706D67  # the store's migration lock (store/sql.py): the schema is made once
_PG_DDL = """CREATE TABLE IF NOT EXISTS claims (
    tree_id TEXT PRIMARY KEY, run TEXT NOT NULL, worker TEXT, host TEXT, pid INTEGER,
    expires_at DOUBLE PRECISION NOT NULL DEFAULT 0, finished SMALLINT NOT NULL DEFAULT 0)"""


class SqlClaims:
    """Claims in the store's SQLite file or PostgreSQL database."""

    def __init__(self, url: str, worker: Worker, lease_seconds: float = 300.0) -> None:
        self.url, self.worker, self.lease = url, worker, lease_seconds
        self.pg = url.startswith(("postgresql", "postgres:"))
        self._pg_conn: Any = None
        self._pg_lock = asyncio.Lock()  # one connection: one operation at a time
        self._path = _sqlite_path(url) if not self.pg else None

    # --- connections ----------------------------------------------------------------------

    async def _pg(self) -> Any:
        if self._pg_conn is None:
            import asyncpg

            dsn, schema = _pg_dsn(self.url)
            try:
                settings = {"search_path": schema} if schema else None
                self._pg_conn = await asyncpg.connect(dsn, timeout=30,
                                                      server_settings=settings)
                # CREATE ... IF NOT EXISTS races between workers starting at once (a
                # unique violation in pg_type): one transaction at a time creates them.
                async with self._pg_conn.transaction():
                    await self._pg_conn.execute(f"SELECT pg_advisory_xact_lock({_PG_DDL_LOCK})")
                    if schema:  # the store creates it too; whoever comes first does
                        await self._pg_conn.execute(
                            f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    await self._pg_conn.execute(_PG_DDL)
            except (OSError, asyncpg.PostgresError) as exc:
                raise StoreUnavailable(f"claims: cannot use {dsn.split('@')[-1]}: {exc}"
                                       ) from exc
        return self._pg_conn

    def _sqlite(self) -> sqlite3.Connection:
        assert self._path is not None
        conn = sqlite3.connect(self._path, timeout=60, isolation_level=None)
        conn.execute(_SQLITE_DDL)
        return conn

    async def _sq(self, fn: Any, *args: Any) -> Any:
        def run() -> Any:
            conn = self._sqlite()
            try:
                return fn(conn, *args)
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"claims: {exc}") from exc

    # --- operations -----------------------------------------------------------------------

    async def register(self, run: str, tree_ids: Sequence[str]) -> None:
        """Add a row for each tree of ``run`` not yet there."""
        rows = [(t, run) for t in tree_ids]
        if self.pg:
            async with self._pg_lock:
                conn = await self._pg()
                await conn.executemany("INSERT INTO claims (tree_id, run) VALUES ($1, $2) "
                                       "ON CONFLICT DO NOTHING", rows)
            return

        def go(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR IGNORE INTO claims (tree_id, run) VALUES (?, ?)",
                             rows)
            conn.execute("COMMIT")

        await self._sq(go)

    async def claim(self, run: str, exclude: frozenset[str] = frozenset()
                    ) -> str | None:
        """The next tree of ``run`` this worker may sample (not one in ``exclude``, which
        it holds already), now leased to it; None when there is none."""
        w, now = self.worker, time.time()
        if self.pg:
            async with self._pg_lock:
                return await self._pg_claim(run, exclude, now)

        def go(conn: sqlite3.Connection) -> str | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "SELECT tree_id, worker, host, pid, expires_at FROM claims WHERE run = ? "
                    "AND finished = 0 AND (worker IS NULL OR expires_at < ? OR host = ?) "
                    "ORDER BY tree_id", (run, now, w.host)).fetchall()
                for row in rows:
                    if row[0] not in exclude and _claimable(tuple(row), now, w):
                        conn.execute("UPDATE claims SET worker = ?, host = ?, pid = ?, "
                                     "expires_at = ? WHERE tree_id = ?",
                                     (w.name, w.host, w.pid, now + self.lease, row[0]))
                        conn.execute("COMMIT")
                        return str(row[0])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return None

        result: str | None = await self._sq(go)
        return result

    async def _pg_claim(self, run: str, exclude: frozenset[str], now: float) -> str | None:
        w = self.worker
        conn = await self._pg()
        async with conn.transaction():
            # SKIP LOCKED: rows another worker is claiming right now are passed over, not
            # waited for.
            rows = await conn.fetch(
                "SELECT tree_id, worker, host, pid, expires_at FROM claims "
                "WHERE run = $1 AND finished = 0 AND (worker IS NULL OR expires_at < $2 "
                "OR host = $3) ORDER BY tree_id FOR UPDATE SKIP LOCKED", run, now, w.host)
            for row in rows:
                if row[0] not in exclude and _claimable(tuple(row), now, w):
                    await conn.execute(
                        "UPDATE claims SET worker = $1, host = $2, pid = $3, "
                        "expires_at = $4 WHERE tree_id = $5",
                        w.name, w.host, w.pid, now + self.lease, row[0])
                    return str(row[0])
        return None

    async def renew(self) -> None:
        """Extend every unfinished lease this worker holds."""
        until = time.time() + self.lease
        if self.pg:
            async with self._pg_lock:
                conn = await self._pg()
                await conn.execute("UPDATE claims SET expires_at = $1 WHERE worker = $2 "
                                   "AND finished = 0", until, self.worker.name)
            return
        await self._sq(lambda c: c.execute(
            "UPDATE claims SET expires_at = ? WHERE worker = ? AND finished = 0",
            (until, self.worker.name)))

    async def finish(self, tree_id: str) -> None:
        """Mark the tree done: nobody claims it again."""
        if self.pg:
            async with self._pg_lock:
                conn = await self._pg()
                await conn.execute("UPDATE claims SET finished = 1 WHERE tree_id = $1",
                                   tree_id)
            return
        await self._sq(lambda c: c.execute(
            "UPDATE claims SET finished = 1 WHERE tree_id = ?", (tree_id,)))

    async def close(self) -> None:
        if self._pg_conn is not None:
            with contextlib.suppress(Exception):
                await self._pg_conn.close()
            self._pg_conn = None


def _pg_dsn(url: str) -> tuple[str, str | None]:
    """An asyncpg DSN and the ``?schema=NAME`` of a store URL (as the store reads it).

    Raises:
        ValueError: a schema name that is not a plain identifier.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    query = parse_qsl(parts.query)
    schema = next((v for k, v in reversed(query) if k == "schema"), None)
    if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", schema):
        raise ValueError(f"not a plain schema name: {schema!r}")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    rest = url.split("://", 1)[1] if "://" in url else url
    return rest[1:] if rest.startswith("/") else rest


def open_claims(url: str, worker: Worker | None = None, lease_seconds: float = 300.0
                ) -> Claims:
    """Claims kept beside the store at ``url`` (``memory://`` keeps them in the process)."""
    worker = worker or Worker.here()
    if url.startswith("memory:"):
        return MemoryClaims(worker, lease_seconds)
    return SqlClaims(url, worker, lease_seconds)
