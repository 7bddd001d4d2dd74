"""What an MCP session records is what any other writer records for the same steps: the
same tree shape, actions, observations, scores and pairs; only ids, origin and times
differ.

The other writer here is the shared event builder (``branchpoint.store.builder``), the
one every writer (the SDK included) goes through, driven directly with the session's
steps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client

from branchpoint.mcp_server.server import build_server
from branchpoint.mcp_server.service import Recorder
from branchpoint.store.builder import TreeBuilder, make_task
from branchpoint.store.events import ActionExecuted, Event, NodeCreated, ScoreAssigned
from branchpoint.store.exports import ExportOptions, export_lines
from branchpoint.store.log import EventLog, MemoryEventLog
from tests.mcp_server.scenario import (
    LS,
    LS_SEEN,
    RIGHT,
    RIGHT_SEEN,
    SYSTEM,
    TOOLS,
    USER,
    WRONG,
    WRONG_SEEN,
    Call,
    caller,
    play,
)


@asynccontextmanager
async def connect(log: EventLog) -> AsyncIterator[Call]:
    async with Client(build_server(Recorder(log))) as client:
        yield caller(client)


async def record_with_builder(log: EventLog) -> str:
    """The session's steps written straight through the builder, as the SDK writes."""
    b = TreeBuilder("sdk-tree", writer="sdk")
    b.root([SYSTEM, USER], make_task("fs", 7, description=USER["content"]), tools=TOOLS,
           origin="sdk")
    ls = b.step("root", LS, LS_SEEN, False)
    wrong = b.step(ls, WRONG, WRONG_SEEN, True)
    b.score(wrong, 0.0, source="checker", detail={"rationale": "moved the wrong file"})
    right = b.step(ls, RIGHT, RIGHT_SEEN, True)
    b.score(right, 1.0, source="checker")
    await log.append(b.take())
    return "sdk-tree"


def shape(events: list[Event]) -> list[tuple[Any, ...]]:
    """A tree with ids replaced by creation order: per node, its parent's index, action,
    observation, done and scores; plus the root's messages, task and tools."""
    index: dict[str, int] = {}
    rows: dict[int, list[Any]] = {}
    for ev in events:
        p = ev.payload
        if isinstance(p, NodeCreated):
            index[p.node_id] = len(index)
            parent = None if p.parent_id is None else index[p.parent_id]
            head = ((p.messages, p.task, p.tools) if p.parent_id is None else p.action)
            rows[index[p.node_id]] = [parent, head, None, None, []]
        elif isinstance(p, ActionExecuted):
            rows[index[p.node_id]][2:4] = [p.observation, p.done]
        elif isinstance(p, ScoreAssigned):
            rows[index[p.node_id]][4].append((p.source, p.value, p.detail))
    return [tuple(json.dumps(x, sort_keys=True) for x in rows[i]) for i in sorted(rows)]


async def test_an_mcp_session_records_what_the_builder_records_for_the_same_steps() -> None:
    log = MemoryEventLog()
    async with connect(log) as call:
        mcp_tree = (await play(call, export=False))["tree_id"]
    sdk_tree = await record_with_builder(log)
    mcp_events, sdk_events = await log.read_tree(mcp_tree), await log.read_tree(sdk_tree)
    assert shape(mcp_events) == shape(sdk_events)
    assert len(shape(mcp_events)) == 4  # root, ls, wrong, right
    assert mcp_events[0].payload.origin == "mcp" and sdk_events[0].payload.origin == "sdk"

    # pairs: the two trees export the same DPO row, byte for byte
    dpo = [line async for line in export_lines(log, "dpo", ExportOptions())]
    assert len(dpo) == 2 and dpo[0] == dpo[1]
    # steps: the same rows once the ids are left out
    steps = [json.loads(line) async for line in export_lines(log, "steps", ExportOptions())]
    ids = ("tree_id", "node_id", "parent_id")
    bare = [{k: v for k, v in row.items() if k not in ids} for row in steps]
    assert bare[:3] == bare[3:] and len(bare) == 6
