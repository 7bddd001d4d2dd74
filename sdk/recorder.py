"""The recorder an agent holds: trajectories, steps, forks and scores, recorded without
ever waiting on I/O or raising into the agent.

A :class:`Recorder` is opened on a destination (``sqlite:///PATH`` or a branchpoint
server's ``http(s)://HOST:PORT``). Each trajectory is one tree of the store, built with the
store's shared :class:`~branchpoint.store.builder.TreeBuilder`; its events go to the
recorder's :class:`~branchpoint.sdk.pipeline.Pipeline`, which delivers them in the
background.

The agent's thread does not even build the events: a call mints the new node's id (the
builder's ``WRITER.K`` form), checks what it can check at once (the parent exists and did
not end the episode), and appends the call to the trajectory's list of pending calls. A
background thread (the *materializer*) runs them through the builder in order, with the
times they were made, and hands the events to the pipeline; whoever needs the tree as it
stands (``t.state``, the OpenAI wrapper, ``flush``) runs the pending calls first.

Everything the agent calls returns at once; a mistake in what it records (a step under a
finished episode, a score out of range) is logged and counted in :meth:`Recorder.stats`,
never raised.
"""

from __future__ import annotations

import atexit
import contextvars
import dataclasses
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from branchpoint.sdk.pipeline import Pipeline, RecorderStats
from branchpoint.sdk.sinks import open_sink
from branchpoint.sdk.spool import DeadLetters, Spool, spool_folder
from branchpoint.store.builder import ROOT, TreeBuilder, TreeState, make_task, utcnow

__all__ = ["Branch", "Recorder", "Trajectory", "current_trajectory"]

log = logging.getLogger("branchpoint.sdk")

Message = dict[str, Any]

#: The trajectory whose ``with`` block runs in this thread or task (the OpenAI wrapper
#: records into it).
current_trajectory: contextvars.ContextVar[Trajectory | None] = contextvars.ContextVar(
    "branchpoint_trajectory", default=None)


