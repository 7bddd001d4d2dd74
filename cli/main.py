"""The ``branchpoint`` command line.

Exit codes: 0 done; 1 bad input (nothing stored); 2 usage. Data goes to stdout, errors to
stderr. Every subcommand takes ``--db URL`` (default ``$BRANCHPOINT_DB`` or
``sqlite:///branchpoint.db``).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="branchpoint",
    help="Step-level preference data from trees of agent behaviour.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DEFAULT_DB = "sqlite:///branchpoint.db"


def default_db() -> str:
    return os.environ.get("BRANCHPOINT_DB") or DEFAULT_DB


DbOption = Annotated[
    str,
    typer.Option("--db", help="Store URL: sqlite:///file.db, postgresql://user@host/db, "
                 "memory://. Default: $BRANCHPOINT_DB or sqlite:///branchpoint.db.",
                 default_factory=default_db, show_default=False),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.callback()
def _root() -> None:
    """Record agent trees, branch them, score them, export TRL-ready preference data."""


# Which module registers each subcommand. When the command line names one of these, only
# its module is imported: the others pull in networkx, rich tables and the samplers, which
# would otherwise be start-up cost for every `branchpoint ingest`. Help, completion and
# anything unknown import them all (so a command missing here still works, only slower).
COMMANDS: dict[str, str] = {
    "ingest": "branchpoint.cli.ingest",
    "export": "branchpoint.cli.data",
    "stats": "branchpoint.cli.data",
    "envs": "branchpoint.cli.envs",
    "env": "branchpoint.cli.envs",
    "demo": "branchpoint.cli.demo",
    "serve-model": "branchpoint.cli.serve_model",
    "sample": "branchpoint.cli.sample",
    "branch": "branchpoint.cli.branch",
    "model": "branchpoint.cli.train",
}
_OPTIONAL = ("branchpoint.cli.data", "branchpoint.cli.envs", "branchpoint.cli.demo",
             "branchpoint.cli.serve_model", "branchpoint.cli.sample", "branchpoint.cli.branch",
             "branchpoint.cli.train")


def _register(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    wanted = COMMANDS.get(argv[0]) if argv and not {"--help", "-h"} & set(argv) else None
    modules = [wanted] if wanted else ["branchpoint.cli.ingest", *_OPTIONAL]
    for module in modules:
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module or module not in _OPTIONAL:
                raise
            continue
        mod.register(app)


_register()


def main() -> None:
    """Entry point of the ``branchpoint`` script."""
    try:
        app()
    except BrokenPipeError:
        # `branchpoint export dpo | head` closes stdout early; that is not an error.
        sys.stderr.close()
        os._exit(0)
