"""Value propagation: leaf scores by source and recency, means and maxes up the tree."""

from __future__ import annotations

import pytest

from branchpoint.store.tree import fold
from branchpoint.store.values import node_values, own_score
from tests.store.builders import TreeBuilder, graph_of, sequenced, two_step_tree


def test_an_inner_node_is_the_mean_of_its_valued_children():
    values = node_values(graph_of(two_step_tree()))
    assert values == {"a1": 1.0, "a2": 0.0, "a": 0.5, "b": 0.0, "r": 0.25}


def test_max_takes_the_best_child_instead_of_the_mean():
    values = node_values(graph_of(two_step_tree()), reduce="max")
    assert values["a"] == 1.0
    assert values["r"] == 1.0


def test_an_unscored_subtree_counts_for_nothing_above_it():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.8)
    b.step("b", "r").step("b1", "b")  # drawn and run, never scored
    values = node_values(graph_of(b))
    assert "b" not in values and "b1" not in values
    assert values["r"] == 0.8


def test_an_inner_nodes_own_score_does_not_override_its_children():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.9)
    b.step("a1", "a").score("a1", 0.2)
    assert node_values(graph_of(b))["a"] == 0.2


def test_a_node_whose_children_are_all_unscored_keeps_its_own_score():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.9)
    b.node("a1", "a")  # a candidate drawn, not yet run or scored
    assert node_values(graph_of(b))["a"] == 0.9


def test_the_latest_score_of_a_source_counts():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.1).score("a", 0.7)
    assert node_values(graph_of(b))["a"] == 0.7


def test_without_judge_weight_the_most_recent_source_counts():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.3, "checker").score("a", 0.6, "judge")
    assert node_values(graph_of(b))["a"] == 0.6


def test_sources_restrict_which_scores_a_leaf_may_take():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.3, "checker").score("a", 0.6, "judge")
    b.step("c", "r").score("c", 0.5, "judge")
    values = node_values(graph_of(b), sources={"checker"})
    assert values["a"] == 0.3
    assert "c" not in values


def test_judge_weight_blends_checker_and_judge():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.2, "checker").score("a", 1.0, "judge")
    b.score("a", 0.0, "human")
    b.step("c", "r").score("c", 0.4, "judge")
    b.step("d", "r").score("d", 0.6, "human")
    values = node_values(graph_of(b), judge_weight=0.25)
    assert values["a"] == pytest.approx(0.75 * 0.2 + 0.25 * 1.0)
    assert values["c"] == 0.4  # only the judge exists
    assert "d" not in values  # neither checker nor judge


def test_own_score_ignores_an_older_score_folded_later():
    assert own_score({"checker": (5, 0.5), "judge": (3, 0.9)}) == 0.5


def test_a_bad_judge_weight_or_reduce_is_refused():
    g = graph_of(two_step_tree())
    with pytest.raises(ValueError, match="judge weight"):
        node_values(g, judge_weight=1.5)
    with pytest.raises(ValueError, match="reduce"):
        node_values(g, reduce="median")  # type: ignore[arg-type]


def test_a_deep_chain_is_valued_without_recursion():
    b = TreeBuilder().root()
    parent = "r"
    for i in range(3000):
        b.node(f"n{i}", parent)
        parent = f"n{i}"
    b.score(parent, 0.5)
    values = node_values(fold("t1", (e.head() for e in sequenced(b.events))))
    assert values["r"] == 0.5 and len(values) == 3001
