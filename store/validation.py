"""Rules that span events: what a batch may append given what the log already holds.

Pure functions. An adapter asks :func:`lookups` which facts it needs, fetches them with one
or two indexed queries, and hands them to :func:`check_batch`; the in-memory log, the SQL
log and the SDK's plain ``sqlite3`` writer all run this same code, so every writer refuses
the same things with the same message.

Rules, in the order of the batch (an event may rely on one earlier in the same batch):

- ``node_created``: the ``node_id`` is new in its tree; a root only where the tree has
  none; any other node's parent exists and its action did not end the episode.
- ``action_executed``: for an existing, non-root node that has not run yet.
- ``score_assigned``: for an existing node.
- ``tree_closed``: for an existing tree.

Re-sent events (an ``event_id`` already stored, or twice in one batch) are dropped when the
content is identical and refused with :class:`ConflictingEvent` when it is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from branchpoint.store.errors import ConflictingEvent, InvalidEvent
from branchpoint.store.events import ActionExecuted, Event, NodeCreated, ScoreAssigned, digest

__all__ = ["Known", "NodeFacts", "check_batch", "drop_duplicates", "lookups"]


class NodeFacts(NamedTuple):
    """What the rules need to know of a stored node."""

    is_root: bool
    executed: bool
    done: bool | None


class Known(NamedTuple):
    """Stored facts for the trees and nodes a batch refers to."""

    roots: frozenset[str]
    nodes: Mapping[tuple[str, str], NodeFacts]


def lookups(events: Sequence[Event]) -> tuple[set[str], set[tuple[str, str]]]:
    """The tree ids and ``(tree_id, node_id)`` keys whose stored facts the rules need."""
    trees: set[str] = set()
    nodes: set[tuple[str, str]] = set()
    for ev in events:
        trees.add(ev.tree_id)
        p = ev.payload
        if isinstance(p, NodeCreated):
            nodes.add((ev.tree_id, p.node_id))
            if p.parent_id is not None:
                nodes.add((ev.tree_id, p.parent_id))
        elif isinstance(p, ActionExecuted | ScoreAssigned):
            nodes.add((ev.tree_id, p.node_id))
    return trees, nodes


def drop_duplicates(
    events: Sequence[Event],
    stored_digests: Mapping[str, str],
    lines: Sequence[int] | None = None,
) -> tuple[list[Event], list[int]]:
    """Remove events already stored (``event_id -> digest``) or repeated in the batch.

    Returns the events left to store and their line numbers.

    Raises:
        ConflictingEvent: an ``event_id`` seen before with different content.
    """
    seen: dict[str, str] = {}
    kept: list[Event] = []
    kept_lines: list[int] = []
    for i, ev in enumerate(events):
        line = lines[i] if lines is not None else i + 1
        d = digest(ev)
        before = stored_digests.get(ev.event_id)
        if before is None:
            before = seen.get(ev.event_id)
            if before is None:
                seen[ev.event_id] = d
                kept.append(ev)
                kept_lines.append(line)
                continue
            where = "earlier in this batch"
        else:
            where = "already stored"
        if before != d:
            raise ConflictingEvent(f"event_id is {where} with different content",
                                   line=line, event_id=ev.event_id)
    return kept, kept_lines


def check_batch(events: Sequence[Event], known: Known,
                lines: Sequence[int] | None = None) -> None:
    """Check a batch (already free of duplicates) against the stored facts.

    Raises:
        InvalidEvent: naming the first offending event's line, id and field.
    """
    roots = set(known.roots)
    added: dict[tuple[str, str], NodeFacts] = {}

    def facts(key: tuple[str, str]) -> NodeFacts | None:
        got = added.get(key)
        return got if got is not None else known.nodes.get(key)

    for i, ev in enumerate(events):
        line = lines[i] if lines is not None else i + 1

        def fail(reason: str, field: str, line: int = line, ev: Event = ev) -> InvalidEvent:
            return InvalidEvent(reason, line=line, event_id=ev.event_id, field=field)

        p = ev.payload
        if isinstance(p, NodeCreated):
            key = (ev.tree_id, p.node_id)
            if facts(key) is not None:
                raise fail(f"node_id {p.node_id!r} is already used in tree {ev.tree_id!r}",
                           "payload.node_id")
            if p.parent_id is None:
                if ev.tree_id in roots:
                    raise fail(f"tree {ev.tree_id!r} already has a root", "payload.parent_id")
                roots.add(ev.tree_id)
                added[key] = NodeFacts(True, False, None)
                continue
            parent = facts((ev.tree_id, p.parent_id))
            if parent is None:
                raise fail(f"parent {p.parent_id!r} is not in tree {ev.tree_id!r}",
                           "payload.parent_id")
            if parent.done:
                raise fail(f"parent {p.parent_id!r} ended the episode (done); it can have "
                           "no children", "payload.parent_id")
            added[key] = NodeFacts(False, False, None)
        elif isinstance(p, ActionExecuted):
            key = (ev.tree_id, p.node_id)
            node = facts(key)
            if node is None:
                raise fail(f"node {p.node_id!r} is not in tree {ev.tree_id!r}",
                           "payload.node_id")
            if node.is_root:
                raise fail("the root has no action to execute", "payload.node_id")
            if node.executed:
                raise fail(f"node {p.node_id!r} was already executed", "payload.node_id")
            added[key] = NodeFacts(False, True, p.done)
        elif isinstance(p, ScoreAssigned):
            if facts((ev.tree_id, p.node_id)) is None:
                raise fail(f"node {p.node_id!r} is not in tree {ev.tree_id!r}",
                           "payload.node_id")
        elif ev.tree_id not in roots:
            raise fail(f"tree {ev.tree_id!r} does not exist", "tree_id")
