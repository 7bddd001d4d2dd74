"""What a fork costs, per environment adapter and way, at depth 4 and 16; and what replay
costs as the depth grows (it must grow linearly: one environment step per recorded step).

Part 1 forks, at depth 4 and 16 (that many steps into a task), every way each adapter
supports: the built-ins (``fs``, ``shop``: snapshot in memory, a sandbox on disk, replay),
the README's own environments (``guess``: free text by replay; ``faq``: stateless tools,
by copying the conversation or by replay), a TRL-style class (``--env trl``, by replay and,
declared stateless, by copying) and an OpenEnv server (``--env openenv``: an echo
environment written with openenv-core's server classes, served by uvicorn in a subprocess
on loopback as the README serves its example; a new WebSocket session per fork, by
replay; it never ends an episode, so depth 16 is 16 steps on the server). Each figure is
the median of repeated forks, also given as a ratio to a baseline measured in the same
run at the same depth: ``fs`` forked by an in-memory snapshot (the built-ins' default).

Part 2 replays the built-ins at depths 25 to 800 and fits a line.

Run: ``.venv/bin/python bench/bench_fork.py`` (the OpenEnv row needs ``openenv-core``:
``pip install 'branchpoint[openenv]'``; without it the row says so).
"""

from __future__ import annotations

import gc
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from branchpoint.sampler.envs.registry import list_envs, make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.replay import RecordedStep, replay

REPEAT = 50
DEPTHS = (4, 16)
REPLAY_DEPTHS = (25, 50, 100, 200, 400, 800)
README = Path(__file__).resolve().parents[1] / "README.md"
BASELINE = ("fs", "memory", "snapshot")
START_BOUND_S = 120.0


def _median_ms(env: Any, how: str, repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        child = fork(env, how)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
        child.close()
    return statistics.median(times) * 1000


def _block(first_line: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        if block.startswith(first_line):
            return str(block)
    raise LookupError(first_line)


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function",
         "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def _standalone() -> list[str]:
    """The registered environments with tasks of their own (not adapters of users' code)."""
    out = []
    for name in list_envs():
        try:
            make_env(name, 0).close()
        except ValueError:
            continue
        out.append(name)
    return out


ECHO_SERVER = """
from openenv.core.env_server import Action, Environment, Observation, State, create_app


class EchoAction(Action):
    \"\"\"Say something.\"\"\"

    text: str


class EchoObservation(Observation):
    echo: str = ""


class EchoEnvironment(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self):
        super().__init__()
        self._state = State()

    def reset(self, seed=None, episode_id=None, **kwargs):
        self._state = State(step_count=0)
        return EchoObservation(echo=f"task {seed}: say anything")

    def step(self, action, timeout_s=None, **kwargs):
        self._state.step_count += 1
        return EchoObservation(echo=action.text, reward=float(self._state.step_count))

    @property
    def state(self):
        return self._state


app = create_app(EchoEnvironment, EchoAction, EchoObservation, max_concurrent_envs=64)
"""


@contextmanager
def _openenv_server(folder: Path) -> Iterator[str | None]:
    """The echo environment served the way the README serves its example (``uvicorn
    echo_server:app``), on a free loopback port; yields its URL (None without
    openenv-core)."""
    try:
        import httpx
        import openenv.core.env_server  # noqa: F401 - only to know it is there
    except ImportError:
        yield None
        return
    (folder / "echo_server.py").write_text(ECHO_SERVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "echo_server:app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_BOUND_S
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1.0, trust_env=False).is_success:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OpenEnv server did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


Case = tuple[str, str, str, dict[str, Any], Callable[[int], dict[str, Any]], list[str]]


def _cases(folder: Path, openenv_url: str | None) -> list[Case]:
    """(label, backend, env name, options, the k-th action, ways) for every adapter."""
    cases: list[Case] = []
    for name in _standalone():
        env = make_env(name, 7, max_steps=10_000)
        first = env.expert().act(env.reset().messages)  # a read-only lookup in both
        env.close()
        for backend, options, ways in (("memory", {}, ["snapshot", "replay"]),
                                       ("disk", {"backend": "disk"}, ["sandbox", "replay"])):
            try:
                make_env(name, 0, **options).close()
            except (ValueError, TypeError):
                continue
            cases.append((name, backend, name, {**options, "max_steps": 10_000},
                          lambda k, a=first: a, ways))
    (folder / "guess.py").write_text(_block("# guess.py"))
    (folder / "faq.py").write_text(_block("# faq.py"))
    (folder / "support_tools.py").write_text(_block("# support_tools.py"))
    rows = folder / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "refund $5", "balance": 1e9, "expected": 5.0}) + "\n")
    sys.path.insert(0, str(folder))
    trl = {"class": "support_tools:SupportTools", "tasks_file": str(rows),
           "reward": "support_tools:refund_reward", "max_steps": 100, "stateless": True}
    cases += [
        ("guess (free text)", "-", "guess:GuessEnv", {"max_steps": 100, "high": 10**9},
         lambda k: {"role": "assistant", "content": str(k)}, ["replay"]),
        ("faq (stateless tools)", "-", "faq:FaqEnv", {"max_steps": 100},
         lambda k: _call("search", query="refund"), ["stateless", "replay"]),
        ("trl class", "-", "trl", trl, lambda k: _call("refund", amount=0.01),
         ["stateless", "replay"]),
    ]
    if openenv_url is not None:
        cases.append(("openenv server", "session", "openenv",
                      {"url": openenv_url, "max_steps": 100},
                      lambda k: _call("step", text=f"hello {k}"), ["replay"]))
    return cases


