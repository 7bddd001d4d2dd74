"""Refusals are refusals on every backend: a batch with bad content raises only
``InvalidEvent`` (or ``ConflictingEvent``), names the event and the field, reports the whole
batch, and stores nothing; ``StoreUnavailable`` only ever means an outage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from branchpoint.store.errors import (
    ConflictingEvent,
    InvalidEvent,
    Problem,
    StoreUnavailable,
)
from branchpoint.store.events import (
    MAX_DEPTH,
    ActionExecuted,
    Event,
    NodeCreated,
    decode_event,
    encode_event,
)
from branchpoint.store.log import EventLog, open_log
from branchpoint.store.sqlite3_writer import Sqlite3Writer
from tests.store.test_log_contract import Tree

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def nested(depth: int) -> Any:
    """A JSON value ``depth`` arrays deep."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def with_payload(ev: Event, **changes: Any) -> Event:
    return msgspec.structs.replace(ev, payload=msgspec.structs.replace(ev.payload, **changes))


def root_with_task(**task: Any) -> Event:
    ev = Tree("t1").root()
    assert isinstance(ev.payload, NodeCreated) and ev.payload.task is not None
    return with_payload(ev, task={**ev.payload.task, **task})


def root_saying(content: Any) -> Event:
    return with_payload(Tree("t1").root(), messages=[{"role": "user", "content": content}])


@dataclass
class Bad:
    """A batch whose last event is bad, the error it must raise and the field it names."""

    batch: Callable[[], list[Event]]
    error: type[InvalidEvent]
    field: str | None
    stored_first: Callable[[], list[Event]] = field(default=list)


def _tree_batch(last: Callable[[Tree], Event]) -> Callable[[], list[Event]]:
    def build() -> list[Event]:
        t = Tree("t1")
        return [t.root(), t.node("a", "r"), last(t)]

    return build


BAD: dict[str, Bad] = {
    "a lone surrogate in a message": Bad(
        lambda: [root_saying("caf\ud800")], InvalidEvent, "payload.messages[0].content"),
    "a lone surrogate in tree_id": Bad(
        lambda: [msgspec.structs.replace(Tree("t1").root(), tree_id="t\udc00")],
        InvalidEvent, "tree_id"),
    "a lone surrogate in an action": Bad(
        _tree_batch(lambda t: with_payload(
            t.node("b", "r"), action={"role": "assistant", "content": "\ud83d"})),
        InvalidEvent, "payload.action.content"),
    "nesting far deeper than the limit": Bad(
        lambda: [root_saying(nested(2000))], InvalidEvent, "payload.messages[0].content"),
    "nesting just past the limit": Bad(
        lambda: [root_saying(nested(MAX_DEPTH))], InvalidEvent,
        "payload.messages[0].content"),
    "a NUL in tree_id": Bad(
        lambda: [msgspec.structs.replace(Tree("t1").root(), tree_id="t\x00")],
        InvalidEvent, "tree_id"),
    "a NUL in event_id": Bad(
        lambda: [msgspec.structs.replace(Tree("t1").root(), event_id="e\x00")],
        InvalidEvent, "event_id"),
    "a NUL in node_id": Bad(
        _tree_batch(lambda t: t.node("b\x00", "r")), InvalidEvent, "payload.node_id"),
    "a NUL in task.env": Bad(
        lambda: [root_with_task(env="fs\x00")], InvalidEvent, "payload.task.env"),
    "a NUL in task.task_id": Bad(
        lambda: [root_with_task(task_id="7\x00")], InvalidEvent, "payload.task.task_id"),
    "a NUL in origin": Bad(
        lambda: [with_payload(Tree("t1").root(), origin="sdk\x00")], InvalidEvent,
        "payload.origin"),
    "a NUL in a score's source": Bad(
        _tree_batch(lambda t: t.score("a", 0.5, source="judge\x00")), InvalidEvent,
        "payload.source"),
    "a NUL in a close reason": Bad(
        _tree_batch(lambda t: t.close("done\x00")), InvalidEvent, "payload.reason"),
    "a time out of range in UTC": Bad(
        lambda: [msgspec.structs.replace(Tree("t1").root(), recorded_at=datetime(
            9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5))))],
        InvalidEvent, "recorded_at"),
    "a time without offset": Bad(
        lambda: [msgspec.structs.replace(Tree("t1").root(),
                                         recorded_at=datetime(2026, 1, 1))],
        InvalidEvent, "recorded_at"),
    "a score that is not a number in [0, 1]": Bad(
        _tree_batch(lambda t: t.score("a", float("nan"))), InvalidEvent, "payload.value"),
    "an object no JSON can hold": Bad(
        lambda: [root_with_task(options=object())], InvalidEvent, None),
    "a dict with integer keys": Bad(
        lambda: [root_with_task(options={1: "a"})], InvalidEvent, None),
    "a payload of another type": Bad(
        _tree_batch(lambda t: msgspec.structs.replace(t.node("b", "r"),
                                                      type="action_executed")),
        InvalidEvent, "type"),
    "a parent that does not exist": Bad(
        _tree_batch(lambda t: t.node("b", "nope")), InvalidEvent, "payload.parent_id"),
    "done for a node that has children": Bad(
        lambda: [*(t := Tree("t1"), t.root(), t.node("a", "r"), t.node("a1", "a"))[1:],
                 t.run("a", done=True)],
        InvalidEvent, "payload.done"),
    "an id re-sent with other content": Bad(
        lambda: [with_payload(Tree("t1").root(), origin="other")], ConflictingEvent, None,
        stored_first=lambda: [Tree("t1").root()]),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
