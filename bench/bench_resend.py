"""Re-sending a stored batch that touches many trees, against its first insert.

A crashed recorder re-sends its spool: every event is already stored and must be
recognised as a duplicate. Both appends go to a SQLite log that already holds other trees
(not the empty-log fast path), through ``SqlEventLog.append_stream`` in chunks of 10,000
events decoded from JSON (what ``branchpoint ingest`` does). The baseline is the first
insert of the same batch, timed in the same run. Prints both times and their ratio; exits
1 when the re-send costs more than twice the first insert. A half-stored batch (every
other tree already stored) is timed as well, for information.

    .venv/bin/python bench/bench_resend.py [--trees N] [--others N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import events_per_tree, synthetic_events

from branchpoint.store.events import Event, decode_event, encode_event
from branchpoint.store.sql import SqlEventLog

TARGET = 2.0
CHUNK = 10_000


def chunks(events: list[Event]) -> list[tuple[list[Event], None]]:
    return [(events[i:i + CHUNK], None) for i in range(0, len(events), CHUNK)]


async def timed_append(log: SqlEventLog, events: list[Event]) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    result = await log.append_stream(chunks(events), normalized=True)
    return time.perf_counter() - t0, result.stored, result.duplicates


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=20_000, help="trees in the re-sent batch")
    ap.add_argument("--others", type=int, default=5_000, help="trees stored before")
    args = ap.parse_args()

    def decoded(n: int, seed: int) -> list[Event]:
        # small trees (a root, two executed children, scores, a close): many trees per event
        return [decode_event(encode_event(e)) for e in synthetic_events(n, 2, 1, seed=seed)]

    others, batch = decoded(args.others, 1), decoded(args.trees, 2)
    half = decoded(args.trees, 3)
    print(f"batch: {len(batch)} events in {args.trees} trees "
          f"({events_per_tree(2, 1)} per tree); {len(others)} events stored before")
    with tempfile.TemporaryDirectory() as tmp:
        log = await SqlEventLog.open(f"sqlite:///{Path(tmp) / 'resend.db'}")
        try:
            await log.append_stream(chunks(others), normalized=True)
            first_s, stored, _ = await timed_append(log, batch)
            assert stored == len(batch)
            again_s, stored, dups = await timed_append(log, batch)
            assert (stored, dups) == (0, len(batch))
            # every other tree of a new batch stored first: a re-send after a partial write
            per = events_per_tree(2, 1)
            stored_half = [e for i in range(0, len(half), 2 * per) for e in half[i:i + per]]
            await log.append_stream(chunks(stored_half), normalized=True)
            mixed_s, stored, dups = await timed_append(log, half)
            assert (stored, dups) == (len(half) - len(stored_half), len(stored_half))
        finally:
            await log.close()
    ratio = again_s / first_s
    print(f"first insert:             {first_s:6.2f} s ({len(batch) / first_s:9,.0f} events/s)")
    print(f"re-send of the batch:     {again_s:6.2f} s ({len(batch) / again_s:9,.0f} events/s)")
    print(f"re-send, half stored:     {mixed_s:6.2f} s (for information)")
    print(f"ratio re-send / first insert {ratio:.2f} (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
