"""Forking an environment: one entry point, three ways.

:func:`fork` returns an independent copy of an environment in its current state, so that
two branches can go on from the same step without seeing each other:

``snapshot``
    The environment's state lives in memory; :meth:`Environment.snapshot` copies it and
    :meth:`Environment.restore` puts it into a fresh environment. Cheap, and siblings share
    nothing (a snapshot is an independent copy, never a view).
``sandbox``
    The environment works on real resources: each branch gets its own real directory
    (:class:`Sandbox`) or its own real SQLite database file (:class:`SqliteSandbox`),
    copied at the fork. A sandbox is removed when closed, when its owner is garbage
    collected, or at interpreter exit, whichever comes first.
``replay``
    A fresh environment re-runs the actions taken since reset and must reproduce every
    observation (see :mod:`branchpoint.sampler.replay`); it works for every
    :class:`~branchpoint.sampler.envs.base.Environment` (the base class keeps the
    ``history`` it re-runs), and is how recorded trajectories are branched when no live
    state exists.
``stateless``
    The environment's tools change nothing (it declares ``fork_mode = "stateless"``): the
    conversation is the whole state, so a fresh environment adopts the history
    (:meth:`Environment.adopt`) without running anything again.

The environment's ``fork_mode`` (one of
:data:`~branchpoint.sampler.envs.base.FORK_MODES`) picks the way when none is asked for.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from branchpoint.sampler.envs.base import Environment, ForkMode

__all__ = ["Sandbox", "SqliteSandbox", "copy_database", "fork"]


def fork(env: Environment, how: ForkMode | None = None) -> Environment:
    """An independent copy of ``env`` in its current state, made the way ``how`` names
    (default: ``env.fork_mode``). The caller owns the copy and closes it.

    Raises:
        ValueError: ``how`` is not a way this environment supports (``snapshot`` needs an
            environment that copies its state, ``stateless`` one that declares it;
            ``replay`` works for all).
    """
    how = how or env.fork_mode
    if how == "replay":
        from branchpoint.sampler.replay import replay_fork

        return replay_fork(env)
    if how == "stateless":
        if env.fork_mode != "stateless":
            raise ValueError(f"{env.env_name!r} environments do not declare their tools "
                             f"stateless (their fork mode is {env.fork_mode!r})")
        child = env.fresh()
        child.reset()
        child.adopt(env.history)
        return child
    if how == "sandbox" and env.fork_mode != "sandbox":
        raise ValueError(f"{env.name!r} environments do not run in a sandbox "
                         f"(their fork mode is {env.fork_mode!r})")
    if how not in ("snapshot", "sandbox"):
        raise ValueError(f"unknown fork mode {how!r}; use snapshot, sandbox, replay or "
                         "stateless")
    if not env.can_snapshot():
        raise ValueError(f"{env.env_name!r} environments implement no snapshot and restore; "
                         "fork them by replay")
    return env.fork()


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Sandbox:
    """A real directory owned by one branch, removed on :meth:`close` (or when the object
    is collected, or at exit). ``Sandbox.copy_of(other)`` is a new sandbox holding a copy
    of another's files; symbolic links are copied as links, never followed."""

    def __init__(self, *, prefix: str = "bp-sandbox-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
        self._finalizer = weakref.finalize(self, _remove, str(self.path))

    @classmethod
    def copy_of(cls, source: Sandbox | Path) -> Sandbox:
        """A new sandbox with a copy of ``source``'s contents."""
        box = cls()
        src = source.path if isinstance(source, Sandbox) else Path(source)
        shutil.copytree(src, box.path, symlinks=True, dirs_exist_ok=True)
        return box

    def replace_with(self, source: Sandbox | Path) -> None:
        """Make this sandbox's contents a copy of ``source``'s."""
        src = source.path if isinstance(source, Sandbox) else Path(source)
        self.clear()
        shutil.copytree(src, self.path, symlinks=True, dirs_exist_ok=True)

    def clear(self) -> None:
        """Remove everything inside the sandbox (the directory itself stays)."""
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Remove the directory and everything in it; closing twice is harmless."""
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}{', closed' if self.closed else ''})"


def copy_database(source: sqlite3.Connection | Path | str, target: Path | str) -> None:
    """Copy a SQLite database (an open connection or a file) into the file ``target``
    with sqlite3's online backup API: a consistent copy even while the source is open,
    uncommitted changes aside."""
    own = not isinstance(source, sqlite3.Connection)
    src = source if isinstance(source, sqlite3.Connection) else sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        if own:
            src.close()


class SqliteSandbox(Sandbox):
    """A real SQLite database file (``db_path``) in a sandbox directory of its own.

    ``SqliteSandbox.copy_of(source)`` copies another sandbox's database, a database file or
    an open connection with the backup API; :meth:`connect` opens the branch's database.
    """

    filename = "db.sqlite"

    def __init__(self, *, prefix: str = "bp-sqlite-") -> None:
        super().__init__(prefix=prefix)
        self.db_path = self.path / self.filename

    @classmethod
    def copy_of(cls, source: Sandbox | Path | sqlite3.Connection) -> SqliteSandbox:
        box = cls()
        copy_database(_db_source(source), box.db_path)
        return box

    def replace_with(self, source: Sandbox | Path | sqlite3.Connection) -> None:
        """Overwrite this sandbox's database with a copy of ``source`` (close connections
        to it first or they see the new contents mid-transaction)."""
        copy_database(_db_source(source), self.db_path)

    def connect(self) -> sqlite3.Connection:
        """A new connection to the branch's database."""
        return sqlite3.connect(self.db_path)


def _db_source(source: Sandbox | Path | sqlite3.Connection) -> sqlite3.Connection | Path:
    if isinstance(source, SqliteSandbox):
        return source.db_path
    if isinstance(source, Sandbox):
        return source.path / SqliteSandbox.filename
    return source
