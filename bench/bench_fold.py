"""Folding stored events into trees, against building the same graphs from tuples in memory;
and the memory that 1 million folded nodes take.

1. A SQLite store of synthetic trees (``bench/_data.py``). *Stored*: every tree's heads
   streamed by ``SqlEventLog.iter_heads`` (the bulk read, chunks of whole trees on one
   connection), each folded by :func:`branchpoint.store.tree.fold` (what exports do).
   For comparison, per-tree ``read_heads`` calls, one round trip each. *Baseline*: the
   same DiGraphs built with plain NetworkX calls from the
   heads already decoded and held in memory. Target: the stored rate is at least half the
   baseline's.
2. 1,000,000 nodes folded in memory (heads generated tree by tree, graphs kept): the
   memory the graphs hold (tracemalloc) and the process's RSS growth. Target: <= 1 GiB.

Prints the figures; exits 1 when a target is missed.

    .venv/bin/python bench/bench_fold.py [--trees N] [--nodes N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import events_per_tree, synthetic_events, write_sqlite

from branchpoint.store.events import EventHead
from branchpoint.store.sql import SqlEventLog
from branchpoint.store.sqlbase import HEAD_SELECT, head_from_row
from branchpoint.store.tree import fold

RATIO_TARGET = 0.5
MEMORY_TARGET = 1 << 30
T = TypeVar("T")


def build_store(path: Path, n_trees: int, branching: int, depth: int) -> int:
    return write_sqlite(path, synthetic_events(n_trees, branching, depth, seed=1), batch_size=5000)


def plain_graph(tree_id: str, heads: list[EventHead]) -> nx.DiGraph:
    """The baseline: the fold's graph, built inline from tuples with no dispatch."""
    g = nx.DiGraph(tree_id=tree_id, root=None, closed=None, last_seq=0)
    nodes = g.nodes
    for seq, type_, node, parent, done, value, source, reason in heads:
        if type_ == "node_created":
            if parent is None:
                g.graph["root"] = node
                g.add_node(node, seq=seq, depth=0, executed=False, done=None, scores={})
            else:
                g.add_node(node, seq=seq, depth=nodes[parent]["depth"] + 1, executed=False,
                           done=None, scores={})
                g.add_edge(parent, node)
        elif type_ == "action_executed":
            nodes[node]["executed"] = True
            nodes[node]["done"] = done
        elif type_ == "score_assigned":
            nodes[node]["scores"][source] = (seq, value)
        else:
            g.graph["closed"] = reason
        g.graph["last_seq"] = seq
    return g


async def fold_rates(url: str, repeat: int) -> tuple[float, float, float, float, int]:
    """Events per second of each way, best of ``repeat`` runs (a shared machine is noisy).
    The cyclic GC stays on, as in a real reader: building many dicts triggers it, and
    that cost belongs to building graphs, in memory or not."""
    log = await SqlEventLog.open(url)
    try:
        trees = [t.tree_id for t in await log.list_trees()]
        # the baseline gets plain tuples, the cheapest decoded form (see events.HeadRow)
        heads = {t: [tuple(h) for h in await log.read_heads(t)] for t in trees}
        t_stored = t_per_tree = float("inf")
        for _ in range(repeat):
            gc.collect()
            t0 = time.perf_counter()
            stored = [fold(t, h) async for t, h in log.iter_heads()]
            t_stored = min(t_stored, time.perf_counter() - t0)
        for _ in range(repeat):
            gc.collect()
            t0 = time.perf_counter()
            one_by_one = [fold(t, await log.read_heads(t)) for t in trees]
            t_per_tree = min(t_per_tree, time.perf_counter() - t0)
    finally:
        await log.close()
    for x, w in zip(stored, one_by_one, strict=True):  # same trees, same order
        assert x.graph == w.graph and nx.utils.graphs_equal(x, w)
    del one_by_one  # the baseline below runs with the heap the stored side had
    n_events = sum(len(h) for h in heads.values())
    t_plain = t_fold_mem = float("inf")
    for _ in range(repeat):
        plain, dt = timed(lambda: [plain_graph(t, heads[t]) for t in trees])
        t_plain = min(t_plain, dt)
        in_memory, dt = timed(lambda: [fold(t, heads[t]) for t in trees])
        t_fold_mem = min(t_fold_mem, dt)
    for x, y, z in zip(stored, plain, in_memory, strict=True):
        assert x.graph == y.graph == z.graph
        assert nx.utils.graphs_equal(x, y) and nx.utils.graphs_equal(x, z)
        assert dict(x.nodes(data=True)) == dict(y.nodes(data=True))
    return (n_events / t_stored, n_events / t_per_tree, n_events / t_plain,
            n_events / t_fold_mem, len(trees))


