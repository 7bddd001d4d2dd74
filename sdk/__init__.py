"""Recording production agents into branchpoint: two lines of code, or none.

    from branchpoint.sdk import Recorder

    rec = Recorder("sqlite:///runs.db")
    with rec.trajectory("Find the config file", env="fs", task_id=7) as t:
        node = t.step({"role": "assistant", "content": "ls"}, "config.toml notes.txt")
        t.score(1.0, source="checker")
    rec.flush()

Recording never waits on I/O in the agent's thread and never raises into it: events go to
a background worker that batches them, keeps them in a spool on disk while the destination
is down, and dead-letters what the store refuses (:mod:`branchpoint.sdk.pipeline`).
:func:`wrap_openai` records every chat completion an OpenAI client makes inside a
trajectory. This package imports msgspec and the standard library only; httpx is loaded
when a recorder opens an HTTP destination, openai never.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from branchpoint.sdk.pipeline import RecorderStats
from branchpoint.sdk.recorder import Branch, Recorder, Trajectory

if TYPE_CHECKING:
    from branchpoint.sdk.openai_wrapper import wrap_openai

__all__ = ["Branch", "Recorder", "RecorderStats", "Trajectory", "wrap_openai"]


def __getattr__(name: str) -> Any:
    if name == "wrap_openai":
        from branchpoint.sdk.openai_wrapper import wrap_openai

        return wrap_openai
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
