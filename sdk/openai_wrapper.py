"""Recording every chat completion an ``openai`` client makes, with one line.

    client = wrap_openai(OpenAI(base_url=..., api_key=...))
    with rec.trajectory(env="support", task_id=42) as t:
        agent(client)          # every client.chat.completions.create(...) is a step of t

A call made inside a trajectory (the innermost ``with rec.trajectory(...)`` of the calling
thread or task, or the one given to :func:`wrap_openai`) is placed in the tree by its
message history (:func:`branchpoint.store.calls.place_call`): the tool results it carries
become the observation of the step that asked for them, and a history that leaves the
recorded paths (a retry from an earlier point, another attempt) forks there. Each choice of
the answer (``n > 1`` gives several) becomes a child step with ``produced_by``: model,
sampling parameters, usage, finish reason, logprobs and token ids when present. Streaming
calls are passed through chunk by chunk and recorded when the stream ends.

The client's own behaviour is unchanged: its answers and its errors reach the agent as
they are, and a failure to record is logged and counted, never raised. This module does not
import ``openai``; it works on any client with its ``chat.completions.create`` shape.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from branchpoint.sdk.recorder import Trajectory, current_trajectory
from branchpoint.store.calls import (
    StreamAccumulator,
    choice_messages,
    place_call,
    produced_by,
    split_history,
)

__all__ = ["wrap_openai"]

log = logging.getLogger("branchpoint.sdk")
C = TypeVar("C")


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        out: dict[str, Any] = dump(exclude_none=True)
        return out
    return dict(obj)


def _messages(raw: Any) -> list[dict[str, Any]]:
    return [_as_dict(m) for m in raw]


def record_call(t: Trajectory, request: dict[str, Any], response: dict[str, Any]) -> list[str]:
    """Record one call and its answer into ``t``; returns the new steps' node ids (one per
    choice). Never raises: a failure is logged and counted."""
    try:
        history = _messages(request.get("messages") or [])
        with t._lock:
            t._materialize()  # the calls recorded before this one, in order
            b = t._builder
            if b.state.root is None:
                t._open(split_history(history)[0] or history[:1],
                        [_as_dict(x) for x in request.get("tools") or []] or None)
            node, same_opening = place_call(b, history)
            if not same_opening:
                t._rec._error("placing a call", ValueError(
                    f"its opening messages differ from trajectory {t.tree_id!r}'s; its "
                    "steps were recorded under the root"))
            ids = [b.node(node, message, produced_by=produced_by(request, response, choice,
                                                                  via="openai-wrapper"))
                   for message, choice in choice_messages(response)]
            t._known.update(b.state.nodes)  # what place_call added too
            t._rec._pipeline.put(b.take())
    except Exception as exc:
        t._rec._error(f"recording a chat completion in trajectory {t.tree_id!r}", exc)
        return []
    if ids:
        t.head = ids[0]
    return ids


class _RecordingStream:
    """A sync stream passed through unchanged; recorded when it ends."""

    def __init__(self, stream: Any, done: Callable[[dict[str, Any]], object]) -> None:
        self._stream = stream
        self._done = done
        self._acc = StreamAccumulator()
        self._recorded = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._stream:
                self._add(chunk)
                yield chunk
        finally:
            self._finish()

    def __next__(self) -> Any:
        try:
            chunk = next(self._stream)
        except StopIteration:
            self._finish()
            raise
        self._add(chunk)
        return chunk

    def _add(self, chunk: Any) -> None:
        try:
            self._acc.add(_as_dict(chunk))
        except Exception:  # a chunk we cannot read must not stop the agent's stream
            log.debug("unreadable stream chunk", exc_info=True)

    def _finish(self) -> None:
        if not self._recorded:
            self._recorded = True
            self._done(self._acc.result())

    def close(self) -> None:
        self._finish()
        self._stream.close()

    def __enter__(self) -> _RecordingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _AsyncRecordingStream(_RecordingStream):
    """An async stream passed through unchanged; recorded when it ends."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._stream:
                self._add(chunk)
                yield chunk
        finally:
            self._finish()

    async def __anext__(self) -> Any:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        self._add(chunk)
        return chunk

    async def close(self) -> None:  # type: ignore[override]
        self._finish()
        await self._stream.close()

    async def __aenter__(self) -> _AsyncRecordingStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def wrap_openai(client: C, *, trajectory: Trajectory | None = None) -> C:
    """Record the chat completions ``client`` makes (an ``openai.OpenAI`` or
    ``AsyncOpenAI``, or anything with ``client.chat.completions.create``). Calls are
    recorded into ``trajectory`` when given, else into the trajectory whose ``with`` block
    is running in the calling thread or task; calls outside any are not recorded. Returns
    the same client, wrapped in place."""
    completions = client.chat.completions  # type: ignore[attr-defined]
    original = completions.create

    def target() -> Trajectory | None:
        return trajectory if trajectory is not None else current_trajectory.get()

    def prepare(kwargs: dict[str, Any]) -> dict[str, Any]:
        """The request as recorded; the client still sends the agent's own messages (the
        history may be a one-shot iterable: it is read once, and the same list sent)."""
        sent = kwargs["messages"] = list(kwargs.get("messages") or [])
        recorded = {k: v for k, v in kwargs.items() if not k.startswith("extra_")}
        recorded["messages"] = _messages(sent)
        return recorded

    if inspect.iscoroutinefunction(inspect.unwrap(original)):
        async def acreate(*args: Any, **kwargs: Any) -> Any:
            t = target()
            if t is None or args:
                return await original(*args, **kwargs)
            request = prepare(kwargs)
            response = await original(**kwargs)
            if kwargs.get("stream"):
                return _AsyncRecordingStream(
                    response, lambda r: record_call(t, request, r))
            record_call(t, request, _safe_dict(response))
            return response

        completions.create = acreate
    else:
        def create(*args: Any, **kwargs: Any) -> Any:
            t = target()
            if t is None or args:
                return original(*args, **kwargs)
            request = prepare(kwargs)
            response = original(**kwargs)
            if kwargs.get("stream"):
                return _RecordingStream(response, lambda r: record_call(t, request, r))
            record_call(t, request, _safe_dict(response))
            return response

        completions.create = create
    return client


def _safe_dict(response: Any) -> dict[str, Any]:
    try:
        return _as_dict(response)
    except Exception:
        log.warning("branchpoint recorder: cannot read a chat completion of type %s",
                    type(response).__name__)
        return {}
