"""The server's figures, in one run: HTTP ingest against the ``json`` + ``sqlite3``
baseline of ``bench_ingest.py``, and a streamed DPO export of a large database.

1. Ingest: the same JSONL, posted to ``branchpoint serve`` (SQLite file) in batches of
   1,000 events (``application/jsonl``, one keep-alive connection), against the baseline
   script parsing it with ``json`` and inserting with ``sqlite3`` ``executemany``.
   Target: at least a quarter of the baseline's rate.
2. Export: ``GET /v1/export/dpo`` streamed from a server over a database of
   ``--export-events`` events (default one million): time to first byte, pairs per second,
   and the server's peak resident memory (``VmHWM``). Target: under 500 MB.

    .venv/bin/python bench/bench_http.py [--events N] [--export-events N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import events_per_tree, synthetic_events, write_jsonl
from bench_ingest import BASELINE

INGEST_TARGET = 0.25
MEMORY_TARGET_MB = 500
BATCH = 1000
CLI = Path(sys.executable).parent / "branchpoint"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(db: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen([str(CLI), "serve", "--db", db, "--port", str(port),
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batches(src: Path) -> Iterator[bytes]:
    lines: list[bytes] = []
    with src.open("rb") as fh:
        for line in fh:
            lines.append(line)
            if len(lines) == BATCH:
                yield b"".join(lines)
                lines = []
    if lines:
        yield b"".join(lines)


def bench_ingest(work: Path, n_events: int, runs: int) -> bool:
    src = work / "ingest.jsonl"
    n_trees = -(-n_events // events_per_tree(3, 3))
    n = write_jsonl(src, synthetic_events(n_trees, 3, 3, seed=1))
    print(f"== ingest: {n} events, {src.stat().st_size / 1e6:.1f} MB of JSONL, "
          f"batches of {BATCH}")
    base_s, ours_s = [], []
    for run in range(runs):
        out = subprocess.run([sys.executable, "-c", BASELINE, str(src),
                              str(work / f"baseline{run}.db")],
                             check=True, capture_output=True, text=True).stdout.split()
        base_s.append(float(out[1]))
        with server(f"sqlite:///{work / f'served{run}.db'}") as (url, _), \
                httpx.Client(base_url=url, timeout=120) as client:
            stored = 0
            t0 = time.perf_counter()
            for body in batches(src):
                r = client.post("/v1/events", content=body,
                                headers={"content-type": "application/jsonl"})
                r.raise_for_status()
                stored += r.json()["stored"]
            ours_s.append(time.perf_counter() - t0)
            assert stored == n, (stored, n)
    base, ours = n / min(base_s), n / min(ours_s)
    ratio = ours / base
    print(f"baseline json+sqlite3 : {base:10,.0f} events/s (best of {runs})")
    print(f"HTTP POST /v1/events  : {ours:10,.0f} events/s (best of {runs})")
    print(f"ratio {ratio:.2f} (target >= {INGEST_TARGET})")
    return ratio >= INGEST_TARGET


def bench_export(work: Path, n_events: int) -> bool:
    src = work / "export.jsonl"
    n_trees = -(-n_events // events_per_tree(3, 3))
    n = write_jsonl(src, synthetic_events(n_trees, 3, 3, seed=2))
    db = f"sqlite:///{work / 'export.db'}"
    subprocess.run([str(CLI), "ingest", str(src), "--db", db], check=True,
                   capture_output=True)
    src.unlink()
    print(f"== export: DPO pairs streamed from a database of {n:,} events in {n_trees:,} trees")
    with server(db) as (url, pid), httpx.Client(base_url=url, timeout=None) as client:
        before = peak_rss_mb(pid)
        t0 = time.perf_counter()
        first = None
        pairs = 0
        size = 0
        with client.stream("GET", "/v1/export/dpo") as r:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                if first is None:
                    first = time.perf_counter() - t0
                pairs += chunk.count(b"\n")
                size += len(chunk)
        total = time.perf_counter() - t0
        peak = peak_rss_mb(pid)
    print(f"time to first byte    : {first or 0:.3f} s")
    print(f"pairs                 : {pairs:,} in {total:.1f} s = {pairs / total:,.0f} pairs/s "
          f"({size / 1e6:.0f} MB)")
    print(f"server peak RSS       : {peak:.0f} MB (after start-up: {before:.0f} MB; "
          f"target < {MEMORY_TARGET_MB} MB)")
    return peak < MEMORY_TARGET_MB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--export-events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bp-bench-http-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("BRANCHPOINT_TOKEN", None)
    try:
        ok = bench_ingest(work, args.events, args.runs)
        ok = bench_export(work, args.export_events) and ok
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
