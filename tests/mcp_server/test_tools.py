"""The MCP tools in process, through the SDK's own client (``mcp.Client`` over an
in-memory connection to the ``MCPServer``): what each tool stores and answers, and that
every bad call is a tool error that says what is wrong and stores nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError

from branchpoint.mcp_server.server import TREE_TEMPLATE, build_server
from branchpoint.mcp_server.service import McpRecorder, tree_uri
from branchpoint.store.errors import ConflictingEvent, InvalidEvent
from branchpoint.store.events import Event, ScoreAssigned
from branchpoint.store.exports import ExportOptions, export_lines
from branchpoint.store.log import EventLog, MemoryEventLog, TreeFilter, open_log
from tests.mcp_server.scenario import (
    LS,
    LS_SEEN,
    SYSTEM,
    USER,
    WRONG,
    WRONG_SEEN,
    Call,
    caller,
    check_pair,
    play,
)

TOOL_NAMES = {"start_trajectory", "record_step", "fork", "score", "get_tree", "list_trees",
              "export"}


@pytest.fixture(params=["memory", "sqlite"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'mcp.db'}"
    opened = await open_log(url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "exports"
    d.mkdir()
    return d


@pytest.fixture
def recorder(log: EventLog, export_dir: Path) -> McpRecorder:
    return McpRecorder(log, export_dir=export_dir)


@asynccontextmanager
async def connect(recorder: McpRecorder) -> AsyncIterator[tuple[Client, Call]]:
    """The SDK's client on an in-memory connection to a server over ``recorder``.
    (Not a fixture: the client's task group must be entered and left in one task.)"""
    async with Client(build_server(recorder)) as client:
        yield client, caller(client)


async def stored(log: EventLog) -> list[Event]:
    return await log.read_after(0, limit=100_000)


async def refused(client: Client, log: EventLog, tool: str, args: dict[str, Any],
                  *needles: str) -> str:
    """Call ``tool``: it must answer a tool error naming every needle, storing nothing."""
    before = await stored(log)
    result = await client.call_tool(tool, args)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error, f"{tool} accepted {args}: {result.structured_content}"
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert await stored(log) == before
    return text


async def started(call: Call) -> tuple[str, str]:
    """A tree with one recorded step: ``(tree_id, node_id of the step)``."""
    start = await call("start_trajectory", {"messages": [SYSTEM, USER], "env": "fs",
                                            "task_id": 1})
    step = await call("record_step", {"tree_id": start["tree_id"], "parent_node_id": "root",
                                      "action": LS, "observation": LS_SEEN})
    return start["tree_id"], step["node_id"]


# --- the session ------------------------------------------------------------------------


async def test_a_session_with_a_fork_and_scores_exports_the_pair_the_fork_made(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (_client, call):
        session = await play(call)
        check_pair(session)
        assert session["right"]["siblings"] == [session["wrong"]["node_id"]]
        assert session["fork"]["existing_children"] == [session["wrong"]["node_id"]]
        assert session["scored"]["node_value"] == 1.0
        assert session["scored"]["root_value"] == 0.5  # mean of the two branches
        # the inline export is the very bytes of the store's export generator
        expected = b"".join([x async for x in export_lines(log, "dpo", ExportOptions())])
        assert session["export"]["jsonl"].encode() == expected


async def test_the_root_records_task_tools_and_origin_as_given(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (_client, call):
        session = await play(call)
        root = (await log.read_tree(session["tree_id"]))[0].payload
        assert root.messages == [SYSTEM, USER]
        assert root.task == {"env": "fs", "task_id": 7, "description": USER["content"]}
        assert root.origin == "mcp"
        assert root.tools is not None and [t["function"]["name"] for t in root.tools] == [
            "ls", "mv"]


async def test_a_description_alone_opens_the_task_as_a_user_message(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (_client, call):
        a = await call("start_trajectory", {"description": "Rename report.txt"})
        b = await call("start_trajectory", {"description": "Rename report.txt"})
        root = (await log.read_tree(a["tree_id"]))[0].payload
        assert root.messages == [{"role": "user", "content": "Rename report.txt"}]
        assert a["env"] == "mcp"
        # two attempts at the same task share a task id, so their episodes pair up
        assert a["task_id"] == b["task_id"] and a["tree_id"] != b["tree_id"]


async def test_plain_text_observation_answers_the_one_tool_call_even_without_an_id(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (_client, call):
        start = await call("start_trajectory", {"description": "list files"})
        step = await call("record_step", {
            "tree_id": start["tree_id"], "parent_node_id": "root",
            "action": {"tool_calls": [{"function": {"name": "ls", "arguments": {"path": "."}}}]},
            "observation": "a.txt b.txt", "done": None})
        events = await log.read_tree(start["tree_id"])
        node, run = events[1].payload, events[2].payload
        assert node.node_id == step["node_id"]
        assert node.action == {"role": "assistant", "tool_calls": [
            {"type": "function", "id": "call_1",
             "function": {"name": "ls", "arguments": '{"path":"."}'}}]}
        assert run.observation == [{"role": "tool", "tool_call_id": "call_1",
                                    "content": "a.txt b.txt"}]
        assert run.done is None


async def test_a_text_reply_with_text_observation_is_a_user_message(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (_client, call):
        start = await call("start_trajectory", {"description": "chat"})
        await call("record_step", {"tree_id": start["tree_id"], "parent_node_id": "root",
                                   "action": {"content": "Which folder?"},
                                   "observation": "done/", "done": False})
        run = (await log.read_tree(start["tree_id"]))[2].payload
        assert run.observation == [{"role": "user", "content": "done/"}]


async def test_fork_returns_the_conversation_at_the_node_and_stores_nothing(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (_client, call):
        tree, node = await started(call)
        before = await stored(log)
        fork = await call("fork", {"tree_id": tree, "node_id": node})
        assert fork["conversation"] == [SYSTEM, USER, LS, *LS_SEEN]
        assert fork["depth"] == 1 and fork["existing_children"] == []
        root_fork = await call("fork", {"tree_id": tree, "node_id": "root"})
        assert root_fork["conversation"] == [SYSTEM, USER]
        assert root_fork["existing_children"] == [node]
        assert await stored(log) == before


async def test_score_keeps_source_rationale_and_detail(recorder: McpRecorder,
                                                       log: EventLog) -> None:
    async with connect(recorder) as (_client, call):
        tree, node = await started(call)
        result = await call("score", {"tree_id": tree, "node_id": node, "value": 0.25,
                                      "rationale": "listed, not moved", "detail": {"moved": 0}})
        assert result["source"] == "agent" and result["node_value"] == 0.25
        score = (await log.read_tree(tree))[-1].payload
        assert isinstance(score, ScoreAssigned)
        assert score.detail == {"moved": 0, "rationale": "listed, not moved"}
        # the latest score of a source counts
        again = await call("score", {"tree_id": tree, "node_id": node, "value": 0.75})
        assert again["node_value"] == 0.75


async def test_get_tree_shows_branching_points_values_and_the_path(recorder: McpRecorder) -> None:
    async with connect(recorder) as (_client, call):
        session = await play(call)
        tree = await call("get_tree", {"tree_id": session["tree_id"]})
        ls, wrong, right = (session[k]["node_id"] for k in ("ls", "wrong", "right"))
        assert [n["node_id"] for n in tree["nodes"]] == ["root", ls, wrong, right]
        assert tree["branching_points"] == [{"node_id": ls, "children": {wrong: 0.0, right: 1.0}}]
        assert tree["leaves"] == [wrong, right] and tree["best_leaf"] == right
        assert tree["path"] == ["root", ls, right]
        assert tree["max_depth"] == 2 and tree["node_count"] == 4
        by_id = {n["node_id"]: n for n in tree["nodes"]}
        assert by_id[wrong]["scores"] == {"checker": 0.0} and by_id[wrong]["done"] is True
        assert by_id[ls]["action"].startswith("assistant:\n[call ls]")
        assert by_id[ls]["value"] == 0.5
        short = await call("get_tree", {"tree_id": session["tree_id"], "node_id": wrong,
                                        "text_limit": 20})
        assert short["path"] == ["root", ls, wrong]
        assert not short["nodes_truncated"]
        few = await call("get_tree", {"tree_id": session["tree_id"], "node_id": wrong,
                                      "max_nodes": 3})
        assert [n["node_id"] for n in few["nodes"]] == ["root", ls, wrong]
        assert few["nodes_truncated"] and few["node_count"] == 4
        assert few["branching_points"] == tree["branching_points"]
        assert all(len(n["observation"] or "") <= 20 for n in short["nodes"])


async def test_list_trees_filters_and_truncates(recorder: McpRecorder) -> None:
    async with connect(recorder) as (_client, call):
        for env in ("fs", "fs", "shop"):
            await call("start_trajectory", {"description": f"a {env} task", "env": env})
        assert (await call("list_trees", {}))["total"] == 3
        fs = await call("list_trees", {"env": "fs"})
        assert fs["total"] == 2 and {t["env"] for t in fs["trees"]} == {"fs"}
        one = await call("list_trees", {"limit": 1})
        assert len(one["trees"]) == 1 and one["truncated"] and one["total"] == 3
        assert one["trees"][0]["resource_uri"] == tree_uri(one["trees"][0]["tree_id"])
        assert (await call("list_trees", {"finished": True}))["total"] == 0


async def test_export_and_list_trees_take_the_store_tree_filters(recorder: McpRecorder,
                                                                   log: EventLog) -> None:
    async with connect(recorder) as (client, call):
        first = await play(call, export=False)
        second = await play(call, export=False)
        other = await call("start_trajectory", {"description": "x", "env": "shop",
                                                "split": "heldout"})
        one = await call("export", {"format": "dpo", "tree_id": first["tree_id"]})
        both = await call("export", {"format": "dpo", "env": "fs", "origin": "mcp"})
        assert (one["rows"], both["rows"]) == (1, 2)
        where = TreeFilter(tree_id=second["tree_id"])
        assert (await call("export", {"format": "steps", "tree_id": second["tree_id"]})
                )["jsonl"].encode() == b"".join(
            [x async for x in export_lines(log, "steps", ExportOptions(where=where))])
        assert (await call("export", {"format": "dpo", "split": "heldout"}))["rows"] == 0
        listed = await call("list_trees", {"split": "heldout"})
        assert [t["tree_id"] for t in listed["trees"]] == [other["tree_id"]]
        assert (await call("list_trees", {"task_id": 7}))["total"] == 2
        future = await call("list_trees", {"since": "2999-01-01T00:00:00Z"})
        assert future["total"] == 0
        await refused(client, log, "list_trees", {"split": "test"}, "split")
        await refused(client, log, "export", {"since": "yesterday"}, "since")


async def test_tools_offer_typed_schemas_structured_outputs_and_descriptions(
        recorder: McpRecorder) -> None:
    async with connect(recorder) as (client, _call):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOL_NAMES
        for t in tools.values():
            assert t.description and len(t.description) > 60, t.name
            assert t.output_schema is not None and t.output_schema.get("properties"), t.name
            for name, prop in t.input_schema["properties"].items():
                assert prop.get("description") or "$ref" in json.dumps(prop), (t.name, name)
        step = tools["record_step"].input_schema
        assert set(step["required"]) == {"tree_id", "parent_node_id", "action", "observation"}
        value = tools["score"].input_schema["properties"]["value"]
        assert (value["minimum"], value["maximum"]) == (0.0, 1.0)
        assert tools["get_tree"].annotations.read_only_hint is True


# --- refusals ----------------------------------------------------------------------------


async def test_unknown_trees_and_nodes_are_named_in_the_error(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (client, call):
        tree, node = await started(call)
        step = {"action": LS, "observation": LS_SEEN}
        await refused(client, log, "record_step", {"tree_id": "nope", "parent_node_id": "root",
                                                   **step}, "'nope'", "list_trees")
        await refused(client, log, "record_step", {"tree_id": tree, "parent_node_id": "mcp.9",
                                                   **step}, "no node 'mcp.9'", node)
        await refused(client, log, "score", {"tree_id": tree, "node_id": "zz", "value": 1},
                      "no node 'zz'")
        await refused(client, log, "fork", {"tree_id": tree, "node_id": "zz"}, "no node 'zz'")
        await refused(client, log, "get_tree", {"tree_id": "nope"}, "'nope'")
        await refused(client, log, "get_tree", {"tree_id": tree, "node_id": "zz"}, "no node")


@pytest.mark.parametrize("value", [1.5, -0.1, "high"])
async def test_a_score_outside_0_1_is_refused(
        recorder: McpRecorder, log: EventLog, value: Any) -> None:
    async with connect(recorder) as (client, call):
        tree, node = await started(call)
        await refused(client, log, "score", {"tree_id": tree, "node_id": node, "value": value},
                      "value")


async def test_malformed_messages_are_refused_naming_the_field(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (client, call):
        tree, node = await started(call)
        await refused(client, log, "start_trajectory",
                      {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role")
        await refused(client, log, "start_trajectory",
                      {"messages": [{"role": "user"}]}, "messages[0].content")
        await refused(client, log, "start_trajectory", {}, "description")
        await refused(client, log, "record_step", {
            "tree_id": tree, "parent_node_id": node, "action": LS,
            "observation": [{"role": "tool", "content": "no id"}]},
            "observation[0].tool_call_id")
        await refused(client, log, "record_step", {
            "tree_id": tree, "parent_node_id": node, "action": {"role": "assistant"},
            "observation": "x"}, "action", "content or tool_calls")
        await refused(client, log, "record_step", {
            "tree_id": tree, "parent_node_id": node, "action": {"role": "user", "content": "x"},
            "observation": "x"}, "action.role")
        two_calls = {"tool_calls": [{"function": {"name": "ls", "arguments": "{}"}},
                                    {"function": {"name": "cat", "arguments": "{}"}}]}
        await refused(client, log, "record_step", {
            "tree_id": tree, "parent_node_id": node, "action": two_calls, "observation": "x"},
            "several tool calls")


async def test_no_step_follows_a_step_that_ended_the_episode(
        recorder: McpRecorder, log: EventLog) -> None:
    async with connect(recorder) as (client, call):
        session = await play(call)
        wrong = session["wrong"]["node_id"]
        await refused(client, log, "record_step", {
            "tree_id": session["tree_id"], "parent_node_id": wrong, "action": LS,
            "observation": LS_SEEN}, "ended its episode", "Fork from an earlier node")
        await refused(client, log, "fork", {"tree_id": session["tree_id"], "node_id": wrong},
                      "ended its episode")


# --- export --------------------------------------------------------------------------------


async def test_export_writes_only_under_the_export_dir(
        recorder: McpRecorder, log: EventLog, export_dir: Path, tmp_path: Path) -> None:
    async with connect(recorder) as (client, call):
        await play(call)
        result = await call("export", {"format": "steps", "path": "runs/steps.jsonl"})
        target = export_dir / "runs" / "steps.jsonl"
        expected = b"".join([x async for x in export_lines(log, "steps", ExportOptions())])
        assert target.read_bytes() == expected
        assert result["path"] == str(target) and result["rows"] == 3 and result["jsonl"] is None
        assert result["bytes"] == len(expected)
        outside = tmp_path / "outside.jsonl"
        await refused(client, log, "export", {"path": str(outside)}, "must be relative")
        await refused(client, log, "export", {"path": "../outside.jsonl"}, "outside the export")
        (export_dir / "link").symlink_to(tmp_path)
        await refused(client, log, "export", {"path": "link/outside.jsonl"}, "outside the export")
        await refused(client, log, "export", {"path": "runs"}, "is a folder")
        await refused(client, log, "export", {"path": "runs/steps.jsonl"}, "overwrite")
        await refused(client, log, "export", {"path": "runs/steps.jsonl/x.jsonl"},
                      "could not write the export")
        assert not outside.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", *(
            ["mcp.db", "mcp.db-shm", "mcp.db-wal"] if not isinstance(log, MemoryEventLog)
            else [])]
        await call("export", {"format": "dpo", "path": "runs/steps.jsonl", "overwrite": True})
        assert target.read_bytes().count(b"\n") == 1


async def test_export_to_a_file_is_refused_without_an_export_dir(log: EventLog) -> None:
    async with Client(build_server(McpRecorder(log))) as client:
        await refused(client, log, "export", {"path": "x.jsonl"}, "--export-dir")


async def test_an_export_over_the_inline_limit_says_to_write_a_file(
        log: EventLog, export_dir: Path) -> None:
    async with connect(McpRecorder(log)) as (_client, call):
        await play(call, export=False)
    size = len(b"".join([x async for x in export_lines(log, "steps", ExportOptions())]))
    async with connect(McpRecorder(log, export_dir=export_dir, inline_limit=size)) as (_, call):
        assert (await call("export", {"format": "steps"}))["bytes"] == size
    small = McpRecorder(log, export_dir=export_dir, inline_limit=size - 1)
    async with connect(small) as (client, _call):
        text = await refused(client, log, "export", {"format": "steps"},
                             f"inline limit of {size - 1:,}", "path=")
        assert "--export-dir" not in text
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert f"{size - 1:,} bytes" in (tools["export"].description or "")
    async with connect(McpRecorder(log, inline_limit=size - 1)) as (client, _call):
        await refused(client, log, "export", {"format": "steps"}, "--export-dir")


async def test_export_text_content_is_the_rows_themselves(recorder: McpRecorder) -> None:
    async with connect(recorder) as (client, call):
        await play(call)
        result = await client.call_tool("export", {"format": "dpo"})
        assert result.content[0].text == result.structured_content["jsonl"]  # type: ignore[union-attr,index]


# --- resources -------------------------------------------------------------------------------


async def test_trees_are_resources_with_percent_encoded_ids(log: EventLog) -> None:
    ids = iter(["team/a b/1"])
    recorder = McpRecorder(log, new_tree_id=lambda: next(ids))
    async with Client(build_server(recorder)) as client:
        call = caller(client)
        tree, node = await started(call)
        assert tree == "team/a b/1"
        uri = tree_uri(tree)
        assert uri == "branchpoint://trees/team%2Fa%20b%2F1"
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == [TREE_TEMPLATE]
        doc = json.loads((await client.read_resource(uri)).contents[0].text)  # type: ignore[union-attr]
        assert doc["tree_id"] == tree and doc["messages"] == [SYSTEM, USER]
        assert [n["node_id"] for n in doc["nodes"]] == ["root", node]
        assert doc["nodes"][1]["action"] == LS and doc["nodes"][1]["observation"] == LS_SEEN
        with pytest.raises(MCPError, match="no tree"):
            await client.read_resource(tree_uri("team/none"))


# --- several writers ---------------------------------------------------------------------------


class _Barrier:
    """A log wrapper whose ``read_tree`` returns only once ``n`` readers have read, so
    that two writers surely work from the same state (the race of two processes)."""

    def __init__(self, log: EventLog, n: int) -> None:
        self._log, self._n, self._count = log, n, 0
        self._all = asyncio.Event()
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def read_tree(self, tree_id: str) -> list[Event]:
        events = await self._log.read_tree(tree_id)
        self._count += 1
        if self._count >= self._n:
            self._all.set()
        await asyncio.wait_for(self._all.wait(), timeout=5)
        return events

    async def append(self, events: Sequence[Event], **kw: Any) -> Any:
        try:
            return await self._log.append(events, **kw)
        except ConflictingEvent:
            self.refused += 1
            raise


async def test_two_writers_racing_on_one_tree_both_get_their_step_stored(
        log: EventLog) -> None:
    setup = McpRecorder(log)
    tree = (await setup.start_trajectory(messages=[SYSTEM, USER])).tree_id
    node = (await setup.record_step(tree_id=tree, parent_node_id="root", action=LS,
                                    observation=LS_SEEN, done=False)).node_id
    barrier = _Barrier(log, 2)
    a, b = McpRecorder(barrier), McpRecorder(barrier)  # type: ignore[arg-type]
    steps = await asyncio.gather(*(
        r.record_step(tree_id=tree, parent_node_id=node, action=WRONG,
                      observation=[{"role": "tool", "tool_call_id": "c2", "content": who}],
                      done=False) for r, who in ((a, "a"), (b, "b"))))
    assert len({s.node_id for s in steps}) == 2
    assert barrier.refused == 1  # the race happened: one writer's ids were taken, it retried
    runs = [ev.payload for ev in await log.read_tree(tree) if ev.type == "action_executed"]
    assert sorted(r.observation[0]["content"] for r in runs[1:]) == ["a", "b"]


async def test_a_recorder_sees_steps_another_process_added_since_its_last_call(
        log: EventLog) -> None:
    a, b = McpRecorder(log), McpRecorder(log)  # two server processes on one store
    tree = (await a.start_trajectory(messages=[SYSTEM, USER])).tree_id
    first = await a.record_step(tree_id=tree, parent_node_id="root", action=LS,
                                observation=LS_SEEN, done=False)
    second = await b.record_step(tree_id=tree, parent_node_id=first.node_id, action=WRONG,
                                 observation=WRONG_SEEN, done=False)
    third = await a.record_step(tree_id=tree, parent_node_id=second.node_id, action=LS,
                                observation=LS_SEEN, done=False)
    assert [first.node_id, second.node_id, third.node_id] == ["mcp.0", "mcp.1", "mcp.2"]
    assert (await a.fork(tree_id=tree, node_id=third.node_id)).depth == 3


async def test_a_refused_step_leaves_no_trace_in_the_next_one(log: EventLog) -> None:
    r = McpRecorder(log)
    tree = (await r.start_trajectory(messages=[SYSTEM, USER])).tree_id
    with pytest.raises(InvalidEvent):  # the store refuses it after the builder minted it
        await r.record_step(tree_id=tree, parent_node_id="root", action=LS,
                            observation=[{"role": "tool", "content": "no id"}], done=False)
    step = await r.record_step(tree_id=tree, parent_node_id="root", action=LS,
                               observation=LS_SEEN, done=False)
    assert step.node_id == "mcp.0" and step.siblings == []
    assert [ev.event_id for ev in await log.read_tree(tree)] == [
        f"{tree}/root", f"{tree}/mcp.0", f"{tree}/mcp.0/run"]
