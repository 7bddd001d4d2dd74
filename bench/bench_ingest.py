"""``branchpoint ingest`` of ~200,000 events against a plain ``json`` + ``sqlite3`` script.

Both read the same JSONL file into a fresh SQLite file (WAL, synchronous=NORMAL). The
branchpoint side is timed as a whole command (process start-up and imports included); the
baseline is timed inside its own process, as the issue asks. Prints both rates and their
ratio; exits 1 if branchpoint is below half the baseline's rate.

    .venv/bin/python bench/bench_ingest.py [--events N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import events_per_tree, synthetic_events, write_jsonl

TARGET = 0.5

BASELINE = r"""
import json, sqlite3, sys, time
src, db = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
con = sqlite3.connect(db)
con.execute("PRAGMA journal_mode=WAL")
con.execute("PRAGMA synchronous=NORMAL")
con.execute("create table events(seq integer primary key, event_id text unique, "
            "tree_id text, type text, recorded_at text, payload text)")
sql = "insert into events(event_id, tree_id, type, recorded_at, payload) values (?,?,?,?,?)"
batch = []
n = 0
with open(src, "rb") as fh:
    for line in fh:
        if not line.strip():
            continue
        e = json.loads(line)
        batch.append((e["event_id"], e["tree_id"], e["type"], e["recorded_at"],
                      json.dumps(e["payload"])))
        if len(batch) == 1000:
            con.executemany(sql, batch)
            con.commit()
            n += len(batch)
            batch = []
if batch:
    con.executemany(sql, batch)
    con.commit()
    n += len(batch)
con.close()
print(n, time.perf_counter() - t0)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    ap.add_argument("--runs", type=int, default=3, help="best of N runs of each side")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "events.jsonl"
        n_trees = -(-args.events // events_per_tree(3, 3))
        n = write_jsonl(src, synthetic_events(n_trees, 3, 3, seed=1))
        print(f"{n} events in {n_trees} trees, {src.stat().st_size / 1e6:.1f} MB of JSONL")
        cli = Path(sys.executable).parent / "branchpoint"

        base_s, ours_s = [], []
        for run in range(args.runs):
            for f in work.glob("*.db*"):
                f.unlink()
            out = subprocess.run([sys.executable, "-c", BASELINE, str(src),
                                  str(work / f"baseline{run}.db")],
                                 check=True, capture_output=True, text=True).stdout.split()
            assert int(out[0]) == n, out
            base_s.append(float(out[1]))

            t0 = time.perf_counter()
            subprocess.run([str(cli), "ingest", str(src), "--db",
                            f"sqlite:///{work / f'ours{run}.db'}"],
                           check=True, capture_output=True)
            ours_s.append(time.perf_counter() - t0)

        base, ours = n / min(base_s), n / min(ours_s)
        ratio = ours / base
        print(f"baseline json+sqlite3: {base:10,.0f} events/s  (best {min(base_s):.2f} s)")
        print(f"branchpoint ingest:    {ours:10,.0f} events/s  (best {min(ours_s):.2f} s, "
              "start-up included)")
        print(f"ratio {ratio:.2f} (target >= {TARGET})")
        return 0 if ratio >= TARGET else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
