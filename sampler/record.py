"""Turning environment play into events, through the store's shared event builder.

:class:`TreeRecorder` adapts the sampler's types (:class:`Reset`, :class:`StepResult`,
:class:`Check`) to :class:`branchpoint.store.builder.TreeBuilder`, which mints the ids and
reads the clock. Recording the same play again is not a no-op: the new events carry new
times (``recorded_at``, ``latency_ms``), and the store refuses them as conflicting. A
re-run must therefore skip trees already stored (as the demo does), or resume a stored
tree with :meth:`TreeRecorder.resume` and add only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from branchpoint.sampler.envs.base import Check, Reset, StepResult
from branchpoint.store.actions import same_action
from branchpoint.store.builder import TreeBuilder, utcnow
from branchpoint.store.events import Event

__all__ = ["TreeRecorder", "check_detail"]


def check_detail(check: Check) -> dict[str, Any]:
    """A check's verdict and sub-goals, as a score's ``detail``."""
    return {**(check.detail or {}), "success": check.success,
            "subgoals": [{"name": g.name, "weight": g.weight, "met": g.met}
                         for g in check.subgoals]}


class TreeRecorder:
    """Collects the events of one tree; :meth:`take` (or ``events``) hands them out."""

    def __init__(self, tree_id: str, *, origin: str = "sampler", writer: str = "s",
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.origin = origin
        self.builder = TreeBuilder(tree_id, writer=writer, clock=clock)
        self.events: list[Event] = []

    @classmethod
    def resume(cls, tree_id: str, stored: Iterable[Event], *, origin: str = "sampler",
               writer: str = "s", clock: Callable[[], datetime] = utcnow) -> TreeRecorder:
        """A recorder that continues the stored tree made of ``stored``."""
        rec = cls(tree_id, origin=origin, writer=writer, clock=clock)
        rec.builder = TreeBuilder.resume(tree_id, stored, writer=writer, clock=clock)
        return rec

    @property
    def tree_id(self) -> str:
        return self.builder.tree_id

    def _collect(self) -> None:
        self.events.extend(self.builder.take())

    def take(self) -> list[Event]:
        """The events recorded since the last call (``events`` keeps them all)."""
        new = self.builder.take()
        self.events.extend(new)
        return new

    def root(self, task: dict[str, Any], opening: Reset, *,
             meta: dict[str, Any] | None = None) -> str:
        """Record the root that opens ``task``; returns its node id (``root``)."""
        node = self.builder.root(opening.messages, task, tools=opening.tools or None,
                                 origin=self.origin, meta=meta)
        self._collect()
        return node

    def step(self, parent: str, action: dict[str, Any], result: StepResult, *,
             produced_by: dict[str, Any] | None = None, latency_ms: float | None = None,
             info: dict[str, Any] | None = None) -> str:
        """Record a child of ``parent`` taking ``action`` and what the environment answered;
        returns the new node's id.

        An action identical to one already taken from ``parent`` (same content, tool names
        and arguments as JSON values) that got the same observation is the same step: its
        node is returned and nothing new is recorded, so repeated draws deepen one branch
        instead of adding twin siblings. Actions whose observations differ are never merged.
        """
        state = self.builder.state
        for child in state.nodes[parent].children:
            taken = state.nodes[child]
            if (taken.action is not None and same_action(taken.action, action)
                    and taken.observation == result.observation
                    and taken.done == result.done):
                return child
        node = self.builder.step(parent, action, result.observation, result.done,
                                 produced_by=produced_by, latency_ms=latency_ms, info=info)
        self._collect()
        return node

    def score(self, node: str, check: Check, *, source: str = "checker") -> None:
        """Record ``check`` as the node's score, with the sub-goals as detail."""
        self.builder.score(node, min(1.0, max(0.0, check.score)), source=source,
                           detail=check_detail(check))
        self._collect()

    def close(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        self.builder.close(reason, detail)
        self._collect()
