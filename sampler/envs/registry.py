"""Where environments are found: by name, from the ``branchpoint.envs`` entry-point group,
or by import path.

A package makes its environments available by declaring, in its ``pyproject.toml``::

    [project.entry-points."branchpoint.envs"]
    fs = "branchpoint.sampler.envs.fs:FsEnv"

and any :class:`~branchpoint.sampler.envs.base.Environment` subclass can also be named by
its import path, ``package.module:Class``, with no registration at all.

Whichever way an environment was named, :func:`make_env` records that name on it
(:attr:`~branchpoint.sampler.envs.base.Environment.env_name`), and a tree's root records
it as ``task.env``: the registry makes the same environment again from the root, for
replay, resume and skipping stored trees. The class's own ``name`` is only a label; an
entry point may register it under another name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from branchpoint.sampler.envs.base import Environment
from branchpoint.store.errors import UnknownEnvironment

__all__ = ["GROUP", "env_from_task", "get_env", "list_envs", "make_env", "name_of"]

GROUP = "branchpoint.envs"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def _load(name: str, target: str) -> type[Environment]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownEnvironment(f"environment {name!r} ({target}) cannot be imported: "
                                 f"{exc}") from exc
    obj: Any = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, Environment)):
        raise UnknownEnvironment(f"{target} is not an Environment subclass")
    return obj


def list_envs() -> list[str]:
    """The names registered under ``branchpoint.envs`` whose class can be loaded, sorted.
    A registered environment whose module fails to import is left out."""
    out = []
    for name in sorted(_entry_points()):
        try:
            get_env(name)
        except UnknownEnvironment:
            continue
        out.append(name)
    return out


def get_env(name: str) -> type[Environment]:
    """The environment class registered as ``name``, or named by ``module:Class``.

    Raises:
        UnknownEnvironment: nothing is registered under ``name`` (the message lists what
            is), or its class cannot be imported.
    """
    eps = _entry_points()
    if name in eps:
        return _load(name, eps[name].value)
    if ":" in name:
        return _load(name, name)
    known = ", ".join(sorted(eps)) or "none"
    raise UnknownEnvironment(f"no environment named {name!r}; registered: {known} "
                             "(or give an import path, package.module:Class)")


def name_of(cls: type[Environment]) -> str:
    """A name :func:`get_env` resolves to ``cls``: its ``name`` when an entry point of that
    name loads ``cls``, else its import path ``module:QualifiedName``."""
    eps = _entry_points()
    label = getattr(cls, "name", None)
    if isinstance(label, str) and label in eps:
        try:
            if _load(label, eps[label].value) is cls:
                return label
        except UnknownEnvironment:
            pass
    return f"{cls.__module__}:{cls.__qualname__}"


def make_env(name: str, task_id: int, **options: Any) -> Environment:
    """An environment of task ``task_id``, not yet reset, that records ``name`` as its
    :attr:`~branchpoint.sampler.envs.base.Environment.env_name`.

    Raises:
        UnknownEnvironment: as :func:`get_env`.
        ValueError: a bad task id or option.
    """
    env = get_env(name)(task_id, **options)
    env.env_name = name
    return env


def env_from_task(task: Mapping[str, Any]) -> Environment:
    """The environment a tree's root recorded in its ``task``, with its options (also from
    roots written before options moved under ``task["options"]``) and what else it recorded
    (:meth:`~branchpoint.sampler.envs.base.Environment.from_task`), not yet reset.

    Raises:
        UnknownEnvironment: as :func:`get_env`.
        ValueError: a bad task id or option.
    """
    name = task["env"]
    env = get_env(name).from_task(task)
    env.env_name = name
    return env
