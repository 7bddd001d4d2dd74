"""The EventLog contract, run against every backend (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from branchpoint.store.errors import ConflictingEvent, InvalidEvent, TreeNotFound
from branchpoint.store.events import (
    ActionExecuted,
    Event,
    EventHead,
    NodeCreated,
    ScoreAssigned,
    TreeClosed,
    decode_event,
    digest,
    normalize,
)
from branchpoint.store.log import (
    Chunk,
    EventLog,
    MemoryEventLog,
    TreeFilter,
    iter_events,
    open_log,
)
from branchpoint.store.splits import SPLITS, split_of
from branchpoint.store.sqlite3_writer import Sqlite3Writer

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


class Tree:
    """Events of one tree with ids ``<tree>-<n>`` and times one second apart."""

    def __init__(self, tree_id: str = "t1", *, env: str = "fs", task_id: str | int = 1,
                 origin: str | None = "sdk", start: datetime = T0) -> None:
        self.tree_id, self.env, self.task_id, self.origin = tree_id, env, task_id, origin
        self.start = start
        self.n = 0

    def _ev(self, payload: Any, type_: str | None = None) -> Event:
        self.n += 1
        ev = Event.of(payload, tree_id=self.tree_id, event_id=f"{self.tree_id}-{self.n}",
                      recorded_at=self.start + timedelta(seconds=self.n))
        return msgspec.structs.replace(ev, type=type_) if type_ else ev

    def root(self, node_id: str = "r") -> Event:
        return self._ev(NodeCreated(
            node_id=node_id, messages=[{"role": "user", "content": "list the files"}],
            task={"env": self.env, "task_id": self.task_id, "seed": 7}, origin=self.origin))

    def node(self, node_id: str, parent: str) -> Event:
        return self._ev(NodeCreated(node_id=node_id, parent_id=parent,
                                    action={"role": "assistant", "content": f"do {node_id}"}))

    def run(self, node_id: str, done: bool | None = False) -> Event:
        return self._ev(ActionExecuted(
            node_id=node_id, observation=[{"role": "user", "content": "ok"}], done=done))

    def score(self, node_id: str, value: float, source: str = "checker") -> Event:
        return self._ev(ScoreAssigned(node_id=node_id, value=value, source=source))

    def close(self, reason: str = "done") -> Event:
        return self._ev(TreeClosed(reason=reason))


def small_tree(tree_id: str = "t1", **kw: Any) -> list[Event]:
    t = Tree(tree_id, **kw)
    return [t.root(), t.node("a", "r"), t.run("a", done=False), t.node("a1", "a"),
            t.run("a1", done=True), t.score("a1", 1.0), t.node("b", "r"), t.score("b", 0.25)]


def without_seq(events: list[Event]) -> list[Event]:
    return [msgspec.structs.replace(e, seq=None) for e in events]


async def count(log: EventLog) -> int:
    return len(await log.read_after(0, limit=1_000_000))


# --- appends and reads ------------------------------------------------------------------


async def test_a_stored_tree_reads_back_as_appended_in_seq_order(log: EventLog) -> None:
    events = small_tree()
    res = await log.append(events)
    assert (res.stored, res.duplicates, res.last_seq) == (len(events), 0, len(events))
    got = await log.read_tree("t1")
    assert without_seq(got) == [normalize(e) for e in events]
    assert [e.seq for e in got] == list(range(1, len(events) + 1))


async def test_heads_carry_the_fold_scalars_without_payloads(log: EventLog) -> None:
    t = Tree()
    await log.append([t.root(), t.node("a", "r"), t.run("a", done=None), t.score("a", 0.5),
                      t.node("b", "r"), t.run("b", done=True), t.close("budget")])
    heads = await log.read_heads("t1")
    assert heads == [e.head() for e in await log.read_tree("t1")]
    assert heads[-1].reason == "budget"
    assert heads[-1].parent_id is None  # the reason has a field of its own
    assert [h.done for h in heads if h.type == "action_executed"] == [None, True]


async def test_reading_an_unknown_tree_raises_tree_not_found(log: EventLog) -> None:
    await log.append(small_tree())
    with pytest.raises(TreeNotFound):
        await log.read_tree("nope")
    with pytest.raises(TreeNotFound):
        await log.read_heads("nope")


async def test_a_parent_created_earlier_in_the_same_batch_is_accepted(log: EventLog) -> None:
    t = Tree()
    await log.append([t.root()])
    res = await log.append([t.node("a", "r"), t.node("a1", "a"), t.run("a1"),
                            t.node("a2", "a1")])
    assert res.stored == 4


async def test_an_empty_batch_stores_nothing(log: EventLog) -> None:
    assert (await log.append([])).stored == 0
    await log.append(small_tree())
    res = await log.append([])
    assert (res.stored, res.duplicates, res.last_seq) == (0, 0, 8)


async def test_read_after_pages_through_every_event_in_seq_order(log: EventLog) -> None:
    for i in range(3):
        await log.append(small_tree(f"t{i}"))
    first = await log.read_after(0, limit=5)
    assert [e.seq for e in first] == [1, 2, 3, 4, 5]
    rest = await log.read_after(5, limit=100)
    assert [e.seq for e in rest] == list(range(6, 25))
    assert await log.read_after(24) == []
    seen = [e.seq async for e in iter_events(log, 3, page=4)]
    assert seen == list(range(4, 25))


# --- idempotency ----------------------------------------------------------------------------


async def test_an_identical_resend_is_a_no_op(log: EventLog) -> None:
    events = small_tree()
    await log.append(events)
    res = await log.append(events)
    assert (res.stored, res.duplicates, res.last_seq) == (0, len(events), len(events))
    assert await count(log) == len(events)


async def test_a_resend_with_another_time_format_and_key_order_is_a_no_op(
        log: EventLog) -> None:
    await log.append(small_tree())
    first = ('{"event_id": "x1", "tree_id": "t1", "type": "score_assigned", "version": 1, '
             '"recorded_at": "2026-01-01T10:00:00.000Z", '
             '"payload": {"node_id": "a", "value": 0.5, "source": "judge"}}')
    again = ('{"payload": {"source": "judge", "value": 0.5, "node_id": "a"}, '
             '"recorded_at": "2026-01-01T11:00:00+01:00", "version": 1, '
             '"type": "score_assigned", "tree_id": "t1", "event_id": "x1"}')
    assert (await log.append([decode_event(first)])).stored == 1
    res = await log.append([decode_event(again)])
    assert (res.stored, res.duplicates) == (0, 1)
    assert await count(log) == 9


async def test_a_resent_event_id_with_other_content_is_rejected_by_name(log: EventLog) -> None:
    t = Tree()
    events = [t.root(), t.node("a", "r")]
    await log.append(events)
    changed = msgspec.structs.replace(events[1], recorded_at=T0)
    fresh = Tree("t2").root()
    with pytest.raises(ConflictingEvent) as err:
        await log.append([fresh, changed])
    assert err.value.event_id == "t1-2"
    assert err.value.line == 2
    assert await count(log) == 2  # t2's root was not stored either


async def test_a_duplicate_within_one_batch_is_stored_once(log: EventLog) -> None:
    events = small_tree()
    res = await log.append(events + events[:3])
    assert (res.stored, res.duplicates) == (len(events), 3)


async def test_a_conflicting_duplicate_within_one_batch_is_rejected(log: EventLog) -> None:
    t = Tree()
    root = t.root()
    other = msgspec.structs.replace(t.node("a", "r"), event_id=root.event_id)
    with pytest.raises(ConflictingEvent) as err:
        await log.append([root, other])
    assert err.value.event_id == root.event_id
    assert await count(log) == 0


# --- refusals ----------------------------------------------------------------------------------

Case = Callable[[Tree], tuple[list[Event], Event, str]]


def _reused_node_id(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root(), t.node("a", "r")], t.node("a", "r"), "payload.node_id"


def _unknown_parent(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.node("a", "ghost"), "payload.parent_id"


def _second_root(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.root("r2"), "payload.parent_id"


def _child_of_finished(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root(), t.node("a", "r"), t.run("a", done=True)], t.node("a1", "a"), \
        "payload.parent_id"


def _root_executed(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.run("r"), "payload.node_id"


def _executed_twice(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root(), t.node("a", "r"), t.run("a")], t.run("a"), "payload.node_id"


def _executed_unknown(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.run("ghost"), "payload.node_id"


def _scored_unknown(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.score("ghost", 0.5), "payload.node_id"


def _value_above_one(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.score("r", 1.5), "payload.value"


def _value_nan(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.score("r", math.nan), "payload.value"


def _mistyped_field(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t.score("r", "high"), "payload.value"  # type: ignore[arg-type]


def _missing_field(t: Tree) -> tuple[list[Event], Event, str]:
    return [], t._ev(NodeCreated(node_id="r", messages=[{"role": "user", "content": "x"}])), \
        "payload.task"


def _unknown_type(t: Tree) -> tuple[list[Event], Event, str]:
    return [t.root()], t._ev(TreeClosed(reason="done"), "tree_deleted"), "type"


def _closed_unknown_tree(t: Tree) -> tuple[list[Event], Event, str]:
    return [], t.close(), "tree_id"


REFUSALS = [_reused_node_id, _unknown_parent, _second_root, _child_of_finished,
            _root_executed, _executed_twice, _executed_unknown, _scored_unknown,
            _value_above_one, _value_nan, _mistyped_field, _missing_field, _unknown_type,
            _closed_unknown_tree]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.__name__.strip("_"))
async def test_a_batch_breaking_a_rule_is_refused_naming_event_and_field_and_none_of_it_stored(
        log: EventLog, case: Case) -> None:
    before, bad, field = case(Tree())
    if before:
        await log.append(before)
    innocent = Tree("other").root()
    with pytest.raises(InvalidEvent) as err:
        await log.append([innocent, bad], lines=[10, 11])
    assert (err.value.event_id, err.value.field, err.value.line) == (bad.event_id, field, 11)
    assert await count(log) == len(before)
    with pytest.raises(TreeNotFound):
        await log.read_tree("other")


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.__name__.strip("_"))
async def test_every_backend_refuses_with_the_memory_logs_message(log: EventLog,
                                                                 case: Case) -> None:
    before, bad, _ = case(Tree())
    reference = MemoryEventLog()
    for target in (reference, log):
        if before:
            await target.append(before)
    with pytest.raises(InvalidEvent) as want:
        await reference.append([bad])
    with pytest.raises(InvalidEvent) as got:
        await log.append([bad])
    assert str(got.value) == str(want.value)
    assert type(got.value) is type(want.value)


# --- streamed appends: one batch in chunks --------------------------------------------------


async def chunked(*chunks: list[Event]) -> AsyncIterator[Chunk]:
    """The chunks as a producer would hand them over, without line numbers."""
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk, None


async def test_a_batch_streamed_in_chunks_is_stored_whole_in_order(log: EventLog) -> None:
    events = small_tree("t1") + small_tree("t2") + small_tree("t3")
    res = await log.append_stream(chunked(events[:5], events[5:6], [], events[6:]))
    assert (res.stored, res.duplicates, res.last_seq) == (24, 0, 24)
    assert without_seq(await log.read_after(0)) == [normalize(e) for e in events]
    # a plain iterable of chunks, with line numbers, does the same
    more = small_tree("t4")
    res = await log.append_stream([(more[:3], [1, 2, 3]), (more[3:], range(4, 9))])
    assert (res.stored, res.last_seq) == (8, 32)


async def test_a_node_may_rely_on_one_created_in_an_earlier_chunk(log: EventLog) -> None:
    t = Tree()
    res = await log.append_stream(chunked([t.root(), t.node("a", "r")],
                                          [t.run("a"), t.node("a1", "a")],
                                          [t.score("a1", 0.5), t.close()]))
    assert res.stored == 6
    assert [h.type for h in await log.read_heads("t1")][-1] == "tree_closed"


async def test_a_rule_broken_in_a_late_chunk_stores_nothing_of_the_stream(
        log: EventLog) -> None:
    await log.append(small_tree("before"))
    t = Tree()
    done = [t.root(), t.node("a", "r"), t.run("a", done=True)]
    with pytest.raises(InvalidEvent) as err:
        await log.append_stream(chunked(small_tree("t0"), done, [t.node("a1", "a")]))
    # lines count across the chunks: 8 events of t0, 3 of t1, then the child
    assert (err.value.line, err.value.event_id, err.value.field) == (
        12, "t1-4", "payload.parent_id")
    assert await count(log) == 8
    with pytest.raises(TreeNotFound):
        await log.read_tree("t0")


async def test_an_error_raised_by_the_chunks_themselves_stores_nothing(log: EventLog) -> None:
    async def broken() -> AsyncIterator[Chunk]:
        yield small_tree("t1"), None
        yield small_tree("t2"), None
        raise InvalidEvent("malformed JSON", line=17)  # what a decoding producer raises

    with pytest.raises(InvalidEvent, match="line 17"):
        await log.append_stream(broken())
    assert await count(log) == 0


async def test_an_event_id_repeated_across_chunks_is_stored_once(log: EventLog) -> None:
    events = small_tree()
    res = await log.append_stream(chunked(events[:4], events[2:6], events[5:]))
    assert (res.stored, res.duplicates) == (8, 3)
    assert [e.event_id for e in await log.read_tree("t1")] == [e.event_id for e in events]


async def test_an_event_id_repeated_across_chunks_with_other_content_is_refused(
        log: EventLog) -> None:
    events = small_tree()
    changed = msgspec.structs.replace(events[1], recorded_at=T0)
    with pytest.raises(ConflictingEvent) as err:
        await log.append_stream(chunked(events[:4], events[4:], [changed]))
    assert (err.value.event_id, err.value.line) == ("t1-2", 9)
    assert "earlier in this batch" in str(err.value)
    assert await count(log) == 0


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.__name__.strip("_"))
async def test_a_batch_cut_in_chunks_is_refused_as_the_whole_batch_is(log: EventLog,
                                                                     case: Case) -> None:
    before, bad, _ = case(Tree())
    whole = [Tree("other").root(), *before, bad]
    with pytest.raises(InvalidEvent) as want:
        await MemoryEventLog().append(whole)
    with pytest.raises(InvalidEvent) as got:
        await log.append_stream(chunked(*([e] for e in whole)))
    assert str(got.value) == str(want.value)
    assert type(got.value) is type(want.value)
    assert await count(log) == 0


# --- listing trees ---------------------------------------------------------------------------


async def test_trees_are_listed_oldest_first_with_where_they_came_from(log: EventLog) -> None:
    await log.append(small_tree("t1", task_id=3, origin="sdk"))
    await log.append(small_tree("t2", env="shop", task_id="x-9", origin=None))
    trees = await log.list_trees()
    assert [(t.tree_id, t.env, t.task_id, t.origin, t.root_seq, t.closed) for t in trees] == [
        ("t1", "fs", 3, "sdk", 1, None), ("t2", "shop", "x-9", None, 9, None)]
    assert trees[0].created_at == T0 + timedelta(seconds=1)


async def test_trees_filter_by_env_task_origin_time_and_finished(log: EventLog) -> None:
    day = timedelta(days=1)
    t1 = Tree("t1", env="fs", task_id=3, origin="sdk", start=T0)
    t2 = Tree("t2", env="shop", task_id="3", origin="sampler", start=T0 + day)
    t3 = Tree("t3", env="fs", task_id=4, origin="sampler", start=T0 + 2 * day)
    await log.append([t1.root(), t2.root(), t3.root(), t1.close("done"), t3.close("error"),
                      t3.close("budget")])

    async def ids(**kw: Any) -> list[str]:
        return [t.tree_id for t in await log.list_trees(TreeFilter(**kw))]

    assert await ids(env="fs") == ["t1", "t3"]
    assert await ids(task_id=3) == ["t1", "t2"]  # compared as text, as in memory
    assert await ids(task_id="4") == ["t3"]
    assert await ids(origin="sampler") == ["t2", "t3"]
    assert await ids(since=T0 + day) == ["t2", "t3"]
    assert await ids(until=T0 + day) == ["t1"]
    assert await ids(since=T0 + day, until=T0 + 2 * day) == ["t2"]
    assert await ids(finished=True) == ["t1", "t3"]
    assert await ids(finished=False) == ["t2"]
    assert await ids(env="fs", finished=True, origin="sampler") == ["t3"]
    closed = {t.tree_id: t.closed for t in await log.list_trees()}
    assert closed == {"t1": "done", "t2": None, "t3": "budget"}  # the latest close counts


async def test_trees_are_selected_by_id_and_by_split(log: EventLog) -> None:
    """A split is the root's task.split, else split_of a non-negative integer task_id;
    a tree with neither is in no split. The same filter selects in bulk reads."""
    ids = {s: [i for i in range(40) if split_of(i) == s][:1] for s in SPLITS}
    by_id = Tree("by-id", task_id=ids["heldout"][0])
    named = Tree("named", task_id=ids["train"][0])  # task.split overrides the task_id's
    root = named.root()
    assert root.payload.task is not None
    root = msgspec.structs.replace(root, payload=msgspec.structs.replace(
        root.payload, task={**root.payload.task, "split": "heldout"}))
    train = Tree("train", task_id=ids["train"][0])
    none = [Tree("text-id", task_id="abc"), Tree("negative", task_id=-4)]
    await log.append([by_id.root(), root, train.root(), *(t.root() for t in none)])

    async def listed(**kw: Any) -> list[str]:
        got = [t.tree_id for t in await log.list_trees(TreeFilter(**kw))]
        assert [t for t, _ in await bulk(log, TreeFilter(**kw))] == got
        return got

    assert await listed(split="heldout") == ["by-id", "named"]
    assert await listed(split="train") == ["train"]
    assert await listed(split="validation") == []
    assert await listed(tree_id="named") == ["named"]
    assert await listed(tree_id="named", split="train") == []
    assert await listed(tree_id="nope") == []
    splits = {t.tree_id: t.split for t in await log.list_trees()}
    assert splits == {"by-id": "heldout", "named": "heldout", "train": "train",
                      "text-id": None, "negative": None}
    with pytest.raises(ValueError, match="split must be one of"):
        TreeFilter(split="test")  # type: ignore[arg-type]


async def test_trees_are_listed_in_pages_that_follow_a_cursor(log: EventLog) -> None:
    trees = [Tree(f"t{i}", env="fs" if i % 3 else "shop") for i in range(7)]
    await log.append([t.root() for t in trees])
    everything = await log.list_trees()
    assert everything.next_cursor is None and len(everything) == 7

    async def walk(where: TreeFilter | None, limit: int) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            page = await log.list_trees(where, limit=limit, cursor=cursor)
            pages.append([t.tree_id for t in page])
            cursor = page.next_cursor
            if cursor is None:
                return pages

    assert await walk(None, 3) == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]
    assert await walk(None, 7) == [[f"t{i}" for i in range(7)]]
    assert await walk(TreeFilter(env="fs"), 2) == [["t1", "t2"], ["t4", "t5"]]
    # a tree added between two pages comes on a later page; none is repeated or skipped
    first = await log.list_trees(limit=4)
    await log.append([Tree("late").root()])
    rest = await log.list_trees(cursor=first.next_cursor)
    assert [t.tree_id for t in [*first, *rest]] == [*(f"t{i}" for i in range(7)), "late"]
    for bad in ({"limit": 0}, {"limit": -1}, {"cursor": "nonsense"}, {"cursor": "t1.x"}):
        with pytest.raises(ValueError, match=r"limit|cursor"):
            await log.list_trees(**bad)


# --- heads in bulk --------------------------------------------------------------------------


async def bulk(log: EventLog, where: TreeFilter | None = None,
               tree_ids: list[str] | None = None) -> list[tuple[str, list[EventHead]]]:
    return [item async for item in log.iter_heads(where, tree_ids=tree_ids)]


async def test_bulk_heads_are_each_trees_read_heads_in_listing_order(log: EventLog) -> None:
    a, b, c = Tree("b-tree"), Tree("a-tree", env="shop"), Tree("c-tree")
    # interleaved, so that seq order, tree_id order and listing order all differ
    await log.append([a.root(), b.root(), a.node("x", "r"), c.root(), b.node("y", "r"),
                      a.run("x", done=True), c.close("budget"), a.score("x", 2 / 3),
                      b.run("y", done=None), a.close("done"), b.score("y", 0.1 + 0.2)])
    got = await bulk(log)
    listed = [t.tree_id for t in await log.list_trees()]
    assert [t for t, _ in got] == listed == ["b-tree", "a-tree", "c-tree"]
    for tree_id, heads in got:
        assert heads == await log.read_heads(tree_id)
    named = [EventHead(*h) for _, hs in got for h in hs]
    assert [h.done for h in named if h.type == "action_executed"] == [True, None]
    assert [h.value for h in named if h.value is not None] == [2 / 3, 0.1 + 0.2]


async def test_bulk_heads_respect_the_filter_and_the_named_trees(log: EventLog) -> None:
    day = timedelta(days=1)
    trees = [Tree(f"t{i}", env="fs" if i % 2 else "shop", start=T0 + i * day)
             for i in range(5)]
    await log.append([t.root() for t in trees] + [trees[1].close(), trees[4].close()])

    async def ids(where: TreeFilter | None = None, tree_ids: list[str] | None = None
                  ) -> list[str]:
        return [t for t, _ in await bulk(log, where, tree_ids)]

    assert await ids(TreeFilter(env="fs")) == ["t1", "t3"]
    assert await ids(TreeFilter(finished=True)) == ["t1", "t4"]
    assert await ids(TreeFilter(since=T0 + 2 * day)) == ["t2", "t3", "t4"]
    # named trees come in listing order; unknown names are skipped
    assert await ids(tree_ids=["t4", "nope", "t0", "t4"]) == ["t0", "t4"]
    assert await ids(TreeFilter(env="shop"), tree_ids=["t1", "t2", "t4"]) == ["t2", "t4"]
    assert await ids(tree_ids=[]) == []


async def test_bulk_heads_of_an_empty_log_are_none(log: EventLog) -> None:
    assert await bulk(log) == []
    assert await bulk(log, TreeFilter(env="fs"), ["t1"]) == []


async def test_bulk_heads_span_many_chunks_and_large_trees(log: EventLog) -> None:
    trees = [Tree(f"t{i:04d}") for i in range(700)]
    big = Tree("big")
    events = [t.root() for t in trees] + [big.root()]
    events += [big.node(f"n{i}", "r") for i in range(3000)]
    await log.append(events)
    got = await bulk(log)
    assert [t for t, _ in got] == [*(t.tree_id for t in trees), "big"]
    assert len(got[-1][1]) == 3001
    assert got[-1][1] == await log.read_heads("big")


# --- the stdlib sqlite3 writer ------------------------------------------------------------------


def _rows(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return (con.execute("SELECT * FROM events ORDER BY seq").fetchall()
                + con.execute("SELECT * FROM trees ORDER BY root_seq").fetchall())
    finally:
        con.close()


async def test_the_sqlite3_writer_stores_the_same_rows_as_the_sql_log(tmp_path: Path) -> None:
    events = small_tree("t1") + small_tree("t2", task_id="b") + [Tree("t1", start=T0).close()]
    events[-1] = msgspec.structs.replace(events[-1], event_id="t1-close")
    log = await open_log(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        await log.append(events[:5])
        await log.append(events)
    finally:
        await log.close()
    with Sqlite3Writer(tmp_path / "b.db") as writer:
        assert writer.append(events[:5]).stored == 5
        res = writer.append(events)
        assert (res.stored, res.duplicates, res.last_seq) == (len(events) - 5, 5, len(events))
    assert _rows(tmp_path / "a.db") == _rows(tmp_path / "b.db")
    # and what the writer stored reads back through the SQL log
    log = await open_log(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        assert without_seq(await log.read_after(0)) == [normalize(e) for e in events]
    finally:
        await log.close()


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.__name__.strip("_"))
def test_the_sqlite3_writer_refuses_what_the_log_refuses(tmp_path: Path, case: Case) -> None:
    before, bad, field = case(Tree())
    with Sqlite3Writer(tmp_path / "w.db") as writer:
        if before:
            writer.append(before)
        with pytest.raises(InvalidEvent) as err:
            writer.append([Tree("other").root(), bad])
        assert (err.value.event_id, err.value.field, err.value.line) == (bad.event_id, field, 2)
    assert len(_rows(tmp_path / "w.db")) == len(before) + (1 if before else 0)


def test_stored_digests_are_the_event_digests(tmp_path: Path) -> None:
    events = small_tree()
    with Sqlite3Writer(tmp_path / "w.db") as writer:
        writer.append(events)
    con = sqlite3.connect(tmp_path / "w.db")
    stored = dict(con.execute("SELECT event_id, digest FROM events").fetchall())
    con.close()
    assert stored == {e.event_id: digest(normalize(e)) for e in events}
