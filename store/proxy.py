"""The recording proxy: an agent's OpenAI base URL on ``branchpoint serve``, recorded.

An agent configured with ``base_url = http://HOST:PORT/proxy/TRAJECTORY_ID/v1`` talks to
the upstream OpenAI-compatible endpoint of ``branchpoint serve --upstream URL`` through this
router; every chat completion it makes is recorded as steps of the tree ``TRAJECTORY_ID``
(letters, digits, ``-``, ``_``, ``.``), placed by its message history
(:func:`branchpoint.store.calls.place_call`), so retries and repeated attempts under one id
fork the tree without saying so. Streaming answers are passed through byte for byte and
recorded when they end. The upstream's answer reaches the agent whatever happens to the
recording: recording runs after the answer is sent, and its failures are logged.

Authorization: with a server token, the agent's ``Authorization: Bearer`` carries that
token (the server's middleware checks it) and never goes upstream; the upstream gets
``--upstream-key`` (or ``$BRANCHPOINT_UPSTREAM_KEY``). Without a server token and without
an upstream key, the agent's header goes upstream as it is.

Routes (under ``/proxy/TRAJECTORY_ID``):

- ``/v1/...``: forwarded to the upstream (``/v1/chat/completions`` recorded); the tree's
  root takes ``X-Branchpoint-Env`` (default ``proxy``) and ``X-Branchpoint-Task``
  (default: the trajectory id) when the first call opens it;
- ``POST /score`` ``{"value", "source"?, "node"?, "detail"?}``: a score (default source
  ``checker``, default node the tree's last step);
- ``POST /close`` ``{"reason"?, "detail"?}``: the tree is finished (default ``done``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, Router, post, route
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from branchpoint.store.builder import ROOT, TreeBuilder, make_task
from branchpoint.store.calls import (
    StreamAccumulator,
    choice_messages,
    place_call,
    produced_by,
    split_history,
)
from branchpoint.store.errors import InvalidEvent, TreeNotFound
from branchpoint.store.log import EventLog

__all__ = ["ProxyConfig", "proxy_part", "proxy_router"]

log = logging.getLogger("branchpoint.proxy")

_TRAJECTORY_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
#: Request headers that go upstream (the rest are hop-by-hop, ours, or recomputed).
_FORWARD = ("content-type", "accept", "user-agent", "openai-organization", "openai-project")
_DROP_ANSWER = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                          "content-encoding"})
METHODS: list[Any] = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class ProxyConfig(msgspec.Struct, frozen=True):
    """Where the proxy forwards (``upstream``, the base URL that ``/v1/...`` is appended
    to, e.g. ``http://127.0.0.1:8001``), with which key, and whether the server has a
    token of its own (then the agent's header is that token and never forwarded)."""

    upstream: str | None
    upstream_key: str | None = None
    server_token: bool = False
    timeout_s: float = 600.0


class ScoreIn(msgspec.Struct, forbid_unknown_fields=True):
    value: float
    source: str = "checker"
    node: str | None = None
    detail: dict[str, Any] | None = None


class CloseIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = "done"
    detail: dict[str, Any] | None = None


class _Recorder:
    """Writes the proxy's events: one builder per call, resumed from the stored tree, one
    lock per tree so this process's calls on one tree are placed one after the other."""

    def __init__(self) -> None:
        self.writer = f"proxy-{os.urandom(3).hex()}"
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, int] = {}  # answers sent and not recorded yet, per tree
        self._settled: dict[str, asyncio.Event] = {}

    def begin(self, tree_id: str) -> None:
        """An answer of this tree is on its way; its recording follows."""
        self._pending[tree_id] = self._pending.get(tree_id, 0) + 1
        self._settled.setdefault(tree_id, asyncio.Event()).clear()

    def end(self, tree_id: str) -> None:
        left = self._pending.get(tree_id, 1) - 1
        if left > 0:
            self._pending[tree_id] = left
            return
        self._pending.pop(tree_id, None)
        event = self._settled.pop(tree_id, None)
        if event is not None:
            event.set()

    async def settled(self, tree_id: str, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until the answers already sent for this tree are recorded, so
        that a score or a close lands after the steps it follows."""
        event = self._settled.get(tree_id)
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), timeout_s)
            except TimeoutError:
                log.warning("proxy: recording of tree %r still pending after %.0f s",
                            tree_id, timeout_s)

    def lock(self, tree_id: str) -> asyncio.Lock:
        return self._locks.setdefault(tree_id, asyncio.Lock())

    async def builder(self, store: EventLog, tree_id: str) -> TreeBuilder:
        try:
            events = await store.read_tree(tree_id)
        except TreeNotFound:
            events = []
        return TreeBuilder.resume(tree_id, events, writer=self.writer)

    async def call(self, store: EventLog, tree_id: str, task: tuple[str, str | int],
                   request: dict[str, Any], response: dict[str, Any]) -> None:
        """Record one chat completion; failures are logged, never raised (the agent has
        its answer already)."""
        env, task_id = task
        try:
            async with self.lock(tree_id):
                b = await self.builder(store, tree_id)
                history = [m for m in request.get("messages") or [] if isinstance(m, dict)]
                if b.state.root is None:
                    b.root(split_history(history)[0] or history[:1], make_task(env, task_id),
                           tools=request.get("tools") or None, origin="proxy")
                node, same_opening = place_call(b, history)
                if not same_opening:
                    log.warning("proxy: a call's opening messages differ from tree %r's; its "
                                "steps were recorded under the root", tree_id)
                for message, choice in choice_messages(response):
                    b.node(node, message,
                           produced_by=produced_by(request, response, choice, via="proxy"))
                await store.append(b.take())
        except Exception:
            log.exception("proxy: recording a call of tree %r failed", tree_id)


def _task_id(raw: str | None, tree_id: str) -> str | int:
    if raw is None or raw == "":
        return tree_id
    return int(raw) if raw.isdigit() else raw


def _check_id(trajectory_id: str) -> None:
    if not _TRAJECTORY_ID.match(trajectory_id):
        raise HTTPException(status_code=400, detail=(
            f"trajectory id {trajectory_id!r} is not URL-safe: use letters, digits, '-', '_' "
            "and '.' (at most 200)"))


def _last_step(b: TreeBuilder) -> str:
    """The most recently recorded non-root node of the tree."""
    nodes = [n for n in b.state.nodes if n != ROOT]
    return nodes[-1] if nodes else ROOT


class SseChunks:
    """Reads the JSON chunks of a server-sent event stream as its bytes go by."""

    def __init__(self) -> None:
        self.acc = StreamAccumulator()
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        buf = self._buffer
        buf.extend(data)
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end]).strip()
            del buf[:end + 1]
            if not line.startswith(b"data:"):
                continue
            body = line[5:].strip()
            if body and body != b"[DONE]":
                try:
                    chunk = msgspec.json.decode(body)
                except msgspec.DecodeError:
                    continue
                if isinstance(chunk, dict):
                    self.acc.add(chunk)


class _Proxy:
    """The forwarding and recording behind the routes."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.recorder = _Recorder()
        self._client: Any = None

    def client(self, request: Request[Any, Any, Any]) -> Any:
        """One pooled HTTP client per app, closed when the app shuts down."""
        if self._client is None:
            import httpx

            self._client = c = httpx.AsyncClient(timeout=self.config.timeout_s)

            async def close_client() -> None:
                self._client = None
                await c.aclose()

            request.app.on_shutdown.append(close_client)
        return self._client

    def upstream_headers(self, request: Request[Any, Any, Any]) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD}
        headers["accept-encoding"] = "identity"  # recorded as sent: no compression to undo
        if self.config.upstream_key:
            headers["authorization"] = f"Bearer {self.config.upstream_key}"
        elif not self.config.server_token and "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        return headers

    async def forward(self, request: Request[Any, Any, Any], trajectory_id: str,
                      rest: str) -> Response[Any]:
        import httpx

        _check_id(trajectory_id)
        upstream = self.config.upstream
        if not upstream:
            raise HTTPException(status_code=503, detail=(
                "the recording proxy has no upstream: start branchpoint serve with "
                "--upstream URL"))
        body = await request.body()
        payload: dict[str, Any] | None = None
        if request.method == "POST" and rest.strip("/") == "chat/completions":
            try:
                decoded = msgspec.json.decode(body) if body else None
            except msgspec.DecodeError:
                decoded = None
            payload = decoded if isinstance(decoded, dict) else None
        client = self.client(request)
        sent = client.build_request(request.method, f"{upstream.rstrip('/')}/v1/"
                                    f"{rest.lstrip('/')}", content=body,
                                    headers=self.upstream_headers(request),
                                    params=dict(request.query_params))
        try:
            answer = await client.send(sent, stream=True)
        except httpx.HTTPError as exc:
            raise HTTPException(status_code=502, detail=(
                f"the upstream {upstream} did not answer: {type(exc).__name__}: {exc}")
            ) from None
        if not 200 <= answer.status_code < 300:
            payload = None  # an error answer is relayed, not recorded
        task = (request.headers.get("x-branchpoint-env") or "proxy",
                _task_id(request.headers.get("x-branchpoint-task"), trajectory_id))
        call = _Call(self.recorder, request.app.state.log, trajectory_id, task, payload)
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _DROP_ANSWER}
        media = answer.headers.get("content-type")
        if media and media.startswith("text/event-stream"):
            return Stream(call.relay(answer), status_code=answer.status_code,
                          headers=headers, media_type=media,
                          background=BackgroundTask(call.record_stream))
        content = await answer.aread()
        await answer.aclose()
        return Response(content, status_code=answer.status_code, headers=headers,
                        media_type=media, background=call.record_plain(content))

    async def score(self, request: Request[Any, Any, Any], trajectory_id: str,
                    data: ScoreIn) -> dict[str, Any]:
        async def work(b: TreeBuilder) -> str:
            node = data.node or _last_step(b)
            b.score(node, data.value, source=data.source, detail=data.detail)
            return node

        node, event_id = await self._write(request, trajectory_id, work)
        return {"tree_id": trajectory_id, "node_id": node, "event_id": event_id}

    async def close(self, request: Request[Any, Any, Any], trajectory_id: str,
                    data: CloseIn) -> dict[str, Any]:
        async def work(b: TreeBuilder) -> str:
            b.close(data.reason, data.detail)
            return data.reason

        reason, event_id = await self._write(request, trajectory_id, work)
        return {"tree_id": trajectory_id, "reason": reason, "event_id": event_id}

    async def _write(self, request: Request[Any, Any, Any], trajectory_id: str,
                     work: Any) -> tuple[str, str]:
        _check_id(trajectory_id)
        store: EventLog = request.app.state.log
        await self.recorder.settled(trajectory_id)
        async with self.recorder.lock(trajectory_id):
            b = await self.recorder.builder(store, trajectory_id)
            if b.state.root is None:
                raise HTTPException(status_code=404,
                                    detail=f"no trajectory {trajectory_id!r} is recorded")
            try:
                result: str = await work(b)
                events = b.take()
                await store.append(events)
            except InvalidEvent as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from None
        return result, events[-1].event_id


