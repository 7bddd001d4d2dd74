"""Exporting ``dpo`` from a SQLite store of 1 million events streams with flat memory.

Builds a store of synthetic trees (``bench/_data.py``: 107 events per tree, so about 9,350
trees for 1 million events), then runs ``branchpoint export dpo --out FILE`` in a
subprocess and reads the child's peak RSS. The same export over a store a tenth the size
shows the memory is flat (it does not grow with the store). Target: peak RSS < 500 MB.

Prints the figures; exits 1 when the target is missed.

    .venv/bin/python bench/bench_export.py [--events N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import events_per_tree, synthetic_events, write_sqlite

TARGET_BYTES = 500 * 10**6
BRANCHING, DEPTH = 3, 3

# The child reports its own peak RSS (ru_maxrss, KiB on Linux) after the export finished.
CHILD = r"""
import resource, sys
from branchpoint.cli.main import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def build_store(path: Path, n_trees: int) -> int:
    events = synthetic_events(n_trees, BRANCHING, DEPTH, seed=2)
    return write_sqlite(path, events, batch_size=20_000)


def export(db: Path, out: Path) -> tuple[float, int, int]:
    """Seconds, rows written and the child's peak RSS in bytes."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", CHILD, "export", "dpo", "--db", f"sqlite:///{db}",
         "--out", str(out)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"export failed ({res.returncode}):\n{res.stderr}")
    peak = next(int(line.split()[1]) * 1024 for line in res.stderr.splitlines()
                if line.startswith("PEAK_KIB"))
    with out.open("rb") as fh:
        rows = sum(1 for _ in fh)
    return elapsed, rows, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="keep the databases in this folder")
    args = ap.parse_args()

    per_tree = events_per_tree(BRANCHING, DEPTH)
    n_trees = max(1000, -(-args.events // per_tree))
    work = args.keep or Path(tempfile.mkdtemp(prefix="bp-export-"))
    work.mkdir(parents=True, exist_ok=True)
    ok = True
    try:
        peaks = []
        for trees in (n_trees // 10, n_trees):
            db = work / f"export-{trees}.db"
            if not db.exists():
                t0 = time.perf_counter()
                n = build_store(db, trees)
                print(f"store: {n:,} events in {trees:,} trees, "
                      f"built in {time.perf_counter() - t0:.0f} s, "
                      f"{db.stat().st_size / 1e6:,.0f} MB")
            out = work / f"dpo-{trees}.jsonl"
            elapsed, rows, peak = export(db, out)
            peaks.append(peak)
            print(f"export dpo of {trees * per_tree:,} events ({trees:,} trees): {rows:,} rows, "
                  f"{out.stat().st_size / 1e6:,.0f} MB in {elapsed:.1f} s "
                  f"({trees * per_tree / elapsed:,.0f} events/s), peak RSS {peak / 1e6:,.0f} MB")
            out.unlink()
        print(f"peak RSS at 10x the events: {peaks[1] / peaks[0]:.2f}x; "
              f"target < {TARGET_BYTES / 1e6:,.0f} MB")
        ok = peaks[1] < TARGET_BYTES
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
