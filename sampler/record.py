"""Turning environment play into events.

:class:`TreeRecorder` is the one place the sampler (and the demo) mints ids and reads the
clock for events. Ids are derived from the tree id and the node id, so re-sending a batch
of these events is a no-op. Recording the same play again is not: the new events carry new
times (``recorded_at``, ``latency_ms``), and the store refuses them as conflicting. A re-run
must therefore skip trees already stored, as the demo does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from branchpoint.sampler.envs.base import Check, Reset, StepResult
from branchpoint.store.events import (
    ActionExecuted,
    Event,
    NodeCreated,
    Payload,
    ScoreAssigned,
    TreeClosed,
)
from branchpoint.store.pairs import same_action

__all__ = ["TreeRecorder"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TreeRecorder:
    """Collects the events of one tree; ``events`` is ready to append as one batch."""

    def __init__(self, tree_id: str, *, origin: str = "sampler",
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.tree_id = tree_id
        self.origin = origin
        self.events: list[Event] = []
        self._clock = clock
        self._children: dict[str, list[tuple[dict[str, Any], str]]] = {}
        self._scores: dict[tuple[str, str], int] = {}

    def _add(self, event_id: str, payload: Payload) -> None:
        self.events.append(Event.of(payload, tree_id=self.tree_id, event_id=event_id,
                                    recorded_at=self._clock()))

    def root(self, task: dict[str, Any], opening: Reset, *,
             meta: dict[str, Any] | None = None) -> str:
        """Record the root that opens ``task``; returns its node id (``root``)."""
        self._add(f"{self.tree_id}/root", NodeCreated(
            node_id="root", parent_id=None, messages=opening.messages, task=task,
            tools=opening.tools or None, origin=self.origin, meta=meta))
        return "root"

    def step(self, parent: str, action: dict[str, Any], result: StepResult, *,
             produced_by: dict[str, Any] | None = None, latency_ms: float | None = None,
             info: dict[str, Any] | None = None) -> str:
        """Record a child of ``parent`` taking ``action`` and what the environment answered;
        returns the new node's id (``PARENT.K`` for the K-th child).

        An action identical to one already taken from ``parent`` (same content, tool names
        and parsed arguments) is the same step: its node is returned and nothing new is
        recorded, so repeated draws deepen one branch instead of adding twin siblings.
        """
        siblings = self._children.setdefault(parent, [])
        for taken, node in siblings:
            if same_action(taken, action):
                return node
        k = len(siblings)
        node = f"{parent}.{k}" if parent != "root" else f"n{k}"
        siblings.append((action, node))
        self._add(f"{self.tree_id}/{node}", NodeCreated(
            node_id=node, parent_id=parent, action=action, produced_by=produced_by))
        self._add(f"{self.tree_id}/{node}/run", ActionExecuted(
            node_id=node, observation=result.observation, done=result.done, info=info,
            latency_ms=latency_ms))
        return node

    def score(self, node: str, check: Check, *, source: str = "checker") -> None:
        """Record ``check`` as the node's score, with the sub-goals as detail."""
        k = self._scores.get((node, source), 0)
        self._scores[(node, source)] = k + 1
        detail = {"success": check.success,
                  "subgoals": [{"name": g.name, "weight": g.weight, "met": g.met}
                               for g in check.subgoals]}
        self._add(f"{self.tree_id}/{node}/score/{source}/{k}", ScoreAssigned(
            node_id=node, value=min(1.0, max(0.0, check.score)), source=source, detail=detail))

    def close(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        self._add(f"{self.tree_id}/closed", TreeClosed(reason=reason, detail=detail))
