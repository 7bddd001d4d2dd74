"""Value propagation: how good each node of a tree turned out to be, and on what evidence.

**Own score** (:func:`own_score`). A node's ``score_assigned`` events are folded into the
latest score per source, ``scores = {source: (seq, value)}``. One precedence, used by
values, exports and the viewer alike:

1. by default: the node's ``human`` score if any, else its ``checker`` score, else its
   ``judge`` score, else the most recent score (highest ``seq``) of any other source;
2. with ``sources``: the most recent score among those sources only;
3. with a judge weight ``W``: ``(1 - W) * checker + W * judge``, or whichever of the two
   exists (every other source, ``human`` included, is then ignored).

With ``binary``, a ``checker`` score counts 1.0 when it is 1.0 and 0.0 otherwise (what a
0/1 checker would have said), before the rules above; other sources are left as they are.

**Value** (:func:`node_estimates`). Values come from leaves: a node with no valued child
(a leaf, or a node whose children were drawn but never scored) is valued by its own score;
any other node by its valued children. A score on an inner node is kept, shown and
exported (``steps``' ``score``) but does not override its children's estimate. Nodes with
no value (an unscored subtree) are left out and count for nothing above them.

- ``mean`` (default): the mean of the children's values, each child weighted by how often
  the policy drew it, ``produced_by.count`` (``counts``; 1 when absent): identical
  candidates of one request are one node but several draws. A Monte-Carlo estimate of how
  well the policy does from there.
- ``max``: the best child's value.
- ``discount`` ``G`` (0 < G <= 1): a value passed up one step is multiplied by ``G``, so a
  leaf's score counts ``G**k`` at the node ``k`` steps above it and, among equally
  successful continuations, the shorter is worth more. A valued node's own score (at
  ``k = 0``) is never discounted.

**Evidence.** Each :class:`Estimate` carries ``leaves``, the number of scored leaves
(rollouts actually scored) beneath the node, and ``se``, a standard error. Under ``mean``
the value is a weighted mean ``v = sum(p_i * x_i)`` of its leaves' discounted scores
``x_i`` (``p_i`` is the product of the normalised draw weights along the path, summing to
1). Leaves are taken as independent draws with a common variance, estimated as::

    b  = sum(p_i * G**(2 * k_i)) / 4      # leaf i is k_i steps down; b = 1/4 when G = 1
    s2 = min(b, sum(p_i * (x_i - v)**2) + b / n)     # n = leaves
    se = sqrt(s2 * sum(p_i**2))

A value in [0, 1] has a variance of at most 1/4 (a discounted one, in [0, G**k], at most
``G**(2k)/4``; ``b`` is that bound): the ``b/n`` term is the bound's share, so a node
resting on one leaf has ``se = 1/2`` (one rollout proves little), two equal leaves
``se ~ 0.35``, and the term fades as leaves accumulate; the cap keeps the estimate within
the bound. A discount scales a node's standard error as it scales its value. With unit
weights ``sum(p_i**2) = 1/n`` and this is the familiar ``s / sqrt(n)``.

Under ``max`` a node's ``leaves`` and ``se`` are those of the child that attains the max
(times ``G``): the evidence behind that one continuation. They understate the uncertainty
of a max, which is biased upward by selection; use ``mean`` when the significance test
(:mod:`branchpoint.store.pairs`) matters.

Pure: a graph from :mod:`branchpoint.store.tree` (and a node-to-count mapping) in, a dict
out.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, Final, Literal, NamedTuple

import msgspec
import networkx as nx

__all__ = [
    "PRECEDENCE",
    "Estimate",
    "Reduce",
    "ValueOptions",
    "draw_count",
    "node_estimates",
    "node_values",
    "own_score",
]

Reduce = Literal["mean", "max"]
PRECEDENCE: Final[tuple[str, ...]] = ("human", "checker", "judge")
_MAX_VARIANCE: Final = 0.25


class ValueOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How leaf scores become node values; every default is the CLI's.

    ``reduce``: ``mean`` or ``max`` of the children. ``sources``/``judge_weight``: override
    the score precedence (module docstring). ``discount``: ``G`` in (0, 1]. ``binary``:
    checker scores count 1.0 when 1.0, else 0.0.
    """

    reduce: Reduce = "mean"
    sources: tuple[str, ...] | None = None
    judge_weight: float | None = None
    discount: float = 1.0
    binary: bool = False

    def check(self) -> None:
        """Raises: ValueError: an option out of range, naming it."""
        if self.reduce not in ("mean", "max"):
            raise ValueError(f"reduce (--value) must be mean or max, got {self.reduce!r}")
        if self.judge_weight is not None and not 0.0 <= self.judge_weight <= 1.0:
            raise ValueError(f"judge weight must be in [0, 1], got {self.judge_weight!r}")
        if self.sources is not None and not self.sources:
            raise ValueError("sources must name at least one source")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount!r}")


class Estimate(NamedTuple):
    """A node's value, the number of scored leaves it rests on, and its standard error."""

    value: float
    leaves: int
    se: float


