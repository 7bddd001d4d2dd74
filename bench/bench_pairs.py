"""Pair precision of the expert demo's data, over a grid of sampling and pair settings.

The scripted expert records which of its steps are drawn mistakes
(``produced_by.mistake``), so the demo's DPO pairs can be graded: a pair is *decided* when
exactly one of chosen and rejected is a mistake, *correct* when the chosen is not, and
*precision* is correct / decided (``branchpoint stats`` reports the same figures).

For each built-in environment and each sampling setting (branch points x branches x
rollouts), the demo's trees are grown (``grow_tree``, the demo's own data path) and stored
in a memory log; then, for every pair setting (margin x confidence x discount x partial
credit or ``--binary``), the pairs are extracted as ``branchpoint export dpo`` makes them
and graded. Printed per environment and setting: pairs, decided, correct, precision, and
the wall time of growing the trees. The baseline is today's demo settings (3 branch
points, 3 branches, 1 rollout, margin 0.1, no confidence test, no discount, partial
credit), measured in the same run; every row prints its correct decided pairs as a ratio
to the baseline's, and the chosen defaults (those of ``branchpoint demo --policy expert``)
are checked against the targets: precision >= 0.97 and correct decided pairs >= the
baseline's, on every environment. Also printed: usable pairs with partial credit over
usable pairs with ``--binary``, at the chosen defaults.

    .venv/bin/python bench/bench_pairs.py [--tasks 200] [--quick]

Exits 1 when the chosen defaults miss a target.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from typing import Any

from branchpoint.sampler.demo import DEMO_PAIRS, DemoConfig, grow_tree
from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.store.exports import ExportOptions, TreeView
from branchpoint.store.log import MemoryEventLog
from branchpoint.store.pairs import extract_pairs, judge_pairs

BASE_GROW = (3, 3, 1)  # branch points, branches, rollouts: today's demo
BASE_PAIRS = (0.1, None, 1.0, False)  # margin, confidence, discount, binary


async def grow(env: str, tasks: int, bp: int, br: int, k: int) -> tuple[list[Any], float]:
    """Every tree's events as read back from a store, and the seconds growing took."""
    config = DemoConfig(envs=(env,), branch_points=bp, branches=br, rollouts=k)
    log = MemoryEventLog()
    started = time.perf_counter()
    for task_id in tasks_in_split("train", tasks):
        events, _ = grow_tree(env, task_id, config)
        await log.append(events)
    seconds = time.perf_counter() - started
    trees = [(t.tree_id, await log.read_tree(t.tree_id)) for t in await log.list_trees()]
    return trees, seconds


Setting = tuple[float, float | None, float, bool]  # margin, confidence, discount, binary


