"""Which split a task belongs to: ``train``, ``validation`` or ``heldout``.

Pure and light (stdlib only): the store filters trees by split, the environments draw
their tasks by split, and the SDK may import this. A tree's split is the one its root
records in ``task.split``; for a root without one, :func:`split_of` of a non-negative
integer ``task_id``; a tree with neither belongs to no split (:func:`split_of_task`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final, Literal, cast

__all__ = ["SPLITS", "Split", "split_of", "split_of_task"]

Split = Literal["train", "validation", "heldout"]
SPLITS: Final[tuple[Split, ...]] = ("train", "validation", "heldout")


def split_of(task_id: int) -> Split:
    """The split of a task id: the first byte of SHA-256 of its decimal form, mod 10:
    0 is ``heldout``, 1 is ``validation``, anything else ``train``.

    Raises:
        ValueError: for a negative id.
    """
    if task_id < 0:
        raise ValueError(f"task ids are non-negative integers, got {task_id}")
    bucket = hashlib.sha256(str(task_id).encode()).digest()[0] % 10
    if bucket == 0:
        return "heldout"
    if bucket == 1:
        return "validation"
    return "train"


def split_of_task(task: Mapping[str, Any] | None) -> Split | None:
    """The split of a root's ``task``: its ``split`` when that names one of
    :data:`SPLITS`, else :func:`split_of` of a non-negative integer ``task_id``, else None
    (a string task id, a negative one, or an unknown ``split`` value: no split)."""
    if not task:
        return None
    named = task.get("split")
    if named is not None:
        return cast(Split, named) if named in SPLITS else None
    task_id = task.get("task_id")
    if isinstance(task_id, int) and not isinstance(task_id, bool) and task_id >= 0:
        return split_of(task_id)
    return None
