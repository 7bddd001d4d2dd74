"""Folding a tree's events into a ``networkx.DiGraph``.

The fold is incremental: :func:`apply` takes one :class:`EventHead` and updates a graph
already built, so a reader that follows the log (``read_after``) keeps its trees current
without rebuilding them. The graph holds ids and scalars only; messages stay in the log.

Graph attributes: ``tree_id``, ``root`` (node id or None), ``closed`` (latest reason or
None), ``last_seq``. Node attributes: ``seq`` (of its ``node_created``), ``depth``,
``executed``, ``done`` (None until executed or when unknown) and ``scores``
(``{source: (seq, value)}``, the latest per source).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import networkx as nx

from branchpoint.store.errors import InvalidEvent
from branchpoint.store.events import EventHead

__all__ = ["apply", "fold", "new_tree"]


def new_tree(tree_id: str) -> nx.DiGraph:
    """An empty tree graph."""
    return nx.DiGraph(tree_id=tree_id, root=None, closed=None, last_seq=0)


def _node_created(g: nx.DiGraph, h: EventHead) -> None:
    if h.parent_id is None:
        g.graph["root"] = h.node_id
        depth = 0
    else:
        depth = g.nodes[h.parent_id]["depth"] + 1
    g.add_node(h.node_id, seq=h.seq, depth=depth, executed=False, done=None, scores={})
    if h.parent_id is not None:
        g.add_edge(h.parent_id, h.node_id)


def _action_executed(g: nx.DiGraph, h: EventHead) -> None:
    attrs = g.nodes[h.node_id]
    attrs["executed"] = True
    attrs["done"] = h.done


def _score_assigned(g: nx.DiGraph, h: EventHead) -> None:
    scores = g.nodes[h.node_id]["scores"]
    before = scores.get(h.source)
    if before is None or before[0] < h.seq:
        scores[h.source] = (h.seq, h.value)


def _tree_closed(g: nx.DiGraph, h: EventHead) -> None:
    g.graph["closed"] = h.parent_id  # heads carry the close reason in this slot


_APPLY: dict[str, Callable[[nx.DiGraph, EventHead], None]] = {
    "node_created": _node_created,
    "action_executed": _action_executed,
    "score_assigned": _score_assigned,
    "tree_closed": _tree_closed,
}


def apply(g: nx.DiGraph, head: EventHead) -> None:
    """Apply one event to a tree graph.

    Raises:
        InvalidEvent: an unknown event type, or an event referring to a node the graph
            does not hold (the log was read out of order or from another tree).
    """
    handler = _APPLY.get(head.type)
    if handler is None:
        raise InvalidEvent(f"cannot fold unknown event type {head.type!r}", field="type")
    try:
        handler(g, head)
    except KeyError as exc:
        raise InvalidEvent(f"event refers to node {exc.args[0]!r}, not in the tree",
                           field="payload.node_id") from None
    g.graph["last_seq"] = max(g.graph["last_seq"], head.seq)


def fold(tree_id: str, heads: Iterable[EventHead], into: nx.DiGraph | None = None
         ) -> nx.DiGraph:
    """Fold ``heads`` (in ``seq`` order) into ``into``, or into a new graph."""
    g = into if into is not None else new_tree(tree_id)
    for h in heads:
        apply(g, h)
    return g
