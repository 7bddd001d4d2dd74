"""The tree sampler: grow trees of a task with a served model, score their leaves, and
write every step to the store as it happens.

One tree per task, id ``RUN/ENV/TASK``. The work a tree still needs is read from the tree
itself, so a run killed at any moment and started again with the same arguments finishes
what it left and re-creates nothing:

- a node whose children are stored has been expanded (all candidates of one request are
  appended in one batch, before any of them runs);
- a child created but not executed is run now;
- a leaf without a ``checker`` score is scored now;
- a tree without ``tree_closed`` is closed at the end.

Walking a stored tree re-runs its recorded actions in the environment (one step each,
checked against the recorded observation), which is how a branch gets its environment
back after a restart.

Strategies and their cost in model calls (N = ``branching``, D = ``depth``, K =
``rollouts``, L = the length of a rollout to the end of the episode):

``tree``
    every node above depth D asks for N candidates: up to ``(N^D - 1)/(N - 1)`` requests
    and N^D leaves; with K > 0 every leaf at depth D is continued K times to the end.
``branch-rollout``
    along one line drawn by the policy, each of the first D nodes asks for N candidates
    (the first continues the line); every other candidate is continued max(K, 1) times to
    the end: D requests with n=N plus about ``D * (N - 1) * max(K, 1) * L`` single requests.
``episodes``
    the root asks for N candidates and each is continued to the end, no further
    branching: 1 + N * L requests.

A node's role is kept in its ``meta.line`` (``main``, ``alt`` or ``rollout``) so a resumed
run expands it the same way.

Leaves (done, depth reached, a budget reached, or a request longer than the model's
context) get the environment's check as a ``checker`` score, with the sub-goals and the
leaf's end reason (``detail.end``: ``done``, ``depth``, ``budget``, ``context_overflow``,
``step_limit``) in the detail. A tree closes with ``done`` (every leaf finished its
episode), ``depth`` (some leaf stopped at the depth), ``budget``, or ``error`` (the
endpoint kept failing; the message is in the detail).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from branchpoint.sampler.claims import Claims, Leases
from branchpoint.sampler.envs.base import Check, Environment, StepResult
from branchpoint.sampler.envs.registry import env_from_task, make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.judge import Judge
from branchpoint.sampler.policy import ChatPolicy, Sampling, seed_for, text_opening
from branchpoint.store.builder import TreeBuilder, make_task
from branchpoint.store.errors import (
    BranchpointError,
    ContextOverflow,
    EndpointError,
    LeaseLost,
    ReplayDivergence,
    StoreUnavailable,
    TreeNotFound,
)
from branchpoint.store.events import Event, NodeCreated, ScoreAssigned
from branchpoint.store.exports import tree_counts
from branchpoint.store.log import EventLog

__all__ = ["RunStats", "SampleConfig", "TreeOutcome", "require_scorer", "run_name", "sample_run",
           "sample_tree"]

Strategy = Literal["tree", "branch-rollout", "episodes"]
ActionFormat = Literal["auto", "text", "tools"]
WRITER = "s"


@dataclass(frozen=True)
class SampleConfig:
    env: str
    tasks: Sequence[int]
    model: str
    branching: int = 2
    depth: int = 3
    strategy: Strategy = "tree"
    rollouts: int = 0
    concurrency: int = 4
    sampling: Sampling = field(default_factory=Sampling)
    split: str = "train"
    options: dict[str, Any] = field(default_factory=dict)
    action_format: ActionFormat = "auto"
    tree_node_budget: int | None = None
    tree_token_budget: int | None = None
    run_token_budget: int | None = None
    run: str | None = None
    writer: str = WRITER
    max_path: int = 64  # no path grows deeper, whatever the environment's own step limit


def run_name(config: SampleConfig) -> str:
    """The default ``--run``: a short hash of the arguments that shape a tree."""
    s = config.sampling
    shape = {"model": config.model, "strategy": config.strategy,
             "branching": config.branching, "depth": config.depth,
             "rollouts": config.rollouts, "temperature": s.temperature, "top_p": s.top_p,
             "max_tokens": s.max_tokens, "seed": s.seed, "options": config.options,
             "action_format": config.action_format}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode())
    return "r" + digest.hexdigest()[:8]


@dataclass
class RunStats:
    """Counters shared by every tree of a run, for the progress display and summary."""

    trees_total: int = 0
    trees_done: int = 0
    trees_running: int = 0
    trees_resumed: int = 0
    trees_skipped: int = 0
    nodes: int = 0
    leaves: int = 0
    requests: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)
    # The pairs of the trees finished here so far (not those found finished), as
    # ``branchpoint export dpo`` with its default options would write them: each tree is
    # read back and counted once, when it closes.
    pairs: int = 0
    branching_points: int = 0
    pairs_uncounted: int = 0  # trees finished here that could not be read back to count
    # Where the time goes, summed over concurrent work (so the sum can exceed wall time):
    # waiting for the model, stepping and forking environments, the store (appending, and
    # reading each finished tree back to count its pairs).
    model_seconds: float = 0.0
    env_seconds: float = 0.0
    store_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class TreeOutcome:
    tree_id: str
    reason: str
    nodes: int
    leaves: int
    resumed: bool
    detail: dict[str, Any] | None = None


class _BudgetReached(Exception):
    pass


@dataclass
class _Tree:
    """The working state of one tree while it grows."""

    tree_id: str
    builder: TreeBuilder
    log: EventLog
    lock: asyncio.Lock
    scored: set[str]
    tokens: int
    requests_seen: set[str]
    lines: dict[str, str] = field(default_factory=dict)  # node id -> meta.line
    reserved: int = 0  # candidates asked for and not yet created
    judged: set[str] = field(default_factory=set)
    ended_by: set[str] = field(default_factory=set)
    budget_hit: bool = False
    # Awaited before every write (Leases.check): raises LeaseLost once another worker has
    # taken the tree over, so nothing more is written into it.
    guard: Callable[[str], Awaitable[None]] | None = None

    async def flush(self, stats: RunStats | None = None) -> None:
        async with self.lock:
            events = self.builder.take()
            if events:
                if self.guard is not None:
                    await self.guard(self.tree_id)
                started = time.perf_counter()
                await self.log.append(events)
                if stats is not None:
                    stats.store_seconds += time.perf_counter() - started


def _check_detail(check: Check, end: str) -> dict[str, Any]:
    return {**(check.detail or {}), "success": check.success, "end": end,
            "subgoals": [{"name": g.name, "weight": g.weight, "met": g.met}
                         for g in check.subgoals]}


def _stored_state(events: Sequence[Event]
                  ) -> tuple[set[str], int, set[str], dict[str, str]]:
    """Leaves already scored by the checker, completion tokens spent, request ids seen,
    and each node's role (``meta.line``)."""
    scored: set[str] = set()
    tokens = 0
    seen: set[str] = set()
    lines: dict[str, str] = {}
    for ev in events:
        p = ev.payload
        if isinstance(p, ScoreAssigned) and p.source == "checker":
            scored.add(p.node_id)
        if isinstance(p, NodeCreated) and isinstance(p.meta, dict) and "line" in p.meta:
            lines[p.node_id] = str(p.meta["line"])
        produced = getattr(p, "produced_by", None)
        if isinstance(produced, dict):
            rid = produced.get("request_id")
            if isinstance(rid, str) and rid not in seen:
                seen.add(rid)
                tokens += int((produced.get("usage") or {}).get("completion_tokens") or 0)
    return scored, tokens, seen, lines


