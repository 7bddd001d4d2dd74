"""Synthetic event trees for the benchmarks: realistic shapes and sizes, deterministic.

Each tree is a root (system + user message, a task, two tool schemas) and, below it,
``branching`` children per node down to ``depth`` levels. Every non-root node carries an
assistant tool call with produced_by metadata and an executed action with a tool
observation; every leaf gets a checker score; every tree is closed. A tree of branching b
and depth d has N = b + b^2 + ... + b^d non-root nodes and 1 + 2N + leaves + 1 events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from branchpoint.store.events import (
    ActionExecuted,
    Event,
    NodeCreated,
    ScoreAssigned,
    TreeClosed,
    encode_event,
)

__all__ = ["events_per_tree", "synthetic_events", "write_jsonl"]

_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a file of the workspace.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "write_file", "description": "Write a file of the workspace.",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"]}}},
]
_WORDS = ("alpha", "beta", "gamma", "delta", "file", "config", "parse", "value", "return",
          "error", "check", "test", "list", "open", "close", "update", "index", "branch",
          "node", "tree", "score")


def events_per_tree(branching: int, depth: int) -> int:
    """How many events :func:`synthetic_events` yields per tree."""
    inner = sum(branching ** k for k in range(1, depth + 1))
    return 2 + 2 * inner + branching ** depth


def synthetic_events(n_trees: int, branching: int = 3, depth: int = 3,
                     seed: int = 0) -> Iterator[Event]:
    """Events of ``n_trees`` trees, tree after tree, each in a valid order."""
    rng = random.Random(seed)
    clock = 0

    def at() -> datetime:
        nonlocal clock
        clock += 1
        return _T0 + timedelta(milliseconds=37 * clock)

    def text(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    for t in range(n_trees):
        tree_id = f"tree-{seed}-{t:07d}"
        n = 0

        def eid(tree_id: str = tree_id) -> str:
            nonlocal n
            n += 1
            return f"{tree_id}-e{n:05d}"

        yield Event.of(NodeCreated(
            node_id="root",
            messages=[{"role": "system", "content": "You are a careful coding agent."},
                      {"role": "user", "content": f"Task {t}: {text(20)}"}],
            task={"env": rng.choice(("fs", "shop")), "task_id": t % 500, "seed": t},
            tools=_TOOLS, origin=rng.choice(("sdk", "sampler", "proxy"))),
            tree_id=tree_id, event_id=eid(), recorded_at=at())
        frontier = ["root"]
        for level in range(1, depth + 1):
            nxt = []
            for parent in frontier:
                for b in range(branching):
                    node = f"{parent}.{b}" if parent != "root" else f"n{b}"
                    call_id = f"call_{rng.getrandbits(40):010x}"
                    yield Event.of(NodeCreated(
                        node_id=node, parent_id=parent,
                        action={"role": "assistant", "content": text(12), "tool_calls": [{
                            "id": call_id, "type": "function", "function": {
                                "name": "read_file",
                                "arguments": f'{{"path": "src/{rng.choice(_WORDS)}.py"}}'}}]},
                        produced_by={"model": "tiny-lm", "temperature": 0.8,
                                     "usage": {"prompt_tokens": 300 + 50 * level,
                                               "completion_tokens": rng.randint(10, 80)}}),
                        tree_id=tree_id, event_id=eid(), recorded_at=at())
                    leaf = level == depth
                    yield Event.of(ActionExecuted(
                        node_id=node, done=leaf,
                        observation=[{"role": "tool", "tool_call_id": call_id,
                                      "content": text(30)}],
                        latency_ms=round(rng.uniform(1, 900), 3)),
                        tree_id=tree_id, event_id=eid(), recorded_at=at())
                    if leaf:
                        yield Event.of(ScoreAssigned(
                            node_id=node, value=round(rng.random(), 4), source="checker"),
                            tree_id=tree_id, event_id=eid(), recorded_at=at())
                    nxt.append(node)
            frontier = nxt
        yield Event.of(TreeClosed(reason="done"), tree_id=tree_id, event_id=eid(),
                       recorded_at=at())


def write_jsonl(path: Path | str, events: Iterator[Event]) -> int:
    """Write events as JSON Lines; returns how many."""
    n = 0
    with open(path, "wb") as fh:
        for ev in events:
            fh.write(encode_event(ev))
            fh.write(b"\n")
            n += 1
    return n


def write_sqlite(path: Path, events: Iterator[Event], batch_size: int = 5000) -> int:
    """Store ``events`` in a new SQLite log at ``path`` through the stdlib writer, in
    batches of at least ``batch_size`` that end on a closed tree; returns the count."""
    from branchpoint.store.sqlite3_writer import Sqlite3Writer

    writer = Sqlite3Writer(path)
    batch: list[Event] = []
    n = 0
    for ev in events:
        batch.append(ev)
        if len(batch) >= batch_size and ev.type == "tree_closed":
            writer.append(batch)
            n += len(batch)
            batch = []
    if batch:
        writer.append(batch)
        n += len(batch)
    writer.close()
    return n