def sqlite3_rate(path: Path, repeat: int) -> float:
    """For comparison: the same reads through the stdlib ``sqlite3`` module, no SQLAlchemy."""
    con = sqlite3.connect(path)
    trees = [r[0] for r in con.execute("SELECT tree_id FROM trees ORDER BY root_seq")]
    sql = f"{HEAD_SELECT} FROM events WHERE tree_id = ? ORDER BY seq"

    def run() -> int:
        n = 0
        for t in trees:
            heads = [head_from_row(r) for r in con.execute(sql, (t,))]
            fold(t, heads)
            n += len(heads)
        return n

    best, n = float("inf"), 0
    for _ in range(repeat):
        n, dt = timed(run)
        best = min(best, dt)
    con.close()
    return n / best


def synthetic_heads(n_nodes: int, branching: int = 4) -> Iterator[tuple[str, list[EventHead]]]:
    """Trees of 85 nodes (branching 4, depth 3) as heads, until ``n_nodes`` nodes."""
    seq, made, t = 0, 0, 0
    while made < n_nodes:
        tree_id, heads = f"tree-{t:07d}", []
        t += 1
        frontier = [None]
        level = 0
        while frontier and made < n_nodes and level <= 3:
            nxt = []
            for parent in frontier:
                for b in range(1 if parent is None else branching):
                    if made >= n_nodes:
                        break
                    node = "root" if parent is None else f"{parent}.{b}"
                    seq += 1
                    heads.append(EventHead(seq, "node_created", node, parent, None, None, None))
                    made += 1
                    if parent is not None:
                        seq += 1
                        heads.append(EventHead(seq, "action_executed", node, None, level == 3,
                                               None, None))
                    if level == 3:
                        seq += 1
                        heads.append(EventHead(seq, "score_assigned", node, None, None,
                                               (seq % 100) / 100, "checker"))
                    nxt.append(node)
            frontier, level = nxt, level + 1
        yield tree_id, heads


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def memory_child(mode: str, n_nodes: int) -> None:
    """Run in a fresh process: fold ``n_nodes`` and print nodes and bytes held, by RSS
    growth (``rss``) or by tracemalloc (``traced``, whose own bookkeeping inflates RSS)."""
    gc.collect()
    rss0 = rss_bytes()
    if mode == "traced":
        tracemalloc.start()
    graphs = [fold(t, heads) for t, heads in synthetic_heads(n_nodes)]
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] if mode == "traced" else rss_bytes() - rss0
    print(sum(g.number_of_nodes() for g in graphs), held)


def memory_of_folded(n_nodes: int) -> tuple[int, int, int]:
    out = {}
    for mode in ("rss", "traced"):
        res = subprocess.run([sys.executable, __file__, "--memory-child", mode,
                              "--nodes", str(n_nodes)], capture_output=True, text=True,
                             check=True)
        nodes, held = map(int, res.stdout.split())
        out[mode] = held
    return nodes, out["traced"], out["rss"]


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its duration, starting from a collected heap."""
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=2000)
    ap.add_argument("--branching", type=int, default=3)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-child", choices=("rss", "traced"), help=argparse.SUPPRESS)
    ap.add_argument("--keep", type=Path, help="keep the database in this folder")
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.nodes)
        return 0

    work = args.keep or Path(tempfile.mkdtemp(prefix="bp-fold-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"fold-{args.trees}-{args.branching}-{args.depth}.db"
    ok = True
    try:
        if not db.exists():
            t0 = time.perf_counter()
            n = build_store(db, args.trees, args.branching, args.depth)
            print(f"store: {n:,} events in {args.trees:,} trees "
                  f"({events_per_tree(args.branching, args.depth)} per tree), "
                  f"built in {time.perf_counter() - t0:.1f} s")
        stored, per_tree, plain, fold_mem, trees = asyncio.run(
            fold_rates(f"sqlite:///{db}", args.repeat))
        ratio = stored / plain
        print(f"fold from SQLite (iter_heads + fold): {stored:,.0f} events/s over {trees:,} trees")
        print(f"(for comparison) read_heads per tree + fold: {per_tree:,.0f} events/s, "
              f"ratio {per_tree / plain:.2f}")
        print(f"plain DiGraphs from in-memory tuples: {plain:,.0f} events/s")
        print(f"fold() from in-memory tuples:         {fold_mem:,.0f} events/s")
        raw = sqlite3_rate(db, args.repeat)
        print(f"(for comparison) stdlib sqlite3 reads + fold: {raw:,.0f} events/s, "
              f"ratio {raw / plain:.2f}")
        print(f"ratio stored / in-memory baseline: {ratio:.2f} (target >= {RATIO_TARGET})")
        ok &= ratio >= RATIO_TARGET

        nodes, traced, rss = memory_of_folded(args.nodes)
        print(f"{nodes:,} nodes folded in memory: {traced / 2**20:,.0f} MiB traced "
              f"({traced / nodes:,.0f} B/node), RSS growth {rss / 2**20:,.0f} MiB "
              f"(target <= {MEMORY_TARGET / 2**20:,.0f} MiB)")
        ok &= max(traced, rss) <= MEMORY_TARGET
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
