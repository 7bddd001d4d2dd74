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
- ``action_executed``: for an existing, non-root node that has not run yet; ``done`` true
  only for a node without children (whichever of the two came first).
- ``score_assigned``: for an existing node.
- ``tree_closed``: for an existing tree.

Re-sent events (an ``event_id`` already stored, or twice in one batch) are dropped when the
content is identical and refused with :class:`ConflictingEvent` when it is not.

A batch is judged whole: every refused event is reported (see :class:`Validator`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from branchpoint.store.errors import ConflictingEvent, InvalidEvent, Problem
from branchpoint.store.events import (
    ActionExecuted,
    Event,
    NodeCreated,
    ScoreAssigned,
    digest,
    normalize,
    normalize_canonical,
)

__all__ = ["Known", "NodeFacts", "Validator", "check_batch", "drop_duplicates", "lookups"]

NodeKey = tuple[str, str]  # (tree_id, node_id)


class NodeFacts(NamedTuple):
    """What the rules need to know of a node."""

    is_root: bool
    executed: bool
    done: bool | None
    has_children: bool = False


class Validator:
    """The rules' view of one batch: the stored facts learnt so far and what the batch
    has added, chunk after chunk. One per batch (per transaction).

    Refusals are collected, not raised one by one: every event that breaks a rule becomes
    a :class:`~branchpoint.store.errors.Problem`, and so does every event refused only
    because one it depends on was (a child of a refused node, the execution or score of a
    refused node, any event of a tree whose root was refused). A refused event is not
    added to what the rules know. :meth:`raise_if_refused` ends the batch with one error
    carrying them all; an adapter stores nothing once :attr:`problems` is not empty.
    """

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}  # event_id -> digest of each event kept so far
        self.roots: set[str] = set()  # trees with a root, stored or added
        self.stored_roots: set[str] = set()  # trees whose root was stored before the batch
        self.nodes: dict[NodeKey, NodeFacts] = {}  # stored (as learnt) or added
        self.children_known: set[NodeKey] = set()  # nodes whose stored children were asked
        self.problems: list[Problem] = []
        self._refused_nodes: dict[NodeKey, str] = {}  # node -> event_id of its refusal
        self._refused_roots: dict[str, str] = {}  # tree -> event_id of its refused root

    # -- what to look up --

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

    def ending(self, events: Sequence[Event]) -> set[NodeKey]:
        """Nodes that an execution in ``events`` marks done and whose stored children the
        rules do not know yet (a node with children cannot end the episode)."""
        return {(ev.tree_id, ev.payload.node_id) for ev in events
                if isinstance(ev.payload, ActionExecuted) and ev.payload.done
                and (ev.tree_id, ev.payload.node_id) not in self.children_known}

    def learn(self, roots: Iterable[str], nodes: Mapping[NodeKey, NodeFacts],
              children: tuple[Iterable[NodeKey], Iterable[NodeKey]] = ((), ())) -> None:
        """Take in stored facts: trees that have a root, and nodes; ``children`` is
        ``(asked, found)``: the nodes whose stored children were looked up, and those of
        them that have some. What the batch added itself is kept where the two overlap
        (storage may already show an earlier chunk)."""
        roots = set(roots)
        self.stored_roots |= roots
        self.roots |= roots
        for key, facts in nodes.items():
            self.nodes.setdefault(key, facts)
        asked, found = children
        self.children_known.update(asked)
        for key in found:
            known = self.nodes.get(key)
            if known is not None:
                self.nodes[key] = known._replace(has_children=True)

    # -- judging --

    def refuse(self, ev: Event | None, index: int, line: int, exc: InvalidEvent) -> None:
        """Record that an event did not even pass its own checks (it does not normalize);
        what depends on it will be refused with it."""
        self.problems.append(Problem(exc.reason, index, line, exc.event_id, exc.field,
                                     conflict=isinstance(exc, ConflictingEvent)))
        if ev is not None:
            self._mark(ev)

    def _mark(self, ev: Event) -> None:
        p = ev.payload
        tree_id, node_id = getattr(ev, "tree_id", None), getattr(p, "node_id", None)
        if not (isinstance(p, NodeCreated) and isinstance(tree_id, str)
                and isinstance(node_id, str)):
            return
        self._refused_nodes.setdefault((tree_id, node_id), ev.event_id)
        if p.parent_id is None:
            self._refused_roots.setdefault(tree_id, ev.event_id)

    def normalized(self, events: Sequence[Event], lines: Sequence[int],
                   indices: Sequence[int]) -> tuple[list[Event], list[int], list[int]]:
        """:func:`~branchpoint.store.events.normalize` each event; those that fail are
        refused here. Returns the normalized events with their lines and indices."""
        out: list[Event] = []
        kept_lines: list[int] = []
        kept_indices: list[int] = []
        for ev, line, index in zip(events, lines, indices, strict=True):
            try:
                out.append(normalize(ev))
            except InvalidEvent as exc:
                self.refuse(ev, index, line, exc)
                continue
            kept_lines.append(line)
            kept_indices.append(index)
        return out, kept_lines, kept_indices

    def prepared(self, events: Sequence[Event], lines: Sequence[int], indices: Sequence[int]
                 ) -> tuple[list[Event], list[int], list[int], list[bytes]]:
        """:meth:`normalized` for a writer that stores the events: with each kept event's
        canonical payload (see :func:`~branchpoint.store.events.normalize_canonical`)."""
        out: list[Event] = []
        payloads: list[bytes] = []
        kept_lines: list[int] = []
        kept_indices: list[int] = []
        for ev, line, index in zip(events, lines, indices, strict=True):
            try:
                normal, payload = normalize_canonical(ev)
            except InvalidEvent as exc:
                self.refuse(ev, index, line, exc)
                continue
            out.append(normal)
            payloads.append(payload)
            kept_lines.append(line)
            kept_indices.append(index)
        return out, kept_lines, kept_indices, payloads

    def drop_duplicates(self, events: Sequence[Event], stored_digests: Mapping[str, str],
                        lines: Sequence[int], digests: Sequence[str] | None = None,
                        indices: Sequence[int] | None = None) -> Sequence[int]:
        """Find events stored before the batch (``event_id -> digest``) or repeated in it;
        ``digests`` are the events' own, when the caller has computed them. An
        ``event_id`` seen before with different content is refused as a conflict.

        Returns the positions in ``events`` of those left to store.
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
                self.problems.append(Problem(
                    f"event_id is {where} with different content",
                    indices[i] if indices is not None else None, lines[i], ev.event_id,
                    conflict=True))
        return kept

    def check(self, events: Sequence[Event], lines: Sequence[int],
              indices: Sequence[int] | None = None) -> None:
        """Check events (already free of duplicates) against what is known, and add those
        that pass to it; refusals go to :attr:`problems`."""
        for i, ev in enumerate(events):
            p = ev.payload
            if isinstance(p, NodeCreated):
                refusal = self._created(ev.tree_id, p)
            elif isinstance(p, ActionExecuted):
                refusal = self._executed(ev.tree_id, p)
            elif isinstance(p, ScoreAssigned):
                key = (ev.tree_id, p.node_id)
                refusal = None if key in self.nodes else (
                    f"node {p.node_id!r} is not in tree {ev.tree_id!r}", "payload.node_id",
                    self._refused_nodes.get(key))
            elif ev.tree_id in self.roots:
                refusal = None
            else:
                refusal = (f"tree {ev.tree_id!r} does not exist", "tree_id",
                           self._refused_roots.get(ev.tree_id))
            if refusal is None:
                continue
            reason, field, depends_on = refusal
            if depends_on is not None:
                reason = f"depends on event {depends_on!r}, which was refused ({reason})"
            self.problems.append(Problem(reason, indices[i] if indices is not None else None,
                                         lines[i], ev.event_id, field,
                                         depends_on=depends_on))
            self._mark(ev)

    def _created(self, tree: str, p: NodeCreated) -> tuple[str, str, str | None] | None:
        nodes = self.nodes
        key = (tree, p.node_id)
        if key in nodes:
            return f"node_id {p.node_id!r} is already used in tree {tree!r}", \
                "payload.node_id", None
        if p.parent_id is None:
            if tree in self.roots:
                return f"tree {tree!r} already has a root", "payload.parent_id", None
            self.roots.add(tree)
            nodes[key] = NodeFacts(True, False, None)
            return None
        parent_key = (tree, p.parent_id)
        parent = nodes.get(parent_key)
        if parent is None:
            return (f"parent {p.parent_id!r} is not in tree {tree!r}", "payload.parent_id",
                    self._refused_nodes.get(parent_key))
        if parent.done:
            return (f"parent {p.parent_id!r} ended the episode (done); it can have no "
                    "children", "payload.parent_id", None)
        nodes[key] = NodeFacts(False, False, None)
        if not parent.has_children:  # (a NamedTuple call: faster than _replace)
            nodes[parent_key] = NodeFacts(parent.is_root, parent.executed, parent.done, True)
        return None

    def _executed(self, tree: str, p: ActionExecuted) -> tuple[str, str, str | None] | None:
        key = (tree, p.node_id)
        node = self.nodes.get(key)
        if node is None:
            return (f"node {p.node_id!r} is not in tree {tree!r}", "payload.node_id",
                    self._refused_nodes.get(key))
        if node.is_root:
            return "the root has no action to execute", "payload.node_id", None
        if node.executed:
            return f"node {p.node_id!r} was already executed", "payload.node_id", None
        if p.done and node.has_children:
            return (f"node {p.node_id!r} already has children; it cannot end the episode "
                    "(done)", "payload.done", None)
        self.nodes[key] = NodeFacts(False, True, p.done, node.has_children)
        return None

    def raise_if_refused(self) -> None:
        """End the batch: raise if any event was refused.

        Raises:
            ConflictingEvent: every event refused on its own is a conflict.
            InvalidEvent: any other refusal; ``problems`` lists them all.
        """
        if self.problems:
            # in batch order (events that did not normalize were found first)
            raise InvalidEvent.of_batch(sorted(
                self.problems, key=lambda p: -1 if p.index is None else p.index))


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
    rules = Validator()
    kept = rules.drop_duplicates(events, stored_digests, lines)
    rules.raise_if_refused()
    return [events[i] for i in kept], [lines[i] for i in kept]


def check_batch(events: Sequence[Event], known: Known,
                lines: Sequence[int] | None = None) -> None:
    """:meth:`Validator.check` for a whole batch (already free of duplicates).

    Raises:
        InvalidEvent: naming the first offending event's line, id and field, with every
            refused event in ``problems``.
    """
    v = Validator()
    v.learn(known.roots, known.nodes)
    v.check(events, _lines(events, lines))
    v.raise_if_refused()
