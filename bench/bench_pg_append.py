"""SqlEventLog.append on PostgreSQL against asyncpg's fastest bulk path.

The baseline encodes the same rows (event_row, as SqlEventLog does), copies them with
``copy_records_to_table`` into a staging table and moves them with one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` into the same tables and indexes; it
validates nothing and writes no ``trees`` rows. SqlEventLog
validates every event against the stored facts, checks idempotency and assigns seq in
commit order. Both run in fresh schemas of the same database, timed in this process.
Prints both rates and their ratio; exits 1 below 0.5.

    BRANCHPOINT_TEST_PG=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/bench_pg_append.py [--events N] [--batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import events_per_tree, synthetic_events

from branchpoint.store.events import decode_event, encode_event
from branchpoint.store.sql import SqlEventLog
from branchpoint.store.sqlbase import EVENT_COLUMNS, event_row

TARGET = 0.5
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=20_000, help="events per append")
    args = ap.parse_args()
    url = os.environ.get("BRANCHPOINT_TEST_PG") or DEFAULT_PG

    n_trees = -(-args.events // events_per_tree(3, 3))
    # as they arrive from JSON, like every real caller's events
    events = [decode_event(encode_event(e)) for e in synthetic_events(n_trees, 3, 3, seed=2)]
    batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
    print(f"{len(events)} events in {n_trees} trees, batches of {args.batch}")

    admin = await asyncpg.connect(url)
    schemas = [f"bp_bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    try:
        # baseline: COPY into staging, then one INSERT ... ON CONFLICT DO NOTHING per batch
        # both write into the same tables: the schema SqlEventLog creates
        sep = "&" if "?" in url else "?"
        await (await SqlEventLog.open(f"{url}{sep}schema={schemas[0]}")).close()
        conn = await asyncpg.connect(url, server_settings={"search_path": schemas[0]})
        cols = ", ".join(EVENT_COLUMNS)
        t0 = time.perf_counter()
        for batch in batches:
            rows = [event_row(e) for e in batch]
            async with conn.transaction():
                await conn.execute(f"CREATE TEMP TABLE staging ON COMMIT DROP AS "
                                   f"SELECT {cols} FROM events WITH NO DATA")
                await conn.copy_records_to_table("staging", records=rows,
                                                 columns=list(EVENT_COLUMNS))
                await conn.execute(f"INSERT INTO events ({cols}) SELECT {cols} FROM staging "
                                   "ON CONFLICT DO NOTHING")
        base_s = time.perf_counter() - t0
        assert await conn.fetchval("SELECT count(*) FROM events") == len(events)
        await conn.close()

        log = await SqlEventLog.open(f"{url}{sep}schema={schemas[1]}")
        t0 = time.perf_counter()
        for batch in batches:
            await log.append(batch, normalized=True)
        ours_s = time.perf_counter() - t0
        assert len(await log.read_after(0, limit=len(events) + 1)) == len(events)
        await log.close()
    finally:
        for s in schemas:
            await admin.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await admin.close()

    base, ours = len(events) / base_s, len(events) / ours_s
    print(f"asyncpg COPY + INSERT ON CONFLICT: {base:10,.0f} events/s ({base_s:.2f} s)")
    print(f"SqlEventLog.append:                {ours:10,.0f} events/s ({ours_s:.2f} s)")
    print(f"ratio {ours / base:.2f} (target >= {TARGET})")
    return 0 if ours / base >= TARGET else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
