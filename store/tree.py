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

from collections.abc import Iterable

import networkx as nx

from branchpoint.store.errors import InvalidEvent
from branchpoint.store.events import EventHead, HeadRow

__all__ = ["apply", "fold", "new_tree"]


def new_tree(tree_id: str) -> nx.DiGraph:
    """An empty tree graph."""
    return nx.DiGraph(tree_id=tree_id, root=None, closed=None, last_seq=0)


def apply(g: nx.DiGraph, head: EventHead | HeadRow) -> None:
    """Apply one event to a tree graph.

    Raises:
        InvalidEvent: an unknown event type, or an event referring to a node the graph
            does not hold (the log was read out of order or from another tree).
    """
    fold(g.graph["tree_id"], (head,), into=g)


def fold(tree_id: str, heads: Iterable[EventHead | HeadRow], into: nx.DiGraph | None = None
         ) -> nx.DiGraph:
    """Fold ``heads`` (in ``seq`` order) into ``into``, or into a new graph.

    The one implementation of the fold (:func:`apply` is a fold of one event). It runs
    once per stored event of every tree read in bulk, so the dispatch on the event type is
    inline and nodes and edges go straight into the three dicts a ``networkx.DiGraph``
    is made of (``_node``, ``_succ``, ``_pred``: the data structure networkx documents
    for subclasses) rather than through ``add_node``/``add_edge``, which re-check and
    clear networkx's cache on every call; the cache is cleared once at the end instead.
    ``into`` must therefore be a plain ``DiGraph`` such as :func:`new_tree` makes.

    Raises:
        InvalidEvent: as :func:`apply`, or a node created twice; events before the
            offending one stay applied.
    """
    g = into if into is not None else new_tree(tree_id)
    graph = g.graph
    attrs, succ, pred = g._node, g._succ, g._pred
    last = graph["last_seq"]
    try:
        for seq, type_, node, parent, done, value, source, reason in heads:
            if type_ == "score_assigned":
                scores = attrs[node]["scores"]
                before = scores.get(source)
                if before is None or before[0] < seq:
                    scores[source] = (seq, value)
            elif type_ == "node_created":
                if node in succ or node is None:
                    raise InvalidEvent(f"node {node!r} is created twice, or has no id",
                                       field="payload.node_id")
                if parent is None:
                    graph["root"] = node
                    depth = 0
                else:
                    depth = attrs[parent]["depth"] + 1
                succ[node] = {}
                pred[node] = {}
                attrs[node] = {"seq": seq, "depth": depth, "executed": False, "done": None,
                               "scores": {}}
                if parent is not None:
                    succ[parent][node] = pred[node][parent] = {}
            elif type_ == "action_executed":
                a = attrs[node]
                a["executed"] = True
                a["done"] = done
            elif type_ == "tree_closed":
                graph["closed"] = reason
            else:
                raise InvalidEvent(f"cannot fold unknown event type {type_!r}", field="type")
            if seq > last:  # noqa: PLR1730 - cheaper than a max() call per event
                last = seq
    except KeyError as exc:
        raise InvalidEvent(f"event refers to node {exc.args[0]!r}, not in the tree",
                           field="payload.node_id") from None
    finally:
        graph["last_seq"] = last
        nx._clear_cache(g)
    return g
