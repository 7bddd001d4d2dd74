"""What the SQL writers share: the schema, the statements, row codecs, and the append
algorithm itself.

Three writers append to SQL databases: :class:`branchpoint.store.sql.SqlEventLog` on SQLite
and on PostgreSQL (SQLAlchemy async), and the SDK's
:class:`branchpoint.store.sqlite3_writer.Sqlite3Writer` (stdlib ``sqlite3``, no SQLAlchemy).
They run the same :class:`Appender` over a small :class:`Statements` object per dialect,
so they refuse the same batches with the same errors and store the same rows. The
algorithm is synchronous and cut in steps (rows, validation, insert), so that SqlEventLog
can run each step through ``AsyncConnection.run_sync`` and overlap one chunk's insert with
the next chunk's decoding; :func:`append_batch` runs the steps in a row for a whole batch.

Light on purpose: stdlib and msgspec only (the SDK imports this module).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final, Protocol

import msgspec

from branchpoint.store.events import (
    CURRENT_VERSION,
    Event,
    EventHead,
    HeadRow,
    canonical_payload,
    decode_payload,
)
from branchpoint.store.log import AppendResult, TreeSummary
from branchpoint.store.splits import split_of_task
from branchpoint.store.validation import NodeFacts, Validator

__all__ = [
    "EVENT_COLUMNS",
    "HEADS_SELECT",
    "SCHEMA_VERSION",
    "Appender",
    "Executor",
    "SqliteStatements",
    "Statements",
    "append_batch",
    "event_from_row",
    "event_row",
    "event_rows",
    "first_collision",
    "head_from_row",
    "heads_by_tree",
    "schema_statements",
    "summary_from_row",
]

#: The schema version this code writes; recorded in ``schema_version`` on open.
SCHEMA_VERSION: Final = 2

#: Columns written by an append, in the order of :func:`event_row`.
EVENT_COLUMNS: Final = ("event_id", "tree_id", "type", "version", "recorded_at", "node_id",
                        "parent_id", "done", "value", "source", "reason", "digest", "payload")
TREE_COLUMNS: Final = ("tree_id", "env", "task_id", "task_id_is_int", "origin", "created_at",
                       "split")

#: Columns a database of an older schema may lack, with their SQL types; added on open.
#: Rows stored before keep NULL there and readers derive the value (see the queries).
ADDED_COLUMNS: Final = {"events": (("digest", "TEXT"), ("reason", "TEXT")),
                        "trees": (("split", "TEXT"),)}

# Selected by read_tree / read_after, decoded by event_from_row.
EVENT_SELECT: Final = "SELECT seq, event_id, tree_id, type, version, recorded_at, payload"
# Selected by read_heads, decoded by head_from_row. ``payload`` only where the row predates
# the ``reason`` column and the reason must be read from the JSON.
HEAD_SELECT: Final = ("SELECT seq, type, node_id, parent_id, done, value, source, reason, "
                      "CASE WHEN type = 'tree_closed' AND reason IS NULL THEN payload END")

# Selected by bulk reads of heads (one row per event of many trees), decoded by
# heads_by_tree; ``{reason}`` is the dialect's expression reading the reason from the JSON
# payload (rows stored before the ``reason`` column).
HEADS_SELECT: Final = ("SELECT seq, type, node_id, parent_id, done, value, source, "
                       "CASE WHEN type = 'tree_closed' THEN COALESCE(reason, {reason}) END, "
                       "tree_id FROM events")

CHUNK: Final = 500  # bound parameters per IN (...) query; far below every SQLite limit
#: Bound parameters per multi-row INSERT: SQLite's default limit (999 before 3.32).
MAX_PARAMS: Final = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_DIGEST: Final = EVENT_COLUMNS.index("digest")


def schema_statements(name: str = "schema.sql") -> list[str]:
    """The statements of a schema file (``schema.sql`` for SQLite, ``schema_pg.sql`` for
    PostgreSQL), comments removed, one per item."""
    text = resources.files("branchpoint.store").joinpath(name).read_text("utf-8")
    text = re.sub(r"--[^\n]*", "", text)
    return [s.strip() for s in text.split(";") if s.strip()]


def utc_text(at: datetime) -> str:
    """A time as stored: UTC, microseconds, fixed width (text order is time order)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


