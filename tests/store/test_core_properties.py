"""Invariants of the pure core, checked on random trees (Hypothesis)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from typing import Any

import msgspec
import networkx as nx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branchpoint.store.events import Event, NodeCreated
from branchpoint.store.exports import ExportOptions, export_lines
from branchpoint.store.pairs import TOLERANCE, extract_pairs, same_action
from branchpoint.store.tree import apply, fold, new_tree
from branchpoint.store.values import ValueOptions, node_estimates, node_values
from tests.store.builders import TreeBuilder, action, call, memory_log

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# A small pool, so that siblings often take the same action (identical pairs).
ACTIONS = [action("look"), action("guess"), action(None, call("read", {"path": "a"})),
           action(None, call("read", {"path": "b"})), action("", call("read", '{"path":"a"}'))]


@st.composite
def trees(draw: Any, tree_id: str = "t") -> TreeBuilder:
    """A random valid tree: nodes under earlier nodes, some run, some scored (often more
    than once, by two sources), with a close now and then."""
    b = TreeBuilder(tree_id, env=draw(st.sampled_from(["fs", "shop"]))).root()
    names = ["r"]
    for i in range(draw(st.integers(0, 14))):
        parent = draw(st.sampled_from(names))
        name = f"{tree_id}n{i}"
        b.node(name, parent, ACTIONS[draw(st.integers(0, len(ACTIONS) - 1))])
        names.append(name)
        if draw(st.booleans()):
            b.run(name, done=False)
        for _ in range(draw(st.integers(0, 2))):
            b.score(name, draw(st.sampled_from([0.0, 0.2, 0.3, 0.5, 0.55, 1.0])),
                    draw(st.sampled_from(["checker", "judge"])))
    if draw(st.booleans()):
        b.close(draw(st.sampled_from(["done", "budget"])))
    return b


@st.composite
def interleavings(draw: Any) -> tuple[list[TreeBuilder], list[Event]]:
    """Several trees and one merge of their events that keeps each tree's own order."""
    builders = [draw(trees(f"t{i}")) for i in range(draw(st.integers(1, 4)))]
    queues = [list(b.events) for b in builders]
    merged: list[Event] = []
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        merged.append(q.pop(0))
    return builders, merged


def shape(g: nx.DiGraph) -> dict[str, Any]:
    """A tree without its seqs, which depend on what else the log holds."""
    return {
        "root": g.graph["root"], "closed": g.graph["closed"],
        "edges": sorted(g.edges),
        "nodes": {n: (a["depth"], a["executed"], a["done"],
                      {s: v for s, (_, v) in a["scores"].items()})
                  for n, a in g.nodes(data=True)},
        "order": sorted(g.nodes, key=lambda n: g.nodes[n]["seq"]),
    }


def with_seqs(events: list[Event]) -> list[Event]:
    return [msgspec.structs.replace(e, seq=i) for i, e in enumerate(events, start=1)]


@SETTINGS
@given(interleavings(), st.data())
def test_any_interleaving_of_trees_folds_into_the_same_trees(case, data):
    builders, merged = case
    alone = {b.tree_id: fold(b.tree_id, (e.head() for e in with_seqs(b.events)))
             for b in builders}
    # Fold the merged log incrementally, in chunks, as a catch-up reader would.
    graphs: dict[str, nx.DiGraph] = {}
    events = with_seqs(merged)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
        for e in events[lo:hi]:
            apply(graphs.setdefault(e.tree_id, new_tree(e.tree_id)), e.head())
    assert graphs.keys() == alone.keys()
    for tree_id, g in graphs.items():
        assert shape(g) == shape(alone[tree_id])
        assert node_values(g) == node_values(alone[tree_id])


@SETTINGS
@given(interleavings())
def test_the_store_gives_back_the_same_trees_whatever_the_interleaving(case):
    builders, merged = case

    async def read_back() -> dict[str, dict[str, Any]]:
        log = await memory_log()
        await log.append(merged)
        return {b.tree_id: shape(fold(b.tree_id, await log.read_heads(b.tree_id)))
                for b in builders}

    got = asyncio.run(read_back())
    for b in builders:
        assert got[b.tree_id] == shape(fold(b.tree_id, (e.head() for e in with_seqs(b.events))))


def actions_of(b: TreeBuilder) -> dict[str, dict[str, Any]]:
    return {e.payload.node_id: e.payload.action for e in b.events
            if isinstance(e.payload, NodeCreated) and e.payload.action is not None}


@SETTINGS
@given(trees(), st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5]), st.sampled_from(["mean", "max"]),
       st.sampled_from([None, 0.0, 0.3, 1.0]))