async def test_bad_content_is_refused_as_invalid_on_every_backend(log: EventLog,
                                                                  case: Bad) -> None:
    before = case.stored_first()
    if before:
        await log.append(before)
    batch = case.batch()
    with pytest.raises(InvalidEvent) as info:
        await log.append(batch)
    # exactly the expected kind: never StoreUnavailable, never a bare builtin
    assert type(info.value) is case.error
    assert not isinstance(info.value, StoreUnavailable)
    assert info.value.line == len(batch)
    if case.field is not None:
        assert info.value.field == case.field
    assert info.value.event_id in (batch[-1].event_id, None)
    # nothing of the batch was stored
    assert len(await log.read_after(0)) == len(before)


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_the_stdlib_writer_refuses_the_same_content(tmp_path: Path, case: Bad) -> None:
    with Sqlite3Writer(tmp_path / "log.db") as w:
        before = case.stored_first()
        if before:
            w.append(before)
        batch = case.batch()
        with pytest.raises(InvalidEvent) as info:
            w.append(batch)
    assert type(info.value) is case.error
    if case.field is not None:
        assert info.value.field == case.field


# --- as JSON lines: the path `branchpoint ingest` takes ---------------------------------------

def line_of(ev: Event) -> bytes:
    return encode_event(ev)


BAD_LINES: dict[str, tuple[bytes, str | None]] = {
    "nesting 2,000 levels deep": (
        line_of(Tree("t1").root()).replace(
            b'"content":"list the files"', b'"content":' + b"[" * 2000 + b"]" * 2000),
        None),
    "a lone surrogate escape": (
        line_of(Tree("t1").root()).replace(b"list the files", b"list \\ud800 files"), None),
    "a NUL escape in tree_id": (
        line_of(Tree("t1").root()).replace(b'"tree_id":"t1"', b'"tree_id":"t\\u0000"'),
        "tree_id"),
}