class _Call:
    """One forwarded chat completion, recorded after its answer has gone to the agent."""

    def __init__(self, recorder: _Recorder, store: EventLog, tree_id: str,
                 task: tuple[str, str | int], payload: dict[str, Any] | None) -> None:
        self.recorder, self.store, self.tree_id = recorder, store, tree_id
        self.task, self.payload = task, payload
        self.chunks = SseChunks()
        self._open = payload is not None
        if self._open:
            recorder.begin(tree_id)

    def _end(self) -> None:
        if self._open:
            self._open = False
            self.recorder.end(self.tree_id)

    async def _record(self, response: dict[str, Any]) -> None:
        try:
            if self.payload is not None:
                await self.recorder.call(self.store, self.tree_id, self.task, self.payload,
                                         response)
        finally:
            self._end()

    def record_plain(self, content: bytes) -> BackgroundTask | None:
        if self.payload is None:
            return None
        try:
            parsed = msgspec.json.decode(content)
        except msgspec.DecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            log.warning("proxy: the upstream's answer for tree %r is not a JSON object; "
                        "not recorded", self.tree_id)
            self._end()
            return None
        return BackgroundTask(self._record, parsed)

    async def relay(self, answer: Any) -> AsyncIterator[bytes]:
        """The upstream's bytes, unchanged, read for recording on the way."""
        try:
            async for data in answer.aiter_raw():
                if self.payload is not None:
                    try:
                        self.chunks.feed(data)
                    except Exception:  # the agent's stream goes on whatever we cannot read
                        log.debug("proxy: unreadable stream data", exc_info=True)
                yield data
        except BaseException:
            self._end()  # cut short (the agent went away): nothing complete to record
            raise
        finally:
            await answer.aclose()

    async def record_stream(self) -> None:
        result = self.chunks.acc.result()
        if result["choices"]:
            await self._record(result)
        else:
            self._end()


