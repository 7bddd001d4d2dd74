"""The event log in SQL: a SQLite file (the default) or PostgreSQL, through SQLAlchemy async.

One class, :class:`SqlEventLog`, for both databases. The append algorithm and the SQLite
statements live in :mod:`branchpoint.store.sqlbase`, shared with the stdlib-only
:mod:`branchpoint.store.sqlite3_writer`; this module adds the engines, the PostgreSQL
statements, the reads, migrations on open, and the translation of driver errors.

Concurrency:

- SQLite: every append transaction starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's
  documented aiosqlite recipe: disable the driver's own BEGIN, emit ours from the
  ``begin`` event), so concurrent writers, in this process or others, wait in SQLite's
  busy handler instead of failing with "database is locked". WAL lets readers go on.
- PostgreSQL: an append takes ``LOCK TABLE events IN EXCLUSIVE MODE`` first (readers are
  not blocked). Writers are serialized, so ``seq`` values are assigned in commit order and
  a reader that has seen ``seq`` N never later meets a new event at or below N.

Errors: driver errors never leave this module. A database that cannot be reached, opened
or understood raises :class:`StoreUnavailable`; a unique index that fires despite the
validation (a writer racing us without taking the lock) retries the batch once (when it
is a list that can be read again) and then raises :class:`InvalidEvent` naming the
colliding event.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from branchpoint.store import sqlbase
from branchpoint.store.errors import InvalidEvent, StoreUnavailable, TreeNotFound
from branchpoint.store.events import Event, EventHead, HeadRow
from branchpoint.store.log import (
    AppendResult,
    Chunks,
    TreeFilter,
    TreePage,
    check_limit,
    cursor_position,
    page_of,
    prepared_chunks,
)
from branchpoint.store.sqlbase import (
    EVENT_COLUMNS,
    EVENT_SELECT,
    HEAD_SELECT,
    HEADS_SELECT,
    SCHEMA_VERSION,
    TREE_COLUMNS,
    Appender,
    Executor,
    SqliteStatements,
    Statements,
    event_from_row,
    event_rows,
    head_from_row,
    heads_by_tree,
    summary_from_row,
    utc_text,
)

__all__ = ["SqlEventLog"]


class _Collided(Exception):
    """A unique index refused a chunk's insert: the chunk, to name the event."""

    def __init__(self, events: list[Event], lines: Sequence[int], exc: Exception) -> None:
        super().__init__(str(exc))
        self.events, self.lines, self.exc = events, lines, exc


T = TypeVar("T")

BUSY_TIMEOUT_S: Final = 60.0
_WRITE: Final = "branchpoint_write"  # execution option: this transaction appends
_PG_MIGRATION_LOCK: Final = 0x62706D67  # pg_advisory_xact_lock key serializing migrations
_SQLITE_CACHE_KIB: Final = -65536  # PRAGMA cache_size: negative means KiB
_HEADS_PER_CHUNK: Final = 20_000  # rows per query of iter_heads, about


class _SaExecutor:
    """:class:`branchpoint.store.sqlbase.Executor` over a SQLAlchemy (sync) connection;
    used inside ``AsyncConnection.run_sync``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return list(self._conn.exec_driver_sql(sql, tuple(params)).fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.exec_driver_sql(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.exec_driver_sql(sql, list(rows))


class _Recorder:
    """:class:`branchpoint.store.sqlbase.Executor` that runs nothing: it keeps the
    statements of an insert, for handing them to the driver all at once."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any, bool]] = []  # (sql, parameters, executemany)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        raise NotImplementedError("an insert reads nothing")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.statements.append((sql, tuple(params), False))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.statements.append((sql, list(rows), True))