@pytest.mark.parametrize(("line", "field"), BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_json_line_is_refused_naming_its_line(line: bytes, field: str | None) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(line, line=12)
    assert info.value.line == 12
    assert info.value.field == field


def test_nesting_up_to_the_limit_is_accepted() -> None:
    ev = root_saying(nested(MAX_DEPTH - 5))  # event, payload, messages, message: 4 levels
    assert decode_event(encode_event(ev)).payload == ev.payload


async def test_nul_in_free_text_is_stored_and_read_back_alike_everywhere(
        log: EventLog) -> None:
    t = Tree("t1")
    root = with_payload(t.root(), messages=[{"role": "user", "content": "a\x00b"}],
                        meta={"k\x00": "v\x00"})
    run = t.node("a", "r")
    obs = ActionExecuted(node_id="a", observation=[{"role": "tool", "tool_call_id": "c",
                                                    "content": "bin\x00ary"}], done=True)
    executed = Event.of(obs, tree_id="t1", event_id="t1-x", recorded_at=T0)
    await log.append([root, run, executed])
    got = await log.read_tree("t1")
    assert [e.payload for e in got] == [root.payload, run.payload, executed.payload]
    assert b"\\u0000" in encode_event(got[0])


# --- the whole batch in one report -------------------------------------------------------------

async def test_a_refused_batch_reports_every_bad_event_and_what_depends_on_it(
        log: EventLog) -> None:
    good, bad = Tree("good"), Tree("bad")
    stored = Tree("stored").root()
    await log.append([stored])
    batch = [
        good.root(),                                    # 0 fine
        bad.root(),                                     # 1 fine
        with_payload(bad.node("x", "r"), action={"role": "assistant", "content": "\ud800"}),
        bad.node("x1", "x"),                            # 3 child of refused x
        bad.run("x"),                                   # 4 execution of refused x
        bad.score("x1", 0.5),                           # 5 score of refused x1 (transitively)
        good.node("y", "nope"),                         # 6 parent never existed
        with_payload(Tree("stored").root(), origin="changed"),  # 7 conflict
        good.node("z", "r"),                            # 8 fine
        msgspec.structs.replace(Tree("orphan").root(), tree_id="o\x00"),  # 9 NUL
    ]
    with pytest.raises(InvalidEvent) as info:
        await log.append(batch, lines=[10 + i for i in range(len(batch))])
    err = info.value
    assert type(err) is InvalidEvent  # not only conflicts
    got = [(p.index, p.line, p.event_id, p.field, p.conflict, p.depends_on)
           for p in err.problems]
    x = batch[2].event_id
    x1 = batch[3].event_id
    assert got == [
        (2, 12, x, "payload.action.content", False, None),
        (3, 13, x1, "payload.parent_id", False, x),
        (4, 14, batch[4].event_id, "payload.node_id", False, x),
        (5, 15, batch[5].event_id, "payload.node_id", False, x1),
        (6, 16, batch[6].event_id, "payload.parent_id", False, None),
        (7, 17, batch[7].event_id, None, True, None),
        (9, 19, batch[9].event_id, "tree_id", False, None),
    ]
    # the first problem locates the error; the message stays one readable line
    assert (err.line, err.event_id, err.field) == (12, x, "payload.action.content")
    assert "and 6 more refused events in the batch, 3 only because" in str(err)
    assert all(isinstance(p, Problem) for p in err.problems)
    assert err.problems[1].as_dict()["depends_on"] == x
    assert [e.event_id for e in await log.read_after(0)] == [stored.event_id]


async def test_a_batch_refused_only_for_conflicts_is_a_conflicting_event(
        log: EventLog) -> None:
    t = Tree("t1")
    events = [t.root(), t.node("a", "r")]
    await log.append(events)
    changed = [with_payload(e, meta={"changed": True}) for e in events]
    with pytest.raises(ConflictingEvent) as info:
        await log.append(changed)
    assert [p.index for p in info.value.problems] == [0, 1]
    assert all(p.conflict for p in info.value.problems)


async def test_a_streamed_batch_reports_problems_across_its_chunks(log: EventLog) -> None:
    t = Tree("t1")
    first = [t.root(), with_payload(t.node("a", "r"), meta={"bad": "\udfff"})]
    second = [t.node("b", "r"), t.node("a1", "a")]
    with pytest.raises(InvalidEvent) as info:
        await log.append_stream([(first, None), (second, None)])
    assert [(p.index, p.line, p.depends_on) for p in info.value.problems] == [
        (1, 2, None), (3, 4, first[1].event_id)]
    assert await log.read_after(0) == []


# --- rules in both orders ----------------------------------------------------------------------

async def test_a_node_with_stored_children_cannot_be_marked_done(log: EventLog) -> None:
    t = Tree("t1")
    await log.append([t.root(), t.node("a", "r"), t.node("a1", "a")])
    with pytest.raises(InvalidEvent, match="already has children") as info:
        await log.append([t.run("a", done=True)])
    assert info.value.field == "payload.done"
    assert (await log.append([t.run("a", done=False)])).stored == 1


async def test_a_done_node_still_cannot_get_children(log: EventLog) -> None:
    t = Tree("t1")
    await log.append([t.root(), t.node("a", "r"), t.run("a", done=True)])
    with pytest.raises(InvalidEvent, match="ended the episode"):
        await log.append([t.node("a1", "a")])


# --- outages are the only StoreUnavailable -----------------------------------------------------

async def test_an_unreachable_store_is_unavailable_not_invalid(tmp_path: Path) -> None:
    not_a_db = tmp_path / "text.db"
    not_a_db.write_bytes(b"plain text, not SQLite " * 200)
    for url in (f"sqlite:///{not_a_db}", "postgresql://postgres@127.0.0.1:1/none"):
        with pytest.raises(StoreUnavailable) as info:
            await open_log(url)
        assert not isinstance(info.value, InvalidEvent)
