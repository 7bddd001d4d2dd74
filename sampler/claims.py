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

A worker can outlive its lease without dying: paused (a stopped process, a suspended
machine), cut off from the database so that its renewals fail, or with an event loop
blocked for longer than the lease. Another worker may then take its tree over. The first
one finds out when it next renews (:meth:`Claims.renew` extends only the leases the worker
still holds, and reports the others with their new holder), and :class:`Leases` stops it:
its work on that tree is cancelled, and every write into a tree is preceded by
:meth:`Leases.check`, which renews first (and refuses with
:class:`~branchpoint.store.errors.LeaseLost`) when less than a quarter of the lease may be
left by this worker's clock. So a write starts with at least a quarter of a lease that is
this worker's, and a worker writes nothing into a tree after another has taken it over,
unless paused for that long between the check and the write itself (leases are compared
across machines by their clocks: keep them in sync to well under the lease). Marking a
tree finished is also done only by the worker holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from branchpoint.store.errors import LeaseLost, StoreUnavailable

__all__ = ["Claims", "Leases", "MemoryClaims", "SqlClaims", "Worker", "open_claims",
           "pid_alive"]


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
    lease: float

    async def register(self, run: str, tree_ids: Sequence[str]) -> None: ...
    async def claim(self, run: str, exclude: frozenset[str] = frozenset()
                    ) -> str | None: ...

    async def renew(self, tree_ids: Collection[str]) -> dict[str, str | None]:
        """Extend this worker's unfinished leases on ``tree_ids`` (also one that ran out
        but that nobody took); return the others, each with the worker holding it now
        (None when its claim is gone), e.g. taken over after this worker's lease expired,
        or finished by that worker."""
        ...

    async def finish(self, tree_id: str) -> None:
        """Mark the tree done, if this worker holds it: nobody claims it again."""
        ...

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

    async def renew(self, tree_ids: Collection[str]) -> dict[str, str | None]:
        now, lost = time.time(), {}
        for t in tree_ids:
            row = self.rows.get(t)
            if row is not None and row[1] == self.worker.name and not row[5]:
                row[4] = now + self.lease
            else:
                lost[t] = row[1] if row is not None else None
        return lost

    async def finish(self, tree_id: str) -> None:
        row = self.rows.get(tree_id)
        if row is not None and row[1] == self.worker.name:
            row[5] = 1

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

    async def renew(self, tree_ids: Collection[str]) -> dict[str, str | None]:
        """See :meth:`Claims.renew`. One statement: a worker claiming one of these trees
        at the same moment either commits first (then the tree is reported lost) or
        waits for this one (then it finds the lease extended)."""
        ids = sorted(set(tree_ids))
        if not ids:
            return {}
        until, me = time.time() + self.lease, self.worker.name
        if self.pg:
            async with self._pg_lock:
                conn = await self._pg()
                kept = await conn.fetch(
                    "UPDATE claims SET expires_at = $1 WHERE worker = $2 AND finished = 0 "
                    "AND tree_id = ANY($3::text[]) RETURNING tree_id", until, me, ids)
                lost = set(ids) - {r[0] for r in kept}
                rows = await conn.fetch("SELECT tree_id, worker FROM claims "
                                        "WHERE tree_id = ANY($1::text[])", sorted(lost)
                                        ) if lost else []
            holders = {r[0]: r[1] for r in rows}
            return {t: holders.get(t) for t in sorted(lost)}

        def go(conn: sqlite3.Connection) -> dict[str, str | None]:
            marks = ", ".join("?" * len(ids))
            conn.execute("BEGIN IMMEDIATE")
            try:
                kept = {r[0] for r in conn.execute(
                    f"UPDATE claims SET expires_at = ? WHERE worker = ? AND finished = 0 "
                    f"AND tree_id IN ({marks}) RETURNING tree_id", (until, me, *ids))}
                lost = [t for t in ids if t not in kept]
                holders = dict(conn.execute(
                    f"SELECT tree_id, worker FROM claims WHERE tree_id IN "
                    f"({', '.join('?' * len(lost))})", lost).fetchall()) if lost else {}
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return {t: holders.get(t) for t in lost}

        result: dict[str, str | None] = await self._sq(go)
        return result

    async def finish(self, tree_id: str) -> None:
        """Mark the tree done, if this worker holds it: nobody claims it again."""
        if self.pg:
            async with self._pg_lock:
                conn = await self._pg()
                await conn.execute("UPDATE claims SET finished = 1 WHERE tree_id = $1 "
                                   "AND worker = $2", tree_id, self.worker.name)
            return
        await self._sq(lambda c: c.execute(
            "UPDATE claims SET finished = 1 WHERE tree_id = ? AND worker = ?",
            (tree_id, self.worker.name)))

    async def close(self) -> None:
        if self._pg_conn is not None:
            with contextlib.suppress(Exception):
                await self._pg_conn.close()
            self._pg_conn = None


