"""What a fork costs for users' environments, at depth 4 and 16: the README's examples
(a free-text environment forked by replay, stateless tools forked by copying the
conversation, a TRL-style class by replay and, declared stateless, by copying), each
against the same environment forked by replay in the same run.

Run: ``.venv/bin/python bench/bench_fork_adapters.py``. Median of repeated forks.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from branchpoint.sampler.envs.registry import make_env
from branchpoint.sampler.fork import fork

REPEAT = 50
DEPTHS = (4, 16)
README = Path(__file__).resolve().parents[1] / "README.md"


def _block(first_line: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        if block.startswith(first_line):
            return str(block)
    raise LookupError(first_line)


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function",
         "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def _median_ms(env: Any, how: str) -> float:
    times = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        child = fork(env, how)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
        child.close()
    return statistics.median(times) * 1000


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bp-bench-"))
    (folder / "guess.py").write_text(_block("# guess.py"))
    (folder / "faq.py").write_text(_block("# faq.py"))
    (folder / "support_tools.py").write_text(_block("# support_tools.py"))
    rows = folder / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "refund $5", "balance": 1e9, "expected": 5.0}) + "\n")
    sys.path.insert(0, str(folder))
    trl = {"class": "support_tools:SupportTools", "tasks_file": str(rows),
           "reward": "support_tools:refund_reward", "max_steps": 100}
    cases = [
        ("guess (free text)", "guess:GuessEnv", {"max_steps": 100, "high": 10**9},
         lambda k: {"role": "assistant", "content": str(k)}, ["replay"]),
        ("faq (stateless tools)", "faq:FaqEnv", {"max_steps": 100},
         lambda k: _call("search", query="refund"), ["replay", "stateless"]),
        ("trl class", "trl", {**trl, "stateless": True},
         lambda k: _call("refund", amount=0.01), ["replay", "stateless"]),
    ]
    print(f"{'environment':<24} {'depth':>5} {'replay ms':>10} {'stateless ms':>13} "
          f"{'ratio':>7}")
    for label, name, options, action, ways in cases:
        for depth in DEPTHS:
            env = make_env(name, 0, **options)
            env.reset()
            for k in range(depth):
                env.step(action(k))
            replay_ms = _median_ms(env, "replay")
            if "stateless" in ways:
                copy_ms = _median_ms(env, "stateless")
                extra = f"{copy_ms:>13.3f} {replay_ms / copy_ms:>6.1f}x"
            else:
                extra = f"{'-':>13} {'-':>7}"
            print(f"{label:<24} {depth:>5} {replay_ms:>10.3f} {extra}")
            env.close()


if __name__ == "__main__":
    main()
