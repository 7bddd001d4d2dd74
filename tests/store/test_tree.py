"""The fold into networkx graphs: what it builds is an ordinary DiGraph."""

from __future__ import annotations

import networkx as nx
import pytest

from branchpoint.store.errors import InvalidEvent
from branchpoint.store.events import EventHead
from branchpoint.store.tree import apply, fold, new_tree

HEADS = [
    EventHead(1, "node_created", "r", None, None, None, None, None),
    EventHead(2, "node_created", "a", "r", None, None, None, None),
    EventHead(3, "action_executed", "a", None, False, None, None, None),
    EventHead(4, "node_created", "b", "r", None, None, None, None),
    EventHead(5, "node_created", "a1", "a", None, None, None, None),
    EventHead(6, "action_executed", "a1", None, True, None, None, None),
    EventHead(7, "score_assigned", "a1", None, None, 0.5, "checker", None),
    EventHead(8, "score_assigned", "a1", None, None, 0.75, "checker", None),
    EventHead(9, "score_assigned", "b", None, None, 0.2, "judge", None),
    EventHead(10, "tree_closed", None, None, None, None, None, "done"),
]


def by_public_api() -> nx.DiGraph:
    g = nx.DiGraph(tree_id="t", root="r", closed="done", last_seq=10)
    g.add_node("r", seq=1, depth=0, executed=False, done=None, scores={})
    g.add_node("a", seq=2, depth=1, executed=True, done=False, scores={})
    g.add_node("b", seq=4, depth=1, executed=False, done=None, scores={"judge": (9, 0.2)})
    g.add_node("a1", seq=5, depth=2, executed=True, done=True,
               scores={"checker": (8, 0.75)})
    g.add_edges_from([("r", "a"), ("r", "b"), ("a", "a1")])
    return g


def test_the_fold_builds_the_graph_networkx_would():
    g = fold("t", HEADS)
    want = by_public_api()
    assert nx.utils.graphs_equal(g, want)
    assert dict(g.nodes(data=True)) == dict(want.nodes(data=True))
    assert next(iter(nx.topological_sort(g))) == "r"
    assert nx.descendants(g, "a") == {"a1"}
    assert list(g.predecessors("a1")) == ["a"]


def test_folding_in_parts_equals_folding_at_once():
    g = new_tree("t")
    fold("t", HEADS[:4], into=g)
    for h in HEADS[4:]:
        apply(g, h)
    assert nx.utils.graphs_equal(g, fold("t", HEADS))
    assert g.graph == fold("t", HEADS).graph


def test_plain_tuples_fold_like_event_heads():
    assert nx.utils.graphs_equal(fold("t", [tuple(h) for h in HEADS]), fold("t", HEADS))


def test_an_unknown_event_type_is_an_error_not_a_skip():
    with pytest.raises(InvalidEvent, match="unknown event type"):
        fold("t", [*HEADS[:1], EventHead(2, "node_deleted", "r", None, None, None, None, None)])


def test_an_event_for_a_missing_node_is_an_error():
    with pytest.raises(InvalidEvent, match="'zz'"):
        fold("t", [*HEADS[:1], EventHead(2, "node_created", "x", "zz", None, None, None, None)])
    with pytest.raises(InvalidEvent, match="'x'"):
        fold("t", [*HEADS[:1], EventHead(2, "score_assigned", "x", None, None, 1.0, "c", None)])


def test_a_node_created_twice_is_an_error():
    with pytest.raises(InvalidEvent, match="twice"):
        fold("t", [*HEADS[:2], EventHead(3, "node_created", "a", "r", None, None, None, None)])
