"""Branching recorded trajectories: replay a recorded path, sample alternatives at its
steps, roll them out, score them, and add them to the same tree.

For each selected tree, the recorded path is the line from the root that follows each
node's first child down to a leaf (what the SDK, the proxy, MCP or ``ingest`` recorded).
The whole path is replayed first in a fresh environment of the root's task
(:func:`branchpoint.sampler.replay.replay`, strict: every observation must be the recorded
one); a path that diverges is reported with the step and the difference and its tree is
left untouched. An environment that declares its tools stateless (``fork_mode =
"stateless"``) is not replayed: it adopts the recorded steps as they are
(:func:`branchpoint.sampler.replay.reach`), so its recordings branch from any step even
when their tool results can no longer be reproduced. Then at each selected depth (every
step by default; ``from_depth`` or ``steps`` narrow it) the environment is rebuilt by
replaying the path up to there, ``n`` alternatives are sampled from the conversation as
recorded (its tools and opening messages, so a text-mode recording stays in text mode),
the alternatives identical to the recorded next step are dropped, and each other one is
run in its own fork and continued with the policy to the end of the episode (``rollouts``
times when more than one). Leaves get the environment's check as a ``checker`` score, the
recorded leaf too when it has none.

New nodes carry ``meta.branch_run`` (the run's name): a branching point that already has
children of this run is not sampled again, only finished (nodes not run are run, leaves
not scored are scored). The work is claimed per tree (``branch/RUN/TREE`` in the claims
table), so an interrupted ``branch`` run started again resumes, and a finished tree is not
repeated.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from branchpoint.sampler.claims import Claims
from branchpoint.sampler.envs.base import Environment
from branchpoint.sampler.envs.registry import env_from_task
from branchpoint.sampler.fork import fork
from branchpoint.sampler.grow import (
    RunStats,
    SampleConfig,
    Sampler,
    _all,
    _stored_state,
    _Tree,
    require_scorer,
)
from branchpoint.sampler.policy import ChatPolicy
from branchpoint.sampler.replay import RecordedStep, reach
from branchpoint.store.actions import same_action
from branchpoint.store.builder import TreeBuilder, TreeState, replay_path
from branchpoint.store.errors import (
    ContextOverflow,
    EndpointError,
    ReplayDivergence,
    UnknownEnvironment,
)
from branchpoint.store.events import Event, NodeCreated
from branchpoint.store.log import EventLog

__all__ = ["BranchOutcome", "Brancher", "recorded_path"]


@dataclass
class BranchOutcome:
    tree_id: str
    status: str  # branched | diverged | skipped | error
    points: int = 0
    new_nodes: int = 0
    message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def recorded_path(state: TreeState) -> list[str]:
    """The recorded line: from the root, each node's first child, down to a leaf."""
    path = ["root"]
    while state.nodes[path[-1]].children:
        path.append(state.nodes[path[-1]].children[0])
    return path


def _branched_parents(events: Sequence[Event], run: str) -> set[str]:
    out = set()
    for ev in events:
        p = ev.payload
        if isinstance(p, NodeCreated) and p.parent_id and isinstance(p.meta, dict) \
                and p.meta.get("branch_run") == run:
            out.add(p.parent_id)
    return out


