"""``branchpoint demo``: the end-to-end data path on the built-in environments."""

from __future__ import annotations

import asyncio
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from branchpoint.cli.main import fail
from branchpoint.store.errors import BranchpointError


class Policy(StrEnum):
    expert = "expert"


def export_command(db: str, target: Path, options: Any) -> str:
    """The ``branchpoint export dpo`` command line that writes ``target`` from ``db`` with
    ``options`` (an ``ExportOptions``): what the demo prints so a user can reproduce it."""
    words = ["branchpoint", "export", "dpo", "--db", db, "--out", str(target),
             "--margin", f"{options.margin:g}"]
    if options.confidence is not None:
        words += ["--confidence", f"{options.confidence:g}"]
    if options.discount != 1.0:
        words += ["--discount", f"{options.discount:g}"]
    if options.binary:
        words.append("--binary")
    if options.value != "mean":
        words += ["--value", options.value]
    return shlex.join(words)


async def _run(db: str, out: Path, config: object, quiet: bool) -> None:
    from rich.progress import Progress

    from branchpoint.cli.data import _table
    from branchpoint.sampler.demo import DEMO_PAIRS, DemoConfig, histogram, run_demo
    from branchpoint.store.exports import compute_stats, export_lines
    from branchpoint.store.log import open_log

    assert isinstance(config, DemoConfig)
    log = await open_log(db)
    try:
        with Progress(disable=quiet, transient=True) as bar:
            tasks = {env: bar.add_task(f"growing {env} trees", total=config.tasks)
                     for env in config.envs}
            report = await run_demo(log, config,
                                    progress=lambda env, n: bar.advance(tasks[env], n))
        typer.echo(f"recorded {report.trees} trees ({report.events} events) in "
                   f"{report.seconds:.1f} s; {report.skipped} already in the store")
        for env, scores in report.leaf_scores.items():
            if scores:
                mean = sum(scores) / len(scores)
                typer.echo(f"{env}: {len(scores)} leaves, mean score {mean:.3f}, histogram "
                           f"over [0,1] in tenths: {histogram(scores)}")
        stats = await compute_stats(log, DEMO_PAIRS)
        _table(stats)
        for env, s in stats["by_env"].items():
            p = s.get("pair_precision")
            if p is not None:
                typer.echo(f"{env}: pair precision {p:.3f} ({s['pairs_correct']} of "
                           f"{s['pairs_decided']} decided pairs choose the expert's "
                           "non-mistake)")
        out.mkdir(parents=True, exist_ok=True)
        target = out / "dpo.jsonl"
        rows = 0
        with target.open("wb") as fh:
            async for line in export_lines(log, "dpo", DEMO_PAIRS):
                fh.write(line)
                rows += 1
        typer.echo(f"wrote {rows} DPO pairs to {target} with:\n  "
                   f"{export_command(db, target, DEMO_PAIRS)}")
    finally:
        await log.close()


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(  # noqa: PLR0917 - Typer reads options from the parameters
        policy: Annotated[Policy, typer.Option(
            "--policy", help="Who acts: the scripted expert (a served model comes later).")
        ] = Policy.expert,
        out: Annotated[Path, typer.Option("--out", help="Folder for the store and exports.")
                       ] = Path("runs/demo"),
        db: Annotated[str | None, typer.Option(
            "--db", help="Store URL (default: sqlite:///OUT/branchpoint.db).")] = None,
        env: Annotated[list[str] | None, typer.Option(
            "--env", help="Environment to use; repeat for several (default: fs and shop).")
        ] = None,
        tasks: Annotated[int, typer.Option("--tasks", min=1,
                                           help="Training tasks per environment.")] = 200,
        mistakes: Annotated[float, typer.Option(
            "--mistakes", min=0.0, max=1.0, help="The expert's error rate.")] = 0.25,
        branch_points: Annotated[int, typer.Option(
            "--branch-points", min=0, help="Forks along each main line.")] = 3,
        branches: Annotated[int, typer.Option(
            "--branches", min=1, help="Candidate next steps drawn at each fork.")] = 3,
        rollouts: Annotated[int, typer.Option(
            "--rollouts", min=1, help="Continuations of each candidate to the end: its "
            "value is the mean of their scores.")] = 4,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    ) -> None:
        """Play training tasks with an erring expert, fork at several steps, continue each
        candidate step several times, record every step into the store, then print the
        stats (with the pair precision against the expert's own mistake labels) and write
        the DPO export, printing the export command that reproduces it."""
        from branchpoint.sampler.demo import DemoConfig

        config = DemoConfig(envs=tuple(env or ("fs", "shop")), tasks=tasks, mistakes=mistakes,
                            branch_points=branch_points, branches=branches,
                            rollouts=rollouts)
        url = db or f"sqlite:///{(out / 'branchpoint.db').as_posix()}"
        out.mkdir(parents=True, exist_ok=True)
        try:
            asyncio.run(_run(url, out, config, quiet))
        except (BranchpointError, ValueError) as exc:
            raise fail(str(exc)) from None
