"""Step-level preference pairs: where one next step did clearly better than a sibling.

At every node with two or more valued children (a *branching point*), the best child is
paired against the worst. When several children share the best (or the worst) value, the
one created first (lowest ``seq``) is taken, so every export is deterministic. A branching
point yields no pair, and is counted under a reason, when:

- ``tie``: its best and worst values are equal;
- ``under_margin``: they differ by less than the margin (default :data:`DEFAULT_MARGIN`);
- ``identical``: the two actions are the same step (:func:`same_action`), e.g. one action
  sampled twice whose rollouts happened to score differently;
- ``low_confidence`` (only with a ``confidence`` ``Z``): the difference is less than ``Z``
  standard errors of the difference, ``Z * sqrt(se_chosen**2 + se_rejected**2)`` (the two
  subtrees are disjoint, so their errors are independent; standard errors as in
  :mod:`branchpoint.store.values`).

The reasons are checked in that order, and values are compared with a tolerance of
:data:`TOLERANCE`, so that ``0.3`` against ``0.2`` is a pair at margin ``0.1`` although
``0.3 - 0.2 < 0.1`` in floating point. Thus ``pairs + tie + under_margin + identical +
low_confidence == branching_points`` for every tree.

Ground truth (:func:`judge_pairs`): when the policy knows which of its steps were drawn
mistakes (the scripted expert records ``produced_by.mistake``), a pair is *decided* when
exactly one of chosen and rejected is a mistake, and *correct* when the chosen is not.
*Pair precision* is correct / decided.

Pure: the graph work needs only the tree and its values; the action comparison takes the
assistant messages the caller supplies (the graph holds no payloads).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal, NamedTuple

import networkx as nx

from branchpoint.store.actions import same_action
from branchpoint.store.values import Estimate

__all__ = [
    "DEFAULT_MARGIN",
    "DROP_REASONS",
    "TOLERANCE",
    "Candidate",
    "Counts",
    "Pair",
    "Scan",
    "extract_pairs",
    "judge_pairs",
    "mistake_label",
    "same_action",
    "scan",
]

DEFAULT_MARGIN: Final = 0.1
TOLERANCE: Final = 1e-9
DropReason = Literal["tie", "under_margin", "identical", "low_confidence"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("tie", "under_margin", "identical",
                                               "low_confidence")

Message = dict[str, Any]


class Pair(NamedTuple):
    """At ``parent``, the step to ``chosen`` did better than the step to ``rejected``."""

    parent: str
    chosen: str
    rejected: str
    chosen_value: float
    rejected_value: float
    chosen_leaves: int = 1
    rejected_leaves: int = 1
    chosen_se: float = 0.0
    rejected_se: float = 0.0

    @property
    def diff_se(self) -> float:
        """The standard error of ``chosen_value - rejected_value``."""
        return math.hypot(self.chosen_se, self.rejected_se)


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
    low_confidence: int = 0
    labelled_trees: int = 0  # trees whose steps carry ``produced_by.mistake``
    pairs_decided: int = 0
    pairs_correct: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        dropped = {reason: d.pop(reason) for reason in DROP_REASONS}
        labelled = d.pop("labelled_trees")
        correct = d.pop("pairs_correct")
        decided = d.pop("pairs_decided")
        out = {**d, "dropped": dropped}
        if labelled:
            out["pairs_decided"] = decided
            out["pairs_correct"] = correct
            out["pair_precision"] = correct / decided if decided else None
        return out


def _evidence(e: float | Estimate) -> tuple[float, int, float]:
    return (e, 1, 0.0) if isinstance(e, (int, float)) else (e.value, e.leaves, e.se)


def scan(g: nx.DiGraph, values: Mapping[str, float] | Mapping[str, Estimate], *,
         margin: float = DEFAULT_MARGIN) -> Scan:
    """Best against worst child at every branching point of ``g``, parents in ``seq`` order.

    ``values`` maps nodes to plain values or to :class:`~branchpoint.store.values.Estimate`
    (then the candidates carry the leaf counts and standard errors).

    Raises:
        ValueError: a negative ``margin``.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    nodes = g.nodes
    candidates: list[Candidate] = []
    points = tie = under = 0
    for parent in sorted(nodes, key=lambda n: nodes[n]["seq"]):
        valued = [(*_evidence(values[c]), nodes[c]["seq"], c)
                  for c in g.successors(parent) if c in values]
        if len(valued) < 2:
            continue
        points += 1
        best = max(valued, key=lambda t: (t[0], -t[3]))
        worst = min(valued, key=lambda t: (t[0], t[3]))
        diff = best[0] - worst[0]
        if diff <= TOLERANCE:
            tie += 1
        elif diff < margin - TOLERANCE:
            under += 1
        else:
            candidates.append(Pair(parent, best[4], worst[4], best[0], worst[0],
                                   best[1], worst[1], best[2], worst[2]))
    return Scan(candidates, points, tie, under)


def extract_pairs(g: nx.DiGraph, values: Mapping[str, float] | Mapping[str, Estimate],
                  actions: Mapping[str, Message], *, margin: float = DEFAULT_MARGIN,
                  confidence: float | None = None) -> tuple[list[Pair], Counts]:
    """The pairs of tree ``g`` and the tally of its branching points.

    ``actions`` maps a node id to the assistant message that led to it; only the nodes of
    the candidates (see :func:`scan`) are looked up, so a lazy mapping works.
    ``confidence`` ``Z`` needs ``values`` as estimates (plain values have no error, so
    every pair passes). ``Counts.trees`` and ``Counts.nodes`` are left at 0 for the caller.

    Raises:
        ValueError: a negative ``margin`` or ``confidence``.
        KeyError: ``actions`` lacks a candidate's node.
    """
    if confidence is not None and not confidence >= 0:
        raise ValueError(f"confidence must be >= 0, got {confidence!r}")
    s = scan(g, values, margin=margin)
    pairs: list[Pair] = []
    identical = low = 0
    for c in s.candidates:
        if same_action(actions[c.chosen], actions[c.rejected]):
            identical += 1
        elif (confidence is not None and c.chosen_value - c.rejected_value
              < confidence * c.diff_se - TOLERANCE):
            low += 1
        else:
            pairs.append(c)
    counts = Counts(branching_points=s.branching_points, pairs=len(pairs), tie=s.tie,
                    under_margin=s.under_margin, identical=identical, low_confidence=low)
    return pairs, counts


def mistake_label(produced_by: Mapping[str, Any] | None) -> bool | None:
    """``produced_by.mistake`` when it is a boolean, else None (no ground truth)."""
    label = (produced_by or {}).get("mistake")
    return label if isinstance(label, bool) else None


def judge_pairs(pairs: Iterable[Pair], mistakes: Mapping[str, bool]) -> tuple[int, int]:
    """``(decided, correct)`` over ``pairs`` given each labelled node's mistake flag
    (nodes absent from ``mistakes`` are unlabelled: their pairs are not decided)."""
    decided = correct = 0
    for p in pairs:
        chosen, rejected = mistakes.get(p.chosen), mistakes.get(p.rejected)
        if chosen is None or rejected is None or chosen == rejected:
            continue
        decided += 1
        correct += not chosen
    return decided, correct

