"""MCP over Streamable HTTP: an ASGI app that ``branchpoint serve`` mounts at ``/mcp``.

:class:`McpHttp` serves the transport on whatever path it is mounted at (the host routes
``/mcp`` to it, behind its own bearer-token check). The SDK runs sessions in a task group
that must outlive requests; :class:`McpHttp` starts it on the first request and stops it
in :meth:`McpHttp.aclose`, so a host that mounts plain ASGI apps (as Litestar's mounts
are: they get no lifespan events) needs nothing more. A host with a lifespan may enter
:meth:`McpHttp.lifespan` instead, to start it eagerly and stop it cleanly.

The log: an open :class:`~branchpoint.store.log.EventLog`, or a function that finds it in
the ASGI scope of the first request (``branchpoint serve`` opens its store at start-up,
after the app is built: :func:`mcp_mount` reads ``app.state.log``).

``stateless=True`` makes every request self-contained (no ``Mcp-Session-Id`` is minted or
required), which is what several server workers behind one port need: a session opened on
one worker would be unknown to the next. The tools keep no state between calls (each
reads the tree from the store), so nothing is lost.

``check_host=True`` turns on the SDK's DNS-rebinding protection for loopback: requests
must carry a loopback ``Host`` (and ``Origin``, when they have one). It suits a server
without a token, which only listens on loopback; behind a token it is off, so clients can
reach the server by any name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from branchpoint.mcp_server.server import build_server
from branchpoint.mcp_server.service import McpRecorder
from branchpoint.store.log import EventLog

__all__ = ["McpHttp", "mcp_mount"]

LOOPBACK = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]",
                   "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)
NO_CHECK = TransportSecuritySettings(enable_dns_rebinding_protection=False)


class McpHttp:
    """The Streamable HTTP transport of the MCP tools over one store."""

    def __init__(self, log: EventLog | Callable[[Scope], EventLog], *,
                 export_dir: Path | str | None = None, stateless: bool = False,
                 json_response: bool = False, check_host: bool = True) -> None:
        self._find_log: Callable[[Scope], EventLog] | None = None
        if isinstance(log, EventLog):
            self.recorder = McpRecorder(log, export_dir=export_dir)
        else:
            self.recorder = McpRecorder(None, export_dir=export_dir)
            self._find_log = log
        self.server = build_server(self.recorder)
        # streamable_http_app() is the SDK's public way to make the session manager; its
        # Starlette app is not used (it routes one path only and needs its own lifespan).
        self.server.streamable_http_app(
            stateless_http=stateless, json_response=json_response,
            transport_security=LOOPBACK if check_host else NO_CHECK)
        self._manager = self.server.session_manager
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.recorder.bound and self._find_log is not None:
            self.recorder.bind(self._find_log(scope))
        await self.start()
        await self._manager.handle_request(scope, receive, send)

    async def start(self) -> None:
        """Start the session manager, once; later calls wait until it runs.

        Raises:
            RuntimeError: it could not start (what it raised is chained).
        """
        if self._started is None:
            self._started, self._stop = asyncio.Event(), asyncio.Event()
            self._task = asyncio.create_task(self._run(self._started, self._stop))
        assert self._task is not None
        ready = asyncio.ensure_future(self._started.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not self._started.is_set():
            raise RuntimeError("the MCP session manager did not start") from (
                self._task.exception())

    async def _run(self, started: asyncio.Event, stop: asyncio.Event) -> None:
        async with self._manager.run():
            started.set()
            await stop.wait()

    async def aclose(self) -> None:
        """Stop the session manager (open sessions end); the app is done with."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        await self._task

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Start on entry, stop on exit: for hosts that run a lifespan."""
        await self.start()
        try:
            yield
        finally:
            await self.aclose()

    def standalone(self, path: str = "/mcp") -> Starlette:
        """A complete app serving the transport at ``path`` alone (tests, ``uvicorn``)."""
        return Starlette(routes=[Route(path, endpoint=self)],
                         lifespan=lambda _app: self.lifespan())


class _ServeConfig(Protocol):
    """What :func:`mcp_mount` reads of ``branchpoint serve``'s ``ServeConfig``."""

    @property
    def token(self) -> str | None: ...
    @property
    def stateless(self) -> bool: ...
    @property
    def export_dir(self) -> str | None: ...


def _app_log(scope: Scope) -> EventLog:
    log: Any = scope["app"].state.log
    assert isinstance(log, EventLog), "the host app keeps its open log in app.state.log"
    return log


def mcp_mount(config: _ServeConfig) -> McpHttp:
    """The MCP endpoint for ``branchpoint serve``: mount it at ``/mcp``. It reads the
    app's log from ``app.state.log``, is stateless when ``config.stateless`` (several
    workers), writes exports only under ``config.export_dir`` (none when None), and
    checks the Host header for loopback when no token guards the server."""
    return McpHttp(_app_log, export_dir=config.export_dir,
                   stateless=config.stateless, check_host=config.token is None)
