"""What recording a step through MCP costs, against appending the same step straight
through the event builder, on a SQLite file.

- baseline: one ``TreeBuilder`` kept in memory, each step appended as its own batch (the
  least a writer can do per step);
- ``mcp in process``: ``record_step`` through the SDK's client on an in-memory connection
  (tool-argument validation, a read of the tree, a resumed builder, one append);
- ``mcp over stdio``: the same calls to a ``branchpoint mcp`` subprocess.

Each ``record_step`` checks that the tree is as this process left it (a read of the
tree's heads, no payloads), since several processes may write to one tree; the check
grows with the tree, so the early and late steps of the run are timed apart.

Run: ``.venv/bin/python bench/bench_mcp.py``. Exits non-zero when in-process MCP records
fewer than a quarter of the baseline's steps per second.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from branchpoint.mcp_server.server import build_server
from branchpoint.mcp_server.service import McpRecorder
from branchpoint.store.builder import TreeBuilder, make_task
from branchpoint.store.log import open_log

STEPS = 300
STDIO_STEPS = 100
TARGET = 0.25
BRANCHPOINT = str(Path(sys.executable).with_name("branchpoint"))
OPENING = [{"role": "user", "content": "Tidy the inbox."}]


def _step(i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    call_id = f"c{i}"
    action = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": "cat", "arguments": f'{{"path": "inbox/{i}.txt"}}'}}]}
    return action, [{"role": "tool", "tool_call_id": call_id, "content": f"file {i} " * 20}]


async def baseline(url: str) -> list[float]:
    log = await open_log(url)
    times = []
    try:
        b = TreeBuilder("base", writer="bench")
        b.root(OPENING, make_task("bench", 1))
        await log.append(b.take())
        parent = "root"
        for i in range(STEPS):
            t0 = time.perf_counter()
            action, seen = _step(i)
            parent = b.step(parent, action, seen, False)
            await log.append(b.take())
            times.append(time.perf_counter() - t0)
    finally:
        await log.close()
    return times


async def through(client: Client, steps: int) -> list[float]:
    started = await client.call_tool("start_trajectory", {"messages": OPENING, "env": "bench"})
    assert started.structured_content is not None
    tree = started.structured_content["tree_id"]
    parent = "root"
    times = []
    for i in range(steps):
        action, seen = _step(i)
        t0 = time.perf_counter()
        result = await client.call_tool("record_step", {
            "tree_id": tree, "parent_node_id": parent, "action": action,
            "observation": seen})
        times.append(time.perf_counter() - t0)
        assert not result.is_error and result.structured_content is not None, result.content
        parent = result.structured_content["node_id"]
    return times


async def in_process(url: str) -> list[float]:
    log = await open_log(url)
    try:
        async with Client(build_server(McpRecorder(log))) as client:
            return await through(client, STEPS)
    finally:
        await log.close()


async def over_stdio(url: str, errlog: Any) -> list[float]:
    params = StdioServerParameters(command=BRANCHPOINT, args=["mcp", "--db", url])
    async with Client(stdio_client(params, errlog=errlog)) as client:
        return await through(client, STDIO_STEPS)


def _report(name: str, times: list[float]) -> float:
    rate = len(times) / sum(times)
    first, last = times[:50], times[-50:]
    print(f"  {name:<16} {rate:>9,.0f} steps/s   first 50: {1000 * sum(first) / 50:6.2f} ms"
          f"/step   last 50: {1000 * sum(last) / 50:6.2f} ms/step")
    return rate


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"recording {STEPS} steps of one trajectory into SQLite ({STDIO_STEPS} over stdio)")
        base = _report("builder (base)", await baseline(f"sqlite:///{tmp}/base.db"))
        mcp = _report("mcp in process", await in_process(f"sqlite:///{tmp}/mcp.db"))
        with (Path(tmp) / "stderr.txt").open("w") as errlog:
            stdio = _report("mcp over stdio", await over_stdio(f"sqlite:///{tmp}/io.db",
                                                              errlog))
    ratio = mcp / base
    print(f"  ratio mcp in process / base: {ratio:.2f} (target >= {TARGET}); "
          f"stdio / base: {stdio / base:.2f}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
