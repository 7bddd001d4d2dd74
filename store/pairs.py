"""Step-level preference pairs: where one next step did clearly better than a sibling.

At every node with two or more valued children (a *branching point*), the best child is
paired against the worst. When several children share the best (or the worst) value, the
one created first (lowest ``seq``) is taken, so every export is deterministic. A branching
point yields no pair, and is counted under a reason, when:

- ``tie``: its best and worst values are equal;
- ``under_margin``: they differ by less than the margin (default :data:`DEFAULT_MARGIN`);
- ``identical``: the two actions are the same step (:func:`same_action`), e.g. one action
  sampled twice whose rollouts happened to score differently.

Values are compared with a tolerance of :data:`TOLERANCE`, so that ``0.3`` against ``0.2``
is a pair at margin ``0.1`` although ``0.3 - 0.2 < 0.1`` in floating point. Thus
``pairs + tie + under_margin + identical == branching_points`` for every tree.

Pure: the graph work needs only the tree and its values; the action comparison takes the
assistant messages the caller supplies (the graph holds no payloads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal, NamedTuple

import networkx as nx

from branchpoint.store.actions import same_action

__all__ = [
    "DEFAULT_MARGIN",
    "DROP_REASONS",
    "TOLERANCE",
    "Candidate",
    "Counts",
    "Pair",
    "Scan",
    "extract_pairs",
    "same_action",
    "scan",
]

DEFAULT_MARGIN: Final = 0.1
TOLERANCE: Final = 1e-9
DropReason = Literal["tie", "under_margin", "identical"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("tie", "under_margin", "identical")

Message = dict[str, Any]


class Pair(NamedTuple):
    """At ``parent``, the step to ``chosen`` did better than the step to ``rejected``."""

    parent: str
    chosen: str
    rejected: str
    chosen_value: float
    rejected_value: float


Candidate = Pair  # a pair before the identical-action check


class Scan(NamedTuple):
    """What the graph alone decides: candidate pairs, and the points dropped already."""

    candidates: list[Candidate]
    branching_points: int
    tie: int
    under_margin: int


@dataclass
class Counts:
    """Tallies over trees; :meth:`as_dict` is the shape ``branchpoint stats --json`` prints
    for one env (``by_env`` aside)."""

    trees: int = 0
    nodes: int = 0
    branching_points: int = 0
    pairs: int = 0
    tie: int = 0
    under_margin: int = 0
    identical: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        dropped = {reason: d.pop(reason) for reason in DROP_REASONS}
        return {**d, "dropped": dropped}


def scan(g: nx.DiGraph, values: Mapping[str, float], *,
         margin: float = DEFAULT_MARGIN) -> Scan:
    """Best against worst child at every branching point of ``g``, parents in ``seq`` order.

    Raises:
        ValueError: a negative ``margin``.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    nodes = g.nodes
    candidates: list[Candidate] = []
    points = tie = under = 0
    for parent in sorted(nodes, key=lambda n: nodes[n]["seq"]):
        valued = [(values[c], nodes[c]["seq"], c) for c in g.successors(parent) if c in values]
        if len(valued) < 2:
            continue
        points += 1
        best = max(valued, key=lambda t: (t[0], -t[1]))
        worst = min(valued, key=lambda t: (t[0], t[1]))
        diff = best[0] - worst[0]
        if diff <= TOLERANCE:
            tie += 1
        elif diff < margin - TOLERANCE:
            under += 1
        else:
            candidates.append(Pair(parent, best[2], worst[2], best[0], worst[0]))
    return Scan(candidates, points, tie, under)


def extract_pairs(g: nx.DiGraph, values: Mapping[str, float], actions: Mapping[str, Message],
                  *, margin: float = DEFAULT_MARGIN) -> tuple[list[Pair], Counts]:
    """The pairs of tree ``g`` and the tally of its branching points.

    ``actions`` maps a node id to the assistant message that led to it; only the nodes of
    the candidates (see :func:`scan`) are looked up, so a lazy mapping works.
    ``Counts.trees`` and ``Counts.nodes`` are left at 0 for the caller.

    Raises:
        ValueError: a negative ``margin``.
        KeyError: ``actions`` lacks a candidate's node.
    """
    s = scan(g, values, margin=margin)
    pairs: list[Pair] = []
    identical = 0
    for c in s.candidates:
        if same_action(actions[c.chosen], actions[c.rejected]):
            identical += 1
        else:
            pairs.append(c)
    counts = Counts(branching_points=s.branching_points, pairs=len(pairs), tie=s.tie,
                    under_margin=s.under_margin, identical=identical)
    return pairs, counts
