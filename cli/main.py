"""The ``branchpoint`` command line.

Exit codes: 0 done; 1 bad input (nothing stored); 2 usage. Data goes to stdout, errors to
stderr. Every command that reads or writes a store takes ``--db`` (default
``$BRANCHPOINT_DB`` or ``sqlite:///branchpoint.db``): a URL, or a bare path, which is a
SQLite file. Commands that only read (``ReadDbOption``) refuse a SQLite file that does not
exist, and create nothing; commands that write (``DbOption``) create it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
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


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or through an environment
    variable), as opposed to leaving its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def usage_error(ctx: typer.Context, message: str) -> typer.Exit:
    """Print the command's usage line and ``message`` to stderr; return the Exit (code 2)
    to raise."""
    typer.echo(ctx.get_usage(), err=True)
    return fail(message, 2)


_SQLITE_URL = re.compile(r"sqlite(\+\w+)?://(?P<rest>[^?]*)(\?.*)?")


def store_url(value: str) -> str:
    """``value`` as a store URL: a URL as it is, a bare path as the SQLite file it names
    (``runs/x.db`` is ``sqlite:///runs/x.db``, ``/tmp/x.db`` is ``sqlite:////tmp/x.db``)."""
    if "://" in value or value.startswith("memory:"):
        return value
    return f"sqlite:///{value}"


def sqlite_file(url: str) -> str | None:
    """The file a ``sqlite://`` URL names, as written (None for another backend, or for a
    SQLite URL that names no file)."""
    m = _SQLITE_URL.fullmatch(url)
    if m is None:
        return None
    rest = m.group("rest")
    path = rest[1:] if rest.startswith("/") else rest
    return path if path and path != ":memory:" else None


def _write_db(value: str) -> str:
    return store_url(value)


def _read_db(value: str) -> str:
    url = store_url(value)
    path = sqlite_file(url)
    if path is not None and not Path(path).exists():
        raise fail(f"no such database: {path}")
    return url


_DB_HELP = ("The store: a SQLite file path (runs/x.db) or URL (sqlite:///runs/x.db, "
            "sqlite:////abs/x.db), postgresql://user@host/db, or memory://. "
            "Default: $BRANCHPOINT_DB, else branchpoint.db.")

#: ``--db`` of a command that writes: a SQLite file that does not exist is created.
DbOption = Annotated[
    str,
    typer.Option("--db", help=_DB_HELP + " Created when missing.", callback=_write_db,
                 default_factory=default_db, show_default=False),
]
#: ``--db`` of a command that only reads: a SQLite file that does not exist is an error
#: (exit 1, "no such database"), and nothing is created.
ReadDbOption = Annotated[
    str,
    typer.Option("--db", help=_DB_HELP + " Must exist.", callback=_read_db,
                 default_factory=default_db, show_default=False),
]


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
    "train": "branchpoint.cli.train",
    "eval": "branchpoint.cli.train",
    "mcp": "branchpoint.cli.mcp",
    "serve": "branchpoint.cli.serve",
}
# Every module but ingest's may be missing from a trimmed install; dict order, no repeats.
_OPTIONAL = tuple(dict.fromkeys(m for m in COMMANDS.values() if m != "branchpoint.cli.ingest"))


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
