"""The expert demo: the whole data path, from environment play to a DPO export.

For each of a few hundred training tasks of each environment, an erring scripted expert
plays the task (the main line). At several steps of that line (the branch points) the
environment is forked and the expert draws ``branches`` next steps with other mistake
draws (the candidates); each candidate is continued ``rollouts`` times to the end, so its
value is a mean over that many scored continuations rather than one noisy one. The
checker scores every leaf with partial credit. Every step is recorded as events into the
store, tree by tree; the stats and the DPO export are then derived from the log alone.

Every step records what drew it: ``produced_by = {"policy": "expert", "mistakes",
"seed", "mistake"}``, ``mistake`` being the expert's own ground truth
(:meth:`~branchpoint.sampler.expert.Expert.decide`); a candidate drawn several times at
one branch point also records ``count``, the number of identical draws.

Trees get deterministic ids (``demo/ENV/TASK``) and a tree already in the store is
skipped, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from branchpoint.sampler.envs.base import Check, Environment, StepResult
from branchpoint.sampler.envs.registry import get_env, make_env
from branchpoint.sampler.expert import Decision, Expert, expert_for
from branchpoint.sampler.fork import fork
from branchpoint.sampler.record import TreeRecorder
from branchpoint.store.actions import same_action
from branchpoint.store.builder import make_task
from branchpoint.store.events import Event
from branchpoint.store.exports import ExportOptions
from branchpoint.store.log import EventLog, TreeFilter

__all__ = ["DEMO_PAIRS", "DemoConfig", "DemoReport", "grow_tree", "run_demo"]

# The pair settings the demo exports with, chosen with its sampling defaults (3 branch
# points, 3 branches, 4 rollouts) by bench/bench_pairs.py; the figures are in the README.
DEMO_PAIRS: Final = ExportOptions(margin=0.2, discount=0.9)


@dataclass(frozen=True)
class DemoConfig:
    envs: Sequence[str] = ("fs", "shop")
    tasks: int = 200  # per environment, from the train split
    mistakes: float = 0.25  # the expert's error rate on every line
    branch_points: int = 3  # forks along the main line
    branches: int = 3  # candidates drawn per fork
    rollouts: int = 4  # continuations of each candidate
    batch_trees: int = 25  # trees per atomic append
    options: dict[str, Any] = field(default_factory=dict)  # every environment's options
    action_format: str | None = None  # the expert's: text, tools, None (its default)

    def __post_init__(self) -> None:
        if self.rollouts < 1:
            raise ValueError(f"rollouts must be >= 1, got {self.rollouts}")


@dataclass
class DemoReport:
    trees: int = 0
    skipped: int = 0
    events: int = 0
    seconds: float = 0.0
    leaf_scores: dict[str, list[float]] = field(default_factory=dict)


def _produced_by(mistakes: float, step: _Step, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"policy": "expert", "mistakes": mistakes, "seed": step.seed,
                           "mistake": step.decision.mistake}
    if count > 1:
        out["count"] = count
    return out


@dataclass
class _Step:
    decision: Decision
    seed: str
    result: StepResult
    latency_ms: float
    drawn: bool  # the expert chose this step here (False: replayed to reach a fork)


def _expert(env: Environment, config: DemoConfig, seed: str) -> Expert:
    return expert_for(env, mistakes=config.mistakes, seed=seed,
                      action_format=config.action_format)


def _play(env: Environment, messages: list[dict[str, Any]], *, seed: str, config: DemoConfig,
          on_step: Callable[[int, Environment, list[dict[str, Any]]], None] | None = None,
          first: tuple[Decision, str, bool] | None = None) -> list[_Step]:
    """Let the expert play ``env`` to the end; returns its steps. ``first``: the first step
    is this candidate ``(decision, its seed, whether it counts as drawn here)``."""
    expert = _expert(env, config, seed)
    steps: list[_Step] = []
    while True:
        if on_step is not None:
            on_step(len(steps), env, messages)
        if first is not None:
            decision, step_seed, drawn = first
            first = None
        else:
            decision, step_seed, drawn = expert.decide(messages), seed, True
        started = time.perf_counter()
        result = env.step(decision.message)
        latency = round((time.perf_counter() - started) * 1000, 3)
        steps.append(_Step(decision, step_seed, result, latency, drawn))
        messages = [*messages, decision.message, *result.observation]
        if result.done:
            return steps


@dataclass
class _Trie:
    """Paths merged where they take the same step: a node of the tree before it is
    recorded, with the number of paths that drew it (its ``produced_by.count``)."""

    step: _Step | None = None
    count: int = 0
    check: Check | None = None
    children: list[_Trie] = field(default_factory=list)

    def add(self, steps: Sequence[_Step], check: Check) -> None:
        node = self
        for st in steps:
            child = next((c for c in node.children if c.step is not None
                          and same_action(c.step.decision.message, st.decision.message)
                          and c.step.result == st.result), None)
            if child is None:
                child = _Trie(st)
                node.children.append(child)
            child.count += st.drawn
            node = child
        node.check = check

    def record(self, recorder: TreeRecorder, parent: str, mistakes: float) -> None:
        # Depth first, children in the order they were first taken; explicit stack, so a
        # long episode needs no recursion.
        todo: list[tuple[str, _Trie]] = [(parent, c) for c in reversed(self.children)]
        while todo:
            at, t = todo.pop()
            assert t.step is not None
            node = recorder.step(at, t.step.decision.message, t.step.result,
                                 latency_ms=t.step.latency_ms,
                                 produced_by=_produced_by(mistakes, t.step, max(1, t.count)))
            if t.check is not None:
                recorder.score(node, t.check)
            todo.extend((node, c) for c in reversed(t.children))


def grow_tree(env_name: str, task_id: int, config: DemoConfig,
              tree_id: str | None = None) -> tuple[list[Event], list[float]]:
    """The events of one demo tree, and its rollouts' scores (one per path played)."""
    tree_id = tree_id or f"demo/{env_name}/{task_id}"
    recorder = TreeRecorder(tree_id, origin="sampler")
    rng = random.Random(f"{env_name}/{task_id}")
    scores: list[float] = []
    # The branch points are a uniform sample of the main line's steps, drawn while it is
    # played (reservoir sampling): its length is unknown until it ends, and holding a fork
    # of every step would cost a sandbox each on environments that fork on disk.
    forks: list[tuple[int, Environment, list[dict[str, Any]]]] = []

    def keep_fork(index: int, env: Environment, messages: list[dict[str, Any]]) -> None:
        slot = len(forks) if len(forks) < config.branch_points else rng.randint(0, index)
        if slot < config.branch_points:
            kept = (index, fork(env), messages)
            if slot < len(forks):
                forks[slot][1].close()
                forks[slot] = kept
            else:
                forks.append(kept)

    # Every path is played first and recorded after, merged into a trie, so that a node
    # records how many times the expert drew it where it stands.
    trie = _Trie()
    env = make_env(env_name, task_id, **config.options)
    try:
        try:
            opening = env.reset()
            task = env.task
            if env.free_text or config.action_format is not None:
                task = make_task(env.env_name, task_id, options=env.options,
                                 action_format="text" if env.free_text
                                 else config.action_format)
            main = _play(env, list(opening.messages), seed=f"{task_id}/main",
                         config=config, on_step=keep_fork)
            check = env.check()
            trie.add(main, check)
            scores.append(check.score)
        finally:
            env.close()
        for index, snapshot, messages in sorted(forks, key=lambda f: f[0]):
            prefix = [replace(st, drawn=False) for st in main[:index]]
            where = "root" if index == 0 else f"{index}"
            # The candidates: one draw each, with seeds of their own.
            candidates = [(_expert(snapshot, config, seed).decide(messages), seed)
                          for seed in (f"{task_id}/{where}/{j}" for j in range(config.branches))]
            for decision, seed in candidates:
                # Rollout 0 goes on with the candidate's own seed; the others with seeds
                # of their own, and the candidate's step is then a replay, not a draw.
                for r in range(config.rollouts):
                    branch = fork(snapshot)
                    try:
                        rest = _play(branch, messages, config=config,
                                     first=(decision, seed, r == 0),
                                     seed=seed if r == 0 else f"{seed}/{r}")
                        check = branch.check()
                        trie.add([*prefix, *rest], check)
                        scores.append(check.score)
                    finally:
                        branch.close()
    finally:
        for _, snapshot, _ in forks:
            snapshot.close()
    root = recorder.root(task, opening)
    trie.record(recorder, root, config.mistakes)
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
        for task_id in get_env(env_name).select_tasks("train", count=config.tasks,
                                                      **config.options):
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
