"""What a fork costs, each way, for each registered environment; and what replay costs as
the depth grows (it must grow linearly: one environment step per recorded step).

Run: ``.venv/bin/python bench/bench_fork.py``. Figures are medians of repeated runs on
this machine; the linearity check prints the spread of time per step across depths.
"""

from __future__ import annotations

import gc
import statistics
import time

from branchpoint.sampler.envs.registry import list_envs, make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.replay import RecordedStep, replay

REPEAT = 30
DEPTHS = (25, 50, 100, 200, 400, 800)


def _median_ms(fn, repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _played(name: str, options: dict, steps: int):
    """An environment a few expert steps into a task (forks are taken mid-episode)."""
    env = make_env(name, 7, max_steps=1000, **options)
    messages = list(env.reset().messages)
    expert = env.expert(mistakes=0.0)
    for _ in range(steps):
        action = expert.act(messages)
        res = env.step(action)
        messages += [action, *res.observation]
        if res.done:
            break
    return env


def _variants(name: str) -> list[tuple[str, dict]]:
    out = []
    for label, options in (("memory", {}), ("disk", {"backend": "disk"})):
        try:
            make_env(name, 0, **options).close()
        except (ValueError, TypeError):
            continue
        out.append((label, options))
    return out


def bench_forks() -> None:
    print("fork cost (median ms, 4 steps into a task)")
    print(f"  {'env':<6} {'backend':<8} {'way':<9} {'ms':>8}")
    for name in list_envs():
        for label, options in _variants(name):
            env = _played(name, options, 4)
            for how in ("snapshot", "sandbox", "replay"):
                if how == "sandbox" and env.fork_mode != "sandbox":
                    continue
                ms = _median_ms(lambda env=env, how=how: fork(env, how).close())
                print(f"  {name:<6} {label:<8} {how:<9} {ms:8.3f}")
            env.close()


def _loop_actions(name: str, depth: int) -> list:
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
    for name in list_envs():
        xs, ys, cells = [], [], []
        for depth in DEPTHS:
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