class Brancher(Sampler):
    """Adds sampled branches to recorded trees (see the module's docstring)."""

    def __init__(self, config: SampleConfig, policy: ChatPolicy, log: EventLog, *,
                 stats: RunStats | None = None) -> None:
        # Alternatives are rolled out to the end: branch-rollout semantics with no main line.
        super().__init__(config, policy, log, use_tools=True, stats=stats)

    async def branch_tree(self, tree_id: str, *, from_depth: int = 0,
                          steps: Sequence[int] | None = None) -> BranchOutcome:
        """Branch the recorded path of ``tree_id`` at the selected depths.

        Raises:
            EndpointError: the endpoint kept failing (the branches stored so far stay).
        """
        events = await self.log.read_tree(tree_id)
        builder = TreeBuilder.resume(tree_id, events, writer=self.config.writer)
        state = builder.state
        if state.root is None or not state.root.task:
            return BranchOutcome(tree_id, "skipped", message="no root task to replay")
        task = state.root.task
        path = recorded_path(state)
        # Only executed steps can be replayed; the path stops at the first one that is not.
        while len(path) > 1 and state.nodes[path[-1]].observation is None:
            path.pop()
        try:
            env = _env_of(task)
            require_scorer(env, self.judge)
        except (UnknownEnvironment, ValueError, TypeError) as exc:
            return BranchOutcome(tree_id, "skipped", message=str(exc))
        rec = replay_path(state, path[-1])
        recorded = [RecordedStep(s.action, s.observation or [], s.done) for s in rec.steps]
        try:
            reach(env, recorded)  # the whole path first: a divergence touches nothing
        except ReplayDivergence as exc:
            env.close()
            self.stats.error("replay_divergence")
            return BranchOutcome(tree_id, "diverged", message=str(exc),
                                 detail={"step": getattr(exc, "step", None)})
        scored, tokens, seen, lines = _stored_state(events)
        tree = _Tree(tree_id, builder, self.log, _lock(), scored, tokens, seen, lines)
        done_parents = _branched_parents(events, self.run)
        wanted = [d for d in range(len(path) - 1)
                  if d >= from_depth and (steps is None or d in steps)]
        outcome = BranchOutcome(tree_id, "branched", points=len(wanted))
        before = len(state.nodes)
        try:
            leaf = path[-1]
            if leaf not in tree.scored and len(path) > 1:
                await self._leaf(tree, leaf, env,
                                 "done" if state.nodes[leaf].done else "recorded")
            jobs = []
            for depth in wanted:
                node = path[depth]
                at = _env_of(task)
                reach(at, recorded[:depth])
                jobs.append(self._branch_at(tree, node, path[depth + 1], at, depth,
                                            again=node in done_parents))
            await _all(jobs)  # the branching points go on together
        except EndpointError as exc:
            self.stats.error(exc.kind)
            outcome.status, outcome.message = "error", str(exc)
        finally:
            env.close()
        outcome.new_nodes = len(state.nodes) - before
        return outcome

    async def _branch_at(self, tree: _Tree, node: str, recorded_child: str,
                         env: Environment, depth: int, *, again: bool) -> None:
        """Sample alternatives at ``node`` (whose state ``env`` holds; closed here), or
        finish the ones this run already stored there."""
        state = tree.builder.state
        messages = state.conversation(node)
        tools = list(state.root.tools) if state.root and state.root.tools else None
        try:
            if again:
                children = [c for c in state.nodes[node].children
                            if tree.lines.get(c) == "alt"]
            else:
                children = await self._alternatives(tree, node, recorded_child,
                                                    messages=messages, tools=tools)
            await _all([self._run_child(tree, c, fork(env), messages=messages, tools=tools,
                                        depth=depth + 1) for c in children])
        except ContextOverflow:
            self.stats.error("context_overflow")
        finally:
            env.close()

    async def _alternatives(self, tree: _Tree, node: str, recorded_child: str, *,
                            messages: list[dict[str, Any]],
                            tools: list[dict[str, Any]] | None) -> list[str]:
        from branchpoint.sampler.policy import seed_for

        seed = seed_for(self.config.sampling.seed, f"{tree.tree_id}/{node}/{self.run}")
        async with self.requests:
            cands = await self.policy.propose(messages, tools, self.config.branching,
                                              seed=seed)
        self.stats.requests += 1
        usage = cands[0].produced_by.get("usage") or {}
        self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        recorded = tree.builder.state.nodes[recorded_child].action or {}
        created = []
        for cand in cands:
            if same_action(cand.message, recorded):
                continue  # the recorded step is already this branch
            child = tree.builder.node(node, cand.message, produced_by=cand.produced_by,
                                      meta={"line": "alt", "branch_run": self.run})
            tree.lines[child] = "alt"
            created.append(child)
        self.stats.nodes += len(created)
        await tree.flush()
        return created


def _env_of(task: dict[str, Any]) -> Environment:
    """The environment of a recorded root's task (its options and recorded fields)."""
    return env_from_task({**task, "env": str(task.get("env")),
                          "task_id": _task_id(task.get("task_id"))})


def _task_id(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"task id {value!r} is not an integer task id of a registered "
                     "environment")


def _lock() -> Any:
    import asyncio

    return asyncio.Lock()


async def branch_run(config: SampleConfig, policy: ChatPolicy, log: EventLog,
                     tree_ids: Sequence[str], *, claims: Claims | None = None,
                     from_depth: int = 0, steps: Sequence[int] | None = None,
                     stats: RunStats | None = None) -> list[BranchOutcome]:
    """Branch each tree of ``tree_ids`` (claimed one at a time when ``claims`` is given)."""
    brancher = Brancher(config, policy, log, stats=stats)
    brancher.stats.trees_total = len(tree_ids)
    out: list[BranchOutcome] = []
    if claims is None:
        for t in tree_ids:
            out.append(await brancher.branch_tree(t, from_depth=from_depth, steps=steps))
        return out
    key = {f"branch/{brancher.run}/{t}": t for t in tree_ids}
    await claims.register(f"branch/{brancher.run}", list(key))
    while True:
        claimed = await claims.claim(f"branch/{brancher.run}")
        if claimed is None:
            return out
        started = time.monotonic()
        result = await brancher.branch_tree(key[claimed], from_depth=from_depth, steps=steps)
        result.detail["seconds"] = round(time.monotonic() - started, 3)
        out.append(result)
        if result.status != "error":
            await claims.finish(claimed)
