"""The latency the recording proxy adds to a chat completion call.

Starts the scripted OpenAI-compatible upstream of the tests (``tests/sdk/upstream.py``, a
stdlib HTTP server) and ``branchpoint serve --upstream`` over a fresh SQLite file, then
makes the same calls (a two-message history, non-streamed and streamed) directly and
through ``/proxy/TRAJECTORY_ID/v1``, alternating, over kept-alive connections, each timed
to its last byte. Each proxied call opens its own trajectory, recorded after the answer.
Prints median and 99th percentile of both and what the proxy adds.

    .venv/bin/python bench/bench_proxy.py [--calls N]
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BODY = {"model": "scripted-1", "temperature": 0.7, "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Read the file and report."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise SystemExit("a server did not start in 60 s")
        time.sleep(0.05)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300, help="calls of each kind and path")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bp-bench-proxy-"))
    up_port, bp_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, str(REPO / "tests/sdk/upstream.py"),
                                 str(up_port)], stdout=subprocess.DEVNULL)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "branchpoint"), "serve", "--db",
         f"sqlite:///{work / 'proxy.db'}", "--port", str(bp_port), "--upstream",
         f"http://127.0.0.1:{up_port}/v1", "--log-level", "warning"],
        stderr=subprocess.DEVNULL, env={**os.environ, "BRANCHPOINT_UPSTREAM_KEY": ""})
    try:
        wait_listening(up_port, upstream)
        wait_listening(bp_port, server)
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        results: dict[tuple[str, bool], list[float]] = {}
        with httpx.Client(timeout=60) as client:
            for i in range(-20, args.calls):  # the first 20 warm both paths up
                for stream in (False, True):
                    body = {**BODY, "stream": stream}
                    proxied = (f"http://127.0.0.1:{bp_port}/proxy/bench-{i}-{int(stream)}"
                               "/v1/chat/completions")
                    for name, url in (("direct", direct), ("proxy", proxied)):
                        t0 = time.perf_counter()
                        r = client.post(url, json=body)
                        r.read()
                        dt = (time.perf_counter() - t0) * 1000
                        assert r.status_code == 200, r.text
                        if i >= 0:
                            results.setdefault((name, stream), []).append(dt)
        deadline = time.monotonic() + 60
        want = 2 * (args.calls + 20)
        while time.monotonic() < deadline:  # every proxied call recorded, after its answer
            con = sqlite3.connect(work / "proxy.db")
            try:
                trees = con.execute("select count(distinct tree_id) from events").fetchone()[0]
            finally:
                con.close()
            if trees == want:
                break
            time.sleep(0.1)
        print(f"proxy latency ({args.calls} calls each, kept-alive connections, ms to the "
              f"last byte; {trees}/{want} proxied calls recorded):")
        for stream in (False, True):
            d, p = results[("direct", stream)], results[("proxy", stream)]
            kind = "streamed" if stream else "plain   "
            print(f"  {kind} direct: median {statistics.median(d):6.2f}  p99 {pct(d, .99):6.2f}"
                  f"   proxied: median {statistics.median(p):6.2f}  p99 {pct(p, .99):6.2f}"
                  f"   added: median {statistics.median(p) - statistics.median(d):6.2f}  "
                  f"p99 {pct(p, .99) - pct(d, .99):6.2f}")
        return 0 if trees == want else 1
    finally:
        server.terminate()
        upstream.terminate()
        server.wait(timeout=30)
        upstream.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
