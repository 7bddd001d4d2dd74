"""The shared event builder: ids that never collide, resuming stored trees, the task shape,
replay paths, and the light action comparison every writer uses."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from branchpoint.store.actions import normalize_action, same_action
from branchpoint.store.builder import (
    TreeBuilder,
    TreeState,
    make_task,
    replay_path,
    task_options,
)
from branchpoint.store.errors import InvalidEvent
from branchpoint.store.exports import ExportOptions, export_lines
from branchpoint.store.log import MemoryEventLog
from tests.store.builders import call

T0 = datetime(2026, 1, 1, tzinfo=UTC)
USER = [{"role": "user", "content": "tidy up"}]


def _clock() -> datetime:
    return T0


def act(text: str) -> dict[str, object]:
    return {"role": "assistant", "content": text}


def obs(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


def opened(writer: str = "w") -> TreeBuilder:
    b = TreeBuilder("t/1", writer=writer, clock=_clock)
    b.root(USER, make_task("fs", 1))
    return b


async def test_two_writers_adding_to_one_tree_never_collide() -> None:
    log = MemoryEventLog()
    b = opened("a")
    await log.append(b.take())
    stored = await log.read_tree("t/1")
    one = TreeBuilder.resume("t/1", stored, writer="p1", clock=_clock)
    two = TreeBuilder.resume("t/1", stored, writer="p2", clock=_clock)
    for w in (one, two):
        n = w.step("root", act("ls"), obs("a b"), False)
        w.score(n, 0.5)
        w.close("done")
    await log.append(one.take())
    result = await log.append(two.take())
    assert result.stored == 4
    assert {e.node_id for e in await log.read_tree("t/1")} >= {"p1.0", "p2.0"}


async def test_a_resumed_builder_continues_after_its_own_stored_ids() -> None:
    log = MemoryEventLog()
    b = opened()
    n = b.step("root", act("ls"), obs("x"), False)
    b.score(n, 0.25)
    b.close("depth")
    await log.append(b.take())
    again = TreeBuilder.resume("t/1", await log.read_tree("t/1"), writer="w", clock=_clock)
    m = again.step(n, act("cat x"), obs("y"), True)
    again.score(n, 0.75)
    again.close("done")
    new = again.take()
    assert m == "w.1"
    assert [e.event_id for e in new] == [
        "t/1/w.1", "t/1/w.1/run", "t/1/w.0/score/w/checker/1", "t/1/closed/w/1"]
    assert (await log.append(new)).stored == 4


def test_the_builder_refuses_what_the_store_would_refuse_before_minting() -> None:
    b = opened()
    with pytest.raises(InvalidEvent, match="no node 'nope'"):
        b.node("nope", act("ls"))
    with pytest.raises(InvalidEvent, match="already has a root"):
        b.root(USER, make_task("fs", 1))
    n = b.step("root", act("submit"), obs("ok"), True)
    with pytest.raises(InvalidEvent, match="ended the episode"):
        b.node(n, act("ls"))
    with pytest.raises(InvalidEvent, match="executed already"):
        b.executed(n, obs("again"), True)
    m = b.node("root", act("ls"))
    b.node(m, act("cd x"))
    with pytest.raises(InvalidEvent, match="has children"):
        b.executed(m, obs("a"), True)
    with pytest.raises(InvalidEvent, match=r"\[0, 1\]"):
        b.score(n, float("nan"))
    assert len(b.take()) == 5  # root, the done step (2), m, its child: nothing else


@pytest.mark.parametrize("writer", ["", "a/b", "a b"])
def test_a_writer_prefix_that_could_break_ids_is_refused(writer: str) -> None:
    with pytest.raises(ValueError, match="writer prefix"):
        TreeBuilder("t", writer=writer)


def test_object_arguments_are_recorded_as_the_json_string_that_ran() -> None:
    b = opened()
    n = b.node("root", {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "ls", "arguments": {"path": "/"}}}]})
    action = b.state.nodes[n].action
    assert action is not None
    assert action["tool_calls"][0]["function"]["arguments"] == '{"path":"/"}'


async def test_events_the_builder_mints_are_accepted_by_the_store() -> None:
    log = MemoryEventLog()
    b = opened()
    a = b.step("root", act("good"), obs("1"), True)
    c = b.step("root", act("bad"), obs("2"), True)
    b.score(a, 1.0)
    b.score(c, 0.0)
    b.close("done")
    await log.append(b.take())
    lines = [x async for x in export_lines(log, "dpo", ExportOptions())]
    assert len(lines) == 1
    assert b'"good"' in lines[0].split(b'"rejected"')[0]


def test_task_options_live_under_options_and_old_roots_still_read() -> None:
    task = make_task("fs", 3, split="train", options={"difficulty": "hard"})
    assert task == {"env": "fs", "task_id": 3, "split": "train",
                    "options": {"difficulty": "hard"}}
    assert task_options(task) == {"difficulty": "hard"}
    assert task_options({"env": "fs", "task_id": 3, "difficulty": "easy", "split": "x"}) == {
        "difficulty": "easy"}
    with pytest.raises(ValueError, match="not a reserved task key: difficulty"):
        make_task("fs", 3, difficulty="hard")


def test_a_replay_path_holds_the_task_opening_and_steps_in_order() -> None:
    b = TreeBuilder("t", writer="w", clock=_clock)
    b.root(USER, make_task("fs", 1), tools=[{"type": "function", "function": {"name": "ls"}}])
    x = b.step("root", act("ls"), obs("a"), False)
    y = b.step(x, act("cat a"), obs("b"), False)
    b.step("root", act("other"), obs("c"), False)
    path = replay_path(TreeState.of("t", b.take()), y)
    assert path.task == {"env": "fs", "task_id": 1}
    assert path.messages == USER
    assert [t["function"]["name"] for t in path.tools] == ["ls"]
    assert [(s.node_id, s.action["content"], s.observation) for s in path.steps] == [
        (x, "ls", obs("a")), (y, "cat a", obs("b"))]


def test_same_action_compares_json_values_with_their_types() -> None:
    def m(args: object) -> dict[str, object]:
        return {"role": "assistant", "tool_calls": [call("f", args)]}  # type: ignore[arg-type]
    assert not same_action(m({"flag": True}), m({"flag": 1}))
    assert not same_action(m({"x": "1"}), m({"x": 1}))
    assert same_action(m({"a": 1, "b": [1, 2]}), m('{ "b": [1, 2], "a": 1.0 }'))
    assert same_action({"role": "assistant", "content": ""},
                       {"role": "assistant", "content": None})
    assert not same_action(m("{not json"), m("{not  json"))


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_normalized_object_arguments_compare_equal_to_the_original(value: object) -> None:
    raw = {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": value}}]}
    if isinstance(value, str):
        return
    assert same_action(normalize_action(raw), raw)


def test_the_builder_imports_nothing_heavy() -> None:
    code = ("import sys, branchpoint.store.builder, branchpoint.store.actions;"
            "heavy={'sqlalchemy','networkx','httpx','litestar','torch','openai'};"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
