"""The one way to write events: every writer (the sampler, the demo, the SDK, the MCP
server, the recording proxy) builds its events here.

:class:`TreeBuilder` turns what happened (a task opened, a step taken, what the
environment answered, a score, the end) into :class:`~branchpoint.store.events.Event`
values ready to append. It mints ids and reads a clock, so the pure core does neither.

Ids, chosen so that writers never collide without talking to each other:

- a node id is ``WRITER.K``: ``writer`` is a prefix of the writer's own (the SDK and proxy
  mint a random one per process; a sampler worker derives one from its run and worker) and
  ``K`` counts that writer's nodes in the tree. A builder opened on a stored tree
  (:meth:`TreeBuilder.resume`) continues after the highest ``K`` stored for its prefix, and
  skips any id the tree already holds, so several writers can add to one tree at once;
- the root's node id is ``root``;
- an ``event_id`` is unique across the whole store because it starts with its tree id:
  ``TREE/NODE`` (the node), ``TREE/NODE/run`` (its execution),
  ``TREE/NODE/score/WRITER/SOURCE/K`` and ``TREE/closed/WRITER/K``.

A writer that resumes work reads the stored events, hands them to
:meth:`TreeBuilder.resume` and adds only what is missing: re-creating a stored event would
carry a new time and be refused as a conflict.

The root's ``task`` has one documented shape (:func:`make_task`): reserved keys at the top
(``env``, ``task_id``, ``split``, ``action_format`` ... see :data:`RESERVED_TASK_KEYS`) and
the environment's own options under ``task["options"]``, so that nothing a tool records
about the task is ever passed to an environment as an option. :func:`task_options` reads
options back, from older roots too (which kept them at the top level).

:func:`replay_path` turns a recorded path (root to a node) into what replay needs: the
task, the opening messages, the tools and the recorded steps in order.

Light: msgspec and the standard library only; the SDK imports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from branchpoint.store.actions import normalize_action
from branchpoint.store.errors import InvalidEvent
from branchpoint.store.events import (
    CURRENT_VERSION,
    TYPE_NAMES,
    ActionExecuted,
    Event,
    NodeCreated,
    Payload,
    ScoreAssigned,
    TreeClosed,
)

__all__ = [
    "RESERVED_TASK_KEYS",
    "ROOT",
    "NodeInfo",
    "RecordedStep",
    "ReplayPath",
    "TreeBuilder",
    "TreeState",
    "make_task",
    "replay_path",
    "task_options",
    "utcnow",
]

Message = dict[str, Any]
JsonObject = dict[str, Any]

ROOT: Final = "root"

#: Keys of a root's ``task`` that branchpoint and its writers define. Everything an
#: environment takes as an option lives under ``task["options"]``.
RESERVED_TASK_KEYS: Final = frozenset({
    "env",  # the environment's registered name or import path
    "task_id",  # a string or a non-negative integer
    "split",  # train | validation | heldout, when the writer knows it
    "action_format",  # text | tools: how the model saw the tools
    "options",  # the environment's options
    "description",  # a human-readable statement of the task
    "seed",  # the environment's seed, where it takes one apart from the task id
    "row",  # the data row a task was made from (TRL-style task files)
    "url",  # where a served environment lives (OpenEnv)
    "class",  # the import path of a user's environment class
})

_WRITER = re.compile(r"^[A-Za-z0-9_.:-]+$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_task(env: str, task_id: str | int, *, split: str | None = None,
              action_format: str | None = None, options: Mapping[str, Any] | None = None,
              **reserved: Any) -> JsonObject:
    """A root's ``task`` in the documented shape. ``reserved`` takes the other reserved
    keys (``description``, ``seed``, ``row``, ``url``, ``class``); ``None`` values and
    empty options are left out.

    Raises:
        ValueError: a key in ``reserved`` that is not reserved (pass it in ``options``).
    """
    unknown = sorted(set(reserved) - RESERVED_TASK_KEYS)
    if unknown:
        raise ValueError(f"not a reserved task key: {', '.join(unknown)}; environment "
                         "options go in options=")
    task: JsonObject = {"env": env, "task_id": task_id}
    for key, value in (("split", split), ("action_format", action_format), *reserved.items()):
        if value is not None:
            task[key] = value
    if options:
        task["options"] = dict(options)
    return task


def task_options(task: Mapping[str, Any]) -> JsonObject:
    """The environment options recorded in a root's ``task``: ``task["options"]``, or for a
    root written before that key existed, every top-level key that is not reserved."""
    opts = task.get("options")
    if isinstance(opts, dict):
        return dict(opts)
    return {k: v for k, v in task.items() if k not in RESERVED_TASK_KEYS}


# --- what is known of one tree -------------------------------------------------------------


@dataclass(slots=True)
class NodeInfo:
    """One node as far as writers need it (the store's fold serves readers)."""

    node_id: str
    parent: str | None
    depth: int
    action: Message | None = None
    produced_by: JsonObject | None = None
    observation: list[Message] | None = None  # None until executed
    done: bool | None = None
    children: list[str] = field(default_factory=list)


@dataclass
class TreeState:
    """The nodes, root and end of one tree, folded from its events in order."""

    tree_id: str
    root: NodeCreated | None = None
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    closed: str | None = None  # the latest close reason; None while unfinished
    event_ids: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, tree_id: str, events: Iterable[Event]) -> TreeState:
        state = cls(tree_id)
        for ev in events:
            state.apply(ev)
        return state

    def apply(self, ev: Event) -> None:
        """Fold one event in.

        Raises:
            ValueError: the event belongs to another tree.
        """
        if ev.tree_id != self.tree_id:
            raise ValueError(f"event {ev.event_id!r} belongs to tree {ev.tree_id!r}, "
                             f"not {self.tree_id!r}")
        self.event_ids.add(ev.event_id)
        p = ev.payload
        if isinstance(p, NodeCreated):
            parent = self.nodes.get(p.parent_id) if p.parent_id is not None else None
            if p.parent_id is None:
                self.root = p
            self.nodes[p.node_id] = NodeInfo(
                p.node_id, p.parent_id, parent.depth + 1 if parent else 0,
                action=p.action, produced_by=p.produced_by)
            if parent is not None:
                parent.children.append(p.node_id)
        elif isinstance(p, ActionExecuted):
            node = self.nodes.get(p.node_id)
            if node is not None:
                node.observation, node.done = p.observation, p.done
        elif isinstance(p, TreeClosed):
            self.closed = p.reason

    def path(self, node_id: str) -> list[str]:
        """The node ids from the root down to ``node_id``.

        Raises:
            KeyError: no such node.
        """
        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id!r} in tree {self.tree_id!r}")
        out: list[str] = []
        n: str | None = node_id
        while n is not None:
            out.append(n)
            n = self.nodes[n].parent
        return out[::-1]

    def conversation(self, node_id: str) -> list[Message]:
        """The root's messages, then each node's action and observation down to ``node_id``.

        Raises:
            KeyError: no such node, or no root yet.
        """
        if self.root is None:
            raise KeyError(f"tree {self.tree_id!r} has no root")
        messages = list(self.root.messages or [])
        for n in self.path(node_id)[1:]:
            info = self.nodes[n]
            if info.action is not None:
                messages.append(info.action)
            messages.extend(info.observation or [])
        return messages