def bench_forks() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bp-bench-fork-"))
    with _openenv_server(folder) as openenv_url:
        results: dict[tuple[str, str, str], dict[int, float]] = {}
        for label, backend, name, options, action, ways in _cases(folder, openenv_url):
            for depth in DEPTHS:
                env = make_env(name, 7 if name in ("fs", "shop") else 0, **options)
                env.reset()
                for k in range(depth):
                    env.step(action(k))
                for how in ways:
                    results.setdefault((label, backend, how), {})[depth] = \
                        _median_ms(env, how)
                env.close()
    base = results[BASELINE]
    print(f"fork cost: median of {REPEAT} forks, ms, at depth {DEPTHS[0]} and {DEPTHS[1]}; "
          f"x = times the baseline ({', '.join(BASELINE)}) at the same depth, this run")
    print(f"  {'environment':<22} {'backend':<8} {'way':<9} "
          + "".join(f"{f'd={d} ms':>10}" for d in DEPTHS)
          + "".join(f"{f'x d={d}':>9}" for d in DEPTHS))
    for (label, backend, how), by_depth in results.items():
        print(f"  {label:<22} {backend:<8} {how:<9} "
              + "".join(f"{by_depth[d]:>10.3f}" for d in DEPTHS)
              + "".join(f"{by_depth[d] / base[d]:>8.1f}x" for d in DEPTHS))
    if openenv_url is None:
        print("  openenv server: not measured (pip install 'branchpoint[openenv]')")


def _loop_actions(name: str, depth: int) -> list[RecordedStep]:
    """``depth`` recorded steps that never end the episode: the expert's first call (a
    read-only lookup in the built-ins) repeated."""
    env = make_env(name, 7, max_steps=10_000)
    start = env.reset()
    action = env.expert().act(start.messages)
    steps = []
    for _ in range(depth):
        res = env.step(action)
        steps.append(RecordedStep(action, res.observation, res.done))
    env.close()
    return steps


def bench_replay() -> None:
    print("\nreplay cost by depth (best of 9, ms; ms per step in brackets)")
    for name in _standalone():
        xs, ys, cells = [], [], []
        for depth in REPLAY_DEPTHS:
            steps = _loop_actions(name, depth)
            env = make_env(name, 7, max_steps=10_000)
            times = []
            gc.collect()
            gc.disable()
            for _ in range(9):
                t0 = time.perf_counter()
                replay(env, steps)
                times.append(time.perf_counter() - t0)
            gc.enable()
            env.close()
            ms = min(times) * 1000
            xs.append(depth)
            ys.append(ms)
            cells.append(f"d={depth}: {ms:.2f} [{ms / depth:.4f}]")
        print(f"  {name:<6} " + "  ".join(cells))
        slope, intercept = statistics.linear_regression(xs, ys)
        r = statistics.correlation(xs, ys)
        ratios = [ms / d for d, ms in zip(xs, ys, strict=True)][1:]
        spread = max(ratios) / min(ratios)
        doubling = ys[-1] / ys[-2]
        # Linear: a straight line fits, and doubling the depth doubles the time.
        verdict = "linear" if r * r > 0.98 and 1.6 < doubling < 2.5 else "NOT linear"
        print(f"  {name:<6} fit: {slope:.4f} ms/step + {intercept:.2f} ms, R^2={r * r:.4f}; "
              f"time/depth max/min (d>={xs[1]}) = {spread:.2f}; "
              f"t({xs[-1]})/t({xs[-2]}) = {doubling:.2f} -> {verdict}")


if __name__ == "__main__":
    bench_forks()
    bench_replay()
