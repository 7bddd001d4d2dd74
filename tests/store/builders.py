"""Small builders for test trees: events with deterministic ids and times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import networkx as nx

from branchpoint.store.events import (
    ActionExecuted,
    Event,
    NodeCreated,
    ScoreAssigned,
    TreeClosed,
)
from branchpoint.store.log import MemoryEventLog
from branchpoint.store.tree import fold

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)

TOOLS = [{
    "type": "function",
    "function": {
        "name": "read",
        "description": "Read a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"]},
    },
}]


def call(name: str, args: dict[str, Any] | str, call_id: str = "c1") -> dict[str, Any]:
    """One OpenAI tool call; ``args`` as an object is encoded the way OpenAI sends it."""
    raw = args if isinstance(args, str) else json.dumps(args)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def action(content: str | None = None, *calls: dict[str, Any]) -> dict[str, Any]:
    m: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        m["tool_calls"] = list(calls)
    return m


class TreeBuilder:
    """Events of one tree, appended in call order::

        b = TreeBuilder("t1").root()
        b.step("a", "r", action("ls")).score("a", 1.0)
    """

    def __init__(self, tree_id: str = "t1", *, env: str = "fs", task_id: str | int = 1,
                 tools: list[dict[str, Any]] | None = None, start: int = 0) -> None:
        self.tree_id = tree_id
        self.env = env
        self.task_id = task_id
        self.tools = tools
        self.events: list[Event] = []
        self._n = start

    def _add(self, payload: Any) -> TreeBuilder:
        self._n += 1
        self.events.append(Event.of(payload, tree_id=self.tree_id,
                                    event_id=f"{self.tree_id}-e{self._n}",
                                    recorded_at=T0 + timedelta(seconds=self._n)))
        return self

    def root(self, node_id: str = "r", *, user: str = "find the file",
             system: str | None = "you are terse") -> TreeBuilder:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return self._add(NodeCreated(node_id=node_id, parent_id=None, messages=messages,
                                     task={"env": self.env, "task_id": self.task_id, "seed": 0},
                                     tools=self.tools, origin="sampler"))

    def node(self, node_id: str, parent: str, act: dict[str, Any] | None = None) -> TreeBuilder:
        return self._add(NodeCreated(node_id=node_id, parent_id=parent,
                                     action=act or action(f"step {node_id}")))

    def run(self, node_id: str, observation: list[dict[str, Any]] | str | None = None,
            done: bool | None = False) -> TreeBuilder:
        if observation is None:
            observation = f"result of {node_id}"
        obs = ([{"role": "user", "content": observation}] if isinstance(observation, str)
               else observation)
        return self._add(ActionExecuted(node_id=node_id, observation=obs, done=done))

    def step(self, node_id: str, parent: str, act: dict[str, Any] | None = None, *,
             observation: list[dict[str, Any]] | str | None = None,
             done: bool | None = False) -> TreeBuilder:
        """A node, and its action executed."""
        return self.node(node_id, parent, act).run(node_id, observation, done)

    def score(self, node_id: str, value: float, source: str = "checker") -> TreeBuilder:
        return self._add(ScoreAssigned(node_id=node_id, value=value, source=source))

    def close(self, reason: str = "done") -> TreeBuilder:
        return self._add(TreeClosed(reason=reason))


def two_step_tree(tree_id: str = "t1", **kw: Any) -> TreeBuilder:
    """Root r; two different first steps a (good) and b (bad); a has two children a1
    (1.0) and a2 (0.0). Values: a = 0.5, b = 0.0, r = 0.25."""
    b = TreeBuilder(tree_id, **kw).root()
    b.step("a", "r", action("look first", call("read", {"path": "notes.txt"}, "c1")),
           observation=[{"role": "tool", "tool_call_id": "c1", "content": "see data.txt"}])
    b.step("b", "r", action("guess"), observation="wrong", done=True).score("b", 0.0)
    b.step("a1", "a", action(None, call("read", {"path": "data.txt"}, "c2")),
           observation=[{"role": "tool", "tool_call_id": "c2", "content": "42"}], done=True)
    b.score("a1", 1.0)
    b.step("a2", "a", action(None, call("read", {"path": "nope.txt"}, "c3")),
           observation=[{"role": "tool", "tool_call_id": "c3", "content": "no such file"}],
           done=True)
    b.score("a2", 0.0)
    return b.close()


def sequenced(events: list[Event], start: int = 1) -> list[Event]:
    """The events with the ``seq`` a fresh store would give them."""
    return [msgspec.structs.replace(e, seq=i) for i, e in enumerate(events, start=start)]


def graph_of(b: TreeBuilder) -> nx.DiGraph:
    """The tree ``b`` folds into, as read back from a fresh store."""
    return fold(b.tree_id, (e.head() for e in sequenced(b.events)))


async def memory_log(*builders: TreeBuilder) -> MemoryEventLog:
    log = MemoryEventLog()
    for b in builders:
        await log.append(b.events)
    return log
