"""An agent process for the SDK's tests: records TREES trajectories of STEPS steps each
into URL, tree ids ``PREFIX-K``, then flushes and prints ``flushed True|False``.

    python agent.py URL PREFIX TREES STEPS [--hang]

``--hang`` waits for stdin to close after flushing, so a test can SIGKILL the process at
that point; otherwise it exits, flushing again at interpreter exit.
"""

from __future__ import annotations

import sys

from branchpoint.sdk import Recorder

url, prefix, trees, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rec = Recorder(url, backoff_s=(0.02, 0.2))
for k in range(trees):
    with rec.trajectory([{"role": "user", "content": f"task {k}"}], env="agent",
                        task_id=k, tree_id=f"{prefix}-{k}") as t:
        for i in range(steps):
            t.step(f"step {i}", f"result {i}")
        t.score(1.0)
print("flushed", rec.flush(timeout=60), flush=True)
if "--hang" in sys.argv:
    sys.stdin.read()
