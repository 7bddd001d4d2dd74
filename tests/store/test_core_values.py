"""Value propagation: leaf scores by source and recency, means and maxes up the tree."""

from __future__ import annotations

import math

import pytest

from branchpoint.store.tree import fold
from branchpoint.store.values import (
    Estimate,
    ValueOptions,
    draw_count,
    node_estimates,
    node_values,
    own_score,
)
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


def test_by_default_human_outranks_checker_outranks_judge_outranks_the_rest():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.3, "checker").score("a", 0.6, "judge")
    b.step("h", "r").score("h", 0.9, "human").score("h", 0.3, "checker")
    b.step("j", "r").score("j", 0.1, "lint").score("j", 0.4, "judge").score("j", 0.2, "x")
    b.step("o", "r").score("o", 0.1, "lint").score("o", 0.5, "x").score("o", 0.2, "lint")
    values = node_values(graph_of(b))
    assert values["a"] == 0.3  # the judge came later, the checker still counts
    assert values["h"] == 0.9
    assert values["j"] == 0.4
    assert values["o"] == 0.2  # neither: the most recent of the others


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


def test_a_childs_draw_count_weights_the_mean():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 1.0)
    b.step("b", "r").score("b", 0.0)
    g = graph_of(b)
    assert node_values(g)["r"] == 0.5
    assert node_values(g, counts={"a": 3})["r"] == 0.75  # a drawn three times, b once
    est = node_estimates(g, counts={"a": 3})["r"]
    assert est.leaves == 2  # two rollouts were scored, whatever the draws


def test_a_discount_makes_the_shorter_of_two_successes_worth_more():
    b = TreeBuilder().root()
    b.step("short", "r").score("short", 1.0)
    b.step("long", "r").step("long1", "long").score("long1", 1.0)
    values = node_values(graph_of(b), discount=0.9)
    assert values["short"] == 1.0 and values["long1"] == 1.0  # a leaf's own score stays
    assert values["long"] == pytest.approx(0.9)
    assert values["r"] == pytest.approx(0.9 * (1.0 + 0.9) / 2)
    assert node_values(graph_of(b), discount=0.9, reduce="max")["r"] == pytest.approx(0.9)


def test_binary_counts_a_checker_score_only_when_it_is_full():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.75)
    b.step("c", "r").score("c", 1.0)
    b.step("j", "r").score("j", 0.75, "judge")
    values = node_values(graph_of(b), binary=True)
    assert (values["a"], values["c"], values["j"]) == (0.0, 1.0, 0.75)


def test_the_standard_error_is_bounded_for_few_leaves_and_shrinks_with_more():
    b = TreeBuilder().root()
    b.step("one", "r").score("one", 1.0)
    b.step("four", "r")
    for i in range(4):
        b.step(f"f{i}", "four").score(f"f{i}", 1.0)
    b.step("mixed", "r")
    for i, x in enumerate([1.0, 0.0, 1.0, 0.0]):
        b.step(f"m{i}", "mixed").score(f"m{i}", x)
    est = node_estimates(graph_of(b))
    assert est["one"] == Estimate(1.0, 1, 0.5)  # one rollout: the 1/4 bound
    assert est["four"].leaves == 4
    assert est["four"].se == pytest.approx(math.sqrt((1 / 16) / 4))  # 1/(4n), /n
    assert est["mixed"].se == pytest.approx(math.sqrt(0.25 / 4))  # capped at 1/4
    assert est["r"].leaves == 9


def test_under_max_the_evidence_is_the_best_childs():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.2)
    b.step("b", "r")
    b.step("b1", "b").score("b1", 0.9)
    b.step("b2", "b").score("b2", 0.9)
    est = node_estimates(graph_of(b), ValueOptions(reduce="max", discount=0.5))
    assert est["r"].value == pytest.approx(0.5 * 0.5 * 0.9)  # b1 two steps down
    assert est["r"].leaves == 1  # b1, the first of the best
    assert est["r"].se == pytest.approx(0.5 * est["b"].se)


def test_bad_value_options_are_refused_naming_the_option():
    g = graph_of(two_step_tree())
    for bad, word in [(ValueOptions(discount=0.0), "discount"),
                      (ValueOptions(discount=1.5), "discount"),
                      (ValueOptions(sources=()), "sources")]:
        with pytest.raises(ValueError, match=word):
            node_estimates(g, bad)


def test_draw_count_reads_a_positive_integer_count_or_one():
    assert draw_count({"count": 3}) == 3
    for bad in [None, {}, {"count": 0}, {"count": True}, {"count": "2"}, {"count": 1.5}]:
        assert draw_count(bad) == 1