class Sampler:
    """Grows the trees of one run. ``policy`` proposes steps; ``log`` stores them; with
    ``count_pairs``, each tree finished here adds its pairs to ``stats``."""

    def __init__(self, config: SampleConfig, policy: ChatPolicy, log: EventLog, *,
                 use_tools: bool, stats: RunStats | None = None,
                 judge: Judge | None = None, count_pairs: bool = True) -> None:
        self.config = config
        self.count_pairs = count_pairs
        self.guard: Callable[[str], Awaitable[None]] | None = None  # see _Tree.guard
        self.judge = judge
        self.policy = policy
        self.log = log
        self.use_tools = use_tools
        self.stats = stats or RunStats()
        self.requests = asyncio.Semaphore(max(1, config.concurrency))
        self.run = config.run or run_name(config)
        self.run_tokens = 0

    def tree_id(self, task_id: int) -> str:
        return f"{self.run}/{self.config.env}/{task_id}"

    # --- budgets --------------------------------------------------------------------------

    def _over_budget(self, tree: _Tree) -> bool:
        c = self.config
        if c.tree_node_budget is not None and len(tree.builder.state.nodes) - 1 \
                + tree.reserved >= c.tree_node_budget:
            return True
        if c.tree_token_budget is not None and tree.tokens >= c.tree_token_budget:
            return True
        return c.run_token_budget is not None and self.run_tokens >= c.run_token_budget

    # --- one tree ---------------------------------------------------------------------------

    async def sample_tree(self, task_id: int) -> TreeOutcome:
        """Grow (or finish) the tree of ``task_id``; returns how it closed."""
        tree_id = self.tree_id(task_id)
        try:
            events = await self.log.read_tree(tree_id)
        except TreeNotFound:
            events = []
        if events:
            builder = TreeBuilder.resume(tree_id, events, writer=self.config.writer)
            if builder.state.closed:
                self.stats.trees_skipped += 1
                self.stats.trees_done += 1
                return TreeOutcome(tree_id, "skipped", len(builder.state.nodes) - 1, 0, True)
            self.stats.trees_resumed += 1
        else:
            builder = TreeBuilder(tree_id, writer=self.config.writer)
        scored, tokens, seen, lines = _stored_state(events)
        tree = _Tree(tree_id, builder, self.log, asyncio.Lock(), scored, tokens, seen, lines,
                     guard=self.guard)
        tree.judged = {ev.payload.node_id for ev in events
                       if isinstance(ev.payload, ScoreAssigned) and ev.payload.source == "judge"}
        env = self._make_env(task_id, builder)
        self.stats.trees_running += 1
        try:
            try:
                messages, tools = self._open(env, builder, task_id)
                await tree.flush(self.stats)
                await self._expand(tree, "root", env, messages=messages, tools=tools, depth=0,
                                   line="main")
                reason, detail = self._close_reason(tree), None
            except EndpointError as exc:
                self.stats.error(exc.kind)
                reason, detail = "error", {"message": str(exc), "kind": exc.kind}
            except ReplayDivergence as exc:
                self.stats.error("replay_divergence")
                reason, detail = "error", {"message": str(exc), "kind": "replay_divergence"}
            builder.close(reason, detail)
            await tree.flush(self.stats)
        finally:
            self.stats.trees_running -= 1
        if self.count_pairs:
            await self._count_pairs(tree_id)
        self.stats.trees_done += 1
        self.stats.closed[reason] = self.stats.closed.get(reason, 0) + 1
        leaves = sum(1 for n in builder.state.nodes.values() if not n.children) \
            if builder.state.nodes else 0
        return TreeOutcome(tree_id, reason, len(builder.state.nodes) - 1, leaves,
                           bool(events), detail)

    async def _count_pairs(self, tree_id: str) -> None:
        """Add a tree just closed to the run's pair tally: read back once (in the store's
        ``seq`` order, as every export reads it) and counted by the store's own pair
        extraction with the export's default options, so the total is what ``branchpoint
        export dpo`` would write from these trees, and no tree is read twice."""
        started = time.perf_counter()
        try:
            counts = tree_counts(tree_id, await self.log.read_tree(tree_id))
        except BranchpointError:
            # The tree is stored and closed; only the figure is missing (said in the summary).
            self.stats.pairs_uncounted += 1
            return
        finally:
            self.stats.store_seconds += time.perf_counter() - started
        self.stats.pairs += counts.pairs
        self.stats.branching_points += counts.branching_points

    def _make_env(self, task_id: int, builder: TreeBuilder) -> Environment:
        root = builder.state.root
        if root is not None and root.task:
            return env_from_task({**root.task, "env": self.config.env, "task_id": task_id})
        return make_env(self.config.env, task_id, **self.config.options)

    def _open(self, env: Environment, builder: TreeBuilder, task_id: int
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Reset the environment; record the root when the tree is new. Returns the opening
        messages and tools as the model sees them."""
        opening = env.reset()
        tools_mode = self.use_tools and bool(opening.tools)
        if builder.state.root is not None:
            root = builder.state.root
            return list(root.messages or []), (list(root.tools) if root.tools else None)
        if tools_mode:
            messages, tools = list(opening.messages), list(opening.tools)
        else:
            messages, tools = text_opening(opening.messages, opening.tools), None
        task = make_task(self.config.env, task_id, split=self.config.split,
                         action_format="tools" if tools_mode else "text",
                         options=dict(self.config.options), **env.task_fields())
        builder.root(messages, task, tools=tools, origin="sampler",
                     meta={"run": self.run, "strategy": self.config.strategy,
                           "branching": self.config.branching, "depth": self.config.depth,
                           "rollouts": self.config.rollouts, "model": self.config.model})
        return messages, tools

    def _close_reason(self, tree: _Tree) -> str:
        if tree.budget_hit:
            return "budget"
        if "depth" in tree.ended_by:
            return "depth"
        return "done"

    # --- expansion ----------------------------------------------------------------------------

    def _fan(self, line: str, depth: int) -> tuple[int, list[str]] | None:
        """How a node at ``depth`` whose role is ``line`` is expanded: the number of
        candidates to ask for and the roles of the new children (the first candidate
        takes the first role, the others the last), or None when it is a leaf."""
        c = self.config
        n, d, k = c.branching, c.depth, c.rollouts
        if depth >= c.max_path:
            return None
        if line == "rollout":
            return 1, ["rollout"]
        if c.strategy == "tree":
            if depth < d:
                return n, ["main"]
            return (k, ["rollout"]) if k > 0 else None
        if c.strategy == "episodes":
            return (n, ["rollout"]) if depth == 0 else (1, ["rollout"])
        # branch-rollout
        if line == "main":
            return (n, ["main", "alt"]) if depth < d else (1, ["rollout"])
        return (k, ["rollout"]) if k > 1 else (1, ["rollout"])

    async def _expand(self, tree: _Tree, node: str, env: Environment, *,
                      messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                      depth: int, line: str) -> None:
        """Grow the subtree under ``node`` (whose state ``env`` holds; this call owns and
        closes it)."""
        state = tree.builder.state
        owned = True
        try:
            info = state.nodes[node]
            if node != "root" and info.done:
                await self._leaf(tree, node, env, "done")
                return
            fan = self._fan(line, depth)
            if fan is None:
                tree.ended_by.add("depth")
                await self._leaf(tree, node, env, "depth")
                return
            children = list(info.children)
            if not children:
                if self._over_budget(tree):
                    tree.budget_hit = True
                    await self._leaf(tree, node, env, "budget")
                    return
                n, roles = fan
                # Candidates in flight count against the node budget, so that concurrent
                # branches cannot all pass the check at once.
                tree.reserved += n
                try:
                    children = await self._propose(tree, node, messages=messages, tools=tools,
                                                   n=n, roles=roles)
                except ContextOverflow as exc:
                    self.stats.error("context_overflow")
                    await self._leaf(tree, node, env, "context_overflow",
                                     extra={"message": str(exc)})
                    return
            started = time.perf_counter()
            # The first child goes on in this environment and the others in forks of it, so
            # that only the open branches hold what an environment holds (a sandbox, a
            # server session) and a node with n children costs n - 1 forks.
            copies = [env, *(fork(env) for _ in children[1:])]
            self.stats.env_seconds += time.perf_counter() - started
            owned = False
            await _all([self._run_child(tree, child, copy, messages=messages, tools=tools,
                                        depth=depth + 1) for child, copy in zip(children, copies,
                                                                                strict=True)])
        finally:
            if owned:
                env.close()

    async def _propose(self, tree: _Tree, node: str, *, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None, n: int, roles: list[str]
                       ) -> list[str]:
        seed = seed_for(self.config.sampling.seed, f"{tree.tree_id}/{node}")
        try:
            async with self.requests:
                started = time.perf_counter()
                cands = await self.policy.propose(messages, tools, n, seed=seed)
                self.stats.model_seconds += time.perf_counter() - started
        finally:
            tree.reserved -= n
        self.stats.requests += 1
        first = cands[0].produced_by
        usage = first.get("usage") or {}
        spent = int(usage.get("completion_tokens") or 0)
        tree.tokens += spent
        self.run_tokens += spent
        self.stats.completion_tokens += spent
        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        # Roles follow the choices: the candidate holding choice 0 continues the line.
        created = []
        for i, cand in enumerate(cands):
            role = roles[0] if i == 0 else roles[-1]
            child = tree.builder.node(node, cand.message, produced_by=cand.produced_by,
                                      meta={"line": role})
            tree.lines[child] = role
            created.append(child)
        self.stats.nodes += len(created)
        await tree.flush(self.stats)
        return created

    async def _run_child(self, tree: _Tree, child: str, env: Environment, *,
                         messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                         depth: int) -> None:
        info = tree.builder.state.nodes[child]
        action = info.action or {}
        started = time.perf_counter()
        if info.observation is not None and env.fork_mode == "stateless":
            # resuming: a stateless environment takes the stored step as it is
            result = StepResult(list(info.observation), bool(info.done))
            env.adopt([(action, result)])
        else:
            result = env.step(action)
        spent = time.perf_counter() - started
        self.stats.env_seconds += spent
        latency = round(spent * 1000, 3)
        if info.observation is None:
            tree.builder.executed(child, result.observation, result.done, latency_ms=latency)
            await tree.flush(self.stats)
        elif info.observation != result.observation:
            env.close()
            raise ReplayDivergence(f"tree {tree.tree_id}: node {child} replayed to another "
                                   "observation than the recorded one")
        line = tree.lines.get(child, "main")
        await self._expand(tree, child, env, messages=[*messages, action, *result.observation],
                           tools=tools, depth=depth, line=line)

    async def _leaf(self, tree: _Tree, node: str, env: Environment, end: str, *,
                    extra: dict[str, Any] | None = None) -> None:
        """Score a leaf: the environment's check as a ``checker`` score, and the judge's
        verdict as a ``judge`` score when there is a judge (each once per leaf)."""
        self.stats.leaves += 1
        if node not in tree.scored:
            try:
                check: Check | None = env.check()
            except NotImplementedError:
                if self.judge is None:
                    raise
                check = None  # an environment without a checker: the judge alone
            if check is not None:
                if end == "done" and not check.success \
                        and getattr(env, "steps", 0) >= getattr(env, "max_steps", 1 << 30):
                    end = "step_limit"
                detail = _check_detail(check, end)
                if extra:
                    detail.update(extra)
                tree.builder.score(node, min(1.0, max(0.0, check.score)), source="checker",
                                   detail=detail)
            tree.scored.add(node)
            await tree.flush(self.stats)
        if self.judge is not None and node not in tree.judged:
            verdict = await self.judge.verdict(tree.builder.state.conversation(node))
            tree.judged.add(node)
            if verdict is None:
                self.stats.error("judge_unparsed")
                return
            tree.builder.score(node, verdict.score, source="judge",
                               detail={"rationale": verdict.rationale, "end": end,
                                       "model": self.judge.model,
                                       "rubric": self.judge.rubric_hash})
            await tree.flush(self.stats)


async def _all(jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together; the first failure cancels the others and is raised as is
    (not wrapped in an ExceptionGroup), so a tree stops writing before it is closed."""
    if len(jobs) == 1:
        await jobs[0]
        return
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
    except BaseExceptionGroup as eg:
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def require_scorer(env: Environment, judge: Judge | None) -> None:
    """Refuse to sample an environment whose leaves nothing would score: one without a
    checker (:attr:`~branchpoint.sampler.envs.base.Environment.has_checker` false) and no
    judge.

    Raises:
        ValueError: the message says how to give it a score.
    """
    if judge is None and not env.has_checker:
        raise ValueError(f"{env.env_name!r} has no reward of its own to score leaves with: "
                         "give it one (--option reward=package.module:fn for --env trl) or "
                         "score with the LLM judge (--judge-base-url URL --judge-model MODEL)")


async def sample_run(config: SampleConfig, policy: ChatPolicy, log: EventLog, *,
                     use_tools: bool, stats: RunStats | None = None,
                     claims: Claims | None = None, judge: Judge | None = None,
                     on_tree: Callable[[TreeOutcome], None] | None = None,
                     count_pairs: bool = True) -> list[TreeOutcome]:
    """Grow every task's tree, ``config.concurrency`` trees at a time; with
    ``count_pairs``, ``stats.pairs`` counts the pairs of the trees finished so far.

    With ``claims``, trees are taken one at a time through leases shared with every other
    worker on the same store (see :mod:`branchpoint.sampler.claims`), and the run ends when
    no tree is left that this worker could claim.
    """
    if config.tasks:
        with make_env(config.env, config.tasks[0], **config.options) as probe:
            require_scorer(probe, judge)
    sampler = Sampler(config, policy, log, use_tools=use_tools, stats=stats, judge=judge,
                      count_pairs=count_pairs)
    sampler.stats.trees_total = len(config.tasks)
    outcomes: list[TreeOutcome] = []

    def done(outcome: TreeOutcome) -> None:
        outcomes.append(outcome)
        if on_tree is not None:
            on_tree(outcome)

    if claims is None:
        gate = asyncio.Semaphore(max(1, config.concurrency))

        async def one(task_id: int) -> None:
            async with gate:
                done(await sampler.sample_tree(task_id))

        await asyncio.gather(*(one(t) for t in config.tasks))
        return outcomes
    await _claimed_run(sampler, claims, done)
    return outcomes


async def _claimed_run(sampler: Sampler, claims: Claims,
                       done: Callable[[TreeOutcome], None]) -> None:
    """``sample_run`` with claims: ``concurrency`` loops each claim a tree and grow it
    until none is left to claim, while the leases are renewed."""
    config = sampler.config
    task_of = {sampler.tree_id(t): t for t in config.tasks}
    await claims.register(sampler.run, list(task_of))
    jobs: dict[str, asyncio.Task[TreeOutcome]] = {}
    claiming = asyncio.Lock()

    def stop_job(tree_id: str, holder: str | None) -> None:
        # Taken over: stop at once (any write into the tree would be refused anyway).
        job = jobs.get(tree_id)
        if job is not None:
            job.cancel()

    leases = Leases(claims, on_lost=stop_job)
    sampler.guard = leases.check

    async def loop() -> None:
        while True:
            async with claiming:
                since = time.time()
                tree_id = await claims.claim(sampler.run, frozenset(jobs))
                if tree_id is None:
                    return
                leases.hold(tree_id, since)
                job = asyncio.create_task(sampler.sample_tree(task_of[tree_id]))
                jobs[tree_id] = job
            try:
                outcome = await job
            except (asyncio.CancelledError, LeaseLost):
                me = asyncio.current_task()
                if tree_id not in leases.lost or (me is not None and me.cancelling()):
                    raise
                done(_lost(sampler.stats, tree_id, leases.lost[tree_id]))
            else:
                done(outcome)
                await claims.finish(tree_id)
            finally:
                jobs.pop(tree_id, None)
                leases.release(tree_id)

    stop = asyncio.Event()
    renewer = asyncio.create_task(_renew(leases, sampler.stats, stop))
    try:
        await asyncio.gather(*(loop() for _ in range(max(1, config.concurrency))))
    finally:
        stop.set()
        await renewer


async def _renew(leases: Leases, stats: RunStats, stop: asyncio.Event) -> None:
    """Renew every third of the lease until ``stop``."""
    period = max(0.05, leases.lease / 3)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
        if not stop.is_set():
            try:
                await leases.renew()
            except StoreUnavailable:
                # Tried again next period; meanwhile no write goes into a tree whose lease
                # may have run out (Leases.check renews first).
                stats.error("lease_renewal")


def _lost(stats: RunStats, tree_id: str, holder: str | None) -> TreeOutcome:
    stats.error("lease_lost")
    message = (f"tree {tree_id}: this worker's lease ran out and {holder or 'no worker'} "
               "holds it now; stopped without writing to it again")
    return TreeOutcome(tree_id, "lease_lost", 0, 0, True,
                       {"message": message, "holder": holder, "kind": "lease_lost"})


async def sample_tree(config: SampleConfig, policy: ChatPolicy, log: EventLog, task_id: int,
                      *, use_tools: bool) -> TreeOutcome:
    """One tree (a convenience for tests and ``branchpoint branch``)."""
    return await Sampler(config, policy, log, use_tools=use_tools).sample_tree(task_id)