def test_every_pair_shares_a_parent_differs_in_action_and_wins_by_the_margin(
        b, margin, reduce, judge_weight):
    g = fold(b.tree_id, (e.head() for e in with_seqs(b.events)))
    values = node_values(g, reduce=reduce, judge_weight=judge_weight)
    acts = actions_of(b)
    pairs, counts = extract_pairs(g, values, acts, margin=margin)
    for p in pairs:
        assert list(g.predecessors(p.chosen)) == list(g.predecessors(p.rejected)) == [p.parent]
        assert not same_action(acts[p.chosen], acts[p.rejected])
        assert values[p.chosen] - values[p.rejected] >= margin - TOLERANCE
        assert values[p.chosen] > values[p.rejected]
        kids = [values[c] for c in g.successors(p.parent) if c in values]
        assert (values[p.chosen], values[p.rejected]) == (max(kids), min(kids))
    d = counts.as_dict()
    assert d["pairs"] + sum(d["dropped"].values()) == d["branching_points"]
    assert d["branching_points"] == sum(
        1 for n in g if sum(1 for c in g.successors(n) if c in values) >= 2)


@SETTINGS
@given(trees(), st.sampled_from([0.0, 0.1, 0.3]), st.sampled_from([0.0, 1.0, 2.0]),
       st.builds(ValueOptions, reduce=st.sampled_from(["mean", "max"]),
                 discount=st.sampled_from([1.0, 0.9, 0.5]), binary=st.booleans()),
       st.dictionaries(st.sampled_from([f"tn{i}" for i in range(14)]), st.integers(1, 5)))
def test_every_kept_pair_beats_its_rival_by_the_margin_and_z_standard_errors(
        b, margin, z, options, counts):
    g = fold(b.tree_id, (e.head() for e in with_seqs(b.events)))
    est = node_estimates(g, options, counts=counts)
    acts = actions_of(b)
    pairs, tally = extract_pairs(g, est, acts, margin=margin, confidence=z)
    for p in pairs:
        diff = est[p.chosen].value - est[p.rejected].value
        assert diff >= margin - TOLERANCE
        assert diff >= z * math.hypot(est[p.chosen].se, est[p.rejected].se) - TOLERANCE
        assert (p.chosen_leaves, p.chosen_se) == est[p.chosen][1:]
    d = tally.as_dict()
    assert d["pairs"] + sum(d["dropped"].values()) == d["branching_points"]
    # the confidence test only ever removes pairs the plain test kept
    plain, plain_tally = extract_pairs(g, est, acts, margin=margin)
    assert {p.parent for p in pairs} <= {p.parent for p in plain}
    assert tally.low_confidence == plain_tally.pairs - tally.pairs


@SETTINGS
@given(trees(), st.sampled_from([1.0, 0.8]), st.booleans(),
       st.dictionaries(st.sampled_from([f"tn{i}" for i in range(14)]), st.integers(1, 5)))
def test_every_value_is_in_the_unit_interval_and_rests_on_the_leaves_beneath_it(
        b, discount, binary, counts):
    g = fold(b.tree_id, (e.head() for e in with_seqs(b.events)))
    est = node_estimates(g, ValueOptions(discount=discount, binary=binary), counts=counts)
    for n, e in est.items():
        assert -TOLERANCE <= e.value <= 1 + TOLERANCE
        assert 0 <= e.se <= 0.5 + TOLERANCE
        valued_kids = [c for c in g.successors(n) if c in est]
        if valued_kids:
            assert e.leaves == sum(est[c].leaves for c in valued_kids)
            lo, hi = (min(est[c].value for c in valued_kids),
                      max(est[c].value for c in valued_kids))
            assert discount * lo - TOLERANCE <= e.value <= discount * hi + TOLERANCE
        else:
            assert e.leaves == 1


@settings(max_examples=40, deadline=None)
@given(interleavings())
def test_every_exported_dpo_row_prefers_a_different_action(case):
    _, merged = case

    async def rows() -> list[dict[str, Any]]:
        log = await memory_log()
        await log.append(merged)
        return [json.loads(x) async for x in export_lines(
            log, "dpo", ExportOptions(with_metadata=True, tool_arguments="string"))]

    for row in asyncio.run(rows()):
        assert not same_action(row["chosen"][0], row["rejected"][0])
        assert row["metadata"]["margin"] >= 0.1 - TOLERANCE


def test_importing_the_core_pulls_in_no_adapter():
    code = (
        "import sys\n"
        "import branchpoint.store.events, branchpoint.store.tree\n"
        "import branchpoint.store.values, branchpoint.store.pairs\n"
        "bad = [m for m in ('sqlalchemy', 'httpx', 'litestar', 'mcp', 'openai', 'aiosqlite',"
        " 'asyncpg') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
