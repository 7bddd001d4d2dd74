"""What the MCP tools do, over an event log, with no MCP in sight.

:class:`McpRecorder` is the adapter between an agent's tool calls and the store: it turns
"I started this task", "I took this step and saw this", "I go back to that step", "that
went well" into events written through the shared builder
(:mod:`branchpoint.store.builder`), and answers reads (a tree in brief, a listing, an
export) from the store's folds and export generators. The MCP layer
(:mod:`branchpoint.mcp_server.server`) only maps arguments in and errors out, so every rule
here is tested without a transport.

Every write resumes a builder over the tree as stored and appends what the builder made, in
one batch: a refused call stores nothing. The builder of a tree written lately is kept and
reused while the tree's head count shows that nobody else wrote (a cheap read; otherwise
the tree is read in full). Node ids are ``mcp.K``; two processes that mint the same K at
once collide on the event id, the store refuses the second batch, and it is retried from a
fresh read (:data:`RETRIES`), so several server workers can share one store.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote
from uuid import uuid4

import msgspec

from branchpoint.mcp_server import models as m
from branchpoint.store.builder import TreeBuilder, make_task, replay_path
from branchpoint.store.errors import (
    BranchpointError,
    ConflictingEvent,
    InvalidEvent,
    StoreUnavailable,
)
from branchpoint.store.events import Event, NodeCreated
from branchpoint.store.exports import FORMATS, ExportOptions, TreeView, export_lines, render_message
from branchpoint.store.log import EventLog, TreeFilter
from branchpoint.store.tree import fold
from branchpoint.store.values import node_values

__all__ = ["INLINE_LIMIT", "RETRIES", "WRITER", "McpRecorder", "RequestRefused", "tree_uri"]

#: The most bytes an export returns inline; larger ones must go to a file.
INLINE_LIMIT: Final = 1_000_000
#: Node ids this server mints are ``WRITER.K``.
WRITER: Final = "mcp"
#: Attempts at a write that collides with another writer's ids before giving up.
RETRIES: Final = 5
#: How many trees' builders a recorder keeps between calls.
CACHED_TREES: Final = 256
#: Default env of a trajectory whose caller names none.
DEFAULT_ENV: Final = "mcp"

_T = TypeVar("_T")
Message = dict[str, Any]
_json = msgspec.json.Encoder(order="sorted")


class RequestRefused(BranchpointError, ValueError):
    """A tool call asks for something the store cannot do (unknown node, a path outside
    the export folder, an export over the inline limit...); nothing was stored."""


def tree_uri(tree_id: str) -> str:
    """The MCP resource URI of a tree; the id is percent-encoded (ids may hold ``/``)."""
    return f"branchpoint://trees/{quote(tree_id, safe='')}"


def _new_tree_id() -> str:
    return f"mcp-{uuid4().hex[:20]}"


class McpRecorder:
    """The MCP tools' logic over one event log.

    ``export_dir`` is the one folder exports may be written under (None: writing files
    is refused, exports are inline only). ``clock`` and ``new_tree_id`` are injectable for
    tests.
    """

    def __init__(self, log: EventLog | None, *, export_dir: Path | str | None = None,
                 inline_limit: int = INLINE_LIMIT,
                 clock: Callable[[], datetime] | None = None,
                 new_tree_id: Callable[[], str] = _new_tree_id) -> None:
        self._log = log
        self.export_dir = Path(export_dir).resolve() if export_dir is not None else None
        self.inline_limit = inline_limit
        self._clock = clock
        self._new_tree_id = new_tree_id
        # The builders of the trees written last, in use order (see _resume).
        self._cache: dict[str, TreeBuilder] = {}
        # One writer per tree at a time in this process; other processes are handled by
        # retrying on an id collision.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    @property
    def log(self) -> EventLog:
        """The log written to and read from.

        Raises:
            StoreUnavailable: no log was given yet (see :meth:`bind`).
        """
        if self._log is None:
            raise StoreUnavailable("the MCP tools are not connected to a store yet")
        return self._log

    def bind(self, log: EventLog) -> None:
        """Use ``log`` from now on (for hosts that open their store after building the
        MCP endpoint)."""
        self._log = log

    @property
    def bound(self) -> bool:
        return self._log is not None

    # --- writing ----------------------------------------------------------------------------

    def _builder(self, tree_id: str, events: Sequence[Event] | None = None) -> TreeBuilder:
        kw: dict[str, Any] = {"writer": WRITER}
        if self._clock is not None:
            kw["clock"] = self._clock
        if events is None:
            return TreeBuilder(tree_id, **kw)
        return TreeBuilder.resume(tree_id, list(events), **kw)

    async def _read(self, tree_id: str) -> list[Event]:
        events: list[Event] = await self.log.read_tree(tree_id)  # TreeNotFound propagates
        return events

    async def _resume(self, tree_id: str, *, fresh: bool = False) -> TreeBuilder:
        """A builder over ``tree_id`` as stored now, taken out of the cache.

        The cached builder of a tree this process wrote last is reused when the tree still
        holds exactly the events it has seen (the count of the tree's heads, which are
        cheap to read, matches; events are never deleted and re-sent ones are stored
        once, so an equal count means nobody else wrote). Otherwise, or with ``fresh``,
        the tree is read in full.
        """
        cached = self._cache.pop(tree_id, None)
        if cached is not None and not fresh:
            heads = await self.log.read_heads(tree_id)
            if len(heads) == len(cached.state.event_ids):
                return cached
        return self._builder(tree_id, await self._read(tree_id))

    def _keep(self, b: TreeBuilder) -> None:
        self._cache[b.tree_id] = b
        while len(self._cache) > CACHED_TREES:
            self._cache.pop(next(iter(self._cache)))

    async def _write(self, tree_id: str, make: Callable[[TreeBuilder], _T]) -> _T:
        """Resume ``tree_id``, let ``make`` add events, append them as one batch.

        A builder that failed (``make`` refused, the store refused) is dropped: it may
        hold events that were never stored."""
        lock = self._locks.get(tree_id)
        if lock is None:
            lock = self._locks[tree_id] = asyncio.Lock()
        async with lock:
            for attempt in range(RETRIES):
                b = await self._resume(tree_id, fresh=attempt > 0)
                result = make(b)
                try:
                    await self.log.append(b.take())
                except ConflictingEvent:
                    if attempt == RETRIES - 1:
                        raise
                    continue  # another process took these ids: read again and redo
                self._keep(b)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def start_trajectory(
        self, *, description: str | None = None, messages: list[Message] | None = None,
        env: str | None = None, task_id: str | int | None = None, split: str | None = None,
        tools: list[Message] | None = None, meta: Message | None = None,
    ) -> m.StartResult:
        """Open a new tree.

        Raises:
            RequestRefused: neither a description nor messages.
            InvalidEvent: the messages or tools break the event contract.
        """
        if not messages:
            if not description:
                raise RequestRefused("give the task: a description, or the opening messages")
            messages = [{"role": "user", "content": description}]
        env = env or DEFAULT_ENV
        if task_id is None:
            # Attempts that open with the same messages are the same task (so their
            # episodes pair up in trajectory-pairs exports).
            task_id = "msg-" + hashlib.sha256(_json.encode(messages)).hexdigest()[:16]
        reserved: dict[str, Any] = {}
        if description is not None:
            reserved["description"] = description
        task = make_task(env, task_id, split=split, **reserved)
        tree_id = self._new_tree_id()
        b = self._builder(tree_id)
        root = b.root(messages, task, tools=tools or None, origin="mcp", meta=meta)
        await self.log.append(b.take())
        self._keep(b)
        return m.StartResult(tree_id=tree_id, root_node_id=root, env=env, task_id=task_id,
                             resource_uri=tree_uri(tree_id))

    async def record_step(
        self, *, tree_id: str, parent_node_id: str, action: Message,
        observation: list[Message] | str, done: bool | None,
        produced_by: Message | None = None, latency_ms: float | None = None,
        info: Message | None = None, meta: Message | None = None,
    ) -> m.StepResult:
        """Record one step taken from ``parent_node_id``: the action and what came back.

        Raises:
            TreeNotFound: no such tree.
            RequestRefused: no such node, or it ended its episode.
            InvalidEvent: the action or observation break the event contract.
        """
        action = _with_call_ids(action)
        obs = _observation(action, observation)

        def make(b: TreeBuilder) -> m.StepResult:
            _check_branchable(b, tree_id, parent_node_id)
            siblings = list(b.state.nodes[parent_node_id].children)
            node = b.step(parent_node_id, action, obs, done, produced_by=produced_by,
                          info=info, latency_ms=latency_ms, meta=meta)
            return m.StepResult(tree_id=tree_id, node_id=node, parent_node_id=parent_node_id,
                                depth=b.state.nodes[node].depth, done=done, siblings=siblings)

        return await self._write(tree_id, make)

    async def fork(self, *, tree_id: str, node_id: str) -> m.ForkResult:
        """Where a new branch from ``node_id`` starts (nothing is written: a branch exists
        once its first step is recorded from this node).

        Raises:
            TreeNotFound: no such tree.
            RequestRefused: no such node, or it ended its episode.
        """
        b = await self._resume(tree_id)
        self._keep(b)  # reading changes nothing in it
        _check_branchable(b, tree_id, node_id)
        path = replay_path(b.state, node_id)
        conversation = list(path.messages)
        for step in path.steps:
            conversation.append(step.action)
            conversation.extend(step.observation or ())
        return m.ForkResult(tree_id=tree_id, parent_node_id=node_id,
                            depth=b.state.nodes[node_id].depth,
                            existing_children=list(b.state.nodes[node_id].children),
                            conversation=conversation)

    async def score(self, *, tree_id: str, node_id: str, value: float, source: str = "agent",
                    rationale: str | None = None, detail: Message | None = None
                    ) -> m.ScoreResult:
        """Score a node in [0, 1]; the latest score from a source counts.

        Raises:
            TreeNotFound: no such tree.
            RequestRefused: no such node, or a value outside [0, 1].
        """
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise RequestRefused(f"value must be in [0, 1], got {value!r}")
        if rationale is not None:
            detail = {**(detail or {}), "rationale": rationale}

        def make(b: TreeBuilder) -> None:
            _check_node(b, tree_id, node_id)
            b.score(node_id, value, source=source, detail=detail)

        await self._write(tree_id, make)
        g = fold(tree_id, await self.log.read_heads(tree_id))
        values = node_values(g)
        return m.ScoreResult(tree_id=tree_id, node_id=node_id, value=value, source=source,
                             node_value=values.get(node_id),
                             root_value=values.get(g.graph["root"]))

    # --- reading ----------------------------------------------------------------------------

    async def get_tree(self, *, tree_id: str, node_id: str | None = None,
                       text_limit: int = 200, max_nodes: int = 200) -> m.TreeSummary:
        """A compact view of one tree: at most ``max_nodes`` nodes (those on the path
        first, then the others in the order recorded), texts cut to ``text_limit``.

        Raises:
            TreeNotFound: no such tree.
            RequestRefused: ``node_id`` is not in the tree.
        """
        events = await self._read(tree_id)
        view = TreeView(tree_id, events, ExportOptions())
        g = view.graph
        order = view.by_seq()
        if node_id is not None and node_id not in g:
            raise RequestRefused(_unknown_node(tree_id, node_id, order))
        root_payload = next(ev.payload for ev in events if isinstance(ev.payload, NodeCreated)
                            and ev.payload.parent_id is None)
        assert isinstance(root_payload, NodeCreated)
        task = root_payload.task or {}
        path = view.path(node_id if node_id is not None else order[-1])
        shown = set(path[:max_nodes])
        for n in order:
            if len(shown) >= max_nodes:
                break
            shown.add(n)
        nodes, points = [], []
        for n in order:
            attrs = g.nodes[n]
            children = sorted(g.successors(n), key=lambda c: g.nodes[c]["seq"])
            if len(children) >= 2:
                points.append(m.BranchPoint(node_id=n, children={
                    c: view.values.get(c) for c in children}))
            if n not in shown:
                continue
            parent = next(iter(g.predecessors(n)), None)
            obs = view.observations.get(n)
            nodes.append(m.NodeSummary(
                node_id=n, parent_id=parent, depth=attrs["depth"],
                action=_cut(render_message(view.actions[n]), text_limit)
                if n in view.actions else None,
                observation=None if obs is None else
                _cut("\n".join(render_message(o) for o in obs), text_limit),
                done=attrs["done"],
                scores={s: v for s, (_, v) in sorted(attrs["scores"].items())},
                value=view.values.get(n), children=children))
        leaves = view.leaves()
        valued = [n for n in leaves if n in view.values and n != g.graph["root"]]
        best = max(valued, key=lambda n: view.values[n], default=None)
        return m.TreeSummary(
            tree_id=tree_id, resource_uri=tree_uri(tree_id), env=view.env,
            task_id=view.task_id, description=task.get("description"),
            origin=root_payload.origin, closed=g.graph["closed"],
            node_count=g.number_of_nodes(),
            max_depth=max((g.nodes[n]["depth"] for n in g), default=0), nodes=nodes,
            nodes_truncated=len(nodes) < len(order), branching_points=points,
            leaves=leaves, best_leaf=best, path=path)

    async def tree_document(self, tree_id: str) -> Message:
        """The whole tree as one JSON object (the resource's content): the task, the
        opening messages and tools, and every node with its full action and observation.

        Raises:
            TreeNotFound: no such tree.
        """
        events = await self._read(tree_id)
        view = TreeView(tree_id, events, ExportOptions())
        g = view.graph
        root = next(ev.payload for ev in events if isinstance(ev.payload, NodeCreated)
                    and ev.payload.parent_id is None)
        assert isinstance(root, NodeCreated)
        return {
            "tree_id": tree_id, "task": root.task, "origin": root.origin,
            "closed": g.graph["closed"], "messages": root.messages, "tools": root.tools,
            "nodes": [{
                "node_id": n, "parent_id": next(iter(g.predecessors(n)), None),
                "depth": g.nodes[n]["depth"], "action": view.actions.get(n),
                "observation": view.observations.get(n), "done": g.nodes[n]["done"],
                "scores": {s: v for s, (_, v) in sorted(g.nodes[n]["scores"].items())},
                "value": view.values.get(n),
            } for n in view.by_seq()],
        }

    async def list_trees(self, where: TreeFilter, *, limit: int = 50) -> m.TreeList:
        """Trees matching ``where``, oldest first, at most ``limit``."""
        trees = await self.log.list_trees(where)
        listed = [m.TreeListing(tree_id=t.tree_id, resource_uri=tree_uri(t.tree_id),
                                env=t.env, task_id=t.task_id, origin=t.origin,
                                created_at=t.created_at, closed=t.closed)
                  for t in trees[:limit]]
        return m.TreeList(trees=listed, total=len(trees), truncated=len(trees) > limit)

    async def export(self, fmt: str, options: ExportOptions, *, path: str | None = None,
                     overwrite: bool = False) -> m.ExportResult:
        """Export ``fmt`` inline (up to :attr:`inline_limit` bytes) or to ``path`` under
        the export folder.

        Raises:
            RequestRefused: an inline export over the limit; a path when no export folder
                was allowed, or one outside it; an existing file without ``overwrite``.
            ValueError: an unknown format or an option out of range.
        """
        if fmt not in FORMATS:
            raise RequestRefused(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
        if path is None:
            return await self._export_inline(fmt, options)
        target = self.resolve_export_path(path)
        if target.exists() and not overwrite:
            raise RequestRefused(f"{path!r} exists under the export folder; pass "
                                 "overwrite=true to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        rows = size = 0
        try:
            with tmp.open("wb") as fh:
                async for line in export_lines(self.log, fmt, options):
                    fh.write(line)
                    rows += 1
                    size += len(line)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return m.ExportResult(format=fmt, rows=rows, bytes=size, jsonl=None, path=str(target))

    async def _export_inline(self, fmt: str, options: ExportOptions) -> m.ExportResult:
        chunks: list[bytes] = []
        size = 0
        async for line in export_lines(self.log, fmt, options):
            size += len(line)
            if size > self.inline_limit:
                hint = ("pass path='NAME.jsonl' to write it under the export folder"
                        if self.export_dir is not None else
                        "start the server with --export-dir DIR and pass path='NAME.jsonl'")
                raise RequestRefused(
                    f"the {fmt} export is over the inline limit of {self.inline_limit:,} "
                    f"bytes; narrow the filters, or {hint}")
            chunks.append(line)
        text = b"".join(chunks).decode()
        return m.ExportResult(format=fmt, rows=len(chunks), bytes=size, jsonl=text, path=None)

    def resolve_export_path(self, path: str) -> Path:
        """``path`` (relative to the export folder) as an absolute path inside it.

        Raises:
            RequestRefused: no export folder; an absolute path, ``..`` or a symlink that
                leads outside it; the folder itself.
        """
        if self.export_dir is None:
            raise RequestRefused("writing exports to files is not allowed on this server "
                                 "(it was started without --export-dir); export inline")
        if not path or "\0" in path:
            raise RequestRefused("path must be a non-empty file name")
        if Path(path).is_absolute():
            raise RequestRefused(f"path {path!r} must be relative to the export folder "
                                 f"{self.export_dir}")
        target = (self.export_dir / path).resolve()  # follows symlinks and ..
        if not target.is_relative_to(self.export_dir) or target == self.export_dir:
            raise RequestRefused(f"path {path!r} leads outside the export folder "
                                 f"{self.export_dir}")
        if target.is_dir():
            raise RequestRefused(f"path {path!r} is a folder; name a file")
        return target


# --- helpers -------------------------------------------------------------------------------


def _unknown_node(tree_id: str, node_id: str, known: Sequence[str]) -> str:
    shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    return f"tree {tree_id!r} has no node {node_id!r}; its nodes: {shown}"


def _check_node(b: TreeBuilder, tree_id: str, node_id: str) -> None:
    if node_id not in b.state.nodes:
        raise RequestRefused(_unknown_node(tree_id, node_id, list(b.state.nodes)))


def _check_branchable(b: TreeBuilder, tree_id: str, node_id: str) -> None:
    _check_node(b, tree_id, node_id)
    if b.state.nodes[node_id].done:
        raise RequestRefused(f"node {node_id!r} of tree {tree_id!r} ended its episode "
                             "(done: true); no step can follow it. Fork from an earlier node")


def _with_call_ids(action: Message) -> Message:
    """``action`` with an id on each tool call (``call_1``, ... by position where missing),
    so observations can answer them."""
    calls = action.get("tool_calls")
    if not isinstance(calls, list) or all(
            isinstance(c, dict) and c.get("id") for c in calls):
        return action
    fixed = [c if not isinstance(c, dict) or c.get("id") else {**c, "id": f"call_{i}"}
             for i, c in enumerate(calls, 1)]
    return {**action, "tool_calls": fixed}


def _observation(action: Message, observation: list[Message] | str) -> list[Message]:
    """The observation messages; text answers the action's one tool call (a ``tool``
    message), or the assistant's text (a ``user`` message).

    Raises:
        RequestRefused: text for an action with several tool calls.
    """
    if not isinstance(observation, str):
        return observation
    calls = action.get("tool_calls") or []
    if not calls:
        return [{"role": "user", "content": observation}]
    if len(calls) > 1:
        raise RequestRefused("the action made several tool calls: give the observation as "
                             "a list of tool messages, one per call, each with its "
                             "tool_call_id")
    return [{"role": "tool", "tool_call_id": calls[0]["id"], "content": observation}]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


_FIELDS: Final = (
    ("payload.messages", "messages"), ("payload.tools", "tools"),
    ("payload.task.", ""), ("payload.task", "task"), ("payload.action", "action"),
    ("payload.observation", "observation"), ("payload.value", "value"),
    ("payload.source", "source"), ("payload.latency_ms", "latency_ms"), ("payload.", ""),
)


def describe_invalid(exc: InvalidEvent) -> str:
    """An :class:`InvalidEvent` in the words of the tool's arguments."""
    field = exc.field or ""
    for old, new in _FIELDS:
        if field.startswith(old):
            field = new + field[len(old):]
            break
    return f"{field}: {exc.reason}" if field else exc.reason
