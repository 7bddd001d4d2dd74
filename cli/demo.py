"""``branchpoint demo``: the end-to-end data path on the built-in environments."""

from __future__ import annotations

import asyncio
import shlex
import sqlite3
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from branchpoint.cli.main import fail, sqlite_file, store_url
from branchpoint.cli.options import EnvOptions, ExpertFormat, parse_options
from branchpoint.store.errors import BranchpointError


class Policy(StrEnum):
    model = "model"
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


class _Undo:
    """What a demo run creates before it stores anything (folders, the SQLite file), so a
    run that fails with nothing stored leaves nothing behind."""

    def __init__(self, out: Path, db_file: str | None) -> None:
        self.folders: list[Path] = []
        folder = out.absolute()
        while not folder.exists():
            self.folders.append(folder)
            folder = folder.parent
        self.db = Path(db_file).absolute() if db_file is not None else None
        if self.db is not None and self.db.exists():
            self.db = None  # not ours: never removed

    def __call__(self) -> None:
        if self.db is not None and self.db.exists() and _holds_no_events(self.db):
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        for folder in self.folders:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it and everything above
                break


def _holds_no_events(db: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False  # not a store we can read: leave it
    return bool(count == 0)


def _run_model(out: Path, settings: object, fresh: bool, quiet: bool,
               compare: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from branchpoint.train.compare import run_compare
    from branchpoint.train.pipeline import DemoSettings, run_pipeline

    assert isinstance(settings, DemoSettings)
    console = Console(stderr=True, quiet=quiet)
    with console.status("starting") as status:
        def show(stage: str, message: str) -> None:
            status.update(f"[bold]{stage}[/bold]: {message}")
            if message.startswith(("done", "reused")):
                console.log(f"{stage}: {message}")

        report = (run_compare if compare else run_pipeline)(settings, out, fresh=fresh,
                                                            progress=show)
    table = Table(title=f"branchpoint demo: {report['env']} {report['options']} "
                  f"({report['engine']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    low, high = report["difference_ci95"]
    for name, value in (
            ("held-out success, SFT", f"{report['success_before']:.1%}"),
            ("held-out success, SFT + DPO", f"{report['success_after']:.1%}"),
            ("difference (95% CI)", f"{report['difference']:+.1%} [{low:+.1%}, {high:+.1%}]"),
            ("eval tasks x samples", f"{report['n_eval_tasks']} x {report['eval_samples']}"),
            ("DPO pairs", str(report["n_pairs"]))):
        table.add_row(name, value)
    for stage in report["stages"]:
        table.add_row(f"stage {stage['name']}",
                      f"{stage['seconds']:.0f} s" + (" (reused)" if stage["cached"] else ""))
    Console().print(table)
    if "compare" in report:
        Console().print(compare_table(report["compare"]))
    typer.echo(f"report: {out / 'report.json'} (plot: {out / 'report.png'}); trees: "
               f"{report['look_at_trees']}")


def compare_table(block: dict[str, Any]) -> Any:
    """The ``compare`` block of a report as a rich table: each arm's held-out success, its
    difference from SFT with the 95% interval, its pairs and completion tokens; then step
    minus trajectory and step minus binary."""
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def diff(d: float | None, ci: list[float] | None) -> str:
        if d is None or ci is None:
            return "-"
        return f"{d:+.1%} [{ci[0]:+.1%}, {ci[1]:+.1%}]"

    labels = {"sft": "SFT", "step": "DPO, step-level pairs",
              "binary": "DPO, step-level pairs, 0/1 checker",
              "trajectory": "DPO, trajectory-level pairs"}
    table = Table(title=f"branchpoint demo --compare: {block['n_eval_tasks']} held-out "
                  f"tasks x {block['eval_samples']} episodes, same completion-token budget")
    for column in ("arm", "success", "vs SFT (95% CI)", "pairs", "completion tokens"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, label in labels.items():
        a = block["arms"][arm]
        pairs, tokens = a["n_pairs"], a["completion_tokens"]
        table.add_row(label if a["trained"] else f"{label} (no pairs: not trained)",
                      pct(a["success"]),
                      diff(a["difference_vs_sft"], a["difference_vs_sft_ci95"]),
                      "-" if pairs is None else str(pairs),
                      "-" if tokens is None else f"{tokens:,}")
    for key, label in (("step_minus_trajectory", "step-level minus trajectory-level"),
                       ("step_minus_binary", "partial credit minus 0/1 checker")):
        d = block["differences"][key]
        table.add_row(label, "", diff(d["difference"], d["ci95"]), "", "")
    return table


def _checked(env: list[str] | None, option: list[str] | None, policy: Policy,
             action_format: ExpertFormat | None) -> dict[str, Any]:
    """The environment options, once the names and flags are known good (errors exit)."""
    from branchpoint.sampler.envs.registry import get_env

    try:
        for name in env or ():  # before anything is created
            get_env(name)
        options = parse_options(option)
    except (BranchpointError, ValueError) as exc:
        raise fail(str(exc)) from None
    if policy is Policy.model and action_format is not None:
        raise fail("--action-format applies to --policy expert (the model pipeline picks "
                   "its own)")
    return options


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(  # noqa: PLR0917 - Typer reads options from the parameters
        policy: Annotated[Policy, typer.Option(
            "--policy", help="model: build, SFT, sample trees, DPO and measure held-out "
            "success (needs the train extra); expert: the quick look at the data path "
            "with a scripted expert.")] = Policy.model,
        out: Annotated[Path | None, typer.Option(
            "--out", help="Output folder (default runs/demo for the model, runs/expert "
            "for the expert).")] = None,
        db: Annotated[str | None, typer.Option(
            "--db", help="--policy expert: the store, a SQLite file path or a URL, as for "
            "the other commands (default: OUT/branchpoint.db).")] = None,
        env: Annotated[list[str] | None, typer.Option(
            "--env", help="Environment to use; repeat for several (default: fs and shop "
            "for the expert, fs for the model).")] = None,
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
        engine: Annotated[str, typer.Option(
            "--engine", help="model: vllm (serve-model + sample, the default) or local "
            "(transformers in-process, where vLLM cannot run).")] = "vllm",
        eval_tasks: Annotated[int, typer.Option("--eval-tasks", min=1)] = 50,
        eval_split: Annotated[str, typer.Option(
            "--eval-split", help="model: heldout (the figure) or validation (to choose "
            "settings without touching held-out tasks).")] = "heldout",
        sft_demos: Annotated[int | None, typer.Option("--sft-demos", min=1)] = None,
        sft_epochs: Annotated[float | None, typer.Option("--sft-epochs", min=0.01)] = None,
        dpo_epochs: Annotated[float | None, typer.Option("--dpo-epochs", min=0.01)] = None,
        dpo_lr: Annotated[float | None, typer.Option("--dpo-lr", min=0.0)] = None,
        beta: Annotated[float | None, typer.Option("--beta", min=0.0)] = None,
        loss_type: Annotated[list[str] | None, typer.Option(
            "--loss-type", help="model: DPO loss type(s), repeatable (default sigmoid "
            "and sft).")] = None,
        eval_samples: Annotated[int, typer.Option("--eval-samples", min=1)] = 4,
        fresh: Annotated[bool, typer.Option(
            "--fresh", help="model: start over instead of reusing finished stages.")
        ] = False,
        compare: Annotated[bool, typer.Option(
            "--compare", help="model: also train DPO on the same trees with a 0/1 checker "
            "(--binary) and on trajectory-level pairs of independent episodes at the same "
            "completion-token budget, and compare held-out success (report.json's "
            "compare block).")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
        option: EnvOptions = None,
        action_format: Annotated[ExpertFormat | None, typer.Option(
            "--action-format", help="expert: the expert answers in text commands or tool "
            "calls (default: each environment's).")] = None,
    ) -> None:
        """The end-to-end demo. --policy model (default): build a small model, SFT it on
        erring expert demonstrations, serve it, sample trees on training tasks, export
        step-level pairs, DPO, and measure held-out success before and after
        (runs/demo/report.json); --compare adds DPO on the same trees with a 0/1
        checker and on trajectory-level pairs at the same token budget. --policy expert:
        play tasks with an erring expert, fork,
        continue each candidate several times (--rollouts), record, print the stats (with
        the pair precision against the expert's own mistake labels) and write the DPO
        export, printing the export command that reproduces it (runs/expert)."""
        from branchpoint.sampler.envs.registry import get_env

        options = _checked(env, option, policy, action_format)
        if compare and policy is not Policy.model:
            raise fail("--compare applies to --policy model")
        if policy is Policy.model:
            from branchpoint.train.deps import missing_train_modules, require_train

            if missing_train_modules():
                try:
                    require_train()
                except BranchpointError as exc:
                    raise fail(str(exc)) from None
            if engine not in ("vllm", "local"):
                raise fail(f"--engine must be vllm or local, got {engine!r}")
            from branchpoint.train.pipeline import DemoSettings

            names = env or ["fs"]
            if len(names) != 1:
                raise fail("--policy model runs one environment at a time")
            if eval_split not in ("heldout", "validation"):
                raise fail(f"--eval-split must be heldout or validation, got {eval_split!r}")
            from dataclasses import replace

            base = DemoSettings()
            dpo = replace(base.dpo,
                          epochs=base.dpo.epochs if dpo_epochs is None else dpo_epochs,
                          learning_rate=base.dpo.learning_rate if dpo_lr is None else dpo_lr,
                          beta=base.dpo.beta if beta is None else beta,
                          loss_type=tuple(loss_type) if loss_type else base.dpo.loss_type)
            sft = replace(base.sft,
                          epochs=base.sft.epochs if sft_epochs is None else sft_epochs)
            settings = DemoSettings(env=names[0], engine=engine, sample_tasks=tasks,
                                    eval_tasks=eval_tasks, eval_samples=eval_samples,
                                    eval_split=eval_split, dpo=dpo, sft=sft,
                                    sft_demos=sft_demos or base.sft_demos,
                                    options={**(base.options if names[0] == "fs" else {}),
                                             **options},
                                    # Another environment: the same network and
                                    # tokenizer recipe, built on its own text.
                                    model=base.model if names[0] == "fs" else
                                    replace(base.model, envs=(names[0],), options={}))
            try:
                _run_model(out or Path("runs/demo"), settings, fresh, quiet, compare)
            except (BranchpointError, ValueError, RuntimeError, OSError) as exc:
                raise fail(str(exc)) from None
            return
        from branchpoint.sampler.demo import DemoConfig

        config = DemoConfig(envs=tuple(env or ("fs", "shop")), tasks=tasks, mistakes=mistakes,
                            branch_points=branch_points, branches=branches,
                            rollouts=rollouts, options=options,
                            action_format=action_format and action_format.value)
        out = out or Path("runs/expert")
        url = store_url(db) if db else f"sqlite:///{(out / 'branchpoint.db').as_posix()}"
        try:
            for name in config.envs:  # before anything is created
                get_env(name)
        except BranchpointError as exc:
            raise fail(str(exc)) from None
        undo = _Undo(out, sqlite_file(url))
        try:
            out.mkdir(parents=True, exist_ok=True)
            asyncio.run(_run(url, out, config, quiet))
        except (BranchpointError, ValueError, OSError, NotImplementedError) as exc:
            undo()
            raise fail(str(exc)) from None
        except BaseException:
            undo()
            raise
