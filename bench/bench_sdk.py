"""What recording with the SDK costs an agent, and how fast it stores.

1. Per-step cost in the agent's thread: a loop that records a step (``t.step(action,
   observation)``) and then spends 1 ms elsewhere (sleeping, as an agent waiting on its
   model does), each ``t.step`` timed with ``perf_counter_ns``; median and 99th percentile
   against the same loop with recording off (the same call to a function that does
   nothing). Targets: added median < 10 us, added p99 < 100 us.
2. The import: ``python -X importtime -c "import branchpoint.sdk"``, the cumulative time of
   ``branchpoint.sdk`` (best of 7), with the package's bytecode compiled first, as an
   installed package has it (a checkout run with ``PYTHONDONTWRITEBYTECODE`` has none and
   compiles every module on each import); ``import msgspec`` alone for reference. Target:
   under 100 ms.
3. End-to-end throughput into a local SQLite file: the events of ``bench_ingest.py``
   (trees of branching 3 and depth 3) recorded through the SDK's API, from the first call to
   ``flush()`` returning, against the plain ``json`` + ``sqlite3`` ``executemany`` script of
   ``bench_ingest.py`` on the same events; both timed inside their own processes. Target:
   ratio >= 0.5.

    .venv/bin/python bench/bench_sdk.py [--steps N] [--events N] [--runs N] [--no-import]

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import events_per_tree, synthetic_events, write_jsonl
from bench_ingest import BASELINE

STEP_MEDIAN_US, STEP_P99_US, RATIO, IMPORT_MS = 10.0, 100.0, 0.5, 100.0

ACTION = {"role": "assistant", "content": "Let me read the file.", "tool_calls": [{
    "id": "call_1", "type": "function",
    "function": {"name": "read_file", "arguments": '{"path": "src/app.py"}'}}]}
OBSERVATION = [{"role": "tool", "tool_call_id": "call_1", "content": "def main(): ..."}]


def step_loop(steps: int, record: bool, db: Path) -> list[int]:
    """Nanoseconds of each step call; a new trajectory every 50 steps."""
    from branchpoint.sdk import Recorder

    rec = Recorder(f"sqlite:///{db}") if record else None
    times: list[int] = []
    t: Any = None
    clock = time.perf_counter_ns
    for i in range(steps):
        if i % 50 == 0:
            if t is not None:
                t.close()
            t = rec.trajectory("Fix the bug in src/app.py", env="bench", task_id=i) \
                if rec is not None else _Off()
        t0 = clock()
        t.step(ACTION, OBSERVATION)
        times.append(clock() - t0)
        time.sleep(0.001)  # the agent waits on its model
    if rec is not None:
        t.close()
        assert rec.flush(timeout=120)
        s = rec.stats()
        assert s.dropped == 0 and s.errors == 0 and s.dead_lettered == 0, s
        rec.close()
    return times


class _Off:
    """Recording off: the same call, doing nothing."""

    def step(self, action: Any, observation: Any) -> str:
        return ""

    def close(self) -> None:
        pass


def replay(src: Path, db: Path) -> None:
    """Record the events of ``src`` through the SDK into ``db``; print count and seconds."""
    from branchpoint.store.events import decode_event

    trees: list[list[Any]] = []
    with src.open("rb") as fh:
        for line in fh:
            ev = decode_event(line)
            if ev.payload.__class__.__name__ == "NodeCreated" and ev.payload.parent_id is None:
                trees.append([])
            trees[-1].append(ev.payload)
    # The input, decoded up front so that its decoding stays out of the timing, is not what
    # an agent holds: 200,000 steps' messages at once. Out of the collector's sight, it
    # leaves the collector what a recording agent has: its in-flight events and the SDK's.
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    from branchpoint.sdk import Recorder

    rec = Recorder(f"sqlite:///{db}", origin="bench")
    for payloads in trees:
        root = payloads[0]
        task = dict(root.task)
        t = rec.trajectory(root.messages, env=task.pop("env"), task_id=task.pop("task_id"),
                           tools=root.tools, **task)
        ids = {"root": "root"}
        for p in payloads[1:]:
            kind = p.__class__.__name__
            if kind == "NodeCreated":
                ids[p.node_id] = t.fork(ids[p.parent_id]).step(p.action,
                                                               produced_by=p.produced_by)
            elif kind == "ActionExecuted":
                t.observe(p.observation, done=p.done, node=ids[p.node_id],
                          latency_ms=p.latency_ms)
            elif kind == "ScoreAssigned":
                t.score(p.value, source=p.source, node=ids[p.node_id])
            else:
                t.close(p.reason)
    assert rec.flush(timeout=600)
    elapsed = time.perf_counter() - t0
    s = rec.stats()
    rec.close()
    print(json.dumps({"events": s.sent, "seconds": elapsed, "errors": s.errors,
                      "dead_lettered": s.dead_lettered, "dropped": s.dropped,
                      "spooled": s.spooled}))


def import_ms(module: str, runs: int = 7) -> float:
    """Best cumulative ``-X importtime`` figure of ``module``, in milliseconds."""
    best = float("inf")
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                             check=True, capture_output=True, text=True).stderr
        for line in err.splitlines():
            fields = line.split("|")
            if len(fields) == 3 and fields[2].strip() == module:
                best = min(best, int(fields[1]) / 1000)
    return best


def pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000


def step_figure(steps: int, work: Path) -> bool:
    off = step_loop(steps, False, work / "off.db")
    on = step_loop(steps, True, work / "on.db")
    med_off, med_on = statistics.median(off) / 1000, statistics.median(on) / 1000
    p99_off, p99_on = pct(off, 0.99), pct(on, 0.99)
    med, p99 = med_on - med_off, p99_on - p99_off
    print(f"per step ({steps:,} steps, 1 ms elsewhere each):")
    print(f"  recording off: median {med_off:6.2f} us  p99 {p99_off:6.2f} us")
    print(f"  recording on:  median {med_on:6.2f} us  p99 {p99_on:6.2f} us  "
          f"max {max(on) / 1000:8.1f} us")
    print(f"  added: median {med:.2f} us (target < {STEP_MEDIAN_US}), "
          f"p99 {p99:.2f} us (target < {STEP_P99_US})")
    return med < STEP_MEDIAN_US and p99 < STEP_P99_US


def import_figure() -> bool:
    import compileall

    import branchpoint.sdk
    import branchpoint.store

    for package in (branchpoint.sdk, branchpoint.store):  # compiled as pip would
        compileall.compile_dir(Path(str(package.__file__)).parent, quiet=1)
    ms, ref = import_ms("branchpoint.sdk"), import_ms("msgspec")
    print(f"import branchpoint.sdk: {ms:.1f} ms cumulative, best of 7 "
          f"(target < {IMPORT_MS:.0f}; import msgspec alone: {ref:.1f} ms)")
    return ms < IMPORT_MS


def throughput_figure(events: int, runs: int, work: Path) -> bool:
    src = work / "events.jsonl"
    n_trees = -(-events // events_per_tree(3, 3))
    n = write_jsonl(src, synthetic_events(n_trees, 3, 3, seed=1))
    base_s, ours_s = [], []
    for run in range(runs):
        out = subprocess.run([sys.executable, "-c", BASELINE, str(src),
                              str(work / f"baseline{run}.db")],
                             check=True, capture_output=True, text=True).stdout.split()
        assert int(out[0]) == n, out
        base_s.append(float(out[1]))
        res = json.loads(subprocess.run(
            [sys.executable, __file__, "--replay", str(src), str(work / f"sdk{run}.db")],
            check=True, capture_output=True, text=True).stdout)
        assert res["events"] == n and not res["dropped"] and not res["errors"], res
        ours_s.append(res["seconds"])
    base, ours = n / min(base_s), n / min(ours_s)
    print(f"throughput ({n:,} events, best of {runs}):")
    print(f"  baseline json+sqlite3: {base:10,.0f} events/s")
    print(f"  SDK into SQLite:       {ours:10,.0f} events/s (record to flush)")
    print(f"  ratio {ours / base:.2f} (target >= {RATIO})")
    return ours / base >= RATIO


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3, help="best of N throughput runs")
    ap.add_argument("--no-import", action="store_true", help="skip the import figure")
    ap.add_argument("--replay", nargs=2, type=Path, metavar=("SRC", "DB"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay:
        replay(*args.replay)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bp-bench-sdk-"))
    os.environ["BRANCHPOINT_SPOOL_DIR"] = str(work / "spool")  # the bench's own spool
    ok = True
    try:
        if args.steps:
            ok &= step_figure(args.steps, work)
        if not args.no_import:
            ok &= import_figure()
        if args.events:
            ok &= throughput_figure(args.events, args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
