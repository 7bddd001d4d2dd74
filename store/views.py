"""What the HTTP API and the viewer show of a tree: plain data derived from a
:class:`~branchpoint.store.exports.TreeView`, no I/O.

- :func:`branch_points`: every branching point with its outcome (a pair, or the reason it
  was dropped), as :func:`~branchpoint.store.pairs.extract_pairs` decides it.
- :func:`evidence`: how many valued leaves a node's value rests on and its standard error.
- :func:`subtree`: a window of a tree, breadth first from one node, so a tree of thousands
  of nodes loads in parts (a node's children come all together or not at all).
- :func:`label`: a one-line summary of an action for a tree's outline.

Everything here returns JSON-ready dicts; the strings are the agent's own, untrusted, and
the viewer renders them as text.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec
import networkx as nx

from branchpoint.store.exports import TreeView
from branchpoint.store.pairs import TOLERANCE, same_action, scan

__all__ = ["branch_points", "evidence", "label", "leaf_values", "subtree"]

Message = dict[str, Any]
LABEL_CHARS = 120


def branch_points(t: TreeView) -> dict[str, dict[str, Any]]:
    """Each branching point's outcome, as the exports decide it: ``{"pair": bool,
    "reason": None | "tie" | "under_margin" | "identical" | "low_confidence"}``, and for a
    pair ``chosen``, ``rejected``, ``chosen_value``, ``rejected_value``, ``margin``."""
    margin = t.options.margin
    pairs, _ = t.pairs()
    paired = {p.parent: p for p in pairs}
    candidates = {c.parent: c for c in scan(t.graph, t.estimates, margin=margin).candidates}
    out: dict[str, dict[str, Any]] = {}
    g, values = t.graph, t.values
    for parent in g.nodes:
        valued = [values[c] for c in g.successors(parent) if c in values]
        if len(valued) < 2:
            continue
        p = paired.get(parent)
        c = candidates.get(parent)
        if p is not None:
            out[parent] = {"pair": True, "reason": None, "chosen": p.chosen,
                           "rejected": p.rejected, "chosen_value": p.chosen_value,
                           "rejected_value": p.rejected_value,
                           "margin": p.chosen_value - p.rejected_value}
        elif c is not None:
            same = same_action(t.actions[c.chosen], t.actions[c.rejected])
            out[parent] = {"pair": False, "reason": "identical" if same else "low_confidence"}
        else:
            diff = max(valued) - min(valued)
            out[parent] = {"pair": False,
                           "reason": "tie" if diff <= TOLERANCE else "under_margin"}
    return out


def leaf_values(g: nx.DiGraph, values: Mapping[str, float]) -> list[float]:
    """The values of the tree's valued leaves (the root excluded), in ``seq`` order."""
    nodes = g.nodes
    return [values[n] for n in sorted(g.nodes, key=lambda n: nodes[n]["seq"])
            if g.out_degree(n) == 0 and n in values and n != g.graph["root"]]


def evidence(t: TreeView) -> dict[str, tuple[int, float | None]]:
    """For every node, ``(n, se)``: the valued leaves its value rests on and the standard
    error of that value, as :func:`~branchpoint.store.values.node_estimates` gives them
    (``(0, None)`` for a node without a value; ``se`` None where it is not finite)."""
    out: dict[str, tuple[int, float | None]] = {}
    for n in t.graph.nodes:
        e = t.estimates.get(n)
        out[n] = (0, None) if e is None else (
            e.leaves, e.se if math.isfinite(e.se) and e.leaves >= 2 else None)
    return out


def label(action: Message | None) -> str:
    """An action in one line: its text, then each tool call as ``name(arguments)``."""
    if action is None:
        return ""
    parts = []
    content = action.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    for call in action.get("tool_calls") or ():
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        args = fn.get("arguments") if isinstance(fn, dict) else None
        text = args if isinstance(args, str) else msgspec.json.encode(args).decode()
        parts.append(f"{fn.get('name') if isinstance(fn, dict) else '?'}({text})")
    line = " ".join(" ".join(p.split()) for p in parts if p)
    return line if len(line) <= LABEL_CHARS else line[:LABEL_CHARS - 1] + "…"


def subtree(t: TreeView, start: str, *, depth: int, limit: int,
            points: Mapping[str, dict[str, Any]] | None = None,
            ev: Mapping[str, tuple[int, float | None]] | None = None) -> list[dict[str, Any]]:
    """Nodes from ``start`` down, breadth first: at most ``depth`` levels below ``start``
    and about ``limit`` nodes (the children of ``start`` always come, however many).
    Each node says whether its children are in the answer (``children_loaded``).
    ``points`` and ``ev`` are :func:`branch_points` and :func:`evidence` of the tree when
    the caller has them already.

    Raises:
        KeyError: ``start`` is no node of the tree.
    """
    g = t.graph
    nodes = g.nodes
    if start not in nodes:
        raise KeyError(start)
    points = branch_points(t) if points is None else points
    roles: dict[str, str] = {}
    for bp in points.values():
        if bp["pair"]:
            roles[bp["chosen"]] = "chosen"
            roles[bp["rejected"]] = "rejected"
    ev = evidence(t) if ev is None else ev
    order: list[str] = []
    loaded: set[str] = set()
    base = nodes[start]["depth"]
    queue = deque([start])
    while queue:
        n = queue.popleft()
        order.append(n)
        kids = sorted(g.successors(n), key=lambda c: nodes[c]["seq"])
        if not kids or nodes[n]["depth"] - base >= depth:
            continue
        if n != start and len(order) + len(queue) + len(kids) > limit:
            continue
        loaded.add(n)
        queue.extend(kids)
    out = []
    for n in order:
        a = nodes[n]
        parents = list(g.predecessors(n))
        leaves, se = ev[n]
        out.append({
            "node_id": n,
            "parent_id": parents[0] if parents else None,
            "depth": a["depth"],
            "seq": a["seq"],
            "executed": a["executed"],
            "done": a["done"],
            "value": t.values.get(n),
            "own_score": t.own_score(n),
            "scores": {s: v for s, (_, v) in sorted(a["scores"].items())},
            "leaves": leaves,
            "stderr": se,
            "children": g.out_degree(n),
            "children_loaded": n in loaded or g.out_degree(n) == 0,
            "role": roles.get(n),
            "branch": points.get(n),
            "label": label(t.actions.get(n)),
        })
    return out
