"""``branchpoint mcp``: the MCP tools over stdio, for Claude Desktop, Claude Code and any
MCP client that starts its servers as subprocesses.

Nothing but protocol messages goes to stdout: errors before the server starts go to
stderr with exit code 1, and while it runs the SDK points fd 1 at stderr for everything
but its own writer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from branchpoint.cli.main import DbOption, fail
from branchpoint.store.errors import BranchpointError


async def _serve(db: str, export_dir: Path | None) -> None:
    from branchpoint.mcp_server.server import run_stdio
    from branchpoint.mcp_server.service import McpRecorder
    from branchpoint.store.log import open_log

    log = await open_log(db)
    try:
        await run_stdio(McpRecorder(log, export_dir=export_dir))
    finally:
        await log.close()


def register(app: typer.Typer) -> None:
    @app.command("mcp")
    def mcp_command(
        db: DbOption,
        export_dir: Annotated[Path | None, typer.Option(
            "--export-dir", exists=True, file_okay=False, dir_okay=True, resolve_path=True,
            help="The one folder the export tool may write files under (default: none; "
            "exports are returned inline only).")] = None,
    ) -> None:
        """Serve branchpoint's MCP tools (start_trajectory, record_step, fork, score,
        get_tree, list_trees, export) and tree resources over stdio. Add it to an MCP
        client's configuration; it runs until the client closes stdin."""
        try:
            asyncio.run(_serve(db, export_dir))
        except (BranchpointError, ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