def _validate(conn: Connection, appender: Appender,
              chunk: tuple[list[Event], Sequence[int], list[tuple[Any, ...]], Sequence[int]]
              ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    events, lines, rows, indices = chunk
    return appender.validate(_SaExecutor(conn), events, lines, rows, indices)


def _result(conn: Connection, appender: Appender) -> AppendResult:
    return appender.result(_SaExecutor(conn))


# --- PostgreSQL ------------------------------------------------------------------------------

_PG_CLOSED: Final = ("(SELECT COALESCE(c.reason, c.payload::json->>'reason') "
                     "FROM events c WHERE c.type = 'tree_closed' AND c.tree_id = t.tree_id "
                     "ORDER BY c.seq DESC LIMIT 1)")
_PG_BACKFILL_TREES: Final = (
    f"INSERT INTO trees ({', '.join(TREE_COLUMNS)}, root_seq) "
    "SELECT tree_id, payload::json#>>'{task,env}', payload::json#>>'{task,task_id}', "
    "(json_typeof(payload::json#>'{task,task_id}') = 'number')::int, "
    "payload::json->>'origin', recorded_at, NULL, seq FROM events "
    "WHERE type = 'node_created' AND parent_id IS NULL ON CONFLICT DO NOTHING")
_PG_TYPES: Final = {"event_id": "text", "tree_id": "text", "type": "text", "version": "int",
                    "recorded_at": "text", "node_id": "text", "parent_id": "text",
                    "done": "smallint", "value": "float8", "source": "text",
                    "reason": "text", "digest": "text", "payload": "text"}


_PG_HEADS_OF: Final = (HEADS_SELECT.format(reason="payload::json->>'reason'")
                       + " WHERE tree_id = ANY($1::text[]) ORDER BY tree_id, seq")
_SQLITE_HEADS_OF: Final = HEADS_SELECT.format(reason="json_extract(payload, '$.reason')")


def _unnest(columns: Sequence[str], types: Sequence[str]) -> str:
    args = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    return f"unnest({args}) AS k({', '.join(columns)})"


class PgStatements:
    """:class:`branchpoint.store.sqlbase.Statements` for PostgreSQL: one query per lookup
    with array parameters, and one ``INSERT ... SELECT FROM unnest(...)`` per table."""

    _insert_events = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT * FROM "
                      + _unnest(EVENT_COLUMNS, [_PG_TYPES[c] for c in EVENT_COLUMNS]))
    _insert_trees = (f"INSERT INTO trees ({', '.join(TREE_COLUMNS)}, root_seq) "
                     f"SELECT {', '.join('k.' + c for c in TREE_COLUMNS)}, e.seq FROM "
                     + _unnest([*TREE_COLUMNS, "eid"],
                               ["text", "text", "text", "smallint", "text", "text", "text",
                                "text"])
                     + " JOIN events e ON e.event_id = k.eid")

    def last_seq(self, db: Executor) -> int | None:
        return db.fetchall("SELECT max(seq) FROM events")[0][0]  # type: ignore[no-any-return]

    def stored(self, db: Executor, event_ids: Sequence[str]) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = db.fetchall(
            "SELECT event_id, digest, CASE WHEN digest IS NULL THEN seq END, event_id, "
            "tree_id, type, version, recorded_at, CASE WHEN digest IS NULL THEN payload END "
            "FROM events WHERE event_id = ANY($1::text[])", (list(event_ids),))
        return rows

    def roots(self, db: Executor, tree_ids: Sequence[str]) -> set[str]:
        rows = db.fetchall("SELECT tree_id FROM trees WHERE tree_id = ANY($1::text[])",
                           (list(tree_ids),))
        return {r[0] for r in rows}

    def _keys(self, db: Executor, keys: Sequence[tuple[str, str]], what: str, type_: str
              ) -> list[Any]:
        rows: list[Any] = db.fetchall(
            f"SELECT e.tree_id, e.node_id, {what} FROM events e "
            f"JOIN {_unnest(['t', 'n'], ['text', 'text'])} "
            f"ON e.tree_id = k.t AND e.node_id = k.n WHERE e.type = '{type_}'",
            ([k[0] for k in keys], [k[1] for k in keys]))
        return rows

    def created(self, db: Executor, keys: Sequence[tuple[str, str]]
                ) -> list[tuple[str, str, bool]]:
        return self._keys(db, keys, "e.parent_id IS NULL", "node_created")

    def executed(self, db: Executor, keys: Sequence[tuple[str, str]]
                 ) -> list[tuple[str, str, bool | None]]:
        return self._keys(db, keys, "e.done", "action_executed")

    def with_children(self, db: Executor, keys: Sequence[tuple[str, str]]
                      ) -> list[tuple[str, str]]:
        rows = db.fetchall(
            f"SELECT DISTINCT e.tree_id, e.parent_id FROM events e "
            f"JOIN {_unnest(['t', 'n'], ['text', 'text'])} "
            f"ON e.tree_id = k.t AND e.parent_id = k.n WHERE e.type = 'node_created'",
            ([k[0] for k in keys], [k[1] for k in keys]))
        return [(r[0], r[1]) for r in rows]

    def insert(self, db: Executor, rows: list[tuple[Any, ...]],
               trees: list[tuple[Any, ...]]) -> None:
        db.execute(self._insert_events, [list(c) for c in zip(*rows, strict=True)])
        if trees:
            db.execute(self._insert_trees, [list(c) for c in zip(*trees, strict=True)])


