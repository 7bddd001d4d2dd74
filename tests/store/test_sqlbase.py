"""The SQL shared by both SQLite writers: naming what a unique index refused."""

from __future__ import annotations

import sqlite3

import pytest

from branchpoint.store import sqlite3_writer
from branchpoint.store.errors import InvalidEvent
from branchpoint.store.events import normalize
from branchpoint.store.sqlbase import SqliteStatements, first_collision
from branchpoint.store.sqlite3_writer import Sqlite3Writer
from tests.store.builders import TreeBuilder


def test_first_collision_names_the_event_a_stored_row_clashes_with(tmp_path):
    stored = TreeBuilder("t1").root().node("a", "r")
    with Sqlite3Writer(tmp_path / "log.db") as w:
        w.append(stored.events)
        other = TreeBuilder("t2").root().events
        clash = TreeBuilder("t1", start=10).node("a", "r").events  # node "a" again
        batch = [normalize(e) for e in [*other, *clash]]
        db = sqlite3_writer._Cursor(w._con)
        assert first_collision(db, SqliteStatements(), batch) == (1, "payload.node_id")
        again = [normalize(e) for e in stored.events[1:]]
        assert first_collision(db, SqliteStatements(), again) == (0, "event_id")
        assert first_collision(db, SqliteStatements(), batch[:1]) is None


def test_the_stdlib_writer_names_the_colliding_event_when_an_index_fires(tmp_path, monkeypatch):
    # A writer that skipped BEGIN IMMEDIATE is the only way past validation; stand in for it
    # by letting validation pass and the insert hit the unique index.
    stored = TreeBuilder("t1").root().node("a", "r")
    with Sqlite3Writer(tmp_path / "log.db") as w:
        w.append(stored.events)

        def racing_append(db, sql, events, lines, **_):
            raise sqlite3.IntegrityError("UNIQUE constraint failed: events.tree_id, "
                                         "events.node_id")

        monkeypatch.setattr(sqlite3_writer, "append_batch", racing_append)
        batch = [*TreeBuilder("t2").root().events,
                 *TreeBuilder("t1", start=10).node("a", "r").events]
        with pytest.raises(InvalidEvent) as info:
            w.append(batch, lines=[7, 8])
    assert info.value.line == 8
    assert info.value.event_id == batch[1].event_id
    assert info.value.field == "payload.node_id"
