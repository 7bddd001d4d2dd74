"""The expert demo: the whole data path, from environment play to a DPO export.

For each of a few hundred training tasks of each environment, an erring scripted expert
plays the task (the main line). At several steps of that line the environment is forked
and the expert continues each fork with another mistake draw, so the tree grows siblings
whose leaves the checker scores with partial credit. Every step is recorded as events into
the store, tree by tree; the stats and the DPO export are then derived from the log alone.

Trees get deterministic ids (``demo/ENV/TASK``) and a tree already in the store is
skipped, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from branchpoint.sampler.envs.base import Environment, tasks_in_split
from branchpoint.sampler.envs.registry import make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.record import TreeRecorder
from branchpoint.store.events import Event
from branchpoint.store.log import EventLog, TreeFilter

__all__ = ["DemoConfig", "DemoReport", "grow_tree", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    envs: Sequence[str] = ("fs", "shop")
    tasks: int = 200  # per environment, from the train split
    mistakes: float = 0.25  # the expert's error rate on every line
    branch_points: int = 3  # forks along the main line
    branches: int = 3  # continuations per fork
    batch_trees: int = 25  # trees per atomic append


@dataclass
class DemoReport:
    trees: int = 0
    skipped: int = 0
    events: int = 0
    seconds: float = 0.0
    leaf_scores: dict[str, list[float]] = field(default_factory=dict)


def _play(env: Environment, recorder: TreeRecorder, messages: list[dict[str, Any]],
          parent: str, *, seed: str, mistakes: float,
          on_step: Callable[[str, Environment, list[dict[str, Any]]], None] | None = None
          ) -> str:
    """Let the expert play ``env`` from ``parent`` to the end; returns the leaf's id."""
    expert = env.expert(mistakes=mistakes, seed=seed)
    node = parent
    while True:
        if on_step is not None:
            on_step(node, env, messages)
        action = expert.act(messages)
        started = time.perf_counter()
        result = env.step(action)
        latency = (time.perf_counter() - started) * 1000
        node = recorder.step(node, action, result, latency_ms=round(latency, 3),
                             produced_by={"policy": "expert", "mistakes": mistakes,
                                          "seed": seed})
        messages = [*messages, action, *result.observation]
        if result.done:
            return node


def grow_tree(env_name: str, task_id: int, config: DemoConfig,
              tree_id: str | None = None) -> tuple[list[Event], list[float]]:
    """The events of one demo tree, and its leaves' scores."""
    tree_id = tree_id or f"demo/{env_name}/{task_id}"
    recorder = TreeRecorder(tree_id, origin="sampler")
    rng = random.Random(f"{env_name}/{task_id}")
    scores: list[float] = []
    # The branch points are a uniform sample of the main line's steps, drawn while it is
    # played (reservoir sampling): its length is unknown until it ends, and holding a fork
    # of every step would cost a sandbox each on environments that fork on disk.
    forks: list[tuple[int, str, Environment, list[dict[str, Any]]]] = []
    steps = 0

    def keep_fork(node: str, env: Environment, messages: list[dict[str, Any]]) -> None:
        nonlocal steps
        slot = len(forks) if len(forks) < config.branch_points else rng.randint(0, steps)
        steps += 1
        if slot < config.branch_points:
            kept = (steps, node, fork(env), messages)
            if slot < len(forks):
                forks[slot][2].close()
                forks[slot] = kept
            else:
                forks.append(kept)

    env = make_env(env_name, task_id)
    try:
        try:
            opening = env.reset()
            root = recorder.root(env.task, opening)
            leaf = _play(env, recorder, list(opening.messages), root, seed=f"{task_id}/main",
                         mistakes=config.mistakes, on_step=keep_fork)
            check = env.check()
            recorder.score(leaf, check)
            scores.append(check.score)
        finally:
            env.close()
        for _, node, snapshot, messages in sorted(forks, key=lambda f: f[0]):
            for j in range(config.branches):
                branch = fork(snapshot)
                try:
                    leaf = _play(branch, recorder, messages, node,
                                 seed=f"{task_id}/{node}/{j}", mistakes=config.mistakes)
                    check = branch.check()
                    recorder.score(leaf, check)
                    scores.append(check.score)
                finally:
                    branch.close()
    finally:
        for _, _, snapshot, _ in forks:
            snapshot.close()
    recorder.close("done")
    return recorder.events, scores


async def run_demo(log: EventLog, config: DemoConfig,
                   progress: Callable[[str, int], None] | None = None) -> DemoReport:
    """Grow and record ``config.tasks`` trees per environment into ``log``."""
    report = DemoReport()
    started = time.perf_counter()
    for env_name in config.envs:
        have = {t.tree_id for t in await log.list_trees(TreeFilter(env=env_name))}
        pending: list[Event] = []
        scores = report.leaf_scores.setdefault(env_name, [])
        for task_id in tasks_in_split("train", config.tasks):
            tree_id = f"demo/{env_name}/{task_id}"
            if tree_id in have:
                report.skipped += 1
            else:
                events, leaf_scores = grow_tree(env_name, task_id, config, tree_id)
                pending.extend(events)
                scores.extend(leaf_scores)
                report.trees += 1
                if report.trees % config.batch_trees == 0:
                    report.events += (await log.append(pending)).stored
                    pending = []
            if progress is not None:
                progress(env_name, 1)
        if pending:
            report.events += (await log.append(pending)).stored
    report.seconds = time.perf_counter() - started
    return report


def histogram(scores: Sequence[float], bins: int = 10) -> list[int]:
    """Counts of ``scores`` in ``bins`` equal bins over [0, 1] (1.0 in the last)."""
    counts = [0] * bins
    for s in scores:
        counts[min(int(s * bins), bins - 1)] += 1
    return counts
