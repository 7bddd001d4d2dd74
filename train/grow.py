"""Branch-rollout trees grown in-process with a batch policy (a local model), recorded as
events: the quick path for experiments on one machine without a model server.

The strategy is the sampler's ``branch-rollout``: the policy plays a main line; at up to
``branch_points`` of its states (evenly spaced), it draws ``candidates`` next steps, and
each distinct candidate runs in its own fork of the environment and is continued
``rollouts`` times by the policy to the end. Leaves are scored by the environment's check.
Every live episode of every tree advances in lockstep, so a local model generates for all
of them in one batch. Identical steps from one node are one node (the recorder merges
them), so a node's value is the mean over its distinct continuations.

Trees are written as events (ids ``RUN/ENV/TASK``, the root's ``task`` recording the split
and options, the opening in text mode as the policy saw it), so the store's own values,
pair extraction and exports turn them into DPO pairs, exactly as for trees the sampler
grows against a served model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from branchpoint.sampler.envs.base import Environment, Message, Reset, split_of
from branchpoint.sampler.envs.registry import make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.record import TreeRecorder
from branchpoint.store.builder import make_task
from branchpoint.store.events import Event
from branchpoint.train.episodes import text_opening
from branchpoint.train.evaluate import BatchPolicy

__all__ = ["GrowSettings", "grow_episodes", "grow_trees"]


@dataclass(frozen=True)
class GrowSettings:
    candidates: int = 4
    rollouts: int = 2
    branch_points: int = 4


@dataclass
class _Run:
    """One live episode: its environment, conversation, tree and current node."""

    tree: int
    env: Environment
    messages: list[Message]
    node: str
    keep: bool = False  # main line: keep a fork of each state it passes
    ended: bool = False  # its episode is over and its environment closed


def _lockstep(runs: list[_Run], policy: BatchPolicy, recorders: Sequence[TreeRecorder],
              produced_by: dict[str, Any],
              on_state: Callable[[_Run], None] | None = None) -> None:
    """Advance every run with the policy until each episode ends; score each leaf."""
    live = list(runs)
    while live:
        if on_state is not None:
            for run in live:
                if run.keep:
                    on_state(run)
        actions = policy([r.messages for r in live])
        still: list[_Run] = []
        for run, action in zip(live, actions, strict=True):
            result = run.env.step(action)
            run.node = recorders[run.tree].step(run.node, action, result,
                                                produced_by=produced_by)
            run.messages = [*run.messages, action, *result.observation]
            if result.done:
                recorders[run.tree].score(run.node, run.env.check())
                run.env.close()
                run.ended = True
            else:
                still.append(run)
        live = still


def grow_trees(policy: BatchPolicy, env_name: str, task_ids: Sequence[int], *, run: str,
               options: dict[str, Any] | None = None,
               settings: GrowSettings | None = None,
               produced_by: dict[str, Any] | None = None) -> list[Event]:
    """The events of one branch-rollout tree per task, ids ``RUN/ENV/TASK``."""
    settings = settings or GrowSettings()
    options = options or {}
    produced_by = produced_by or {"policy": "local"}
    recorders: list[TreeRecorder] = []
    mains: list[_Run] = []
    for i, task_id in enumerate(task_ids):
        env = make_env(env_name, task_id, **options)
        opening = env.reset()
        messages = text_opening(opening.messages, opening.tools)
        recorder = TreeRecorder(f"{run}/{env_name}/{task_id}", origin="sampler")
        task = make_task(env_name, task_id, split=split_of(task_id), action_format="text",
                         options=options)
        root = recorder.root(task, Reset(messages=messages, tools=[]),
                             meta={"strategy": "branch-rollout", **_plain(settings)})
        recorders.append(recorder)
        mains.append(_Run(i, env, messages, root, keep=True))
    states: list[list[tuple[str, Environment, list[Message]]]] = [[] for _ in task_ids]

    def keep(r: _Run) -> None:
        states[r.tree].append((r.node, fork(r.env), list(r.messages)))

    _lockstep(mains, policy, recorders, produced_by, on_state=keep)
    try:
        chosen: list[tuple[int, str, Environment, list[Message]]] = []
        for tree, found in enumerate(states):
            for node, env, messages in _spread(found, settings.branch_points):
                chosen.append((tree, node, env, messages))
        # One batch: every chosen state asks for `candidates` next steps.
        asks = [m for (_, _, _, m) in chosen for _ in range(settings.candidates)]
        drawn = policy(asks) if asks else []
        rollouts: list[_Run] = []
        for k, (tree, node, env, messages) in enumerate(chosen):
            mine = drawn[k * settings.candidates:(k + 1) * settings.candidates]
            distinct: list[Message] = []
            for action in mine:
                if all(action != d for d in distinct):
                    distinct.append(action)
            for action in distinct:
                for _ in range(settings.rollouts):
                    branch = fork(env)
                    result = branch.step(action)
                    child = recorders[tree].step(node, action, result,
                                                 produced_by=produced_by)
                    after = [*messages, action, *result.observation]
                    if result.done:
                        recorders[tree].score(child, branch.check())
                        branch.close()
                    else:
                        rollouts.append(_Run(tree, branch, after, child))
        _lockstep(rollouts, policy, recorders, produced_by)
    finally:
        for found in states:
            for _, env, _ in found:
                env.close()
    events: list[Event] = []
    for recorder in recorders:
        recorder.close("done")
        events.extend(recorder.events)
    return events


def grow_episodes(policy: BatchPolicy, env_name: str, task_ids: Sequence[int], *, run: str,
                  episodes: int = 1, options: dict[str, Any] | None = None,
                  produced_by: dict[str, Any] | None = None) -> list[Event]:
    """The events of one tree per task (ids ``RUN/ENV/TASK``) holding ``episodes``
    independent episodes played by ``policy`` from the opening to the end, scored by the
    environment's check: the trees ``branchpoint sample --strategy episodes`` records.

    Each episode runs in its own environment and asks the policy for every step of its own,
    so the episodes are independent draws; where two of them take the same steps, the
    recorder keeps one node for the shared part (the tree's leaves are its distinct
    episodes). Every episode of every task advances in lockstep (one batch per round).

    Raises:
        ValueError: ``episodes`` is below 1.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    options = options or {}
    produced_by = produced_by or {"policy": "local"}
    recorders: list[TreeRecorder] = []
    runs: list[_Run] = []
    try:
        for i, task_id in enumerate(task_ids):
            env = make_env(env_name, task_id, **options)
            opening = env.reset()
            messages = text_opening(opening.messages, opening.tools)
            recorder = TreeRecorder(f"{run}/{env_name}/{task_id}", origin="sampler")
            task = make_task(env_name, task_id, split=split_of(task_id),
                             action_format="text", options=options)
            root = recorder.root(task, Reset(messages=messages, tools=[]),
                                 meta={"strategy": "episodes", "branching": episodes})
            recorders.append(recorder)
            copies = [env, *(fork(env) for _ in range(episodes - 1))]
            runs.extend(_Run(i, copy, list(messages), root) for copy in copies)
        _lockstep(list(runs), policy, recorders, produced_by)
    finally:
        for r in runs:
            if not r.ended:
                r.env.close()
    events: list[Event] = []
    for recorder in recorders:
        recorder.close("done")
        events.extend(recorder.events)
    return events


def _spread(items: list[Any], count: int) -> list[Any]:
    """Up to ``count`` items evenly spaced over ``items``, the first included."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _plain(settings: GrowSettings) -> dict[str, Any]:
    return {"candidates": settings.candidates, "rollouts": settings.rollouts,
            "branch_points": settings.branch_points}