# --- rows ----------------------------------------------------------------------------------


def event_row(ev: Event, payload: bytes | None = None) -> tuple[Any, ...]:
    """The values of :data:`EVENT_COLUMNS` for one validated event, whose canonical payload
    is ``payload`` when the caller has it already."""
    if payload is None:
        payload = canonical_payload(ev.payload)
    at = ev.recorded_at
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    iso = at.isoformat()  # what events.digest() hashes
    # stored with microseconds always, so that every stored time has the same width
    stored_at = iso if at.microsecond else f"{iso[:19]}.000000{iso[19:]}"
    # events.digest(), computed here so that the canonical payload is encoded once; a test
    # pins that both agree.
    head = "\x00".join((ev.event_id, ev.tree_id, ev.type, str(ev.version), iso))
    d = hashlib.sha256(b"%s\x00%s" % (head.encode(), payload)).hexdigest()
    p: Any = ev.payload
    t = ev.type
    if t == "node_created":
        return (ev.event_id, ev.tree_id, t, ev.version, stored_at, p.node_id, p.parent_id,
                None, None, None, None, d, payload.decode())
    if t == "action_executed":
        done = p.done
        return (ev.event_id, ev.tree_id, t, ev.version, stored_at, p.node_id, None,
                None if done is None else int(done), None, None, None, d, payload.decode())
    if t == "score_assigned":
        return (ev.event_id, ev.tree_id, t, ev.version, stored_at, p.node_id, None, None,
                p.value, p.source, None, d, payload.decode())
    return (ev.event_id, ev.tree_id, t, ev.version, stored_at, None, None, None, None, None,
            p.reason, d, payload.decode())


def tree_row(ev: Event) -> tuple[Any, ...] | None:
    """The ``trees`` row a root creates (``root_seq`` is looked up by ``event_id``)."""
    p: Any = ev.payload
    if ev.type != "node_created" or p.parent_id is not None:
        return None
    task_id = p.task["task_id"]
    return (ev.tree_id, p.task["env"], str(task_id), int(isinstance(task_id, int)), p.origin,
            utc_text(ev.recorded_at), split_of_task(p.task), ev.event_id)


_any = msgspec.json.Decoder()


def event_from_row(row: Sequence[Any]) -> Event:
    """An :class:`Event` from a row of :data:`EVENT_SELECT`; older versions are upcast."""
    seq, event_id, tree_id, type_, version, at, payload = row
    return Event(event_id=event_id, tree_id=tree_id, type=type_, version=CURRENT_VERSION,
                 recorded_at=datetime.fromisoformat(at).astimezone(UTC),
                 payload=decode_payload(type_, version, payload), seq=seq)


def head_from_row(row: Sequence[Any]) -> EventHead:
    """An :class:`EventHead` from a row of :data:`HEAD_SELECT` (no JSON decoding, except
    for a tree_closed row stored before the ``reason`` column existed)."""
    seq, type_, node_id, parent_id, done, value, source, reason, payload = row
    if type_ == "tree_closed" and payload is not None:
        reason = _any.decode(payload)["reason"]
    return EventHead(seq, type_, node_id, parent_id, None if done is None else bool(done),
                     value, source, reason)


def heads_by_tree(rows: Iterable[Sequence[Any]]) -> dict[str, list[HeadRow]]:
    """Each tree's heads from rows of :data:`HEADS_SELECT`, a tree's rows together and in
    ``seq`` order. Runs once per event of every tree folded in bulk, so it builds plain
    tuples (see :data:`~branchpoint.store.events.HeadRow` for why not EventHeads)."""
    out: dict[str, list[HeadRow]] = {}
    tree: list[HeadRow] = []
    current = None
    for seq, type_, node_id, parent_id, done, value, source, reason, tree_id in rows:
        if tree_id != current:
            tree = out.setdefault(tree_id, [])
            current = tree_id
        tree.append((seq, type_, node_id, parent_id, None if done is None else bool(done),
                     value, source, reason))
    return out


def summary_from_row(row: Sequence[Any]) -> TreeSummary:
    """A :class:`TreeSummary` from a ``trees`` row joined with its latest close reason."""
    tree_id, env, task_id, is_int, origin, created_at, split, root_seq, closed = row
    return TreeSummary(tree_id=tree_id, env=env, task_id=int(task_id) if is_int else task_id,
                       origin=origin, created_at=datetime.fromisoformat(created_at),
                       root_seq=root_seq, closed=closed, split=split)


