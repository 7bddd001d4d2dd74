"""Opening a database of an older schema migrates its tables and indexes, and never
rewrites a stored row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from branchpoint.store.errors import ConflictingEvent, StoreUnavailable
from branchpoint.store.events import canonical_payload, normalize
from branchpoint.store.log import TreeFilter, open_log
from branchpoint.store.splits import split_of
from branchpoint.store.sqlbase import SCHEMA_VERSION
from branchpoint.store.sqlite3_writer import Sqlite3Writer
from tests.store.test_log_contract import Tree

# The schema before ``digest`` and ``reason`` existed, before ``trees``, ``schema_version``
# and the partial unique indexes: a plain table of events.
OLD_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    tree_id TEXT NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    node_id TEXT,
    parent_id TEXT,
    done INTEGER,
    value REAL,
    source TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX events_tree_seq ON events (tree_id, seq);
"""
OLD_COLUMNS = ("seq, event_id, tree_id, type, version, recorded_at, node_id, parent_id, "
               "done, value, source, payload")


def old_database(path: Path) -> list[tuple[object, ...]]:
    """An old-schema database holding one closed tree, written by hand; its rows."""
    t = Tree("old", task_id=5, origin="import")
    events = [t.root(), t.node("a", "r"), t.run("a", done=True), t.score("a", 0.75),
              t.close("budget")]
    con = sqlite3.connect(path)
    con.executescript(OLD_SCHEMA)
    for ev in events:
        p = ev.payload
        con.execute(
            "INSERT INTO events (event_id, tree_id, type, version, recorded_at, node_id, "
            "parent_id, done, value, source, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (ev.event_id, ev.tree_id, ev.type, ev.version,
             ev.recorded_at.isoformat().replace("+00:00", "Z"), getattr(p, "node_id", None),
             getattr(p, "parent_id", None), getattr(p, "done", None),
             getattr(p, "value", None), getattr(p, "source", None),
             canonical_payload(p).decode()))
    con.commit()
    rows = con.execute(f"SELECT {OLD_COLUMNS} FROM events ORDER BY seq").fetchall()
    con.close()
    return rows


async def test_an_older_database_is_migrated_on_open_without_rewriting_rows(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    before = old_database(path)
    con = sqlite3.connect(path)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0] != "sqlite_sequence"] == ["events"]
    con.close()
    log = await open_log(f"sqlite:///{path}")
    try:
        con = sqlite3.connect(path)
        after = con.execute(f"SELECT {OLD_COLUMNS} FROM events ORDER BY seq").fetchall()
        columns = {r[1] for r in con.execute("PRAGMA table_info(events)")}
        indexes = {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version")]
        new_cols = con.execute("SELECT digest, reason FROM events").fetchall()
        con.close()
        assert after == before  # not a byte of a stored row changed
        assert {"digest", "reason"} <= columns
        assert new_cols == [(None, None)] * 5  # old rows keep NULL; readers derive
        assert {"events_node_created", "events_action_executed", "events_tree_closed"} <= indexes
        assert versions == [SCHEMA_VERSION]

        # the trees index was filled from the stored roots
        [tree] = await log.list_trees(TreeFilter(finished=True))
        assert (tree.tree_id, tree.env, tree.task_id, tree.origin, tree.closed) == (
            "old", "fs", 5, "import", "budget")
        assert tree.split == split_of(5)  # derived from the old root's integer task_id
        heads = await log.read_heads("old")
        assert heads[-1].reason == "budget"
        assert [e.event_id for e in await log.read_tree("old")] == [
            f"old-{i}" for i in range(1, 6)]

        # old rows without a digest still recognise a re-send, and a changed one
        t = Tree("old", task_id=5, origin="import")
        again = [t.root(), t.node("a", "r")]
        assert (await log.append(again)).duplicates == 2
        with pytest.raises(ConflictingEvent):
            await log.append([msgspec.structs.replace(again[1], tree_id="other")])
        # and the database guards now hold for new rows
        t.n = 10
        assert (await log.append([t.node("b", "r")])).stored == 1
    finally:
        await log.close()


async def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_database(path)
    for _ in range(2):
        log = await open_log(f"sqlite:///{path}")
        await log.close()
    with Sqlite3Writer(path) as writer:  # the stdlib writer migrates the same way
        assert writer.append([normalize(Tree("new").root())]).stored == 1
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM trees").fetchone() == (2,)
    con.close()


def test_a_writer_on_a_file_that_is_not_a_database_closes_its_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []

    class Watched(sqlite3.Connection):
        def close(self) -> None:
            closed.append(True)
            super().close()

    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real(*a, factory=Watched, **k))
    bad = tmp_path / "not.db"
    bad.write_bytes(b"not a SQLite database, just text " * 100)
    with pytest.raises(StoreUnavailable, match="cannot open SQLite database"):
        Sqlite3Writer(bad)
    assert closed == [True]