def _new_tree_id() -> str:
    """A tree id that sorts by creation time (nanoseconds, then 32 random bits), so that the
    store's indexes on tree and event ids grow at their end instead of being written all
    over (random ids cost SQLite a tenth more per recorded event)."""
    return f"sdk-{time.time_ns():016x}{os.urandom(4).hex()}"


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
                 queue_size: int = 10_000, overflow_size: int = 200_000,
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
        self._materializer = _Materializer(self._pipeline)
        # the materializer, not the recorder: what an agent recorded and then let go of is
        # still flushed at exit
        atexit.register(self._materializer.close, exit_timeout_s)

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
        t = Trajectory(self, tree_id or _new_tree_id())
        t._root_args = (task_obj, [dict(x) for x in tools] if tools else None,
                        origin or self.origin, dict(meta) if meta else None)
        if messages is not None:
            msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) \
                else [dict(m) for m in messages]
            t._defer((time.time(), "root", msgs, None))
        return t

    def resume(self, tree_id: str, events: Sequence[Any]) -> Trajectory:
        """A handle on a stored trajectory (its ``events``, as the store returns them), to
        add steps, forks and scores to it."""
        t = Trajectory(self, tree_id, events=events)
        state = t._builder.state
        last = [n for n in state.nodes.values() if not n.children]
        t.head = max(last, key=lambda n: n.depth).node_id if last else ROOT
        return t

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait (at most ``timeout`` seconds) until everything recorded so far is stored at
        the destination, or safe in the spool when it is down. Returns False on timeout."""
        return self._materializer.flush(timeout)

    async def aflush(self, timeout: float | None = 30.0) -> bool:
        """:meth:`flush` for async code: the event loop goes on while it waits."""
        import asyncio

        return await asyncio.to_thread(self._materializer.flush, timeout)

    def stats(self) -> RecorderStats:
        """Counts of queued, sent, spooled, re-sent, dead-lettered and dropped events;
        ``queued`` also counts the calls not yet built into events."""
        s = self._pipeline.stats()
        pending = sum(len(t._ops) for t in set(self._materializer.dirty.copy()))  # atomic copy
        return dataclasses.replace(s, queued=s.queued + pending) if pending else s

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush (bounded), then stop; what could not be sent stays in the spool for the
        next process. Returns whether everything was flushed."""
        if self._closed:
            return True
        self._closed = True
        atexit.unregister(self._materializer.close)
        return self._materializer.close(timeout)

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

    #: the trajectory this branch extends; None on a :class:`Trajectory` (its own main
    #: branch), which would otherwise refer to itself
    _owner: Trajectory | None

    def __init__(self, trajectory: Trajectory, head: str) -> None:
        self._owner = trajectory
        self.head = head

    @property
    def _t(self) -> Trajectory:
        return cast(Trajectory, self._owner)

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
        Returns the new node's id, which becomes the head; ``""`` when the head ended the
        episode (logged and counted). What the store would refuse for its content is
        logged and counted in the background.

        The messages are recorded by reference and encoded in the background: do not
        change them afterwards."""
        owner = self._owner  # not the property: a call saved on the agent's hottest path
        t = owner if owner is not None else cast(Trajectory, self)
        parent = self.head
        if parent in t._done:
            t._rec._error(f"a step in trajectory {t._tree_id!r}", ValueError(
                f"node {parent!r} ended the episode (done); it takes no further step"))
            return ""
        node = f"{t._writer}.{next(t._ids)}"
        t._known.add(node)
        if done:
            t._done.add(node)
        # t._defer(...), inlined: this is the agent's most frequent call
        ops = t._ops
        ops.append((time.time(), "step", parent, node, action, observation, done, produced_by,
                    info, latency_ms, meta))
        if len(ops) == 1:
            t._rec._materializer.dirty.append(t)
        self.head = node
        return node

    def observe(self, observation: Sequence[Message] | Message | str, *,
                done: bool | None = None, node: str | None = None,
                info: dict[str, Any] | None = None,
                latency_ms: float | None = None) -> None:
        """What the environment answered to a step recorded without an observation
        (default: the head)."""
        target = node or self.head
        if done:
            self._t._done.add(target)
        self._t._defer((time.time(), "observe", target, observation, done, info, latency_ms))

    def fork(self, node_id: str) -> Branch:
        """A new branch from ``node_id`` (any node of the trajectory); it shares the
        history up to there. An unknown node is logged and the branch starts at the
        root."""
        if node_id not in self._t._known:
            self._t._rec._error("fork", KeyError(f"no node {node_id!r} in trajectory "
                                                 f"{self.tree_id!r}"))
            return Branch(self._t, ROOT)
        return Branch(self._t, node_id)

    def score(self, value: float, *, source: str = "checker", node: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        """A score in [0, 1] for ``node`` (default: the head) from ``source``."""
        self._t._defer((time.time(), "score", node or self.head, value, source, detail))


class _SdkBuilder(TreeBuilder):
    """The shared builder, taking the node ids the agent's thread minted (in the builder's
    own ``WRITER.K`` form) and the times the calls were made."""

    ids: Iterator[int]
    next_id: str | None = None
    at: float | None = None

    def _mint_node_id(self) -> str:
        node_id, self.next_id = self.next_id, None
        return node_id if node_id is not None else f"{self.writer}.{next(self.ids)}"

    def now(self) -> datetime:
        return utcnow() if self.at is None else datetime.fromtimestamp(self.at, UTC)


class Trajectory(Branch):
    """A recorded trajectory (one tree) and its main branch."""

    _owner = None

    def __init__(self, recorder: Recorder, tree_id: str, *,
                 events: Sequence[Any] | None = None) -> None:
        self._rec = recorder
        self._tree_id = tree_id
        self._writer = recorder.writer
        if events is None:
            b = _SdkBuilder(tree_id, writer=recorder.writer)
            first = 0
        else:
            b = cast(_SdkBuilder, _SdkBuilder.resume(tree_id, events, writer=recorder.writer))
            own = [n.rpartition(".")[2] for n in b.state.nodes
                   if n.startswith(f"{recorder.writer}.")]
            first = 1 + max((int(k) for k in own if k.isdigit()), default=-1)
        self._ids = b.ids = itertools.count(first)
        self._builder = b
        self._known: set[str] = set(b.state.nodes) | {ROOT}
        self._done: set[str] = {n for n, info in b.state.nodes.items() if info.done}
        self._ops: deque[tuple[Any, ...]] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._root_args: tuple[dict[str, Any], list[Message] | None, str, Message | None] = (
            {}, None, recorder.origin, None)
        self._token: contextvars.Token[Trajectory | None] | None = None
        # its own main branch, without Branch.__init__: a trajectory that referred to itself
        # would live on, with its whole tree, until the cyclic collector came by
        self.head = ROOT

    @property
    def _t(self) -> Trajectory:
        return self

    def _defer(self, op: tuple[Any, ...]) -> None:
        """Queue a call for the builder: ``(time it was made, kind, its arguments...)``
        (the agent's thread: no lock, no I/O, no wake-up of another thread: the
        materializer comes by every few milliseconds)."""
        ops = self._ops
        ops.append(op)
        if len(ops) == 1:
            self._rec._materializer.dirty.append(self)

    def _materialize(self) -> None:
        """Run the pending calls through the builder and hand their events on; the caller
        holds ``_lock``. Never raises: a refused call is logged and counted."""
        ops, b = self._ops, self._builder
        while ops:
            op = ops.popleft()
            b.at = op[0]
            try:
                self._apply(b, op[1], op[2:])
            except Exception as exc:
                self._rec._error(f"recording into trajectory {self._tree_id!r}", exc)
        b.at = None
        events = b.take()
        if events:
            self._rec._pipeline.put(events)

    def _apply(self, b: _SdkBuilder, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "step":
            parent, node, action, observation, done, produced_by, info, latency, meta = args
            act = {"role": "assistant", "content": action} if isinstance(action, str) \
                else action
            b.next_id = node
            try:
                if observation is None:
                    b.node(parent, act, produced_by=produced_by, meta=meta)
                else:
                    b.step(parent, act, _as_observation(observation), done,
                           produced_by=produced_by, info=info, latency_ms=latency, meta=meta)
            finally:
                b.next_id = None
        elif kind == "observe":
            node, observation, done, info, latency = args
            b.executed(node, _as_observation(observation), done, info=info,
                       latency_ms=latency)
        elif kind == "score":
            node, value, source, detail = args
            b.score(node, value, source=source, detail=detail)
        elif kind == "close":
            reason, detail = args
            b.close(reason, detail)
        else:  # "root"
            messages, tools = args
            self._open(messages, tools)

    @property
    def state(self) -> TreeState:
        """What has been recorded so far (nodes, their actions and observations)."""
        with self._lock:
            self._materialize()
            return self._builder.state

    def _open(self, messages: list[Message], tools: list[Message] | None = None) -> None:
        """Record the root, with the task given at opening (under ``_lock``)."""
        task, own_tools, origin, meta = self._root_args
        self._builder.root(messages, task, tools=own_tools or tools, origin=origin,
                           meta=meta)

    def close(self, reason: str = "done", detail: Mapping[str, Any] | None = None) -> None:
        """Mark the trajectory finished (``done``, ``error``, ``budget``, ...)."""
        if self._closed:
            return
        self._closed = True
        self._defer((time.time(), "close", reason, dict(detail) if detail else None))

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


class _Materializer:
    """The thread that runs trajectories' pending calls through the builder, in order.

    It comes by every ``interval_s`` rather than being woken: waking a thread costs the
    agent's thread a system call per step, several times the rest of a step's cost."""

    def __init__(self, pipeline: Pipeline, interval_s: float = 0.005) -> None:
        self._pipeline = pipeline
        self.dirty: deque[Trajectory] = deque()  # trajectories with pending calls
        self._busy = threading.Lock()  # held while trajectories are materialized
        self._interval = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="branchpoint-builder",
                                        daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._busy:
            while self.dirty:
                t = self.dirty.popleft()
                with t._lock:
                    t._materialize()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            if self.dirty:
                self._drain()

    def flush(self, timeout: float | None) -> bool:
        self._drain()
        return self._pipeline.flush(timeout)

    def close(self, timeout: float | None) -> bool:
        self._drain()
        self._stopped.set()
        self._thread.join(timeout=5.0)
        self._drain()
        return self._pipeline.close(timeout)
