"""The recorder's surface: trajectories, steps, forks, scores, closing, sync and async."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from branchpoint.sdk import Recorder
from tests.sdk.conftest import stored

TOOLS = [{"type": "function", "function": {
    "name": "read", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]


def read_call(path: str, call_id: str = "c1") -> dict[str, object]:
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": "read", "arguments": {"path": path}}}]}


def test_a_fork_shares_the_history_and_both_branches_keep_their_scores(db_path: Path) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    with rec.trajectory([{"role": "system", "content": "terse"}, {"role": "user",
                         "content": "open the config"}], env="fs", task_id=3, tools=TOOLS,
                        tree_id="t-fork", description="find config") as t:
        ls = t.step("ls", "config.toml")
        good = t.step(read_call("config.toml"),
                      [{"role": "tool", "tool_call_id": "c1", "content": "x = 1"}], done=True)
        t.score(1.0, source="checker")
        other = t.fork(ls)
        bad = other.step(read_call("nope.toml"),
                         [{"role": "tool", "tool_call_id": "c1", "content": "missing"}],
                         done=True)
        other.score(0.0, source="checker")
    assert rec.flush(timeout=10)
    rows = stored(db_path)
    nodes = {r["payload"]["node_id"]: r["payload"] for r in rows if r["type"] == "node_created"}
    assert nodes["root"]["task"] == {"env": "fs", "task_id": 3, "description": "find config"}
    assert nodes["root"]["tools"] == TOOLS and nodes["root"]["origin"] == "sdk"
    assert nodes[good]["parent_id"] == ls and nodes[bad]["parent_id"] == ls
    # object arguments are stored as the JSON string OpenAI sends
    assert nodes[good]["action"]["tool_calls"][0]["function"]["arguments"] == \
        '{"path":"config.toml"}'
    scores = {r["payload"]["node_id"]: r["payload"]["value"] for r in rows
              if r["type"] == "score_assigned"}
    assert scores == {good: 1.0, bad: 0.0}
    assert [r["payload"]["reason"] for r in rows if r["type"] == "tree_closed"] == ["done"]
    assert rec.stats().sent == len(rows) and rec.stats().errors == 0
    rec.close()

    from branchpoint.cli.main import app

    out = CliRunner().invoke(app, ["export", "dpo", "--db", f"sqlite:///{db_path}"])
    assert out.exit_code == 0, out.output
    pairs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(pairs) == 1
    assert "config.toml" in json.dumps(pairs[0]["chosen"])
    assert "nope.toml" in json.dumps(pairs[0]["rejected"])


def test_leaving_the_block_by_an_exception_closes_with_reason_error_and_its_type(
        db_path: Path) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    with pytest.raises(KeyError), rec.trajectory("go", env="e", task_id=1, tree_id="t1") as t:
        t.step("a", "b")
        raise KeyError("boom")
    rec.close()
    closed = [r["payload"] for r in stored(db_path) if r["type"] == "tree_closed"]
    assert closed == [{"reason": "error", "detail": {"type": "KeyError",
                                                      "message": "'boom'"}}]


async def test_the_async_context_manager_and_flush_record_the_same_way(db_path: Path) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    async with rec.trajectory("go", env="e", task_id=1, tree_id="ta") as t:
        t.step("a", "b", done=True)
        t.score(0.5, source="judge")
    with pytest.raises(ValueError, match="x"):
        async with rec.trajectory("go", env="e", task_id=2, tree_id="tb"):
            await asyncio.sleep(0)
            raise ValueError("x")
    assert await rec.aflush(timeout=10)
    await rec.aclose()
    rows = stored(db_path)
    assert {r["tree_id"] for r in rows} == {"ta", "tb"}
    assert [r["payload"]["reason"] for r in rows if r["type"] == "tree_closed"] == \
        ["done", "error"]


def test_a_step_recorded_without_observation_takes_it_later(db_path: Path) -> None:
    with Recorder(f"sqlite:///{db_path}") as rec, \
            rec.trajectory("go", env="e", task_id=1) as t:
        node = t.step("think")
        t.observe("the answer", done=False)
        t.step("next")  # never observed: a leaf without execution
    rows = stored(db_path)
    runs = [r["payload"] for r in rows if r["type"] == "action_executed"]
    assert runs == [{"node_id": node, "observation": [{"role": "user",
                                                        "content": "the answer"}],
                     "done": False}]


def test_mistakes_are_logged_and_counted_and_never_raised(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    with caplog.at_level(logging.WARNING, "branchpoint.sdk"), \
            rec.trajectory("go", env="e", task_id=1) as t:
        end = t.step("a", "b", done=True)
        assert t.step("after the end", "x") == ""  # under a finished episode
        t.score(2.0)  # out of range
        branch = t.fork("no-such-node")
        assert branch.head == "root"
        assert t.head == end
    assert rec.flush(timeout=10)  # the score is checked in the background
    assert rec.stats().errors == 3
    assert "ended the episode" in caplog.text and "no-such-node" in caplog.text
    assert "[0, 1]" in caplog.text
    assert rec.stats().dead_lettered == 0
    rec.close()


def test_resume_adds_to_a_stored_trajectory(db_path: Path) -> None:
    from branchpoint.store.events import decode_event

    with Recorder(f"sqlite:///{db_path}") as rec, \
            rec.trajectory("go", env="e", task_id=1, tree_id="tr") as t:
        first = t.step("a", "b")
    events = [decode_event(json.dumps({k: r[k] for k in ("event_id", "tree_id", "type")}
                                      | {"version": 1, "recorded_at": "2026-01-01T00:00:00Z",
                                         "payload": r["payload"]}))
              for r in stored(db_path)]
    with Recorder(f"sqlite:///{db_path}") as rec2:
        t2 = rec2.resume("tr", events)
        assert t2.head == first
        second = t2.step("c", "d")
    parents = {r["payload"]["node_id"]: r["payload"].get("parent_id") for r in stored(db_path)
               if r["type"] == "node_created"}
    assert parents[second] == first


def test_a_destination_of_another_kind_is_refused_with_its_url() -> None:
    with pytest.raises(ValueError, match="mysql://x"):
        Recorder("mysql://x")


def test_trajectory_ids_sort_in_the_order_they_were_opened(db_path: Path) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    ids = [rec.trajectory("go", env="fs", task_id=i).tree_id for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    rec.close()


def test_a_trajectory_let_go_of_is_freed_without_the_cyclic_collector(db_path: Path) -> None:
    import gc
    import weakref

    rec = Recorder(f"sqlite:///{db_path}")
    gc.disable()
    try:
        t = rec.trajectory("go", env="fs", task_id=1)
        t.fork(t.step("ls", "a.txt")).step("cat a.txt", "x")
        t.close()
        rec.flush(timeout=10)  # its calls are built into events: the recorder lets go too
        gone = weakref.ref(t)
        del t
        assert gone() is None
    finally:
        gc.enable()
    assert rec.close() and rec.stats().sent == 6
