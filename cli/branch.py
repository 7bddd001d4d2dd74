"""``branchpoint branch``: grow sampled branches from trajectories recorded through the
SDK, the proxy, MCP or ``ingest``, by strict replay of the recorded steps."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import typer

from branchpoint.cli.main import DbOption, fail
from branchpoint.store.errors import BranchpointError, EndpointUnusable


def parse_steps(spec: str | None) -> list[int] | None:
    """``0,2,5`` -> [0, 2, 5].

    Raises:
        ValueError: not a comma-separated list of non-negative integers.
    """
    if spec is None:
        return None
    try:
        out = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--steps {spec!r}: a comma-separated list of depths") from None
    if not out or out[0] < 0:
        raise ValueError(f"--steps {spec!r}: depths are non-negative integers")
    return out


async def _run(db: str, config: Any, base_url: str, api_key: str, *, trees: list[str],
               where: Any, from_depth: int, steps: list[int] | None,
               lease_seconds: float) -> int:
    from branchpoint.sampler.branch import branch_run
    from branchpoint.sampler.claims import open_claims
    from branchpoint.sampler.grow import RunStats, run_name
    from branchpoint.sampler.policy import ChatPolicy
    from branchpoint.store.log import open_log

    policy = ChatPolicy(base_url, config.model, config.sampling, api_key=api_key)
    try:
        await policy.check()
        log = await open_log(db)
        try:
            ids = [t.tree_id for t in await log.list_trees(where)]
            if trees:
                ids = [t for t in ids if t in set(trees)]
                missing = sorted(set(trees) - set(ids))
                if missing:
                    raise fail(f"no such tree (or not matching the filters): "
                               f"{', '.join(missing)}")
            run = config.run or run_name(config)
            typer.echo(f"branch run {run}: {len(ids)} recorded trees", err=True)
            stats = RunStats()
            claims = open_claims(db, lease_seconds=lease_seconds)
            try:
                results = await branch_run(config, policy, log, ids, claims=claims,
                                           from_depth=from_depth, steps=steps, stats=stats)
            finally:
                await claims.close()
        finally:
            await log.close()
    finally:
        await policy.close()
    code = 0
    for r in results:
        if r.status == "branched":
            typer.echo(f"{r.tree_id}: branched at {r.points} steps, {r.new_nodes} new nodes")
        else:
            typer.echo(f"{r.tree_id}: {r.status}: {r.message}", err=True)
            if r.status == "error":
                code = 1
    statuses = [r.status for r in results]
    typer.echo(f"trees: {statuses.count('branched')} branched, {statuses.count('diverged')} "
               f"diverged on replay (left untouched), {statuses.count('skipped')} skipped, "
               f"{statuses.count('error')} with endpoint errors; requests {stats.requests}, "
               f"completion tokens {stats.completion_tokens}")
    return code


def register(app: typer.Typer) -> None:
    @app.command()
    def branch(  # noqa: PLR0917 - Typer reads options from the parameters
        base_url: Annotated[str, typer.Option("--base-url",
                                              help="OpenAI-compatible endpoint.")],
        model: Annotated[str, typer.Option("--model", help="Served model name.")],
        db: DbOption,
        tree: Annotated[list[str] | None, typer.Option(
            "--tree", help="A recorded tree to branch; repeatable (default: every tree "
                           "matching the filters).")] = None,
        env: Annotated[str | None, typer.Option("--env", help="Only trees of this env.")
                       ] = None,
        origin: Annotated[str | None, typer.Option(
            "--origin", help="Only trees from this origin (sdk, proxy, mcp, ingest ...).")
        ] = None,
        since: Annotated[datetime | None, typer.Option(
            "--since", help="Only trees created at or after this time.")] = None,
        from_depth: Annotated[int, typer.Option(
            "--from-depth", min=0, help="Branch only at this depth and below.")] = 0,
        steps: Annotated[str | None, typer.Option(
            "--steps", help="Branch only at these depths, e.g. 0,2,3.")] = None,
        branching: Annotated[int, typer.Option("--branching", min=1,
                                               help="Alternatives asked for per step.")] = 2,
        rollouts: Annotated[int, typer.Option(
            "--rollouts", min=0, help="Continuations of each alternative (default 1).")] = 1,
        temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.7,
        top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
        max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 256,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 4,
        run: Annotated[str | None, typer.Option(
            "--run", help="Run name (default: a hash of the sampling settings).")] = None,
        lease_seconds: Annotated[float, typer.Option("--lease-seconds", min=1.0)] = 300.0,
        api_key: Annotated[str, typer.Option("--api-key", envvar="OPENAI_API_KEY")
                           ] = "EMPTY",
    ) -> None:
        """Replay recorded trajectories step by step, sample alternatives at their steps,
        roll them out, score them and add them to the same trees. A path that diverges
        on replay is reported and left untouched; a run started again resumes."""
        from branchpoint.sampler.grow import SampleConfig
        from branchpoint.sampler.policy import Sampling
        from branchpoint.store.log import TreeFilter

        try:
            depths = parse_steps(steps)
        except ValueError as exc:
            raise fail(str(exc)) from None
        config = SampleConfig(
            env=env or "*", tasks=[], model=model, branching=branching, depth=0,
            strategy="branch-rollout", rollouts=rollouts, concurrency=concurrency,
            sampling=Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                              seed=seed), run=run)
        where = TreeFilter(env=env, origin=origin, since=since)
        try:
            code = asyncio.run(_run(db, config, base_url, api_key, trees=tree or [],
                                    where=where, from_depth=from_depth, steps=depths,
                                    lease_seconds=lease_seconds))
        except EndpointUnusable as exc:
            raise fail(f"{exc} (nothing was stored)") from None
        except BranchpointError as exc:
            raise fail(str(exc)) from None
        raise typer.Exit(code)
