"""One agent session, written once and played over every transport: start a task, take a
step, take a wrong step and score it 0, fork back, take the right step and score it 1,
then export the pairs. The fork makes exactly one DPO pair."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from mcp import Client

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

SYSTEM = {"role": "system", "content": "You tidy a file system."}
USER = {"role": "user", "content": "Move the file that mentions 'kiwi' to done/."}
TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name} a path",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
    for name in ("ls", "mv")]


def tool_call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}]}


LS = tool_call("ls", "c1", path=".")
LS_SEEN = [{"role": "tool", "tool_call_id": "c1", "content": "inbox/a.txt inbox/b.txt"}]
WRONG = tool_call("mv", "c2", path="inbox/a.txt")
WRONG_SEEN = [{"role": "tool", "tool_call_id": "c2", "content": "moved a.txt (no kiwi)"}]
RIGHT = tool_call("mv", "c3", path="inbox/b.txt")
RIGHT_SEEN = [{"role": "tool", "tool_call_id": "c3", "content": "moved b.txt (kiwi)"}]


class ToolFailed(AssertionError):
    """A tool answered with is_error."""


def caller(client: Client) -> Call:
    """``call(tool, args)``: the tool's structured result; raises on a tool error."""

    async def call(tool: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await client.call_tool(tool, args)
        if result.is_error:
            raise ToolFailed(" ".join(getattr(c, "text", "") for c in result.content))
        assert result.structured_content is not None, f"{tool} returned no structured content"
        return result.structured_content

    return call


async def play(call: Call, *, export: bool = True) -> dict[str, Any]:
    """Play the session; returns the ids it made and the inline DPO export."""
    start = await call("start_trajectory", {
        "description": USER["content"], "messages": [SYSTEM, USER], "env": "fs",
        "task_id": 7, "tools": TOOLS})
    tree = start["tree_id"]
    ls = await call("record_step", {"tree_id": tree, "parent_node_id": start["root_node_id"],
                                    "action": LS, "observation": LS_SEEN, "done": False})
    wrong = await call("record_step", {"tree_id": tree, "parent_node_id": ls["node_id"],
                                       "action": WRONG, "observation": WRONG_SEEN,
                                       "done": True})
    await call("score", {"tree_id": tree, "node_id": wrong["node_id"], "value": 0.0,
                         "source": "checker", "rationale": "moved the wrong file"})
    fork = await call("fork", {"tree_id": tree, "node_id": ls["node_id"]})
    right = await call("record_step", {"tree_id": tree,
                                       "parent_node_id": fork["parent_node_id"],
                                       "action": RIGHT, "observation": RIGHT_SEEN,
                                       "done": True})
    scored = await call("score", {"tree_id": tree, "node_id": right["node_id"], "value": 1.0,
                                  "source": "checker"})
    exported = await call("export", {"format": "dpo"}) if export else None
    return {"tree_id": tree, "ls": ls, "wrong": wrong, "fork": fork, "right": right,
            "scored": scored, "export": exported}


def check_pair(session: dict[str, Any]) -> None:
    """The export holds the one pair the fork made: at the ``ls`` step, the right move
    chosen over the wrong one, after the conversation up to the listing."""
    export = session["export"]
    assert export["rows"] == 1, export
    row = json.loads(export["jsonl"])
    assert row["prompt"] == [SYSTEM, USER, _exported(LS), *LS_SEEN]
    assert row["chosen"] == [_exported(RIGHT)]
    assert row["rejected"] == [_exported(WRONG)]
    assert row["tools"] == TOOLS


def _exported(action: dict[str, Any]) -> dict[str, Any]:
    """An action as the DPO export writes it: arguments as JSON objects."""
    calls = [{**c, "function": {**c["function"],
                                "arguments": json.loads(c["function"]["arguments"])}}
             for c in action["tool_calls"]]
    return {**action, "tool_calls": calls}