# --- the append algorithm ------------------------------------------------------------------


class Executor(Protocol):
    """The three calls the statements need from a connection inside a transaction."""

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Statements(Protocol):
    """The queries of one dialect that :func:`append_batch` runs."""

    def last_seq(self, db: Executor) -> int | None: ...

    def stored(self, db: Executor, event_ids: Sequence[str]) -> list[Sequence[Any]]:
        """``(event_id, digest)`` rows, plus the :data:`EVENT_SELECT` columns after them
        (used only where ``digest`` is NULL: rows stored before that column existed)."""
        ...

    def roots(self, db: Executor, tree_ids: Sequence[str]) -> set[str]: ...

    def created(self, db: Executor, keys: Sequence[tuple[str, str]]
                ) -> list[tuple[str, str, bool]]:
        """``(tree_id, node_id, is_root)`` of the stored nodes among ``keys``."""
        ...

    def executed(self, db: Executor, keys: Sequence[tuple[str, str]]
                 ) -> list[tuple[str, str, bool | None]]:
        """``(tree_id, node_id, done)`` of the stored action_executed among ``keys``."""
        ...

    def with_children(self, db: Executor, keys: Sequence[tuple[str, str]]
                      ) -> list[tuple[str, str]]:
        """The ``(tree_id, node_id)`` among ``keys`` that have a stored child."""
        ...

    def insert(self, db: Executor, rows: list[tuple[Any, ...]],
               trees: list[tuple[Any, ...]]) -> None: ...


def event_rows(events: Iterable[Event],
               payloads: Iterable[bytes] | None = None) -> list[tuple[Any, ...]]:
    """:func:`event_row` of each event (with its canonical payload, when given): the
    CPU-heavy step of an append (canonical JSON and digest), which needs no database, so a
    streaming append runs it while the previous chunk's insert is under way."""
    if payloads is None:
        return [event_row(e) for e in events]
    return [event_row(e, p) for e, p in zip(events, payloads, strict=True)]


