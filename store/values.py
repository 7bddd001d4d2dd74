"""Value propagation: how good each node of a tree turned out to be.

A node's *own score* comes from its ``score_assigned`` events; the tree fold keeps the
latest per source as ``scores = {source: (seq, value)}``. :func:`own_score` combines them:

- without a judge weight, the most recent score (highest ``seq``) among ``sources``
  (every source when ``sources`` is None);
- with a judge weight ``W``, ``(1 - W) * checker + W * judge``, or whichever of the two
  exists (other sources are then ignored).

A node's *value* (:func:`node_values`) is its own score when it has no valued children (a
leaf, or a node whose children were drawn but never scored), and otherwise the mean (or
the max) of its valued children's values: a Monte-Carlo estimate of how well the policy
does from there. An inner node's own scores are kept and exported but do not override the
children's estimate. Nodes with no value (an unscored subtree) are left out of the result
and count for nothing above them.

Pure: a graph from :mod:`branchpoint.store.tree` in, a dict out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal

import networkx as nx

__all__ = ["Reduce", "node_values", "own_score"]

Reduce = Literal["mean", "max"]


def own_score(scores: Mapping[str, tuple[int, float]], *,
              sources: Collection[str] | None = None,
              judge_weight: float | None = None) -> float | None:
    """A node's own score from its latest score per source, or None when none counts.

    Raises:
        ValueError: ``judge_weight`` outside [0, 1].
    """
    if judge_weight is not None:
        if not 0.0 <= judge_weight <= 1.0:
            raise ValueError(f"judge weight must be in [0, 1], got {judge_weight!r}")
        checker, judge = scores.get("checker"), scores.get("judge")
        if checker is not None and judge is not None:
            return (1.0 - judge_weight) * checker[1] + judge_weight * judge[1]
        if checker is not None:
            return checker[1]
        return judge[1] if judge is not None else None
    best: tuple[int, float] | None = None
    for source, seq_value in scores.items():
        if sources is not None and source not in sources:
            continue
        if best is None or seq_value[0] > best[0]:
            best = seq_value
    return best[1] if best is not None else None


def node_values(g: nx.DiGraph, *, reduce: Reduce = "mean",
                sources: Collection[str] | None = None,
                judge_weight: float | None = None) -> dict[str, float]:
    """Every valued node of tree ``g`` mapped to its value (see the module docstring).

    Children are combined in ``seq`` order, so the result is the same float on every run.

    Raises:
        ValueError: an unknown ``reduce`` or a ``judge_weight`` outside [0, 1].
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    nodes = g.nodes
    # Deepest first, so every child is valued before its parent; no recursion, so a
    # tree thousands of steps deep is fine.
    order = sorted(nodes, key=lambda n: (-nodes[n]["depth"], nodes[n]["seq"]))
    values: dict[str, float] = {}
    for n in order:
        kids = [values[c] for c in sorted(g.successors(n), key=lambda c: nodes[c]["seq"])
                if c in values]
        if kids:
            values[n] = sum(kids) / len(kids) if reduce == "mean" else max(kids)
        else:
            own = own_score(nodes[n]["scores"], sources=sources, judge_weight=judge_weight)
            if own is not None:
                values[n] = own
    return values
