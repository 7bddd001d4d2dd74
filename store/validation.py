"""Rules that span events: what a batch may append given what the log already holds.

Pure code. A :class:`Validator` follows one batch, which may arrive in chunks (an atomic
append streamed through one transaction): an adapter asks it which stored facts a chunk
needs (:meth:`Validator.unknown`), fetches them with a few indexed queries, hands them over
(:meth:`Validator.learn`), then drops re-sent events (:meth:`Validator.drop_duplicates`) and
checks the rest (:meth:`Validator.check`). The validator keeps what earlier chunks added,
so a batch is judged the same however it is cut. The in-memory log, the SQL log and the
SDK's plain ``sqlite3`` writer all run this same code, so every writer refuses the same
things with the same message.

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

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from branchpoint.store.errors import ConflictingEvent, InvalidEvent
from branchpoint.store.events import ActionExecuted, Event, NodeCreated, ScoreAssigned, digest

__all__ = ["Known", "NodeFacts", "Validator", "check_batch", "drop_duplicates", "lookups"]

NodeKey = tuple[str, str]  # (tree_id, node_id)


class NodeFacts(NamedTuple):
    """What the rules need to know of a node."""

    is_root: bool
    executed: bool
    done: bool | None


class Validator:
    """The rules' view of one batch: the stored facts learnt so far and what the batch
    has added, chunk after chunk. One per batch (per transaction); after it raises, the
    batch is refused and the validator is done with.
    """

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}  # event_id -> digest of each event kept so far
        self.roots: set[str] = set()  # trees with a root, stored or added
        self.stored_roots: set[str] = set()  # trees whose root was stored before the batch
        self.nodes: dict[NodeKey, NodeFacts] = {}  # stored (as learnt) or added

    def unknown(self, events: Sequence[Event]) -> tuple[list[str], set[str], set[NodeKey]]:
        """What stored facts the rules may need for ``events`` and do not know yet: event
        ids (for their digests), tree ids (for their roots), ``(tree_id, node_id)`` keys.
        Only keys of trees with a stored root can be stored nodes."""
        ids = [e.event_id for e in events if e.event_id not in self.digests]
        trees: set[str] = set()
        keys: set[NodeKey] = set()
        for ev in events:
            if ev.tree_id not in self.roots:
                trees.add(ev.tree_id)
            p = ev.payload
            if isinstance(p, NodeCreated):
                keys.add((ev.tree_id, p.node_id))
                if p.parent_id is not None:
                    keys.add((ev.tree_id, p.parent_id))
            elif isinstance(p, ActionExecuted | ScoreAssigned):
                keys.add((ev.tree_id, p.node_id))
        return ids, trees, {k for k in keys if k not in self.nodes}

    def learn(self, roots: Iterable[str], nodes: Mapping[NodeKey, NodeFacts]) -> None:
        """Take in stored facts: trees that have a root, and nodes. What the batch added
        itself is kept where the two overlap (storage may already show an earlier chunk)."""
        roots = set(roots)
        self.stored_roots |= roots
        self.roots |= roots
        for key, facts in nodes.items():
            self.nodes.setdefault(key, facts)

    def drop_duplicates(self, events: Sequence[Event], stored_digests: Mapping[str, str],
                        lines: Sequence[int], digests: Sequence[str] | None = None
                        ) -> Sequence[int]:
        """Find events stored before the batch (``event_id -> digest``) or repeated in it;
        ``digests`` are the events' own, when the caller has computed them.

        Returns the positions in ``events`` of those left to store.

        Raises:
            ConflictingEvent: an ``event_id`` seen before with different content.
        """
        seen = self.digests
        ids = [e.event_id for e in events]
        if not stored_digests and seen.keys().isdisjoint(ids) and len(set(ids)) == len(ids):
            # nothing is re-sent (the common case): no digest to compare
            if digests is None:
                digests = [digest(e) for e in events]
            seen.update(zip(ids, digests, strict=True))
            return range(len(events))
        kept: list[int] = []
        for i, ev in enumerate(events):
            d = digest(ev) if digests is None else digests[i]
            before = seen.get(ev.event_id)
            if before is None:
                before = stored_digests.get(ev.event_id)
                if before is None:
                    seen[ev.event_id] = d
                    kept.append(i)
                    continue
                where = "already stored"
            else:
                where = "earlier in this batch"
            if before != d:
                raise ConflictingEvent(f"event_id is {where} with different content",
                                       line=lines[i], event_id=ev.event_id)
        return kept

    def check(self, events: Sequence[Event], lines: Sequence[int]) -> None:
        """Check events (already free of duplicates) against what is known, and add them
        to it.

        Raises:
            InvalidEvent: naming the first offending event's line, id and field.
        """
        roots, nodes = self.roots, self.nodes
        for i, ev in enumerate(events):

            def fail(reason: str, field: str, line: int = lines[i], ev: Event = ev
                     ) -> InvalidEvent:
                return InvalidEvent(reason, line=line, event_id=ev.event_id, field=field)

            p = ev.payload
            if isinstance(p, NodeCreated):
                key = (ev.tree_id, p.node_id)
                if key in nodes:
                    raise fail(f"node_id {p.node_id!r} is already used in tree "
                               f"{ev.tree_id!r}", "payload.node_id")
                if p.parent_id is None:
                    if ev.tree_id in roots:
                        raise fail(f"tree {ev.tree_id!r} already has a root",
                                   "payload.parent_id")
                    roots.add(ev.tree_id)
                    nodes[key] = NodeFacts(True, False, None)
                    continue
                parent = nodes.get((ev.tree_id, p.parent_id))
                if parent is None:
                    raise fail(f"parent {p.parent_id!r} is not in tree {ev.tree_id!r}",
                               "payload.parent_id")
                if parent.done:
                    raise fail(f"parent {p.parent_id!r} ended the episode (done); it can "
                               "have no children", "payload.parent_id")
                nodes[key] = NodeFacts(False, False, None)
            elif isinstance(p, ActionExecuted):
                key = (ev.tree_id, p.node_id)
                node = nodes.get(key)
                if node is None:
                    raise fail(f"node {p.node_id!r} is not in tree {ev.tree_id!r}",
                               "payload.node_id")
                if node.is_root:
                    raise fail("the root has no action to execute", "payload.node_id")
                if node.executed:
                    raise fail(f"node {p.node_id!r} was already executed", "payload.node_id")
                nodes[key] = NodeFacts(False, True, p.done)
            elif isinstance(p, ScoreAssigned):
                if (ev.tree_id, p.node_id) not in nodes:
                    raise fail(f"node {p.node_id!r} is not in tree {ev.tree_id!r}",
                               "payload.node_id")
            elif ev.tree_id not in roots:
                raise fail(f"tree {ev.tree_id!r} does not exist", "tree_id")


# --- one batch at once ---------------------------------------------------------------------
# The same rules for a batch that arrives whole, in the plain form schema.sql describes for
# a writer that has nothing but Python's sqlite3 module.


class Known(NamedTuple):
    """Stored facts for the trees and nodes a batch refers to."""

    roots: frozenset[str]
    nodes: Mapping[NodeKey, NodeFacts]


def lookups(events: Sequence[Event]) -> tuple[set[str], set[NodeKey]]:
    """The tree ids and ``(tree_id, node_id)`` keys whose stored facts the rules need."""
    _, trees, keys = Validator().unknown(events)
    return trees, keys


def _lines(events: Sequence[Event], lines: Sequence[int] | None) -> Sequence[int]:
    return range(1, len(events) + 1) if lines is None else lines


def drop_duplicates(events: Sequence[Event], stored_digests: Mapping[str, str],
                    lines: Sequence[int] | None = None) -> tuple[list[Event], list[int]]:
    """:meth:`Validator.drop_duplicates` for a whole batch (lines default to 1-based).

    Raises:
        ConflictingEvent: an ``event_id`` seen before with different content.
    """
    lines = _lines(events, lines)
    kept = Validator().drop_duplicates(events, stored_digests, lines)
    return [events[i] for i in kept], [lines[i] for i in kept]


def check_batch(events: Sequence[Event], known: Known,
                lines: Sequence[int] | None = None) -> None:
    """:meth:`Validator.check` for a whole batch (already free of duplicates).

    Raises:
        InvalidEvent: naming the first offending event's line, id and field.
    """
    v = Validator()
    v.learn(known.roots, known.nodes)
    v.check(events, _lines(events, lines))