async def test_a_version_1_database_gains_tree_splits_on_open(db_url: str) -> None:
    """Version 1 had ``trees`` without ``split``: opening fills it from the stored roots
    (task.split first, else the integer task_id), on SQLite and PostgreSQL alike."""
    log = await open_log(db_url)
    try:
        named = Tree("named", task_id="abc")
        root = named.root()
        assert root.payload.task is not None
        root = msgspec.structs.replace(root, payload=msgspec.structs.replace(
            root.payload, task={**root.payload.task, "split": "heldout"}))
        await log.append([root, Tree("numbered", task_id=5).root(),
                          Tree("plain", task_id="x").root()])
        # back to version 1: no split column, no version 2 row
        await _execute(log, ["DROP INDEX trees_split", "ALTER TABLE trees DROP COLUMN split",
                             f"DELETE FROM schema_version WHERE version = {SCHEMA_VERSION}"])
    finally:
        await log.close()
    log = await open_log(db_url)
    try:
        got = {t.tree_id: t.split for t in await log.list_trees()}
        assert got == {"named": "heldout", "numbered": split_of(5), "plain": None}
        heldout = await log.list_trees(TreeFilter(split="heldout"))
        assert [t.tree_id for t in heldout] == ["named"] + (
            ["numbered"] if split_of(5) == "heldout" else [])
    finally:
        await log.close()


async def _execute(log: object, statements: list[str]) -> None:
    engine = log._engine  # type: ignore[attr-defined]
    async with engine.begin() as conn:
        for stmt in statements:
            await conn.exec_driver_sql(stmt)


async def test_each_dialect_creates_the_tables_and_indexes_of_its_schema_file(
        db_url: str) -> None:
    """schema.sql and schema_pg.sql are the one source of each dialect's tables: both
    create the same columns and the same named indexes."""
    from branchpoint.store.sqlbase import EVENT_COLUMNS, TREE_COLUMNS, schema_statements

    log = await open_log(db_url)
    try:
        pg = db_url.startswith("postgresql")
        engine = log._engine  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            columns = {}
            for table in ("events", "trees"):
                sql = ("SELECT column_name FROM information_schema.columns WHERE "
                       f"table_schema = current_schema() AND table_name = '{table}'"
                       if pg else f"SELECT name FROM pragma_table_info('{table}')")
                columns[table] = {r[0] for r in await conn.exec_driver_sql(sql)}
            sql = ("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                   if pg else "SELECT name FROM sqlite_master WHERE type = 'index'")
            indexes = {r[0] for r in await conn.exec_driver_sql(sql)}
    finally:
        await log.close()
    assert columns["events"] == {"seq", *EVENT_COLUMNS}
    assert columns["trees"] == {*TREE_COLUMNS, "root_seq"}
    named = {s.split(" ON ")[0].split()[-1]
             for s in schema_statements("schema_pg.sql" if pg else "schema.sql")
             if " INDEX " in s}
    assert named == {s.split(" ON ")[0].split()[-1] for s in schema_statements()
                     if " INDEX " in s}
    assert named <= indexes