def grade(trees: list[Any], settings: list[Setting]) -> dict[Setting, tuple[int, int, int]]:
    """Per setting, (pairs, decided, correct) as ``export dpo`` with those options would
    make them (each tree is folded once per discount and credit)."""
    out = dict.fromkeys(settings, (0, 0, 0))
    by_values: dict[tuple[float, bool], list[Setting]] = {}
    for s in settings:
        by_values.setdefault((s[2], s[3]), []).append(s)
    for (discount, binary), group in by_values.items():
        options = ExportOptions(discount=discount, binary=binary)
        for tree_id, events in trees:
            view = TreeView(tree_id, events, options)
            for s in group:
                kept, _ = extract_pairs(view.graph, view.estimates, view.actions,
                                        margin=s[0], confidence=s[1])
                d, c = judge_pairs(kept, view.mistakes)
                p0, d0, c0 = out[s]
                out[s] = (p0 + len(kept), d0 + d, c0 + c)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=200, help="training tasks per environment")
    ap.add_argument("--quick", action="store_true", help="a smaller grid")
    args = ap.parse_args()
    chosen_grow = (DemoConfig().branch_points, DemoConfig().branches, DemoConfig().rollouts)
    chosen_pairs = (DEMO_PAIRS.margin, DEMO_PAIRS.confidence, DEMO_PAIRS.discount, False)
    grows = sorted({BASE_GROW, chosen_grow, (3, 3, 2), (3, 3, 4)}
                   | (set() if args.quick else {(4, 4, 1), (4, 4, 2), (4, 4, 4)}))
    margins = [0.1, 0.2] if args.quick else [0.1, 0.2, 0.3]
    confidences = [None, 1.0] if args.quick else [None, 1.0, 2.0]
    discounts = [1.0, 0.9] if args.quick else [1.0, 0.95, 0.9]
    settings = sorted({*itertools.product(margins, confidences, discounts, [False, True]),
                       BASE_PAIRS, chosen_pairs, (*chosen_pairs[:3], True)},
                      key=lambda s: (s[0], -1 if s[1] is None else s[1], -s[2], s[3]))
    print(f"tasks per env: {args.tasks}; baseline: grow {BASE_GROW}, pairs {BASE_PAIRS}; "
          f"chosen: grow {chosen_grow}, pairs {chosen_pairs}")
    header = (f"{'env':5} {'bp':>2} {'br':>2} {'K':>2} {'margin':>6} {'Z':>4} {'G':>5} "
              f"{'credit':>7} {'pairs':>6} {'decided':>7} {'correct':>7} {'precision':>9} "
              f"{'vs base':>7} {'grow s':>6}")
    ok = True
    for env in ("fs", "shop"):
        print(f"\n{header}")
        rows: dict[tuple[Any, ...], tuple[int, int, int]] = {}
        grown = {}
        for g in grows:
            grown[g] = asyncio.run(grow(env, args.tasks, *g))
        base = grade(grown[BASE_GROW][0], [BASE_PAIRS])[BASE_PAIRS]
        for g in grows:
            trees, seconds = grown[g]
            graded = grade(trees, settings)
            for s in settings:
                rows[(*g, *s)] = r = graded[s]
                prec = r[2] / r[1] if r[1] else float("nan")
                mark = " <- chosen" if (g, s) == (chosen_grow, chosen_pairs) else (
                    " <- baseline" if (g, s) == (BASE_GROW, BASE_PAIRS) else "")
                print(f"{env:5} {g[0]:>2} {g[1]:>2} {g[2]:>2} {s[0]:>6.2f} "
                      f"{'-' if s[1] is None else f'{s[1]:g}':>4} {s[2]:>5.2f} "
                      f"{'binary' if s[3] else 'partial':>7} {r[0]:>6} {r[1]:>7} {r[2]:>7} "
                      f"{prec:>9.3f} {r[2] / max(1, base[2]):>7.2f} {seconds:>6.1f}{mark}")
        chosen = rows[(*chosen_grow, *chosen_pairs)]
        binary = rows[(*chosen_grow, *chosen_pairs[:3], True)]
        precision = chosen[2] / chosen[1] if chosen[1] else 0.0
        print(f"{env}: chosen defaults: precision {precision:.3f} (target >= 0.97), "
              f"correct decided pairs {chosen[2]} vs baseline {base[2]} "
              f"(ratio {chosen[2] / max(1, base[2]):.2f}, target >= 1); baseline precision "
              f"{base[2] / max(1, base[1]):.3f}")
        print(f"{env}: usable pairs with partial credit / with --binary at the chosen "
              f"defaults: {chosen[0]} / {binary[0]} = {chosen[0] / max(1, binary[0]):.2f}; "
              f"correct decided {chosen[2]} / {binary[2]} = "
              f"{chosen[2] / max(1, binary[2]):.2f}; precision {precision:.3f} vs "
              f"{binary[2] / max(1, binary[1]):.3f}")
        ok &= precision >= 0.97 and chosen[2] >= base[2]
    print("\ntargets met" if ok else "\nTARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
