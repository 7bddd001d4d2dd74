"""The tree filters every command that selects trees takes, in one place.

``@tree_filters`` adds the same eight options to a Typer command (``--env``, ``--task``,
``--tree``, ``--origin``, ``--since``, ``--until``, ``--finished/--unfinished``, ``--split``)
and hands the command one :class:`~branchpoint.store.log.TreeFilter` in its ``trees``
parameter, so that ``export``, ``stats`` and later ``branch``, ``serve`` and ``mcp`` name
and read them identically::

    @app.command()
    @tree_filters
    def stats(db: ReadDbOption, trees: TreeFilter) -> None: ...

The option values are checked before anything is opened: a time that is not ISO 8601, or
``--since`` not before ``--until``, is a usage error (exit 2).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from branchpoint.store.log import TreeFilter
    from branchpoint.store.splits import Split

__all__ = ["FILTER_OPTIONS", "SplitName", "build_filter", "parse_time", "tree_filters"]

PANEL = "Tree filters"


class SplitName(StrEnum):
    train = "train"
    validation = "validation"
    heldout = "heldout"


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 date or time (``2026-11-22``, ``2026-11-22T10:00:00Z``); a time
    without a zone is UTC.

    Raises:
        typer.BadParameter: not such a time (a usage error, exit 2).
    """
    if value is None:
        return None
    text = value.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z"))
                                      else text)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date or time "
                                 "(e.g. 2026-11-22 or 2026-11-22T10:00:00Z)",
                                 param_hint=option) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def build_filter(*, env: str | None = None, task: str | None = None, tree: str | None = None,
                 origin: str | None = None, since: str | None = None,
                 until: str | None = None, finished: bool | None = None,
                 split: Split | None = None) -> TreeFilter:
    """The :class:`~branchpoint.store.log.TreeFilter` for the options' values.

    Raises:
        typer.BadParameter: a time that does not parse, or ``since`` not before ``until``.
    """
    from branchpoint.store.log import TreeFilter

    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if start is not None and end is not None and start >= end:
        raise typer.BadParameter(f"--since ({since}) must be before --until ({until})",
                                 param_hint="--since")
    return TreeFilter(tree_id=tree, env=env, task_id=task, origin=origin, since=start,
                      until=end, finished=finished, split=split)


#: The options, as ``(parameter name, annotation)``; each defaults to None (no filter).
FILTER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("env", Annotated[str | None, typer.Option(
        "--env", rich_help_panel=PANEL,
        help="Only trees of this environment (the name its root records).")]),
    ("task", Annotated[str | None, typer.Option(
        "--task", rich_help_panel=PANEL, help="Only trees of this task id.")]),
    ("tree", Annotated[str | None, typer.Option(
        "--tree", rich_help_panel=PANEL, help="Only the tree with this id.")]),
    ("origin", Annotated[str | None, typer.Option(
        "--origin", rich_help_panel=PANEL,
        help="Only trees from this origin (sdk, proxy, mcp, sampler, import, ...).")]),
    ("since", Annotated[str | None, typer.Option(
        "--since", rich_help_panel=PANEL, metavar="TIME",
        help="Only trees whose root was recorded at or after TIME (ISO 8601; UTC when no "
        "zone is given).")]),
    ("until", Annotated[str | None, typer.Option(
        "--until", rich_help_panel=PANEL, metavar="TIME",
        help="Only trees whose root was recorded before TIME.")]),
    ("finished", Annotated[bool | None, typer.Option(
        "--finished/--unfinished", rich_help_panel=PANEL, show_default=False,
        help="Only closed trees, or only trees not closed yet (default: both).")]),
    ("split", Annotated[SplitName | None, typer.Option(
        "--split", rich_help_panel=PANEL, case_sensitive=False,
        help="Only tasks of this split: the root's task.split, else the split of an "
        "integer task_id. Trees with neither are left out. --split train never yields a "
        "held-out task.")]),
)

_F = TypeVar("_F", bound=Callable[..., Any])


def tree_filters(command: _F) -> _F:
    """Add the tree-filter options to a Typer command whose ``trees`` parameter receives
    the resulting :class:`~branchpoint.store.log.TreeFilter`."""
    sig = inspect.signature(command, eval_str=True)
    if "trees" not in sig.parameters:
        raise TypeError(f"{command.__name__} needs a 'trees' parameter for the filter")
    names = {name for name, _ in FILTER_OPTIONS}
    clash = names & set(sig.parameters)
    if clash:
        raise TypeError(f"{command.__name__} already has {', '.join(sorted(clash))}")
    params = [p for p in sig.parameters.values() if p.name != "trees"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=annotation) for name, annotation in FILTER_OPTIONS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, None) for name in names}
        if isinstance(values["split"], SplitName):
            values["split"] = values["split"].value
        kwargs["trees"] = build_filter(**values)
        return command(*args, **kwargs)

    annotations = {p.name: p.annotation for p in params}
    if sig.return_annotation is not inspect.Signature.empty:
        annotations["return"] = sig.return_annotation
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = annotations
    del wrapper.__wrapped__  # Typer must read __signature__, not the wrapped function
    return wrapper  # type: ignore[return-value]
