"""The server's app: one Litestar application with the store's API, the viewer, and the
parts other modules mount (the recording proxy, the MCP endpoint).

:func:`create_app` is the one factory. Other parts plug in without touching it::

    create_app(log, config, extra_routes=[proxy_router], mounts={"/mcp": mcp_asgi_app})

- ``extra_routes``: Litestar routers, controllers or handlers, registered as they are
  (their own paths); they get the ``log`` dependency (the open
  :class:`~branchpoint.store.log.EventLog`, also ``app.state.log``) and ``config``
  (the :class:`ServeConfig`).
- ``mounts``: ``{path: ASGI app}``; the app gets every request under ``path`` (Litestar
  strips the prefix from ``scope["path"]`` and sets ``root_path``).

Security: with a token, every route needs ``Authorization: Bearer TOKEN`` except
``/health``, the viewer's pages and static files, and the OpenAPI document (routes,
extra routes and mounts included: what is not public is guarded). Every answer carries a
Content-Security-Policy that allows scripts and styles from this origin only (no inline
script, no ``eval``), no plugins, no framing.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, cast

from litestar import Litestar, Request, Response
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import asgi
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send

from branchpoint.store.api import DEFAULT_MAX_BODY, ErrorBody, api_router, health
from branchpoint.store.errors import StoreUnavailable
from branchpoint.store.log import EventLog, open_log

__all__ = ["CSP", "ENV_CONFIG", "ServeConfig", "app_from_env", "build_app", "create_app",
           "parts"]

#: the environment variable that hands each worker process its configuration (JSON)
ENV_CONFIG = "BRANCHPOINT_SERVE_CONFIG"

logger = logging.getLogger("branchpoint.serve")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'; object-src 'none'")

#: paths served without a token (prefixes end in "/")
PUBLIC = ("/health", "/", "/favicon.ico", "/static/", "/schema/")
PUBLIC_EXACT = frozenset({"/health", "/", "/favicon.ico", "/schema"})


@dataclass(frozen=True)
class ServeConfig:
    """How the server runs: ``token`` (None: no auth), ``max_body`` (bytes of a request
    body), ``stateless`` (several worker processes: nothing may keep per-process
    sessions, e.g. the MCP endpoint), ``export_dir`` (where the MCP endpoint may write
    exports; None: nowhere), ``upstream`` and ``upstream_key`` (the endpoint the recording
    proxy forwards to, and its key). Plain values only: workers get it as JSON."""

    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    stateless: bool = False
    export_dir: str | None = None
    upstream: str | None = None  # the recording proxy's OpenAI-compatible endpoint
    upstream_key: str | None = None


def _public(path: str) -> bool:
    return path in PUBLIC_EXACT or path.startswith(("/static/", "/schema/"))


def security_middleware(config: ServeConfig) -> Any:
    """ASGI middleware: the bearer token check, and the security headers on every answer."""
    expected = f"Bearer {config.token}".encode() if config.token else None
    headers = [(b"content-security-policy", CSP.encode()),
               (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"no-referrer")]

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] not in ("http", "websocket"):
                await app(scope, receive, send)
                return

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *headers]
                await send(message)

            # A mount sees its own sub-path in scope["path"] ("/mcp/x" arrives as "/x"):
            # the path as sent must be public too.
            raw = scope.get("raw_path") or scope["path"].encode()
            public = _public(scope["path"]) and _public(raw.decode("latin-1").split("?")[0])
            if expected is not None and not public:
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, expected):
                    body = ErrorBody(401, "a bearer token is required: send "
                                          "'Authorization: Bearer TOKEN'")
                    response = Response(body, status_code=401,
                                        headers={"www-authenticate": "Bearer"})
                    await response.to_asgi_response(app=None, request=Request(scope))(
                        scope, receive, send_with_headers)
                    return
            await app(scope, receive, send_with_headers)

        return guarded

    return middleware


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    extra = exc.extra if isinstance(exc.extra, dict) else {}
    known = {k: extra[k] for k in ("errors", "limit") if k in extra}
    rest = {k: v for k, v in extra.items() if k not in known} or (
        exc.extra if isinstance(exc.extra, list) else None)
    return Response(ErrorBody(exc.status_code, exc.detail, extra=rest or None, **known),
                    status_code=exc.status_code, headers=exc.headers)


def _mount(path: str, mounted: ASGIApp) -> ControllerRouterHandler:
    async def forward(scope: Scope, receive: Receive, send: Send) -> None:
        await mounted(scope, receive, send)

    forward.__name__ = f"mount_{path.strip('/').replace('/', '_') or 'root'}"
    return asgi(path, is_mount=True, copy_scope=True)(forward)


def _mount_lifespans(mounts: Mapping[str, ASGIApp]
                     ) -> list[Callable[[Litestar], AbstractAsyncContextManager[None]]]:
    """A mounted app gets no lifespan events of its own; one that must start and stop
    (the MCP endpoint's session manager) offers ``lifespan()``, run for the app's life."""
    out: list[Callable[[Litestar], AbstractAsyncContextManager[None]]] = []
    for mounted in mounts.values():
        run = getattr(mounted, "lifespan", None)
        if callable(run):
            def lifespan(_app: Litestar, run: Callable[[], Any] = run
                         ) -> AbstractAsyncContextManager[None]:
                cm: AbstractAsyncContextManager[None] = run()
                return cm

            out.append(lifespan)
    return out


def create_app(
    log: EventLog | str,
    config: ServeConfig | None = None,
    *,
    extra_routes: Sequence[ControllerRouterHandler] = (),
    mounts: Mapping[str, ASGIApp] | None = None,
    viewer: bool = True,
) -> Litestar:
    """The app over ``log`` (an open log, left open; or a URL, opened at start-up and
    closed at shutdown).

    Raises:
        StoreUnavailable: at start-up, when ``log`` is a URL that cannot be opened.
    """
    config = config or ServeConfig()

    async def open_store(app: Litestar) -> None:
        app.state.log = await open_log(log) if isinstance(log, str) else log

    async def close_store(app: Litestar) -> None:
        if isinstance(log, str) and getattr(app.state, "log", None) is not None:
            await app.state.log.close()

    def too_large(request: Request[Any, Any, Any], exc: RequestEntityTooLarge
                  ) -> Response[Any]:
        return Response(ErrorBody(413, f"the body is over the limit of {config.max_body} "
                                       f"bytes (--max-body); send smaller batches",
                                  limit=config.max_body), status_code=413)

    def unavailable(request: Request[Any, Any, Any], exc: StoreUnavailable) -> Response[Any]:
        return Response(ErrorBody(503, f"the store is unavailable: {exc}"), status_code=503)

    handlers: list[ControllerRouterHandler] = [api_router(max_body=config.max_body), health]
    if viewer:
        from branchpoint.viewer.routes import viewer_routes

        handlers.extend(viewer_routes())
    handlers.extend(extra_routes)
    for path, mounted in (mounts or {}).items():
        handlers.append(_mount(path, mounted))

    return Litestar(
        route_handlers=handlers,
        on_startup=[open_store],
        on_shutdown=[close_store],
        lifespan=_mount_lifespans(mounts or {}),
        dependencies={"config": Provide(lambda: config, sync_to_thread=False)},
        middleware=[security_middleware(config)],
        exception_handlers={
            RequestEntityTooLarge: too_large,
            HTTPException: _http_error,
            StoreUnavailable: unavailable,
        },
        request_max_body_size=config.max_body,
        openapi_config=OpenAPIConfig(
            title="branchpoint", version="0.1.0", path="/schema",
            description="Record agent trees, inspect them, export TRL-ready data.",
            render_plugins=[JsonRenderPlugin()]),
        debug=False,
    )


def parts(config: ServeConfig) -> tuple[list[ControllerRouterHandler], dict[str, ASGIApp]]:
    """The parts mounted beside the API and the viewer: ``(extra_routes, mounts)``.
    Each part adds one line here (the recording proxy's router to ``routes``, the MCP
    endpoint's ASGI app to ``mounts["/mcp"]``; ``config.stateless`` says whether several
    workers share the load)."""
    from branchpoint.mcp_server.http import mcp_mount
    from branchpoint.store.proxy import proxy_part

    routes: list[ControllerRouterHandler] = [proxy_part(config)]
    mounts: dict[str, ASGIApp] = {}
    # McpHttp is typed with Starlette's scope types, Litestar's mounts with its own
    mounts["/mcp"] = cast("ASGIApp", mcp_mount(config))
    return routes, mounts


def build_app(db: str, config: ServeConfig) -> Litestar:
    """The whole app over the store at ``db`` (opened at start-up)."""
    routes, mounts = parts(config)
    return create_app(db, config, extra_routes=routes, mounts=mounts)


def app_from_env() -> Litestar:
    """uvicorn's factory in each worker process: the app from ``$BRANCHPOINT_SERVE_CONFIG``."""
    raw: dict[str, Any] = json.loads(os.environ[ENV_CONFIG])
    db = raw.pop("db")
    return build_app(db, ServeConfig(**raw))