def own_score(scores: Mapping[str, tuple[int, float]], *,
              sources: Collection[str] | None = None,
              judge_weight: float | None = None, binary: bool = False) -> float | None:
    """A node's own score from its latest score per source (the precedence of the module
    docstring), or None when none counts.

    Raises:
        ValueError: ``judge_weight`` outside [0, 1].
    """
    if binary and "checker" in scores:
        seq, value = scores["checker"]
        scores = {**scores, "checker": (seq, 1.0 if value >= 1.0 else 0.0)}
    if judge_weight is not None:
        if not 0.0 <= judge_weight <= 1.0:
            raise ValueError(f"judge weight must be in [0, 1], got {judge_weight!r}")
        checker, judge = scores.get("checker"), scores.get("judge")
        if checker is not None and judge is not None:
            return (1.0 - judge_weight) * checker[1] + judge_weight * judge[1]
        if checker is not None:
            return checker[1]
        return judge[1] if judge is not None else None
    if sources is None:
        for source in PRECEDENCE:
            if source in scores:
                return scores[source][1]
    best: tuple[int, float] | None = None
    for source, seq_value in scores.items():
        if sources is not None and source not in sources:
            continue
        if best is None or seq_value[0] > best[0]:
            best = seq_value
    return best[1] if best is not None else None


def draw_count(produced_by: Mapping[str, Any] | None) -> int:
    """How many draws a node stands for: ``produced_by.count`` when it is a positive
    integer, else 1."""
    count = (produced_by or {}).get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
        return count
    return 1


class _Moments(NamedTuple):
    # Over a node's leaves, with weights p_i summing to 1 and each leaf k_i steps down:
    # sum p*x, sum p*x^2, sum p^2, sum p*G^(2k) (the discounted variance bound's scale), n.
    s1: float
    s2: float
    p2: float
    d2: float
    n: int


def _estimate(m: _Moments) -> Estimate:
    bound = _MAX_VARIANCE * m.d2
    variance = min(bound, max(0.0, m.s2 - m.s1 * m.s1) + bound / m.n)
    return Estimate(m.s1, m.n, math.sqrt(variance * m.p2))


def node_estimates(g: nx.DiGraph, options: ValueOptions | None = None, *,
                   counts: Mapping[str, int] | None = None) -> dict[str, Estimate]:
    """Every valued node of tree ``g`` mapped to its :class:`Estimate` (module docstring).

    ``counts`` maps a node id to its draw count (:func:`draw_count`); absent nodes count 1.
    Children are combined in ``seq`` order, so the result is the same float on every run.

    Raises:
        ValueError: an option out of range (:meth:`ValueOptions.check`).
    """
    options = options or ValueOptions()
    options.check()
    counts = counts or {}
    g_ = options.discount
    nodes = g.nodes
    # Deepest first, so every child is valued before its parent; no recursion, so a
    # tree thousands of steps deep is fine.
    order = sorted(nodes, key=lambda n: (-nodes[n]["depth"], nodes[n]["seq"]))
    moments: dict[str, _Moments] = {}
    for n in order:
        kids = [c for c in sorted(g.successors(n), key=lambda c: nodes[c]["seq"])
                if c in moments]
        if not kids:
            own = own_score(nodes[n]["scores"], sources=options.sources,
                            judge_weight=options.judge_weight, binary=options.binary)
            if own is not None:
                moments[n] = _Moments(own, own * own, 1.0, 1.0, 1)
            continue
        if options.reduce == "max":
            # first created among equals, as pairs pick them
            best = max(kids, key=lambda c: moments[c].s1)
            m = moments[best]
            moments[n] = _Moments(g_ * m.s1, g_ * g_ * m.s2, m.p2, g_ * g_ * m.d2, m.n)
            continue
        total = float(sum(counts.get(c, 1) for c in kids))
        s1 = s2 = p2 = d2 = 0.0
        leaves = 0
        for c in kids:
            w = counts.get(c, 1) / total
            m = moments[c]
            s1 += w * m.s1
            s2 += w * m.s2
            p2 += w * w * m.p2
            d2 += w * m.d2
            leaves += m.n
        moments[n] = _Moments(g_ * s1, g_ * g_ * s2, p2, g_ * g_ * d2, leaves)
    return {n: _estimate(m) for n, m in moments.items()}


def node_values(g: nx.DiGraph, *, reduce: Reduce = "mean",
                sources: Collection[str] | None = None,
                judge_weight: float | None = None, discount: float = 1.0,
                binary: bool = False, counts: Mapping[str, int] | None = None
                ) -> dict[str, float]:
    """Every valued node of tree ``g`` mapped to its value (:func:`node_estimates`
    without the evidence).

    Raises:
        ValueError: an unknown ``reduce``, a ``judge_weight`` outside [0, 1] or a
            ``discount`` outside (0, 1].
    """
    options = ValueOptions(reduce=reduce, sources=tuple(sources) if sources is not None
                           else None, judge_weight=judge_weight, discount=discount,
                           binary=binary)
    return {n: e.value for n, e in node_estimates(g, options, counts=counts).items()}
