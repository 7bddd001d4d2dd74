"""Pair extraction: best against worst at every branching point, and why points drop."""

from __future__ import annotations

import math

import pytest

from branchpoint.store.pairs import (
    DEFAULT_MARGIN,
    Pair,
    extract_pairs,
    judge_pairs,
    mistake_label,
    same_action,
    scan,
)
from branchpoint.store.values import node_estimates, node_values
from tests.store.builders import TreeBuilder, action, call, graph_of, two_step_tree


def actions_of(b: TreeBuilder) -> dict:
    return {e.payload.node_id: e.payload.action for e in b.events
            if e.type == "node_created" and e.payload.action is not None}


def pairs_of(b: TreeBuilder, **kw):
    g = graph_of(b)
    return extract_pairs(g, node_values(g), actions_of(b), **kw)


def test_every_branching_point_pairs_its_best_child_against_its_worst():
    pairs, counts = pairs_of(two_step_tree())
    assert pairs == [Pair("r", "a", "b", 0.5, 0.0), Pair("a", "a1", "a2", 1.0, 0.0)]
    assert (counts.branching_points, counts.pairs) == (2, 2)


def test_the_default_margin_is_a_tenth():
    assert DEFAULT_MARGIN == 0.1


def test_equal_values_drop_the_point_as_a_tie():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.5)
    b.step("b", "r").score("b", 0.5)
    pairs, counts = pairs_of(b)
    assert pairs == []
    assert (counts.tie, counts.under_margin, counts.identical) == (1, 0, 0)


def test_values_closer_than_the_margin_drop_the_point():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.55)
    b.step("b", "r").score("b", 0.5)
    pairs, counts = pairs_of(b)
    assert pairs == [] and counts.under_margin == 1
    pairs, _ = pairs_of(b, margin=0.05)
    assert [p.chosen for p in pairs] == ["a"]


def test_a_difference_equal_to_the_margin_makes_a_pair_despite_float_rounding():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.3)
    b.step("b", "r").score("b", 0.2)
    assert 0.3 - 0.2 < 0.1
    pairs, _ = pairs_of(b, margin=0.1)
    assert len(pairs) == 1


def test_shared_best_and_worst_values_go_to_the_lowest_seq():
    b = TreeBuilder().root()
    for name, v in [("w1", 0.0), ("b1", 1.0), ("w2", 0.0), ("b2", 1.0), ("m", 0.5)]:
        b.step(name, "r").score(name, v)
    pairs, _ = pairs_of(b)
    assert (pairs[0].chosen, pairs[0].rejected) == ("b1", "w1")


def test_identical_actions_drop_the_point_whatever_their_ids_and_spacing():
    b = TreeBuilder().root()
    b.step("a", "r", action(None, call("read", '{"path": "x"}', "id1"))).score("a", 1.0)
    b.step("b", "r", action(None, call("read", '{ "path" :"x" }', "id2"))).score("b", 0.0)
    pairs, counts = pairs_of(b)
    assert pairs == [] and counts.identical == 1


def test_actions_differ_by_content_name_arguments_or_order():
    base = action("hi", call("read", {"path": "x"}), call("ls", {}))
    assert same_action(base, action("hi", call("read", {"path": "x"}, "z"), call("ls", {})))
    assert not same_action(base, action("ho", call("read", {"path": "x"}), call("ls", {})))
    assert not same_action(base, action("hi", call("cat", {"path": "x"}), call("ls", {})))
    assert not same_action(base, action("hi", call("read", {"path": "y"}), call("ls", {})))
    assert not same_action(base, action("hi", call("ls", {}), call("read", {"path": "x"})))
    assert not same_action(action(None, call("f", "{bad")), action(None, call("f", "{bad ")))
    assert same_action(action(None, call("f", "{bad")), action(None, call("f", "{bad")))


def test_no_text_is_the_same_whether_null_or_empty():
    assert same_action(action(None, call("ls", {})), action("", call("ls", {})))


def test_a_node_with_one_valued_child_is_no_branching_point():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 1.0)
    b.step("b", "r")  # never scored
    _, counts = pairs_of(b)
    assert counts.branching_points == 0


def test_scan_needs_no_actions_and_extraction_looks_up_only_candidates():
    b = two_step_tree()
    g = graph_of(b)
    s = scan(g, node_values(g))
    wanted = {n for c in s.candidates for n in (c.chosen, c.rejected)}
    acts = {n: a for n, a in actions_of(b).items() if n in wanted}
    pairs, _ = extract_pairs(g, node_values(g), acts)
    assert len(pairs) == 2


def test_a_negative_margin_is_refused():
    g = graph_of(two_step_tree())
    with pytest.raises(ValueError, match="margin"):
        scan(g, node_values(g), margin=-0.1)


def test_counts_add_up_to_the_branching_points():
    b = TreeBuilder().root()
    b.step("a", "r").score("a", 0.5)
    b.step("b", "r").score("b", 0.5)
    b.step("a1", "a").score("a1", 0.5)
    b.step("a2", "a").score("a2", 0.45)
    _, counts = pairs_of(b)
    d = counts.as_dict()
    assert d["branching_points"] == d["pairs"] + sum(d["dropped"].values())


def _rollouts(b: TreeBuilder, parent: str, scores: list[float]) -> None:
    for i, x in enumerate(scores):
        b.step(f"{parent}{i}", parent, action(f"go on {i}")).score(f"{parent}{i}", x)


def test_a_pair_on_thin_evidence_is_dropped_as_low_confidence_and_still_counted():
    b = TreeBuilder().root()
    b.step("good", "r", action("right"))
    b.step("bad", "r", action("wrong"))
    _rollouts(b, "good", [1.0])
    _rollouts(b, "bad", [0.7])
    g = graph_of(b)
    est = node_estimates(g)
    pairs, counts = extract_pairs(g, est, actions_of(b))
    assert len(pairs) == 1  # no confidence test: today's behaviour
    pairs, counts = extract_pairs(g, est, actions_of(b), confidence=1.0)
    assert pairs == []
    assert counts.low_confidence == 1
    assert counts.pairs + counts.tie + counts.under_margin + counts.identical \
        + counts.low_confidence == counts.branching_points


def test_a_pair_backed_by_many_agreeing_rollouts_passes_the_confidence_test():
    b = TreeBuilder().root()
    b.step("good", "r", action("right"))
    b.step("bad", "r", action("wrong"))
    _rollouts(b, "good", [1.0] * 8)
    _rollouts(b, "bad", [0.5] * 8)
    g = graph_of(b)
    pairs, _ = extract_pairs(g, node_estimates(g), actions_of(b), confidence=2.0)
    assert [(p.chosen, p.rejected, p.chosen_leaves, p.rejected_leaves) for p in pairs] \
        == [("good", "bad", 8, 8)]
    assert pairs[0].diff_se == pytest.approx(math.hypot(pairs[0].chosen_se,
                                                        pairs[0].rejected_se))


def test_precision_counts_only_pairs_with_exactly_one_mistake():
    ps = [Pair("r", "a", "b", 1.0, 0.0), Pair("r", "b", "a", 1.0, 0.0),
          Pair("r", "a", "c", 1.0, 0.0), Pair("r", "a", "x", 1.0, 0.0)]
    assert judge_pairs(ps, {"a": False, "b": True, "c": False}) == (2, 1)
    assert mistake_label({"mistake": True}) is True
    assert mistake_label({"mistake": 1}) is None and mistake_label(None) is None


def test_a_bad_confidence_is_refused():
    b = two_step_tree()
    with pytest.raises(ValueError, match="confidence"):
        pairs_of(b, confidence=-1.0)