class RecordedStep(NamedTuple):
    node_id: str
    action: Message
    observation: list[Message] | None  # None: the step was never executed
    done: bool | None


class ReplayPath(NamedTuple):
    """What replaying a recorded path needs: the task, how it opened, the steps in order."""

    task: JsonObject
    messages: list[Message]
    tools: list[JsonObject]
    steps: list[RecordedStep]


def replay_path(state: TreeState, node_id: str) -> ReplayPath:
    """The recorded path from the root to ``node_id``.

    Raises:
        KeyError: no such node, or the tree has no root.
    """
    if state.root is None:
        raise KeyError(f"tree {state.tree_id!r} has no root")
    steps = []
    for n in state.path(node_id)[1:]:
        info = state.nodes[n]
        assert info.action is not None  # every non-root node carries its action
        steps.append(RecordedStep(n, info.action, info.observation, info.done))
    root = state.root
    return ReplayPath(dict(root.task or {}), list(root.messages or []), list(root.tools or []),
                      steps)


# --- the builder ---------------------------------------------------------------------------


class TreeBuilder:
    """Mints the events of one tree for one writer; :meth:`take` hands them out to append.

    The builder refuses what the store would refuse for a reason it can see (an unknown
    parent, a second root, a step under a finished episode, a node executed twice), with
    the same :class:`InvalidEvent`, before anything is minted.
    """

    def __init__(self, tree_id: str, *, writer: str,
                 clock: Callable[[], datetime] = utcnow) -> None:
        """
        Raises:
            ValueError: an empty tree id, or a writer prefix that is not made of letters,
                digits and ``_ . : -``.
        """
        if not tree_id:
            raise ValueError("a tree id is a non-empty string")
        if not _WRITER.match(writer):
            raise ValueError(f"a writer prefix is letters, digits and _ . : - only, "
                             f"got {writer!r}")
        self.tree_id = tree_id
        self.writer = writer
        self.state = TreeState(tree_id)
        self._clock = clock
        self._pending: list[Event] = []
        self._next_node = 0
        self._next_score: dict[tuple[str, str], int] = {}
        self._next_close = 0

    @classmethod
    def resume(cls, tree_id: str, events: Iterable[Event], *, writer: str,
               clock: Callable[[], datetime] = utcnow) -> TreeBuilder:
        """A builder that continues the stored tree made of ``events``."""
        b = cls(tree_id, writer=writer, clock=clock)
        for ev in events:
            b.state.apply(ev)
        own = re.compile(rf"^{re.escape(writer)}\.(\d+)$")
        for n in b.state.nodes:
            m = own.match(n)
            if m:
                b._next_node = max(b._next_node, int(m.group(1)) + 1)
        score_prefix = f"{tree_id}/"
        close_prefix = f"{tree_id}/closed/{writer}/"
        for ev_id in b.state.event_ids:
            if ev_id.startswith(close_prefix) and ev_id[len(close_prefix):].isdigit():
                b._next_close = max(b._next_close, int(ev_id[len(close_prefix):]) + 1)
            elif ev_id.startswith(score_prefix) and f"/score/{writer}/" in ev_id:
                node, _, rest = ev_id[len(score_prefix):].partition(f"/score/{writer}/")
                source, _, k = rest.rpartition("/")
                if k.isdigit():
                    key = (node, source)
                    b._next_score[key] = max(b._next_score.get(key, 0), int(k) + 1)
        return b

    # -- minting --

    def now(self) -> datetime:
        """The time an event minted now is recorded at (the builder's clock)."""
        return self._clock()

    def _emit(self, event_id: str, payload: Payload) -> None:
        ev = Event(event_id, self.tree_id, TYPE_NAMES[type(payload)], CURRENT_VERSION,
                   self.now(), payload)
        self.state.apply(ev)
        self._pending.append(ev)

    def _refuse(self, reason: str, field: str) -> InvalidEvent:
        return InvalidEvent(f"tree {self.tree_id!r}: {reason}", field=field)

    def _mint_node_id(self) -> str:
        while True:
            node_id = f"{self.writer}.{self._next_node}"
            self._next_node += 1
            if node_id not in self.state.nodes:
                return node_id

    def root(self, messages: list[Message], task: JsonObject, *,
             tools: list[JsonObject] | None = None, origin: str | None = None,
             meta: JsonObject | None = None) -> str:
        """Open the tree: its opening ``messages`` and ``task`` (see :func:`make_task`).
        Returns the root's node id, :data:`ROOT`.

        Raises:
            InvalidEvent: the tree already has a root.
        """
        if self.state.root is not None or ROOT in self.state.nodes:
            raise self._refuse("already has a root", "payload.parent_id")
        self._emit(f"{self.tree_id}/{ROOT}", NodeCreated(
            node_id=ROOT, parent_id=None, messages=list(messages), task=dict(task),
            tools=list(tools) if tools else None, origin=origin, meta=meta))
        return ROOT

    def node(self, parent: str, action: Message, *, produced_by: JsonObject | None = None,
             meta: JsonObject | None = None) -> str:
        """A new child of ``parent`` that takes ``action`` (normalized, see
        :func:`~branchpoint.store.actions.normalize_action`); returns its node id.

        Raises:
            InvalidEvent: ``parent`` is not in the tree, or its action ended the episode.
        """
        info = self.state.nodes.get(parent)
        if info is None:
            raise self._refuse(f"no node {parent!r} to add a step under", "payload.parent_id")
        if info.done:
            raise self._refuse(f"node {parent!r} ended the episode (done); it takes no "
                               "further step", "payload.parent_id")
        node_id = self._mint_node_id()
        self._emit(f"{self.tree_id}/{node_id}", NodeCreated(
            node_id=node_id, parent_id=parent, action=normalize_action(action),
            produced_by=produced_by, meta=meta))
        return node_id

    def executed(self, node: str, observation: list[Message], done: bool | None, *,
                 info: JsonObject | None = None, latency_ms: float | None = None,
                 meta: JsonObject | None = None) -> None:
        """What the environment answered to ``node``'s action.

        Raises:
            InvalidEvent: an unknown node, the root, a node executed already, or ``done``
                for a node that already has children.
        """
        n = self.state.nodes.get(node)
        if n is None or n.parent is None:
            raise self._refuse(f"no step {node!r} to record an execution for",
                               "payload.node_id")
        if n.observation is not None:
            raise self._refuse(f"step {node!r} was executed already", "payload.node_id")
        if done and n.children:
            raise self._refuse(f"step {node!r} has children; it cannot end the episode",
                               "payload.done")
        self._emit(f"{self.tree_id}/{node}/run", ActionExecuted(
            node_id=node, observation=list(observation), done=done, info=info,
            latency_ms=latency_ms, meta=meta))

    def step(self, parent: str, action: Message, observation: list[Message],
             done: bool | None, *, produced_by: JsonObject | None = None,
             info: JsonObject | None = None, latency_ms: float | None = None,
             meta: JsonObject | None = None) -> str:
        """:meth:`node` and :meth:`executed` in one; returns the new node's id.

        Raises:
            InvalidEvent: as :meth:`node`.
        """
        node_id = self.node(parent, action, produced_by=produced_by, meta=meta)
        self.executed(node_id, observation, done, info=info, latency_ms=latency_ms)
        return node_id

    def score(self, node: str, value: float, *, source: str = "checker",
              detail: JsonObject | None = None, meta: JsonObject | None = None) -> None:
        """A score for ``node`` from ``source``.

        Raises:
            InvalidEvent: an unknown node, an empty source, or a value outside [0, 1].
        """
        if node not in self.state.nodes:
            raise self._refuse(f"no node {node!r} to score", "payload.node_id")
        if not source or "/" in source:
            raise self._refuse(f"a score source is a non-empty name without '/', got "
                               f"{source!r}", "payload.source")
        if not 0.0 <= value <= 1.0:  # NaN fails this too
            raise self._refuse(f"a score is a number in [0, 1], got {value!r}",
                               "payload.value")
        key = (node, source)
        k = self._next_score.get(key, 0)
        self._next_score[key] = k + 1
        self._emit(f"{self.tree_id}/{node}/score/{self.writer}/{source}/{k}", ScoreAssigned(
            node_id=node, value=float(value), source=source, detail=detail, meta=meta))

    def close(self, reason: str, detail: JsonObject | None = None) -> None:
        """Mark the tree finished, with ``reason`` (done, depth, budget, error, ...)."""
        k = self._next_close
        self._next_close += 1
        self._emit(f"{self.tree_id}/closed/{self.writer}/{k}",
                   TreeClosed(reason=reason, detail=detail))

    def take(self) -> list[Event]:
        """The events minted since the last call, in order; the builder forgets them."""
        out, self._pending = self._pending, []
        return out
