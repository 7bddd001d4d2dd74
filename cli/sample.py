"""``branchpoint sample``: grow trees of fresh tasks with a model behind an OpenAI-compatible
endpoint, score their leaves, and store every step as it happens."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from branchpoint.cli.main import DbOption, fail
from branchpoint.cli.options import ActionFormat, EnvOptions, parse_options
from branchpoint.store.errors import BranchpointError, EndpointUnusable


class Strategy(StrEnum):
    tree = "tree"
    branch_rollout = "branch-rollout"
    episodes = "episodes"


class Split(StrEnum):
    train = "train"
    validation = "validation"
    heldout = "heldout"


def parse_tasks(spec: str, split: str, env: Any = None,
                options: dict[str, Any] | None = None) -> list[int]:
    """``N`` (the first N task ids of the split) or ``START:END`` (ids in that range that
    fall in the split, END excluded), as the environment class ``env`` selects them
    (:meth:`~branchpoint.sampler.envs.base.Environment.select_tasks`; default: every id,
    split by hash). An environment with a finite list of tasks may return fewer than N.

    Raises:
        ValueError: the spec is neither, or the environment refuses its options.
    """
    from branchpoint.sampler.envs.base import Environment

    cls = env or Environment
    options = options or {}
    text = spec.strip()
    if ":" in text:
        a, _, b = text.partition(":")
        try:
            start, end = int(a or 0), int(b)
        except ValueError:
            raise ValueError(f"--tasks {spec!r}: a range is START:END of integers") from None
        if start < 0 or end < start:
            raise ValueError(f"--tasks {spec!r}: need 0 <= START <= END")
        return list(cls.select_tasks(split, start=start, end=end, **options))  # type: ignore[arg-type]
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"--tasks {spec!r}: give a count N or a range START:END") from None
    if count < 1:
        raise ValueError(f"--tasks {spec!r}: the count must be at least 1")
    return list(cls.select_tasks(split, count=count, **options))  # type: ignore[arg-type]


def _line(stats: Any) -> str:
    rate = stats.completion_tokens / stats.seconds if stats.seconds > 0 else 0.0
    errors = sum(stats.errors.values())
    return (f"trees {stats.trees_done}/{stats.trees_total} done, {stats.trees_running} "
            f"running; nodes {stats.nodes}; leaves {stats.leaves}; requests "
            f"{stats.requests}; {rate:.0f} tokens/s; pairs {stats.pairs}; errors {errors}")


async def _progress(stats: Any, done: asyncio.Event, tty: bool) -> None:
    """A live line on a terminal; a plain line every 10 s otherwise."""
    if tty:
        from rich.live import Live

        with Live(_line(stats), refresh_per_second=4, transient=True) as live:
            while not done.is_set():
                live.update(_line(stats))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.25)
        return
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 10.0)
        except TimeoutError:
            print(_line(stats), file=sys.stderr, flush=True)


async def _run(db: str, config: Any, base_url: str, *, action_format: str,  # noqa: PLR0915
               quiet: bool, api_key: str, lease_seconds: float, judge: Any = None) -> int:
    from branchpoint.sampler.claims import open_claims
    from branchpoint.sampler.envs.registry import make_env
    from branchpoint.sampler.grow import RunStats, require_scorer, run_name, sample_run
    from branchpoint.sampler.policy import ChatPolicy
    from branchpoint.store.log import open_log

    policy = ChatPolicy(base_url, config.model, config.sampling, api_key=api_key)
    try:
        # Everything that can be refused is checked before the store is touched.
        probe = make_env(config.env, config.tasks[0], **config.options)
        try:
            try:
                require_scorer(probe, judge)
            except ValueError as exc:
                raise fail(f"{exc} (nothing was stored)") from None
            info = await policy.check()
            if judge is not None:
                await judge.policy.check()
            opening = probe.reset()
        finally:
            probe.close()
        use_tools = False
        if not opening.tools and action_format == "tools":
            raise EndpointUnusable(f"{config.env!r} offers no tools (its actions are free "
                                   "text): use --action-format text or auto",
                                   kind="no_tools")
        if opening.tools and action_format != "text":
            use_tools = await policy.accepts_tools(opening.messages, opening.tools)
            if not use_tools and action_format == "tools":
                raise EndpointUnusable(
                    "the endpoint refuses tools (start vLLM with a tool-call parser, "
                    "e.g. `branchpoint serve-model MODEL --tool-call-parser hermes`), "
                    "or use --action-format text", kind="no_tools")
        run = config.run or run_name(config)
        typer.echo(f"run {run}: {len(config.tasks)} {config.env} tasks, strategy "
                   f"{config.strategy}, actions as {'tools' if use_tools else 'text'}, "
                   f"model {info.model} (context {info.max_model_len})", err=True)
        log = await open_log(db)
        try:
            stats = RunStats()
            done = asyncio.Event()
            shown = asyncio.create_task(_progress(stats, done, sys.stderr.isatty() and
                                                  not quiet)) if not quiet else None
            try:
                claims = open_claims(db, lease_seconds=lease_seconds)
                try:
                    await sample_run(config, policy, log, use_tools=use_tools, stats=stats,
                                     claims=claims, judge=judge, on_tree=_tell)
                finally:
                    await claims.close()
            finally:
                done.set()
                if shown is not None:
                    await shown
            _summary(stats)
        finally:
            await log.close()
    finally:
        await policy.close()
        if judge is not None:
            await judge.close()
    return 0


def _tell(outcome: Any) -> None:
    """Say at once when another worker took a tree over from this one."""
    if outcome.reason == "lease_lost":
        typer.echo(outcome.detail["message"], err=True)


def _summary(stats: Any) -> None:
    from branchpoint.store.pairs import DEFAULT_MARGIN

    closed = ", ".join(f"{k} {v}" for k, v in sorted(stats.closed.items())) or "none"
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats.errors.items())) or "none"
    rate = stats.completion_tokens / stats.seconds if stats.seconds > 0 else 0.0
    sampled = stats.trees_done - stats.trees_skipped
    elsewhere = stats.trees_total - sampled
    typer.echo(f"trees: {stats.trees_total} in the run, {sampled} sampled here "
               f"({stats.trees_resumed} resumed), {elsewhere} finished before or by other "
               f"workers; closed here: {closed}")
    typer.echo(f"nodes: {stats.nodes} new; leaves: {stats.leaves}; requests: "
               f"{stats.requests}; completion tokens: {stats.completion_tokens} "
               f"({rate:.0f}/s); wall time: {stats.seconds:.1f} s")
    # Counted tree by tree as they closed (RunStats.pairs): what `export dpo` with its
    # default options writes from these trees.
    uncounted = (f"; {stats.pairs_uncounted} trees could not be read back to count theirs"
                 if stats.pairs_uncounted else "")
    typer.echo(f"pairs in the trees sampled here: {stats.pairs} (from "
               f"{stats.branching_points} branching points, margin {DEFAULT_MARGIN}){uncounted}")
    typer.echo(f"errors: {errors}")


def register(app: typer.Typer) -> None:
    @app.command()
    def sample(  # noqa: PLR0917 - Typer reads options from the parameters
        env: Annotated[str, typer.Option("--env", help="Environment name or module:Class.")],
        tasks: Annotated[str, typer.Option(
            "--tasks", help="N (the first N task ids of the split) or START:END.")],
        base_url: Annotated[str, typer.Option(
            "--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")],
        model: Annotated[str, typer.Option("--model", help="Served model name.")],
        db: DbOption,
        branching: Annotated[int, typer.Option("--branching", min=1,
                                               help="Candidates per branching node (n).")
                             ] = 2,
        depth: Annotated[int, typer.Option("--depth", min=0,
                                           help="Branching depth.")] = 3,
        strategy: Annotated[Strategy, typer.Option("--strategy")] = Strategy.tree,
        rollouts: Annotated[int, typer.Option(
            "--rollouts", min=0, help="Continuations of every candidate to the end.")] = 0,
        concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 4,
        temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.7,
        top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
        max_tokens: Annotated[int, typer.Option("--max-tokens", min=1,
                                                help="Per request.")] = 256,
        tree_node_budget: Annotated[int | None, typer.Option("--tree-node-budget", min=1)
                                    ] = None,
        tree_token_budget: Annotated[int | None, typer.Option("--tree-token-budget", min=1)
                                     ] = None,
        run_token_budget: Annotated[int | None, typer.Option("--run-token-budget", min=1)
                                    ] = None,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        action_format: Annotated[ActionFormat, typer.Option(
            "--action-format", help="auto: tool calls when the server takes them, else "
                                    "text commands.")] = ActionFormat.auto,
        option: EnvOptions = None,
        split: Annotated[Split, typer.Option("--split")] = Split.train,
        run: Annotated[str | None, typer.Option(
            "--run", help="Run name (default: a hash of the settings that shape a tree).")
        ] = None,
        api_key: Annotated[str, typer.Option("--api-key", envvar="OPENAI_API_KEY")
                           ] = "EMPTY",
        lease_seconds: Annotated[float, typer.Option(
            "--lease-seconds", min=1.0,
            help="How long a claimed task stays this worker's without renewal (renewed "
                 "every third of it while the worker lives).")] = 300.0,
        judge_base_url: Annotated[str | None, typer.Option(
            "--judge-base-url", help="Also score leaves with an LLM judge at this endpoint "
                                     "(a `judge` score: partial credit and a rationale).")
        ] = None,
        judge_model: Annotated[str | None, typer.Option("--judge-model")] = None,
        rubric: Annotated[Path | None, typer.Option(
            "--rubric", help="The judge's rubric (a text file; default: a built-in one).")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")
                         ] = False,
    ) -> None:
        """Grow trees of fresh tasks with a served model; every step is stored as it
        happens, leaves are scored with the environment's check; a run started again with
        the same arguments resumes."""
        from branchpoint.sampler.envs.registry import get_env
        from branchpoint.sampler.grow import SampleConfig
        from branchpoint.sampler.policy import Sampling

        try:
            options = parse_options(option or [])
            task_ids = parse_tasks(tasks, split.value, get_env(env), options)
        except (ValueError, LookupError, OSError) as exc:
            raise fail(str(exc)) from None
        if not task_ids:
            raise fail(f"--tasks {tasks!r} holds no {split.value} task")
        if tasks.strip().isdigit() and len(task_ids) < int(tasks):
            typer.echo(f"--tasks {tasks}: {env} has only {len(task_ids)} {split.value} "
                       f"tasks; sampling those", err=True)
        if "/" in (run or ""):
            raise fail("--run must not contain '/'")
        config = SampleConfig(
            env=env, tasks=task_ids, model=model, branching=branching, depth=depth,
            strategy=strategy.value,
            rollouts=rollouts, concurrency=concurrency,
            sampling=Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                              seed=seed),
            split=split.value, options=options,
            action_format=action_format.value,
            tree_node_budget=tree_node_budget, tree_token_budget=tree_token_budget,
            run_token_budget=run_token_budget, run=run)
        judge = None
        if (judge_base_url is None) != (judge_model is None):
            raise fail("--judge-base-url and --judge-model go together")
        if judge_base_url and judge_model:
            from branchpoint.sampler.judge import DEFAULT_RUBRIC, Judge

            try:
                text = rubric.read_text() if rubric else DEFAULT_RUBRIC
            except OSError as exc:
                raise fail(f"--rubric {rubric}: {exc.strerror}") from None
            judge = Judge(judge_base_url, judge_model, text)
        started = time.monotonic()
        try:
            asyncio.run(_run(db, config, base_url, action_format=action_format.value,
                             quiet=quiet, api_key=api_key, lease_seconds=lease_seconds,
                             judge=judge))
        except EndpointUnusable as exc:
            raise fail(f"{exc} (nothing was stored)") from None
        except BranchpointError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            typer.echo(f"interrupted after {time.monotonic() - started:.1f} s; run the same "
                       "command again to resume", err=True)
            raise typer.Exit(130) from None
