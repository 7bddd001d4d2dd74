"""The recorder an agent holds: trajectories, steps, forks and scores, recorded without
ever waiting on I/O or raising into the agent.

A :class:`Recorder` is opened on a destination (``sqlite:///PATH`` or a branchpoint
server's ``http(s)://HOST:PORT``). Each trajectory is one tree of the store, built with the
store's shared :class:`~branchpoint.store.builder.TreeBuilder`; its events go to the
recorder's :class:`~branchpoint.sdk.pipeline.Pipeline`, which delivers them in the
background. Everything the agent calls returns at once; a mistake in what it records (a
step under a finished episode, a score out of range) is logged and counted in
:meth:`Recorder.stats`, never raised.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from branchpoint.sdk.pipeline import Pipeline, RecorderStats
from branchpoint.sdk.sinks import open_sink
from branchpoint.sdk.spool import DeadLetters, Spool, spool_folder
from branchpoint.store.builder import ROOT, TreeBuilder, TreeState, make_task

__all__ = ["Branch", "Recorder", "Trajectory", "current_trajectory"]

log = logging.getLogger("branchpoint.sdk")

Message = dict[str, Any]

#: The trajectory whose ``with`` block runs in this thread or task (the OpenAI wrapper
#: records into it).
current_trajectory: contextvars.ContextVar[Trajectory | None] = contextvars.ContextVar(
    "branchpoint_trajectory", default=None)


def _as_action(action: Message | str) -> Message:
    return {"role": "assistant", "content": action} if isinstance(action, str) else action


def _as_observation(obs: Sequence[Message] | Message | str) -> list[Message]:
    if isinstance(obs, str):
        return [{"role": "user", "content": obs}]
    if isinstance(obs, Mapping):
        return [dict(obs)]
    return obs if isinstance(obs, list) else list(obs)


class Recorder:
    """Records trajectories into ``url``: ``sqlite:///PATH`` (relative) or
    ``sqlite:////ABS/PATH``, or ``http(s)://HOST:PORT`` of ``branchpoint serve`` with
    ``token`` (default: ``$BRANCHPOINT_TOKEN``).

    Events wait in memory (``queue_size``), are sent in batches (``batch_size``, or after
    ``linger_s``), and go to the spool in ``spool_dir`` (default: see
    :func:`~branchpoint.sdk.spool.spool_root`) while the destination is down or the queue
    full. At interpreter exit the recorder flushes for up to ``exit_timeout_s`` and spools
    the rest.

    Raises:
        ValueError: an unsupported URL.
        MissingDependency: httpx is missing for an HTTP destination.
        OSError: the spool folder cannot be created.
    """

    def __init__(self, url: str, *, token: str | None = None, writer: str | None = None,
                 spool_dir: str | Path | None = None, origin: str = "sdk",
                 queue_size: int = 10_000, overflow_size: int = 1_000_000,
                 batch_size: int = 1000, linger_s: float = 0.05,
                 backoff_s: tuple[float, float] = (0.05, 5.0),
                 exit_timeout_s: float = 10.0) -> None:
        sink = open_sink(url, token=token if token is not None
                         else os.environ.get("BRANCHPOINT_TOKEN"))
        self.destination = sink.destination
        self.spool_folder = spool_folder(sink.destination,
                                         Path(spool_dir) if spool_dir is not None else None)
        spool = Spool(self.spool_folder)
        self.dead_letters = DeadLetters(self.spool_folder, sink.destination)
        self.writer = writer or f"sdk-{os.urandom(3).hex()}"
        self.origin = origin
        self._pipeline = Pipeline(sink, spool, self.dead_letters, queue_size=queue_size,
                                  overflow_size=overflow_size, batch_size=batch_size,
                                  linger_s=linger_s, backoff_s=backoff_s)
        self._closed = False
        # the pipeline, not the recorder: what an agent recorded and then let go of is
        # still flushed at exit
        atexit.register(self._pipeline.close, exit_timeout_s)

    def trajectory(self, messages: Sequence[Message] | str | None = None, *, env: str,
                   task_id: str | int, tools: Sequence[Message] | None = None,
                   tree_id: str | None = None, split: str | None = None,
                   options: Mapping[str, Any] | None = None, origin: str | None = None,
                   meta: Mapping[str, Any] | None = None, **task: Any) -> Trajectory:
        """Open a trajectory: the task's opening ``messages`` (a string is one user
        message; None: the opening of the first chat completion the OpenAI wrapper
        records), its ``env`` and ``task_id``, the ``tools`` offered. ``task`` takes the
        other reserved task keys (``description``, ``seed``, ...); ``options`` the
        environment's options. Use it as a context manager (sync or async): leaving the
        block closes the trajectory, with reason ``error`` and the exception's type when the
        block raised.

        Raises:
            ValueError: a task key that is not reserved (pass it in ``options``).
        """
        task_obj = make_task(env, task_id, split=split, options=options, **task)
        t = Trajectory(self, tree_id or f"sdk-{os.urandom(8).hex()}")
        t._root_args = (task_obj, [dict(x) for x in tools] if tools else None,
                        origin or self.origin, dict(meta) if meta else None)
        if messages is not None:
            msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) \
                else [dict(m) for m in messages]
            t._run(lambda b: t._open(msgs))
        return t

    def resume(self, tree_id: str, events: Sequence[Any]) -> Trajectory:
        """A handle on a stored trajectory (its ``events``, as the store returns them), to
        add steps, forks and scores to it."""
        t = Trajectory(self, tree_id, builder=TreeBuilder.resume(tree_id, events,
                                                                 writer=self.writer))
        last = [n for n in t._builder.state.nodes.values() if not n.children]
        t.head = max(last, key=lambda n: n.depth).node_id if last else ROOT
        return t

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait (at most ``timeout`` seconds) until everything recorded so far is stored at
        the destination, or safe in the spool when it is down. Returns False on timeout."""
        return self._pipeline.flush(timeout)

    async def aflush(self, timeout: float | None = 30.0) -> bool:
        """:meth:`flush` for async code: the event loop goes on while it waits."""
        import asyncio

        return await asyncio.to_thread(self._pipeline.flush, timeout)

    def stats(self) -> RecorderStats:
        """Counts of queued, sent, spooled, re-sent, dead-lettered and dropped events."""
        return self._pipeline.stats()

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush (bounded), then stop; what could not be sent stays in the spool for the
        next process. Returns whether everything was flushed."""
        if self._closed:
            return True
        self._closed = True
        atexit.unregister(self._pipeline.close)
        return self._pipeline.close(timeout)

    async def aclose(self, timeout: float | None = 10.0) -> bool:
        import asyncio

        return await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Recorder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _error(self, what: str, exc: BaseException) -> None:
        log.warning("branchpoint recorder: %s failed: %s", what, exc)
        self._pipeline.count_error()


class Branch:
    """One line of a trajectory: :meth:`step` extends it from its ``head``."""

    def __init__(self, trajectory: Trajectory, head: str) -> None:
        self._t = trajectory
        self.head = head

    @property
    def tree_id(self) -> str:
        return self._t._tree_id

    def step(self, action: Message | str,
             observation: Sequence[Message] | Message | str | None = None, *,
             done: bool | None = None, produced_by: dict[str, Any] | None = None,
             info: dict[str, Any] | None = None, latency_ms: float | None = None,
             meta: dict[str, Any] | None = None) -> str:
        """Record one step from the head: the assistant message taken (a string is its
        content) and what the environment or tools answered (a list of messages; a string
        is one user message). Without ``observation`` the step waits for :meth:`observe`.
        Returns the new node's id, which becomes the head; ``""`` if it could not be
        recorded (logged and counted).

        The messages are recorded by reference and encoded in the background: do not
        change them afterwards."""
        t = self._t
        act = {"role": "assistant", "content": action} if isinstance(action, str) else action
        try:
            with t._lock:
                b = t._builder
                if observation is None:
                    node = b.node(self.head, act, produced_by=produced_by,
                                  meta=meta)
                else:
                    node = b.step(self.head, act, _as_observation(observation), done,
                                  produced_by=produced_by, info=info,
                                  latency_ms=latency_ms, meta=meta)
                t._rec._pipeline.put(b.take())
        except Exception as exc:
            t._rec._error(f"a step in trajectory {t._tree_id!r}", exc)
            return ""
        self.head = node
        return node

    def observe(self, observation: Sequence[Message] | Message | str, *,
                done: bool | None = None, node: str | None = None,
                info: Mapping[str, Any] | None = None,
                latency_ms: float | None = None) -> None:
        """What the environment answered to a step recorded without an observation
        (default: the head)."""
        target = node or self.head
        obs = _as_observation(observation)
        self._t._run(lambda b: b.executed(target, obs, done, info=dict(info) if info
                                          else None, latency_ms=latency_ms))

    def fork(self, node_id: str) -> Branch:
        """A new branch from ``node_id`` (any node of the trajectory); it shares the
        history up to there. An unknown node is logged and the branch starts at the
        root."""
        if node_id not in self._t._builder.state.nodes:
            self._t._rec._error("fork", KeyError(f"no node {node_id!r} in trajectory "
                                                 f"{self.tree_id!r}"))
            return Branch(self._t, ROOT)
        return Branch(self._t, node_id)

    def score(self, value: float, *, source: str = "checker", node: str | None = None,
              detail: Mapping[str, Any] | None = None) -> None:
        """A score in [0, 1] for ``node`` (default: the head) from ``source``."""
        target = node or self.head
        self._t._run(lambda b: b.score(target, value, source=source,
                                       detail=dict(detail) if detail else None))


class Trajectory(Branch):
    """A recorded trajectory (one tree) and its main branch."""

    def __init__(self, recorder: Recorder, tree_id: str, *,
                 builder: TreeBuilder | None = None) -> None:
        self._rec = recorder
        self._tree_id = tree_id
        self._builder = builder or TreeBuilder(tree_id, writer=recorder.writer)
        self._lock = threading.Lock()
        self._closed = False
        self._root_args: tuple[dict[str, Any], list[Message] | None, str, Message | None] = (
            {}, None, recorder.origin, None)
        self._token: contextvars.Token[Trajectory | None] | None = None
        super().__init__(self, ROOT)

    def _open(self, messages: list[Message], tools: list[Message] | None = None) -> None:
        """Record the root (under ``_lock``), with the task given at opening."""
        task, own_tools, origin, meta = self._root_args
        self._builder.root(messages, task, tools=own_tools or tools, origin=origin,
                           meta=meta)

    @property
    def state(self) -> TreeState:
        """What has been recorded so far (nodes, their actions and observations)."""
        return self._builder.state

    def _run(self, work: Any) -> Any:
        """Run a builder call and hand its events to the pipeline; never raises."""
        try:
            with self._lock:
                result = work(self._builder)
                self._rec._pipeline.put(self._builder.take())
        except Exception as exc:
            self._rec._error(f"recording into trajectory {self.tree_id!r}", exc)
            return None
        return result

    def close(self, reason: str = "done", detail: Mapping[str, Any] | None = None) -> None:
        """Mark the trajectory finished (``done``, ``error``, ``budget``, ...)."""
        if self._closed:
            return
        self._closed = True
        self._run(lambda b: b.close(reason, dict(detail) if detail else None))

    def _exit(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        if exc_type is None:
            self.close("done")
        else:
            self.close("error", {"type": exc_type.__name__, "message": str(exc)[:1000]})

    def __enter__(self) -> Trajectory:
        self._token = current_trajectory.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            current_trajectory.reset(self._token)
            self._token = None
        self._exit(exc_type, exc)

    async def __aenter__(self) -> Trajectory:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