class Appender:
    """One append transaction, fed a batch in one or more chunks.

    Must live inside one write transaction that the caller commits, or rolls back when a
    step raises; that is what makes the batch all-or-nothing however many chunks it spans.
    For each chunk, in order: :func:`event_rows` (no database), :meth:`validate` (lookups
    and rules; returns what to insert), then ``Statements.insert`` of that; at the end,
    :meth:`result`. The rules (:class:`~branchpoint.store.validation.Validator`) keep what
    earlier chunks added, so a batch is refused or stored the same however it is cut, and
    a later chunk's lookups need not see an earlier chunk's rows.
    """

    def __init__(self, db: Executor, sql: Statements, rules: Validator | None = None) -> None:
        self._sql = sql
        self.rules = self._rules = rules or Validator()
        # an empty log holds no digests, roots or nodes: every lookup can be skipped
        self._empty = sql.last_seq(db) is None
        self.stored = self.duplicates = 0

    def validate(self, db: Executor, events: Sequence[Event], lines: Sequence[int],
                 rows: Sequence[tuple[Any, ...]], indices: Sequence[int] | None = None
                 ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Check one chunk (normalized events, their ``lines`` and :func:`event_rows`, and
        their ``indices`` in the batch) against the stored facts and the chunks before it.

        Returns the ``events`` rows to insert (re-sent events dropped) and ``trees`` rows;
        none once any event of the batch is refused (the rest is still judged, so that
        the refusal reports the whole batch; :meth:`result` raises it).
        """
        rules, sql = self._rules, self._sql
        stored: dict[str, str] = {}
        if not self._empty:
            ids = [e.event_id for e in events if e.event_id not in rules.digests]
            for row in sql.stored(db, ids) if ids else ():
                d = row[1]
                if d is None:  # stored before the digest column existed
                    from branchpoint.store.events import digest

                    d = digest(event_from_row(row[2:]))
                stored[row[0]] = d
        # Re-sent events go first: the rules never judge them, so their trees and nodes
        # need no lookups (a re-sent batch costs one indexed query per 500 event ids).
        kept = rules.drop_duplicates(events, stored, lines, [r[_DIGEST] for r in rows],
                                     indices)
        self.duplicates += len(events) - len(kept)
        if len(kept) != len(events):
            events = [events[i] for i in kept]
            lines = [lines[i] for i in kept]
            rows = [rows[i] for i in kept]
            indices = None if indices is None else [indices[i] for i in kept]
        if not self._empty and events:
            self._learn(db, events)
        rules.check(events, lines, indices)
        self.stored += len(events)
        if rules.problems:
            return [], []
        return list(rows), [r for r in map(tree_row, events) if r is not None]

    def _learn(self, db: Executor, events: Sequence[Event]) -> None:
        """Look up the stored facts the rules need for ``events`` and teach them."""
        rules, sql = self._rules, self._sql
        _, trees, keys = rules.unknown(events)
        roots = sql.roots(db, sorted(trees)) if trees else set()
        # a tree without a stored root has no stored nodes (every event needs the root)
        in_stored = sorted(k for k in keys if k[0] in roots or k[0] in rules.stored_roots)
        nodes: dict[tuple[str, str], NodeFacts] = {}
        if in_stored:
            for t, n, is_root in sql.created(db, in_stored):
                nodes[(t, n)] = NodeFacts(bool(is_root), False, None)
            for t, n, done in sql.executed(db, in_stored):
                nodes[(t, n)] = NodeFacts(False, True, None if done is None else bool(done))
        rules.learn(roots, nodes)
        # a node that an execution marks done must have no stored child
        ending = sorted(k for k in rules.ending(events)
                        if k[0] in roots or k[0] in rules.stored_roots)
        if ending:
            rules.learn((), {}, (ending, sql.with_children(db, ending)))

    def result(self, db: Executor) -> AppendResult:
        """What the whole append did (ask once every chunk is inserted).

        Raises:
            InvalidEvent: an event of the batch was refused (``problems`` lists all).
            ConflictingEvent: the only refusals are conflicts.
        """
        self._rules.raise_if_refused()
        return AppendResult(self.stored, self.duplicates, self._sql.last_seq(db))


def append_batch(db: Executor, sql: Statements, events: Sequence[Event],
                 lines: Sequence[int] | None, *, indices: Sequence[int] | None = None,
                 rules: Validator | None = None,
                 payloads: Sequence[bytes] | None = None) -> AppendResult:
    """Validate ``events`` (already normalized) against the stored facts and insert them:
    :class:`Appender` over a single chunk.

    Must run inside one write transaction that the caller commits, or rolls back when this
    raises; that is what makes a batch all-or-nothing.

    ``rules`` may already hold refusals of the batch (events that did not normalize) and
    ``indices`` are the events' positions in the batch (default: 0, 1, ...), ``payloads``
    their canonical payloads when the caller has them
    (:meth:`~branchpoint.store.validation.Validator.prepared`).

    Raises:
        InvalidEvent: the batch breaks a rule (see :mod:`branchpoint.store.validation`).
        ConflictingEvent: an ``event_id`` is stored, or repeated, with other content.
    """
    appender = Appender(db, sql, rules)
    if events:
        rows, trees = appender.validate(
            db, events, range(1, len(events) + 1) if lines is None else lines,
            event_rows(events, payloads), range(len(events)) if indices is None else indices)
        if rows:
            sql.insert(db, rows, trees)
    return appender.result(db)


def first_collision(db: Executor, sql: Statements, events: Sequence[Event]
                    ) -> tuple[int, str] | None:
    """After a unique index refused a batch that validation passed (only a writer that
    skipped the write lock can cause that): the position and field of the batch's first
    event that collides with a stored row, or None when none does any more."""
    ids = {r[0] for r in sql.stored(db, [e.event_id for e in events])}
    keys = sorted({(e.tree_id, e.node_id) for e in events if e.node_id is not None})
    created = {(r[0], r[1]) for r in sql.created(db, keys)} if keys else set()
    executed = {(r[0], r[1]) for r in sql.executed(db, keys)} if keys else set()
    for i, e in enumerate(events):
        key = (e.tree_id, e.node_id)
        if e.event_id in ids:
            return i, "event_id"
        if e.type == "node_created" and key in created:
            return i, "payload.node_id"
        if e.type == "action_executed" and key in executed:
            return i, "payload.node_id"
    return None


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --- SQLite ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def insert_events_sql(n: int) -> str:
    """One INSERT of ``n`` events rows (multi-row VALUES, in order: seq follows it)."""
    row = f"({', '.join('?' * len(EVENT_COLUMNS))})"
    return f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([row] * n)}"


@functools.lru_cache(maxsize=32)
def insert_trees_sql(n: int) -> str:
    """One INSERT of ``n`` trees rows, each taking its root's ``seq`` by ``event_id``."""
    row = f"({', '.join('?' * (len(TREE_COLUMNS) + 1))})"
    return (f"INSERT INTO trees ({', '.join(TREE_COLUMNS)}, root_seq) "
            f"SELECT {', '.join(f'v.column{i + 1}' for i in range(len(TREE_COLUMNS)))}, "
            f"e.seq FROM (VALUES {', '.join([row] * n)}) AS v "
            f"JOIN events e ON e.event_id = v.column{len(TREE_COLUMNS) + 1}")


def _insert_many(db: Executor, rows: Sequence[tuple[Any, ...]],
                 sql_for: Callable[[int], str]) -> None:
    """Insert ``rows`` with as few statements as the parameter limit allows: every full
    group through one executemany, then the rest. sqlite3 releases the GIL around each
    statement's step; a statement per row would have the writing thread win the GIL back
    once per row, which stalls it for a switch interval each time another thread runs
    Python (a chunk's insert overlaps the next chunk's decoding)."""
    if not rows:
        return
    per = MAX_PARAMS // len(rows[0])
    full = len(rows) - len(rows) % per
    if full:
        db.executemany(sql_for(per), [
            tuple(itertools.chain.from_iterable(rows[i:i + per]))
            for i in range(0, full, per)])
    if full < len(rows):
        db.execute(sql_for(len(rows) - full),
                   tuple(itertools.chain.from_iterable(rows[full:])))


# The reason of a tree's latest tree_closed, or NULL while it is unfinished.
SQLITE_CLOSED: Final = ("(SELECT COALESCE(c.reason, json_extract(c.payload, '$.reason')) "
                        "FROM events c WHERE c.type = 'tree_closed' AND c.tree_id = t.tree_id "
                        "ORDER BY c.seq DESC LIMIT 1)")
# Fills ``trees`` from the roots when an older database gains the table.
SQLITE_BACKFILL_TREES: Final = (
    f"INSERT OR IGNORE INTO trees ({', '.join(TREE_COLUMNS)}, root_seq) "
    "SELECT tree_id, json_extract(payload, '$.task.env'), "
    "CAST(json_extract(payload, '$.task.task_id') AS TEXT), "
    "json_type(payload, '$.task.task_id') = 'integer', json_extract(payload, '$.origin'), "
    "recorded_at, NULL, seq FROM events WHERE type = 'node_created' AND parent_id IS NULL")


_ON_NODE: Final = "e.tree_id = k.column1 AND e.node_id = k.column2"


class SqliteStatements:
    """:class:`Statements` for SQLite (``?`` parameters, IN lists in chunks)."""

    def last_seq(self, db: Executor) -> int | None:
        return db.fetchall("SELECT max(seq) FROM events")[0][0]  # type: ignore[no-any-return]

    def stored(self, db: Executor, event_ids: Sequence[str]) -> list[Sequence[Any]]:
        out: list[Sequence[Any]] = []
        for part in chunks(event_ids):
            marks = ",".join("?" * len(part))
            out += db.fetchall(
                "SELECT event_id, digest, CASE WHEN digest IS NULL THEN seq END, event_id, "
                "tree_id, type, version, recorded_at, "
                f"CASE WHEN digest IS NULL THEN payload END FROM events "
                f"WHERE event_id IN ({marks})", part)
        return out

    def roots(self, db: Executor, tree_ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for part in chunks(tree_ids):
            marks = ",".join("?" * len(part))
            out.update(r[0] for r in db.fetchall(
                f"SELECT tree_id FROM trees WHERE tree_id IN ({marks})", part))
        return out

    def _by_key(self, db: Executor, keys: Sequence[tuple[str, str]], select: str,
                on: str, where: str) -> list[Any]:
        """``select`` over ``events e`` joined to the ``keys`` (a VALUES list ``k`` of
        ``(tree_id, node_id)``, ``on`` the join condition), a chunk of keys per query:
        one query for many trees, each key probing an index (CROSS JOIN makes SQLite
        loop over the keys outside)."""
        out: list[Any] = []
        for part in chunks(keys):
            values = ", ".join(["(?, ?)"] * len(part))
            out += db.fetchall(
                f"{select} FROM (VALUES {values}) AS k CROSS JOIN events e ON {on} "
                f"WHERE {where}", [x for key in part for x in key])
        return out

    def created(self, db: Executor, keys: Sequence[tuple[str, str]]
                ) -> list[tuple[str, str, bool]]:
        return self._by_key(db, keys, "SELECT e.tree_id, e.node_id, e.parent_id IS NULL",
                            _ON_NODE, "e.type = 'node_created'")

    def executed(self, db: Executor, keys: Sequence[tuple[str, str]]
                 ) -> list[tuple[str, str, bool | None]]:
        return self._by_key(db, keys, "SELECT e.tree_id, e.node_id, e.done", _ON_NODE,
                            "e.type = 'action_executed'")

    def with_children(self, db: Executor, keys: Sequence[tuple[str, str]]
                      ) -> list[tuple[str, str]]:
        rows = self._by_key(db, keys, "SELECT DISTINCT e.tree_id, e.parent_id",
                            "e.tree_id = k.column1 AND e.parent_id = k.column2",
                            "e.type = 'node_created'")
        return [(r[0], r[1]) for r in rows]

    def insert(self, db: Executor, rows: list[tuple[Any, ...]],
               trees: list[tuple[Any, ...]]) -> None:
        _insert_many(db, rows, insert_events_sql)
        _insert_many(db, trees, insert_trees_sql)


#: A step of a migration: a statement, or a function run on the connection.
Step = str | Callable[[Executor], None]


def backfill_splits(db: Executor) -> None:
    """Fill ``trees.split`` from each root's task, for trees stored before the column
    existed (the one time a ``trees`` row is updated: when the migration adds it)."""
    rows = db.fetchall("SELECT t.tree_id, e.payload FROM trees t JOIN events e "
                       "ON e.seq = t.root_seq WHERE t.split IS NULL")
    updates = [(split, tree_id) for tree_id, payload in rows
               if (split := split_of_task(_any.decode(payload).get("task"))) is not None]
    if updates:
        db.executemany("UPDATE trees SET split = ? WHERE tree_id = ?", updates)


def migration_steps(tables: set[str], columns: dict[str, set[str]], *, schema: list[str],
                    backfill_trees: str, record_version: str) -> list[Step]:
    """The steps that bring a database (its ``tables`` and their ``columns``) to
    :data:`SCHEMA_VERSION`, in either dialect: add the columns older tables lack, run the
    dialect's ``schema`` (idempotent), fill ``trees`` if it is new and its splits if they
    are new, record the version. Stored events are never rewritten."""
    out: list[Step] = []
    for table, added in ADDED_COLUMNS.items():
        if table in tables:
            out += [f"ALTER TABLE {table} ADD COLUMN {name} {type_}"
                    for name, type_ in added if name not in columns[table]]
    out += schema
    if "events" in tables and "trees" not in tables:
        out.append(backfill_trees)
    if "events" in tables and ("trees" not in tables or "split" not in columns["trees"]):
        out.append(backfill_splits)
    out.append(record_version)
    return out


def sqlite_migration(db: Executor) -> list[Step]:
    """The steps that bring a SQLite database to :data:`SCHEMA_VERSION` (see
    :func:`migration_steps`). Run them in a write transaction."""
    tables = {r[0] for r in db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
    columns = {t: {r[1] for r in db.fetchall(f"PRAGMA table_info({t})")}
               for t in ("events", "trees") if t in tables}
    return migration_steps(
        tables, columns, schema=schema_statements(), backfill_trees=SQLITE_BACKFILL_TREES,
        record_version=f"INSERT OR IGNORE INTO schema_version (version) "
                       f"VALUES ({SCHEMA_VERSION})")


def run_migration(db: Executor, plan: Callable[[Executor], list[Step]]) -> None:
    """Run the steps ``plan`` returns, one by one."""
    for step in plan(db):
        if isinstance(step, str):
            db.execute(step)
        else:
            step(db)
