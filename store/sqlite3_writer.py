"""A synchronous appender for a SQLite event log, with nothing but the stdlib ``sqlite3``.

This is what the SDK's local sink will use inside a production agent, where SQLAlchemy
and an event loop are unwelcome. It follows ``schema.sql`` and runs the very append code
of :class:`branchpoint.store.sql.SqlEventLog` (:func:`branchpoint.store.sqlbase.append_batch`),
so both refuse the same batches with the same errors and store identical rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from branchpoint.store.errors import InvalidEvent, StoreUnavailable
from branchpoint.store.events import Event
from branchpoint.store.log import AppendResult
from branchpoint.store.sqlbase import (
    SqliteStatements,
    append_batch,
    first_collision,
    run_migration,
    sqlite_migration,
)
from branchpoint.store.validation import Validator

__all__ = ["Sqlite3Writer"]

_STATEMENTS = SqliteStatements()
T = TypeVar("T")


class _Cursor:
    """:class:`branchpoint.store.sqlbase.Executor` over a ``sqlite3`` connection."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return self._con.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._con.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._con.executemany(sql, rows)


class Sqlite3Writer:
    """Appends batches to a SQLite file; opening creates or migrates the schema.

    Raises (from the constructor):
        StoreUnavailable: the file cannot be opened, is not a database, or stays locked
            longer than ``busy_timeout_s``.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0) -> None:
        try:
            # isolation_level=None: the module issues no BEGIN of its own; we do, IMMEDIATE
            self._con = sqlite3.connect(str(path), timeout=busy_timeout_s,
                                        isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
        try:
            self._con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._con.execute("PRAGMA journal_mode = WAL")
            self._con.execute("PRAGMA synchronous = NORMAL")
            self._transaction(lambda db: run_migration(db, sqlite_migration))
        except sqlite3.Error as exc:
            self._con.close()  # the caller gets no writer to close
            raise StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc

    def _transaction(self, work: Callable[[_Cursor], T]) -> T:
        db = _Cursor(self._con)
        self._con.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")
        return result

    def append(self, events: Sequence[Event], *, lines: Sequence[int] | None = None,
               normalized: bool = False) -> AppendResult:
        """Store a batch atomically, exactly as :meth:`EventLog.append` does.

        ``normalized=True`` skips re-validating events that come straight from
        :func:`branchpoint.store.events.decode_event` (they already are).

        Raises:
            InvalidEvent: the batch breaks a rule; nothing was stored.
            ConflictingEvent: an ``event_id`` is stored with other content.
            StoreUnavailable: the database failed or stayed locked.
        """
        rules = Validator()
        given: Sequence[int] = range(1, len(events) + 1) if lines is None else lines
        kept_lines: Sequence[int]
        indices: Sequence[int]
        payloads: list[bytes] | None = None
        if normalized:
            evs, kept_lines, indices = list(events), given, range(len(events))
        else:
            # refused events are reported with the rest of the batch's problems
            evs, kept_lines, indices, payloads = rules.prepared(events, given,
                                                                range(len(events)))
        try:
            return self._transaction(
                lambda db: append_batch(db, _STATEMENTS, evs, kept_lines, indices=indices,
                                        rules=rules, payloads=payloads))
        except sqlite3.IntegrityError as exc:
            # Only a writer that skipped BEGIN IMMEDIATE can race us past validation.
            found = first_collision(_Cursor(self._con), _STATEMENTS, evs)
            i, field = found if found is not None else (0, None)
            raise InvalidEvent(f"conflicts with an event stored concurrently ({exc})",
                               line=kept_lines[i] if evs else None,
                               event_id=evs[i].event_id if evs else None,
                               field=field) from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite append failed: {exc}") from exc

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Sqlite3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