def proxy_router(config: ProxyConfig) -> Router:
    """The ``/proxy`` routes, over the log in ``app.state.log``."""
    proxy = _Proxy(config)

    @route("/{trajectory_id:str}/v1/{rest:path}", http_method=METHODS, status_code=200,
           include_in_schema=False)
    async def forward(request: Request[Any, Any, Any], trajectory_id: FromPath[str],
                      rest: FromPath[str]) -> Response[Any]:
        return await proxy.forward(request, trajectory_id, rest)

    @post("/{trajectory_id:str}/score", status_code=200, summary="Score a proxied step")
    async def score(request: Request[Any, Any, Any], trajectory_id: FromPath[str],
                    data: JSONBody[ScoreIn]) -> dict[str, Any]:
        return await proxy.score(request, trajectory_id, data)

    @post("/{trajectory_id:str}/close", status_code=200, summary="Close a proxied tree")
    async def close(request: Request[Any, Any, Any], trajectory_id: FromPath[str],
                    data: JSONBody[CloseIn | None] = None) -> dict[str, Any]:
        return await proxy.close(request, trajectory_id, data or CloseIn())

    return Router(path="/proxy", route_handlers=[forward, score, close],
                  tags=["recording proxy"])


def proxy_part(config: Any) -> Router:
    """The router for ``branchpoint serve``'s parts, from its config (``upstream``,
    ``upstream_key``, ``token``); the upstream key defaults to
    ``$BRANCHPOINT_UPSTREAM_KEY``."""
    return proxy_router(ProxyConfig(
        upstream=getattr(config, "upstream", None),
        upstream_key=getattr(config, "upstream_key", None)
        or os.environ.get("BRANCHPOINT_UPSTREAM_KEY"),
        server_token=bool(getattr(config, "token", None))))