class _PgMigration(Executor):
    """An executor that speaks qmark to :func:`sqlbase.migration_steps`' shared steps."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return self._db.fetchall(_dollar(sql), params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(_dollar(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(_dollar(sql), rows)


def _pg_migration(db: Executor) -> list[sqlbase.Step]:
    tables = {r[0] for r in db.fetchall(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema()")}
    columns: dict[str, set[str]] = {}
    for table in ("events", "trees"):
        columns[table] = {r[0] for r in db.fetchall(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1", (table,))}
    steps = sqlbase.migration_steps(
        tables, columns, schema=sqlbase.schema_statements("schema_pg.sql"),
        backfill_trees=_PG_BACKFILL_TREES,
        record_version=f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION}) "
                       "ON CONFLICT DO NOTHING")
    return [s if isinstance(s, str) else functools.partial(_pg_step, s) for s in steps]


def _pg_step(step: Callable[[Executor], None], db: Executor) -> None:
    step(_PgMigration(db))


def _dollar(sql: str) -> str:
    """qmark parameters to PostgreSQL's ``$n``."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


# --- the log ----------------------------------------------------------------------------------


class SqlEventLog:
    """The event log in a SQLite file or a PostgreSQL database. Open with :meth:`open`."""

    def __init__(self, engine: AsyncEngine, *, postgres: bool, where: str) -> None:
        self._engine = engine
        self._pg = postgres
        self._where = where  # the URL without its password, for messages
        self._sql: Statements = PgStatements() if postgres else SqliteStatements()
        self._closed_expr = _PG_CLOSED if postgres else sqlbase.SQLITE_CLOSED

    @classmethod
    async def open(cls, url: str) -> SqlEventLog:
        """Connect to ``url`` and create or migrate the schema.

        ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``postgresql://user@host:port/db``
        (``+asyncpg``/``+aiosqlite`` suffixes accepted). A PostgreSQL URL may name the schema
        to use with ``?schema=NAME`` (created if missing; default: the server's search_path).

        Raises:
            StoreUnavailable: the database cannot be reached, opened or migrated.
            ValueError: the URL names no supported database.
        """
        try:
            u = make_url(url)
        except Exception as exc:
            raise ValueError(f"not a database URL: {url!r}") from exc
        backend = u.get_backend_name()
        if backend == "sqlite":
            if not u.database or u.database == ":memory:":
                raise ValueError("a SQLite store needs a file: sqlite:///path/to/file.db")
            folder = Path(u.database).parent
            if not folder.is_dir():
                # checked here: a failed connect leaves aiosqlite's thread racing the loop
                raise StoreUnavailable(f"cannot open {u.database}: no folder {folder}")
            engine = create_async_engine(u.set(drivername="sqlite+aiosqlite"),
                                         connect_args={"timeout": BUSY_TIMEOUT_S})
            _install_sqlite_hooks(engine)
            log = cls(engine, postgres=False, where=u.render_as_string(hide_password=True))
        elif backend in ("postgresql", "postgres"):
            schema = u.query.get("schema")
            if isinstance(schema, tuple):
                schema = schema[-1]
            args: dict[str, Any] = {}
            if schema:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", schema):
                    raise ValueError(f"not a plain schema name: {schema!r}")
                args["server_settings"] = {"search_path": schema}
            u = u.set(drivername="postgresql+asyncpg").difference_update_query(["schema"])
            engine = create_async_engine(u, connect_args=args, pool_pre_ping=False)
            log = cls(engine, postgres=True, where=u.render_as_string(hide_password=True))
            log._schema = schema
        else:
            raise ValueError(f"unsupported database {backend!r} in {url!r}; "
                             "use sqlite:///file.db or postgresql://user@host/db")
        try:
            await log._migrate()
        except BaseException:
            await engine.dispose()
            raise
        return log

    _schema: str | None = None

    async def _migrate(self) -> None:
        def work(conn: Connection) -> None:
            db = _SaExecutor(conn)
            if self._pg:
                db.fetchall(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
                if self._schema:
                    db.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                sqlbase.run_migration(db, _pg_migration)
            else:
                sqlbase.run_migration(db, sqlbase.sqlite_migration)

        await self._guard(self._write(work), "open")

    # -- transactions and errors --

    async def _write(self, work: Callable[[Connection], T]) -> T:
        async with self._engine.connect() as conn:
            if not self._pg:
                await conn.execution_options(**{_WRITE: True})
            async with conn.begin():
                return await conn.run_sync(work)

    async def _guard(self, op: Awaitable[T], what: str) -> T:
        try:
            return await op
        except IntegrityError:
            raise
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{what} failed on {self._where}: "
                                   f"{_driver_message(exc)}") from exc

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        async def go() -> list[Sequence[Any]]:
            async with self._engine.connect() as conn:
                res = await conn.exec_driver_sql(_dollar(sql) if self._pg else sql,
                                                 tuple(params))
                return list(res.fetchall())

        return await self._guard(go(), "read")

    # -- the EventLog protocol --

    async def append(self, events: Sequence[Event], *, lines: Sequence[int] | None = None,
                     normalized: bool = False) -> AppendResult:
        """Store a batch atomically (see :meth:`branchpoint.store.log.EventLog.append`):
        :meth:`append_stream` of a single chunk.

        Raises:
            InvalidEvent: the batch breaks a rule; nothing was stored.
            ConflictingEvent: an ``event_id`` is stored with other content.
            StoreUnavailable: the database cannot be reached or failed.
        """
        return await self.append_stream([(events, lines)], normalized=normalized)

    async def append_stream(self, chunks: Chunks, *, normalized: bool = False
                            ) -> AppendResult:
        """Store a batch that arrives in chunks atomically, in one write transaction (see
        :meth:`branchpoint.store.log.EventLog.append_stream`).

        Each chunk is validated and handed to the driver as it comes; its insert runs while
        ``chunks`` produces the next one (sqlite3 releases the GIL while SQLite works, and
        PostgreSQL works in its own process), so decoding and inserting overlap.
        ``normalized=True`` skips re-validating events that come straight from
        :func:`branchpoint.store.events.decode_event` (they already are): ``branchpoint
        ingest`` passes it.

        Raises:
            InvalidEvent: the batch breaks a rule; nothing was stored.
            ConflictingEvent: an ``event_id`` is stored with other content.
            StoreUnavailable: the database cannot be reached or failed.
        """
        try:
            return await self._guard(self._append(chunks, normalized), "append")
        except _Collided as first:
            if not isinstance(chunks, Sequence):  # a stream cannot be read again
                raise await self._collision(first.events, first.lines, first.exc) from None
        # A unique index fired behind the validation: a writer that did not take the lock
        # committed in between. Validating again against what is stored now names the
        # offending event (or finds the batch already stored).
        try:
            return await self._guard(self._append(chunks, normalized), "append")
        except _Collided as again:
            raise await self._collision(again.events, again.lines, again.exc) from None

    async def _append(self, chunks: Chunks, normalized: bool) -> AppendResult:
        async with self._engine.connect() as conn:
            if not self._pg:
                await conn.execution_options(**{_WRITE: True})
            async with conn.begin():
                appender = await conn.run_sync(self._start)
                insert: asyncio.Future[None] | None = None
                try:
                    async with aclosing(prepared_chunks(
                            chunks, appender.rules, normalized=normalized)) as each:
                        async for events, lines, indices in each:
                            rows = event_rows(events)  # while the previous chunk goes in
                            if insert is not None:
                                await insert
                            fresh, trees = await conn.run_sync(
                                _validate, appender, (events, lines, rows, indices))
                            insert = None
                            if fresh:
                                insert = await self._start_insert(conn, fresh, trees,
                                                                  events, lines)
                    if insert is not None:
                        await insert
                finally:
                    if insert is not None:
                        # the chunks failed: let the insert leave the connection first, and
                        # read its outcome even when it already ended (else asyncio warns
                        # that an exception was never retrieved)
                        await asyncio.gather(insert, return_exceptions=True)
                return await conn.run_sync(_result, appender)

    def _start(self, conn: Connection) -> Appender:
        db = _SaExecutor(conn)
        if self._pg:
            # writers one at a time, so that seq order is commit order (readers go on)
            db.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        return Appender(db, self._sql)

    async def _start_insert(self, conn: AsyncConnection, rows: list[tuple[Any, ...]],
                            trees: list[tuple[Any, ...]], events: list[Event],
                            lines: Sequence[int]) -> asyncio.Future[None]:
        """Start inserting one chunk's rows; returns once the driver has them, with the
        future of the insert, which raises :class:`_Collided` where a unique index fired.

        SQLite: the statements are queued to aiosqlite's thread together (through the raw
        driver, as :meth:`_heads_of` reads), so that they run back to back while this
        thread decodes the next chunk; through SQLAlchemy, each statement would wait for
        the event loop between its steps. PostgreSQL works in its own process, so the
        insert simply goes on in a task.
        """
        if self._pg:
            def work(sync: Connection) -> None:
                self._sql.insert(_SaExecutor(sync), rows, trees)

            async def insert() -> None:
                try:
                    await conn.run_sync(work)
                except IntegrityError as exc:
                    raise _Collided(events, lines, exc) from exc

            task = asyncio.ensure_future(insert())
        else:
            record = _Recorder()
            self._sql.insert(record, rows, trees)
            driver = await self._driver(conn)
            statements = [asyncio.ensure_future(
                driver.executemany(sql, params) if many else driver.execute(sql, params))
                for sql, params, many in record.statements]
            task = asyncio.ensure_future(self._finish_insert(statements, events, lines))
        await asyncio.sleep(0)  # each reaches the driver before the caller goes on
        return task

    async def _finish_insert(self, statements: list[asyncio.Future[Any]],
                             events: list[Event], lines: Sequence[int]) -> None:
        """Wait for every statement of a SQLite insert (none may still be running when the
        transaction ends) and translate the first error."""
        # (the cursors returned hold nothing once an INSERT has run: no close round trip)
        for outcome in await asyncio.gather(*statements, return_exceptions=True):
            if isinstance(outcome, sqlite3.IntegrityError):
                raise _Collided(events, lines, outcome)
            if isinstance(outcome, sqlite3.Error):
                raise StoreUnavailable(f"append failed on {self._where}: "
                                       f"{_driver_message(outcome)}") from outcome
            if isinstance(outcome, BaseException):
                raise outcome

    async def _collision(self, evs: list[Event], lines: Sequence[int],
                         exc: Exception) -> InvalidEvent:
        """The error for a chunk a unique index refused: names its first event that
        collides with a stored row."""
        def find(conn: Connection) -> tuple[int, str] | None:
            return sqlbase.first_collision(_SaExecutor(conn), self._sql, evs)

        async def go() -> tuple[int, str] | None:
            async with self._engine.connect() as conn:
                return await conn.run_sync(find)

        found = await self._guard(go(), "append")
        i, field = found if found is not None else (0, None)
        line = lines[i] if lines else None
        # (InvalidEvent itself says that nothing of the batch was stored; the CLI adds it)
        return InvalidEvent("conflicts with an event stored by a concurrent writer "
                            f"({_driver_message(exc)})",
                            line=line, event_id=evs[i].event_id if evs else None,
                            field=field)

    async def read_tree(self, tree_id: str) -> list[Event]:
        rows = await self._read(f"{EVENT_SELECT} FROM events WHERE tree_id = ? ORDER BY seq",
                                (tree_id,))
        if not rows:
            raise TreeNotFound(f"no tree {tree_id!r} in the log")
        return [event_from_row(r) for r in rows]

    async def read_heads(self, tree_id: str) -> list[EventHead]:
        rows = await self._read(f"{HEAD_SELECT} FROM events WHERE tree_id = ? ORDER BY seq",
                                (tree_id,))
        if not rows:
            raise TreeNotFound(f"no tree {tree_id!r} in the log")
        return [head_from_row(r) for r in rows]

    async def read_after(self, seq: int = 0, *, limit: int = 1000) -> list[Event]:
        rows = await self._read(f"{EVENT_SELECT} FROM events WHERE seq > ? ORDER BY seq "
                                "LIMIT ?", (max(seq, 0), limit))
        return [event_from_row(r) for r in rows]

    def _trees_sql(self, where: TreeFilter | None, columns: str, extra: str = ""
                   ) -> tuple[str, list[Any]]:
        """The query listing the trees that match ``where`` (and the condition ``extra``,
        with no parameters of its own), ``columns`` selected, in ``root_seq`` order."""
        w = where or TreeFilter()
        conds: list[str] = [extra] if extra else []
        params: list[Any] = []
        for cond, value in (("t.tree_id = ?", w.tree_id),
                            ("t.split = ?", w.split),
                            ("t.env = ?", w.env),
                            ("t.task_id = ?", None if w.task_id is None else str(w.task_id)),
                            ("t.origin = ?", w.origin),
                            ("t.created_at >= ?", w.since and utc_text(w.since)),
                            ("t.created_at < ?", w.until and utc_text(w.until))):
            if value is not None:
                conds.append(cond)
                params.append(value)
        sql = f"SELECT {columns}, {self._closed_expr} AS closed FROM trees t"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        if w.finished is not None:
            sql = (f"SELECT * FROM ({sql}) s WHERE closed IS "
                   f"{'NOT NULL' if w.finished else 'NULL'}")
        return sql + " ORDER BY root_seq", params

    async def list_trees(self, where: TreeFilter | None = None, *, limit: int | None = None,
                         cursor: str | None = None) -> TreePage:
        check_limit(limit)
        after = cursor_position(cursor)
        sql, params = self._trees_sql(where, "t.tree_id, t.env, t.task_id, t.task_id_is_int, "
                                      "t.origin, t.created_at, t.split, t.root_seq",
                                      f"t.root_seq > {after}" if after else "")
        if limit is not None:
            sql += f" LIMIT {limit + 1}"  # one more: is there a next page?
        rows = await self._read(sql, params)
        return page_of([summary_from_row(r) for r in rows], limit)

    async def iter_heads(self, where: TreeFilter | None = None, *,
                         tree_ids: Sequence[str] | None = None
                         ) -> AsyncIterator[tuple[str, list[HeadRow]]]:
        """Trees' heads in :meth:`list_trees` order (see
        :meth:`branchpoint.store.log.EventLog.iter_heads`).

        One connection for the whole iteration: the matching tree ids first, then their
        events in chunks of whole trees, one ``IN (...)`` query per chunk over the
        ``(tree_id, seq)`` index. A chunk holds about :data:`_HEADS_PER_CHUNK` rows (its
        tree count follows the average tree size seen so far), so memory stays bounded
        however large the log. No transaction stays open while the caller holds a chunk.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        conn = await self._guard(self._engine.connect(), "read")
        try:
            trees = await self._guard(self._tree_ids(conn, where, tree_ids), "read")
            per_chunk, done, rows = 64, 0, 0
            while done < len(trees):
                part = trees[done:done + per_chunk]
                heads = await self._guard(self._heads_of(conn, part), "read")
                done += len(part)
                rows += sum(map(len, heads.values()))
                # as many trees next time as make about _HEADS_PER_CHUNK rows, on average
                per_chunk = max(1, min(sqlbase.CHUNK, _HEADS_PER_CHUNK * done // max(rows, 1)))
                for tree_id in part:
                    if tree_id in heads:  # else: no event of it is stored
                        yield tree_id, heads.pop(tree_id)
        finally:
            await conn.close()

    async def _tree_ids(self, conn: AsyncConnection, where: TreeFilter | None,
                        tree_ids: Sequence[str] | None) -> list[str]:
        async def run(sql: str, params: Sequence[Any]) -> list[Any]:
            res = await conn.exec_driver_sql(_dollar(sql) if self._pg else sql, tuple(params))
            return list(res.fetchall())

        try:
            if tree_ids is None:
                sql, params = self._trees_sql(where, "t.tree_id, t.root_seq")
                return [r[0] for r in await run(sql, params)]
            found: list[tuple[int, str]] = []
            for part in sqlbase.chunks(sorted(set(tree_ids))):
                marks = ", ".join("?" * len(part))
                sql, params = self._trees_sql(where, "t.tree_id, t.root_seq",
                                              f"t.tree_id IN ({marks})")
                # the IN list's parameters come first in the statement
                found += [(r[1], r[0]) for r in await run(sql, [*part, *params])]
            return [t for _, t in sorted(found)]
        finally:
            await conn.rollback()

    async def _heads_of(self, conn: AsyncConnection, tree_ids: Sequence[str]
                        ) -> dict[str, list[HeadRow]]:
        """The heads of ``tree_ids`` (each tree in ``seq`` order), read straight from the
        driver: this query returns one row per event of every tree folded in bulk, and
        SQLAlchemy's result rows would cost as much again as the read itself."""
        driver = await self._driver(conn)
        # Rows and heads are tuples of scalars, which hold no reference cycles; a cyclic GC
        # pass over tens of thousands of fresh tuples per chunk would cost a third of the
        # read, so the collector pauses until the chunk is decoded (and then untracks them).
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            if self._pg:
                rows = await driver.fetch(_PG_HEADS_OF, list(tree_ids))
            else:
                sql = (f"{_SQLITE_HEADS_OF} WHERE tree_id IN ({', '.join('?' * len(tree_ids))})"
                       " ORDER BY tree_id, seq")
                async with driver.execute(sql, tuple(tree_ids)) as cursor:
                    rows = await cursor.fetchall()
            return heads_by_tree(rows)
        except Exception as exc:
            if not _is_driver_error(exc):
                raise
            raise StoreUnavailable(f"read failed on {self._where}: "
                                   f"{_driver_message(exc)}") from exc
        finally:
            if gc_was_on:
                gc.enable()

    async def _driver(self, conn: AsyncConnection) -> Any:
        """The driver's own connection under ``conn``: aiosqlite's or asyncpg's.

        Raises:
            StoreUnavailable: the connection was lost.
        """
        driver = (await conn.get_raw_connection()).driver_connection
        if driver is None:
            raise StoreUnavailable(f"lost the connection to {self._where}")
        return driver

    async def close(self) -> None:
        await self._engine.dispose()


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    """WAL, synchronous=NORMAL and a busy timeout on every connection; ``BEGIN IMMEDIATE``
    for appends. aiosqlite (like sqlite3) would otherwise emit a deferred BEGIN of its own
    and only ask for the write lock at the first INSERT, where a busy writer makes it fail
    at once instead of waiting."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        try:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
            cur = dbapi_connection.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            # 64 MiB of page cache at most (the default is 2): a large append updates
            # five indexes, and re-reading their pages from the OS dominated the insert
            cur.execute(f"PRAGMA cache_size = {_SQLITE_CACHE_KIB}")
            cur.close()
        except Exception:
            # e.g. "file is not a database": the pool drops this connection without
            # closing it, which would leave aiosqlite's thread behind
            dbapi_connection.close()
            raise

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from sqlite3/aiosqlite or asyncpg (used where a read goes
    to the driver directly, without SQLAlchemy's wrapping in DBAPIError)."""
    if isinstance(exc, sqlite3.Error | OSError | TimeoutError):
        return True
    module = type(exc).__module__
    return module == "asyncpg" or module.startswith("asyncpg.")


def _driver_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
