"""``branchpoint serve``: the API, the viewer and the mounted parts, under uvicorn.

The app is put together in :mod:`branchpoint.cli.app` (:func:`~branchpoint.cli.app.build_app`;
a part such as the recording proxy or the MCP endpoint is one line in its ``parts``). With
``--workers N`` uvicorn starts N processes, each building its app from the environment
(:func:`~branchpoint.cli.app.app_from_env`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from branchpoint.cli.main import DbOption, fail
from branchpoint.store.errors import BranchpointError

logger = logging.getLogger("branchpoint.serve")

_SIZE = re.compile(r"^\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """``"32MiB"``, ``"1000000"``, ``"64k"`` as bytes.

    Raises:
        ValueError: not a size.
    """
    m = _SIZE.match(text)
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"not a size in bytes: {text!r} (e.g. 32MiB, 500kB, 1048576)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _probe(db: str) -> None:
    """Open and close the store once, so that a store that cannot be opened is a clear
    error before uvicorn starts, not a failed start-up inside it.

    Raises:
        StoreUnavailable: the database cannot be opened or reached.
        ValueError: the URL names no supported backend.
    """
    from branchpoint.store.log import open_log

    log = await open_log(db)
    await log.close()


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(  # noqa: PLR0917 - Typer reads options from the parameters
        db: DbOption,
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")
                        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
        token: Annotated[str | None, typer.Option(
            "--token", envvar="BRANCHPOINT_TOKEN", show_default=False,
            help="Require 'Authorization: Bearer TOKEN' on /v1 and the mounted parts "
            "(default: $BRANCHPOINT_TOKEN).")] = None,
        workers: Annotated[int, typer.Option(
            "--workers", min=1, help="Worker processes (several: use PostgreSQL).")] = 1,
        max_body: Annotated[str, typer.Option(
            "--max-body", help="Largest request body; bigger ones get 413.")] = "32MiB",
        insecure: Annotated[bool, typer.Option(
            "--insecure", help="Allow listening beyond loopback without a token.")] = False,
        log_level: Annotated[str, typer.Option("--log-level")] = "info",
        export_dir: Annotated[Path | None, typer.Option(
            "--export-dir", exists=True, file_okay=False, dir_okay=True, resolve_path=True,
            help="The one folder the MCP export tool may write files under (default: "
            "none; MCP exports are returned inline only).")] = None,
        upstream: Annotated[str | None, typer.Option(
            "--upstream", help="OpenAI-compatible endpoint the recording proxy "
            "(/proxy/TRAJECTORY_ID/v1) forwards to, e.g. http://127.0.0.1:8001.")] = None,
        upstream_key: Annotated[str | None, typer.Option(
            "--upstream-key", envvar="BRANCHPOINT_UPSTREAM_KEY", show_default=False,
            help="API key sent to the upstream (default: $BRANCHPOINT_UPSTREAM_KEY).")
        ] = None,
    ) -> None:
        """Serve the API (/v1, OpenAPI at /schema/openapi.json), the tree viewer (/) and
        the mounted parts with uvicorn."""
        try:
            import uvicorn

            from branchpoint.cli.app import ENV_CONFIG, ServeConfig, build_app
        except ImportError as exc:
            raise fail(f"branchpoint serve needs the server extra ({exc.name} is missing): "
                       f"pip install 'branchpoint[server]'") from None

        try:
            limit = parse_size(max_body)
        except ValueError as exc:
            raise fail(f"--max-body: {exc}", 2) from None
        if not token and not is_loopback(host):
            if not insecure:
                raise fail(f"refusing to listen on {host} without --token: anyone who can "
                           f"reach it could read and write the store (add --insecure to do "
                           f"it anyway)", 2)
            logging.basicConfig(level=logging.WARNING)
            logger.warning("listening on %s WITHOUT a token (--insecure): anyone who can "
                           "reach this address can read and write the store", host)
        if workers > 1 and db.startswith("memory:"):
            raise fail("--workers > 1 needs a shared store (PostgreSQL, or a SQLite file); "
                       "each worker would get its own memory:// log", 2)
        try:
            asyncio.run(_probe(db))
        except (BranchpointError, ValueError) as exc:  # ValueError: a URL of no backend
            raise fail(str(exc)) from None
        config = ServeConfig(token=token or None, max_body=limit, stateless=workers > 1,
                             export_dir=str(export_dir) if export_dir else None,
                             upstream=upstream.removesuffix("/v1") if upstream else None,
                             upstream_key=upstream_key or None)
        typer.echo(f"serving {db} on http://{host}:{port}/ (workers: {workers}, "
                   f"token: {'yes' if token else 'no'})", err=True)
        if workers == 1:
            uvicorn.run(build_app(db, config), host=host, port=port, log_level=log_level)
        else:
            os.environ[ENV_CONFIG] = json.dumps({"db": db, **asdict(config)})
            uvicorn.run("branchpoint.cli.app:app_from_env", factory=True, host=host,
                        port=port, workers=workers, log_level=log_level)
