"""What an MCP session records is what the SDK records for the same steps: the same tree
shape, actions, observations, scores and pairs; only ids, origin and times differ.

Both write into one SQLite file: the MCP session through the in-process client, the SDK
(``branchpoint.sdk.Recorder``) through its background pipeline and local sink."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp import Client

from branchpoint.mcp_server.server import build_server
from branchpoint.mcp_server.service import McpRecorder
from branchpoint.sdk import Recorder as SdkRecorder
from branchpoint.store.events import ActionExecuted, Event, NodeCreated, ScoreAssigned
from branchpoint.store.exports import ExportOptions, export_lines
from branchpoint.store.log import TreeFilter, open_log
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
    caller,
    play,
)


def record_with_sdk(url: str, spool: Path) -> str:
    """The session's steps through the SDK, as a production agent records them."""
    rec = SdkRecorder(url, spool_dir=spool)
    t = rec.trajectory([SYSTEM, USER], env="fs", task_id=7, tools=TOOLS,
                       description=USER["content"])
    ls = t.step(LS, LS_SEEN, done=False)
    wrong = t.step(WRONG, WRONG_SEEN, done=True)
    t.score(0.0, source="checker", node=wrong, detail={"rationale": "moved the wrong file"})
    branch = t.fork(ls)
    branch.step(RIGHT, RIGHT_SEEN, done=True)
    branch.score(1.0, source="checker")
    assert rec.flush(30), rec.stats()
    assert rec.close(30)
    stats = rec.stats()
    assert stats.dead_lettered == stats.dropped == stats.errors == 0, stats
    return t.tree_id


def shape(events: Sequence[Event]) -> list[tuple[str, ...]]:
    """A tree with ids replaced by creation order: per node, its parent's index, what it
    holds (the root's messages, task and tools; a step's action), its observation and
    done, and its scores with source and detail."""
    index: dict[str, int] = {}
    rows: dict[int, list[Any]] = {}
    for ev in events:
        p = ev.payload
        if isinstance(p, NodeCreated):
            index[p.node_id] = len(index)
            parent = None if p.parent_id is None else index[p.parent_id]
            held = (p.messages, p.task, p.tools) if p.parent_id is None else p.action
            rows[index[p.node_id]] = [parent, held, None, None, []]
        elif isinstance(p, ActionExecuted):
            rows[index[p.node_id]][2:4] = [p.observation, p.done]
        elif isinstance(p, ScoreAssigned):
            rows[index[p.node_id]][4].append((p.source, p.value, p.detail))
    return [tuple(json.dumps(x, sort_keys=True) for x in rows[i]) for i in sorted(rows)]


async def test_an_mcp_session_records_what_the_sdk_records_for_the_same_steps(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'both.db'}"
    log = await open_log(url)
    try:
        async with Client(build_server(McpRecorder(log))) as client:
            mcp_tree = (await play(caller(client), export=False))["tree_id"]
        sdk_tree = record_with_sdk(url, tmp_path / "spool")
        mcp_events, sdk_events = await log.read_tree(mcp_tree), await log.read_tree(sdk_tree)
        assert shape(mcp_events) == shape(sdk_events)
        assert len(shape(mcp_events)) == 4  # root, ls, wrong, right
        assert mcp_events[0].payload.origin == "mcp"
        assert sdk_events[0].payload.origin == "sdk"

        async def rows(fmt: str, tree: str) -> list[bytes]:
            options = ExportOptions(where=TreeFilter(tree_id=tree))
            return [line async for line in export_lines(log, fmt, options)]

        # pairs: the two trees export the same DPO row, byte for byte
        dpo = await rows("dpo", mcp_tree)
        assert len(dpo) == 1 and dpo == await rows("dpo", sdk_tree)
        # steps: the same rows once the ids are left out
        ids = ("tree_id", "node_id", "parent_id")

        async def bare(tree: str) -> list[dict[str, Any]]:
            return [{k: v for k, v in json.loads(line).items() if k not in ids}
                    for line in await rows("steps", tree)]

        assert await bare(mcp_tree) == await bare(sdk_tree)
        assert len(await bare(mcp_tree)) == 3
    finally:
        await log.close()
