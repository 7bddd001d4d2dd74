"""The sampler's own overhead per node (everything but waiting for the model), and how it
grows from 100 to 10,000 nodes in a run.

The policy answers at once, in process (no HTTP, no model), so what is timed is the
sampler itself: proposing bookkeeping, forking and stepping the environment, minting
events through the builder, appending them to the store (SQLite file), scoring leaves.
Target: the cost per node at 10,000 nodes at most 1.5 times the cost at 100 (it should be
flat: nothing in the sampler grows with the run).

Run: ``.venv/bin/python bench/bench_sampler_overhead.py``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from branchpoint.sampler.grow import SampleConfig, sample_run
from branchpoint.sampler.policy import Candidate, Sampling
from branchpoint.store.log import open_log

COMMANDS = ["ls", "ls /", "cd /", "find txt", "cat /a", "mkdir /x", "submit"]


class InstantPolicy:
    """Answers every request at once with n distinct text commands."""

    def __init__(self) -> None:
        self.k = 0

    async def propose(self, messages: Any, tools: Any, n: int, *, seed: Any = None
                      ) -> list[Candidate]:
        out = []
        for i in range(n):
            self.k += 1
            cmd = COMMANDS[(self.k + i) % (len(COMMANDS) - 1)]  # never submit: full depth
            out.append(Candidate({"role": "assistant", "content": cmd}, 1,
                                 {"policy": "instant", "choice": i, "count": 1,
                                  "request_id": f"r{self.k}",
                                  "usage": {"completion_tokens": 3}}, 3, "stop"))
        return out


async def run(nodes_wanted: int, folder: Path) -> tuple[int, float]:
    # tree with branching 3, depth 4: 3 + 9 + 27 + 81 = 120 nodes per tree
    trees = max(1, round(nodes_wanted / 120))
    db = f"sqlite:///{folder / f'bench-{nodes_wanted}.db'}"
    log = await open_log(db)
    cfg = SampleConfig(env="fs", tasks=list(range(trees)), model="instant", branching=3,
                       depth=4, concurrency=4, run="b", sampling=Sampling(),
                       split="train")
    try:
        t0 = time.perf_counter()
        outcomes = await sample_run(cfg, InstantPolicy(), log,  # type: ignore[arg-type]
                                    use_tools=False)
        seconds = time.perf_counter() - t0
    finally:
        await log.close()
    return sum(o.nodes for o in outcomes), seconds


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for wanted in (100, 1_000, 10_000):
            nodes, seconds = asyncio.run(run(wanted, Path(tmp)))
            results[wanted] = seconds / nodes * 1000
            print(f"{nodes:>6} nodes: {seconds:6.2f} s, {results[wanted]:.3f} ms per node "
                  f"(sampler overhead, model time zero)")
    ratio = results[10_000] / results[100]
    print(f"per-node overhead at 10,000 nodes / at 100 nodes: {ratio:.2f} (target <= 1.5)")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