class Leases:
    """The leases one worker holds while it works, kept alive, and its guard against
    writing into a tree another worker has taken over (the module docstring).

    ``hold`` a tree from just before claiming it, ``release`` it when done; ``renew``
    every third of the lease. A tree found lost (by ``renew`` or ``check``) is kept in
    :attr:`lost` and handed to ``on_lost(tree_id, holder)`` once.
    """

    def __init__(self, claims: Claims, on_lost: Callable[[str, str | None], None]
                 | None = None) -> None:
        self.claims, self.on_lost = claims, on_lost
        self.lease = float(claims.lease)
        self.valid_until: dict[str, float] = {}  # by this worker's clock
        self.lost: dict[str, str | None] = {}

    def hold(self, tree_id: str, since: float) -> None:
        """``tree_id`` was claimed by a call started at ``since`` (``time.time()``)."""
        self.valid_until[tree_id] = since + self.lease
        self.lost.pop(tree_id, None)

    def release(self, tree_id: str) -> None:
        self.valid_until.pop(tree_id, None)

    async def renew(self, tree_ids: Collection[str] | None = None) -> dict[str, str | None]:
        """Renew the leases on ``tree_ids`` (default: every tree held); returns those
        lost, with their holders.

        Raises:
            StoreUnavailable: the claims could not be reached (nothing is known lost).
        """
        ids = [t for t in (self.valid_until if tree_ids is None else tree_ids)
               if t in self.valid_until]
        since = time.time()
        lost = await self.claims.renew(ids)
        for t in ids:
            if t in lost:
                self._lose(t, lost[t])
            elif t in self.valid_until:
                self.valid_until[t] = since + self.lease
        return lost

    def _lose(self, tree_id: str, holder: str | None) -> None:
        self.valid_until.pop(tree_id, None)
        if tree_id not in self.lost:
            self.lost[tree_id] = holder
            if self.on_lost is not None:
                self.on_lost(tree_id, holder)

    async def check(self, tree_id: str) -> None:
        """Call before writing into ``tree_id``: returns when this worker still holds it,
        renewing first when less than a quarter of the lease may be left.

        Raises:
            LeaseLost: another worker holds the tree now (or it is no longer claimed).
            StoreUnavailable: the lease had to be renewed and the claims could not be
                reached.
        """
        if tree_id not in self.lost and time.time() < \
                self.valid_until.get(tree_id, float("-inf")) - self.lease / 4:
            return
        if tree_id not in self.lost and tree_id in self.valid_until:
            await self.renew([tree_id])
        if tree_id in self.lost or tree_id not in self.valid_until:
            holder = self.lost.get(tree_id)
            raise LeaseLost(f"tree {tree_id}: this worker's lease ran out and "
                            f"{holder or 'no worker'} holds it now; stopped without "
                            "writing to it", tree_id=tree_id, holder=holder)


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
