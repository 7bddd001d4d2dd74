"""``branchpoint export`` and ``branchpoint stats``: the data a store yields.

Both are thin: parse options into :class:`~branchpoint.store.exports.ExportOptions`, run
:func:`~branchpoint.store.exports.export_lines` or
:func:`~branchpoint.store.exports.compute_stats`, write the result.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from branchpoint.cli.filters import tree_filters
from branchpoint.cli.main import ReadDbOption, fail, given, usage_error
from branchpoint.store.errors import BranchpointError
from branchpoint.store.log import TreeFilter
from branchpoint.store.pairs import DEFAULT_MARGIN


class Format(StrEnum):
    dpo = "dpo"
    steps = "steps"
    sft = "sft"
    trajectory_pairs = "trajectory-pairs"
    stepwise = "stepwise"
    events = "events"


_TRAINING = frozenset({"dpo", "steps", "sft", "trajectory-pairs", "stepwise"})


class ValueMode(StrEnum):
    mean = "mean"
    max = "max"


class ToolArguments(StrEnum):
    object = "object"
    string = "string"


MarginOption = Annotated[float, typer.Option(
    "--margin", min=0.0, max=1.0,
    help="A pair needs the best child's value above the worst's by at least this.")]
ValueOption = Annotated[ValueMode, typer.Option(
    "--value", help="An inner node's value: the mean or the max of its children's.")]
SourcesOption = Annotated[str | None, typer.Option(
    "--sources", help="Comma-separated score sources a leaf's value may come from; the "
    "most recent counts (default: human, else checker, else judge, else the most recent "
    "other). Not with --judge-weight.")]
JudgeWeightOption = Annotated[float | None, typer.Option(
    "--judge-weight", min=0.0, max=1.0,
    help="Leaf value = (1-W)*checker + W*judge, or whichever of the two exists.")]
ConfidenceOption = Annotated[float | None, typer.Option(
    "--confidence", min=0.0, metavar="Z",
    help="Keep a pair only when it also wins by Z standard errors of the value difference "
    "(dropped pairs count as low_confidence). Default: no such test.")]
DiscountOption = Annotated[float, typer.Option(
    "--discount", metavar="G",
    help="A leaf's score counts G^k at the node k steps above it, so the shorter of two "
    "equal successes is worth more (0 < G <= 1; default 1: no discount).")]
BinaryOption = Annotated[bool, typer.Option(
    "--binary", help="Count a checker score as 1.0 when it is 1.0, else 0.0 (what a 0/1 "
    "checker would give); judge scores are left as they are.")]


def _options(**kw: Any) -> Any:
    from branchpoint.store.exports import ExportOptions

    sources = kw.pop("sources")
    if sources is not None:
        names = tuple(s.strip() for s in sources.split(",") if s.strip())
        if not names:
            raise fail("--sources must name at least one source", 2)
        kw["sources"] = names
    return ExportOptions(**kw)


async def _export(db: str, fmt: str, options: Any, out: BinaryIO) -> tuple[int, int | None]:
    """Write the export; returns the rows written and, when there were none, how many
    trees the filters matched (to tell "nothing matched" from "nothing to export")."""
    from branchpoint.store.exports import export_lines
    from branchpoint.store.log import open_log

    log = await open_log(db)
    count = 0
    try:
        async for line in export_lines(log, fmt, options):
            out.write(line)
            count += 1
        matched = None if count else len(await log.list_trees(options.trees()))
    finally:
        await log.close()
    return count, matched


async def _stats(db: str, options: Any) -> dict[str, Any]:
    from branchpoint.store.exports import compute_stats
    from branchpoint.store.log import open_log

    log = await open_log(db)
    try:
        stats: dict[str, Any] = await compute_stats(log, options)
        return stats
    finally:
        await log.close()


def _table(stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="branchpoint stats", caption="dropped: tie, under margin, "
                  "identical actions, low confidence (the last four columns)")
    cols = {"trees": "trees", "nodes": "nodes", "branching_points": "branching",
            "pairs": "pairs", "tie": "tie", "under_margin": "under", "identical": "same",
            "low_confidence": "low Z"}
    table.add_column("env")
    for header in cols.values():
        table.add_column(header, justify="right")

    def row(name: str, s: dict[str, Any]) -> list[str]:
        flat = {**s, **s["dropped"]}
        return [name, *(str(flat[c]) for c in cols)]

    for env, s in stats["by_env"].items():
        table.add_row(*row(env, s))
    table.add_row(*row("all", stats), style="bold")
    console = Console()
    console.print(table)
    if "pairs_decided" not in stats:
        return
    truth = Table(title="pairs against the expert's own mistake labels")
    for header in ("env", "decided", "correct", "precision"):
        truth.add_column(header, justify="left" if header == "env" else "right")

    def truth_row(name: str, s: dict[str, Any]) -> list[str]:
        p = s.get("pair_precision")
        return [name, str(s.get("pairs_decided", "-")), str(s.get("pairs_correct", "-")),
                "-" if p is None else f"{p:.3f}"]

    for env, s in stats["by_env"].items():
        truth.add_row(*truth_row(env, s))
    truth.add_row(*truth_row("all", stats), style="bold")
    console.print(truth)


#: The formats each option applies to; giving it for another format is a usage error.
_APPLIES: dict[str, tuple[str, frozenset[str]]] = {
    "margin": ("--margin", frozenset({"dpo", "trajectory-pairs"})),
    "min_score": ("--min-score", frozenset({"sft"})),
    "label_threshold": ("--label-threshold", frozenset({"stepwise"})),
    "with_metadata": ("--with-metadata", frozenset({"dpo", "trajectory-pairs"})),
    "value": ("--value", _TRAINING),
    "sources": ("--sources", _TRAINING),
    "judge_weight": ("--judge-weight", _TRAINING),
    "tool_arguments": ("--tool-arguments", _TRAINING),
    "binary": ("--binary", _TRAINING),
    # pairs between siblings: dpo only (trajectory pairs rank whole episodes)
    "confidence": ("--confidence", frozenset({"dpo"})),
    # inner nodes' values: leaf scores (sft, trajectory-pairs) are never discounted
    "discount": ("--discount", frozenset({"dpo", "steps", "stepwise"})),
}


def _check_applies(ctx: typer.Context, fmt: str) -> None:
    for name, (flag, formats) in _APPLIES.items():
        if given(ctx, name) and fmt not in formats:
            raise usage_error(ctx, f"{flag} does not apply to {fmt} "
                                    f"(only to {', '.join(sorted(formats))})")
    if given(ctx, "sources") and given(ctx, "judge_weight"):
        raise usage_error(ctx, "--sources does not apply with --judge-weight (which "
                                "blends the checker and the judge)")


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot be written (exit 1), before anything is exported."""
    folder = out.parent
    if out.is_dir():
        raise fail(f"cannot write {out}: it is a folder; --out names a file")
    if not folder.is_dir():
        raise fail(f"cannot write {out}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise fail(f"cannot write {out}: permission denied")


def _no_rows(fmt: str, matched: int | None, trees: TreeFilter, env: str | None) -> None:
    if matched is None:
        return
    if matched == 0:
        typer.echo("warning: no tree matched" + _describe(trees, env), err=True)
    else:
        trees_ = "tree" if matched == 1 else "trees"
        typer.echo(f"note: {matched} {trees_} matched but gave no {fmt} rows", err=True)


def _describe(trees: TreeFilter, env: str | None) -> str:
    import msgspec

    given = {k: v for k, v in msgspec.structs.asdict(trees).items() if v is not None}
    if env is not None:
        given["env"] = env
    if not given:
        return " (the store holds no trees)"
    return " the filters (" + ", ".join(f"{k}={v}" for k, v in given.items()) + ")"


def register(app: typer.Typer) -> None:
    @app.command()
    @tree_filters
    def export(  # noqa: PLR0917 - Typer reads options from the parameters
        ctx: typer.Context,
        fmt: Annotated[Format, typer.Argument(
            metavar="FORMAT", help="dpo, steps, sft, trajectory-pairs, stepwise, or events "
            "(the raw events, re-ingestable: a backup, or a move to another store).")],
        db: ReadDbOption,
        trees: TreeFilter,
        out: Annotated[Path | None, typer.Option(
            "--out", help="Write to this file (default: stdout); its folder must exist. "
            "Replaced only when the export succeeds.")] = None,
        margin: MarginOption = DEFAULT_MARGIN,
        value: ValueOption = ValueMode.mean,
        sources: SourcesOption = None,
        judge_weight: JudgeWeightOption = None,
        min_score: Annotated[float, typer.Option(
            "--min-score", min=0.0, max=1.0,
            help="sft: keep paths whose leaf value reaches this.")] = 1.0,
        label_threshold: Annotated[float, typer.Option(
            "--label-threshold", min=0.0, max=1.0,
            help="stepwise: a step is labelled good when its value reaches this.")] = 0.5,
        with_metadata: Annotated[bool, typer.Option(
            "--with-metadata", help="dpo, trajectory-pairs: add tree, nodes, values, "
            "margin.")] = False,
        tool_arguments: Annotated[ToolArguments, typer.Option(
            "--tool-arguments", help="Tool-call arguments as JSON objects (what chat "
            "templates expect) or as the strings the model sent.")] = ToolArguments.object,
        confidence: ConfidenceOption = None,
        discount: DiscountOption = 1.0,
        binary: BinaryOption = False,
    ) -> None:
        """Export training data (or the raw events) as JSON Lines, one example per line,
        in a deterministic order. Every tree the filters select counts, finished or not.
        An option that does not apply to FORMAT is a usage error (exit 2)."""
        _check_applies(ctx, fmt.value)
        if out is not None:
            _check_out(out)
        options = _options(where=trees, margin=margin, value=value.value, sources=sources,
                           judge_weight=judge_weight, min_score=min_score,
                           label_threshold=label_threshold, with_metadata=with_metadata,
                           tool_arguments=tool_arguments.value, confidence=confidence,
                           discount=discount, binary=binary)
        try:
            if out is None:
                count, matched = asyncio.run(_export(db, fmt.value, options,
                                                     sys.stdout.buffer))
                sys.stdout.buffer.flush()
            else:
                count, matched = _export_to(out, db, fmt.value, options)
        except BrokenPipeError:
            # `export | head` closed the pipe: the reader's choice, not an error. Point
            # stdout at /dev/null so the flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except (BranchpointError, ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        _no_rows(fmt.value, matched, trees, None)
        typer.echo(f"exported {count} {fmt.value} rows", err=True)

    @app.command()
    @tree_filters
    def stats(  # noqa: PLR0917 - Typer reads options from the parameters
        ctx: typer.Context,
        db: ReadDbOption,
        trees: TreeFilter,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        margin: MarginOption = DEFAULT_MARGIN,
        value: ValueOption = ValueMode.mean,
        sources: SourcesOption = None,
        judge_weight: JudgeWeightOption = None,
        confidence: ConfidenceOption = None,
        discount: DiscountOption = 1.0,
        binary: BinaryOption = False,
    ) -> None:
        """Count trees, nodes, branching points, pairs and the points dropped (tie,
        under margin, identical actions, low confidence), in all and per environment, over
        the trees the filters select; where the steps record which were mistakes (the
        scripted expert), also the decided pairs and the pair precision."""
        if given(ctx, "sources") and given(ctx, "judge_weight"):
            raise usage_error(ctx, "--sources does not apply with --judge-weight")
        options = _options(where=trees, margin=margin, value=value.value, sources=sources,
                           judge_weight=judge_weight, confidence=confidence,
                           discount=discount, binary=binary)
        try:
            result = asyncio.run(_stats(db, options))
        except (BranchpointError, ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        if result["trees"] == 0:
            _no_rows("stats", 0, trees, None)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            _table(result)


def _export_to(out: Path, db: str, fmt: str, options: Any) -> tuple[int, int | None]:
    """Export into ``out`` through a hidden file beside it, renamed over ``out`` at the
    end, so a failed export never leaves a half file where a good one is expected. Errors
    name ``out``, never the hidden file.

    Raises:
        OSError: ``out`` cannot be written (the message names ``out``).
    """
    tmp = out.with_name(f".{out.name}.partial")
    try:
        try:
            fh = tmp.open("wb")
        except OSError as exc:
            raise OSError(f"cannot write {out}: {exc.strerror}") from None
        with fh:
            try:
                result = asyncio.run(_export(db, fmt, options, fh))
            except BranchpointError:  # the store's errors (StoreUnavailable is an OSError)
                raise
            except OSError as exc:  # writing the hidden file failed (a full disk, ...)
                raise OSError(f"cannot write {out}: {exc.strerror or exc}") from None
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise OSError(f"cannot write {out}: {exc.strerror}") from None
        return result
    finally:
        tmp.unlink(missing_ok=True)
