"""The MCP tools through real transports: ``branchpoint mcp`` as a stdio subprocess driven
by the SDK's stdio client, and Streamable HTTP on a real port driven by the SDK's HTTP
client. Each plays the same session (start, steps, a fork, scores) and finds the pair the
fork made in the export, and the events in the store the server was pointed at."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from branchpoint.mcp_server.http import McpHttp
from branchpoint.store.log import open_log
from tests.mcp_server.scenario import caller, check_pair, play

BRANCHPOINT = str(Path(sys.executable).with_name("branchpoint"))
BOUND = 60.0  # seconds any one wait may take before the test fails


async def _tree_ids(url: str) -> list[str]:
    log = await open_log(url)
    try:
        return [t.tree_id for t in await log.list_trees()]
    finally:
        await log.close()


# --- stdio ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_branchpoint_mcp_over_stdio_records_a_session_and_exports_its_pair(
        tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'stdio.db'}"
    exports = tmp_path / "exports"
    exports.mkdir()
    params = StdioServerParameters(command=BRANCHPOINT,
                                   args=["mcp", "--db", db, "--export-dir", str(exports)])
    with (tmp_path / "stderr.txt").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            call = caller(client)
            session = await asyncio.wait_for(play(call), BOUND)
            written = await call("export", {"format": "dpo", "path": "pairs.jsonl"})
    check_pair(session)
    assert (exports / "pairs.jsonl").read_text() == session["export"]["jsonl"]
    assert written["path"] == str(exports / "pairs.jsonl")
    assert await _tree_ids(db) == [session["tree_id"]]


async def _rpc(proc: asyncio.subprocess.Process, message: dict[str, Any]) -> dict[str, Any]:
    """Send one JSON-RPC message; for a request, the line that answers it."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    await proc.stdin.drain()
    if "id" not in message:
        return {}
    line = await asyncio.wait_for(proc.stdout.readline(), BOUND)
    answer: dict[str, Any] = json.loads(line)
    return answer


@pytest.mark.slow
async def test_branchpoint_mcp_writes_nothing_but_protocol_to_stdout(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'raw.db'}"
    proc = await asyncio.create_subprocess_exec(
        BRANCHPOINT, "mcp", "--db", db, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    init = await _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
    assert init["result"]["serverInfo"]["name"] == "branchpoint"
    await _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    started = await _rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "start_trajectory", "arguments": {"description": "say hello"}}})
    tree = started["result"]["structuredContent"]["tree_id"]
    bad = await _rpc(proc, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "score", "arguments": {"tree_id": tree, "node_id": "root", "value": 7}}})
    assert bad["result"]["isError"] is True
    assert proc.stdin is not None
    proc.stdin.close()
    rest, err = await asyncio.wait_for(proc.communicate(), BOUND)
    assert proc.returncode == 0, err.decode()
    assert rest == b"", f"stdout after the answers: {rest!r}"
    # the refused score left the store as it was: the root alone
    log = await open_log(db)
    try:
        assert [ev.type for ev in await log.read_tree(tree)] == ["node_created"]
    finally:
        await log.close()


def test_branchpoint_mcp_with_a_bad_store_fails_on_stderr_and_leaves_stdout_empty(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from branchpoint.cli.main import app

    result = CliRunner().invoke(app, ["mcp", "--db", "mysql://nowhere/x"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "mysql" in result.stderr
    for command in ("mcp", "serve"):
        missing = CliRunner().invoke(app, [command, "--export-dir", str(tmp_path / "none")])
        assert missing.exit_code == 2 and missing.stdout == ""
        assert "--export-dir" in missing.stderr


# --- Streamable HTTP -----------------------------------------------------------------------


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn on a real loopback port; yields its base URL. The socket is
    bound and listening before uvicorn starts, so clients may connect at once (the kernel
    queues them until uvicorn accepts)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, BOUND)
        sock.close()


@pytest.mark.parametrize("stateless", [False, True], ids=["sessions", "stateless"])
@pytest.mark.parametrize("mode", ["legacy", "auto"], ids=["handshake", "modern"])
async def test_streamable_http_on_a_real_port_records_a_session_and_exports_its_pair(
        tmp_path: Path, stateless: bool, mode: str) -> None:
    """Both protocol eras: ``legacy`` opens with the initialize handshake (and, on a
    stateful server, a session id), ``auto`` discovers the 2026 protocol (no sessions)."""
    db = f"sqlite:///{tmp_path / 'http.db'}"
    log = await open_log(db)
    mcp = McpHttp(log, stateless=stateless)
    try:
        async with serving(mcp.standalone()) as base, \
                Client(f"{base}/mcp", mode=mode) as client:
            session = await asyncio.wait_for(play(caller(client)), BOUND)
    finally:
        await log.close()
    check_pair(session)
    assert await _tree_ids(db) == [session["tree_id"]]


async def test_http_refuses_a_foreign_host_header_when_it_checks_hosts(tmp_path: Path) -> None:
    log = await open_log("memory://")
    async with serving(McpHttp(log, check_host=True).standalone()) as base, \
            httpx2.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"accept": "application/json, text/event-stream",
                   "content-type": "application/json"}
        evil = await http.post(f"{base}/mcp", json=body,
                               headers={**headers, "host": "evil.example"})
        assert evil.status_code == 421
    assert await log.list_trees() == []


@pytest.mark.parametrize("stateless", [False, True], ids=["one-worker", "workers"])
async def test_branchpoint_serve_mounts_mcp_at_slash_mcp_behind_its_token(
        tmp_path: Path, stateless: bool) -> None:
    """The app ``branchpoint serve`` runs (``build_app``: API, viewer, the MCP mount), on a
    real port with a token: the SDK's HTTP client plays the session through ``/mcp``."""
    from branchpoint.cli.app import ServeConfig, build_app

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    config = ServeConfig(token="s3cret", stateless=stateless, export_dir=str(tmp_path))
    async with serving(build_app(db, config)) as base:
        async with httpx2.AsyncClient() as http:
            denied = await http.post(f"{base}/mcp", json={})
            assert denied.status_code == 401
        auth = httpx2.AsyncClient(headers={"authorization": "Bearer s3cret"})
        # one worker keeps sessions: the handshake-era client carries the session id
        # through the mount; behind workers, the 2026 protocol needs none
        mode = "auto" if stateless else "legacy"
        async with auth, Client(streamable_http_client(f"{base}/mcp", http_client=auth),
                                mode=mode) as client:
            call = caller(client)
            session = await asyncio.wait_for(play(call), BOUND)
            written = await call("export", {"format": "dpo", "path": "p.jsonl"})
            outside = await client.call_tool("export", {"path": "../p.jsonl"})
            assert outside.is_error
        # the API of the same server sees what the MCP session recorded
        async with httpx2.AsyncClient(headers={"authorization": "Bearer s3cret"}) as http:
            listed = await http.get(f"{base}/v1/trees")
            assert session["tree_id"] in listed.text
    check_pair(session)
    assert (tmp_path / "p.jsonl").read_text() == session["export"]["jsonl"]
    assert written["path"] == str(tmp_path / "p.jsonl")
    assert await _tree_ids(db) == [session["tree_id"]]


@pytest.mark.slow
async def test_branchpoint_serve_with_two_workers_serves_mcp_statelessly(
        tmp_path: Path) -> None:
    """The real command, two uvicorn worker processes on one SQLite file: the requests of
    one MCP session may land on either worker (there is no session to carry), and the
    fork's pair is in the export."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = f"sqlite:///{tmp_path / 'workers.db'}"
    proc = await asyncio.create_subprocess_exec(
        BRANCHPOINT, "serve", "--db", db, "--port", str(port), "--token", "s3cret",
        "--workers", "2", "--export-dir", str(tmp_path), "--log-level", "info",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        started = 0
        while started < 2:  # each worker logs this once its app has started
            line = await asyncio.wait_for(proc.stderr.readline(), BOUND)
            assert line, "serve exited before its workers started"
            started += b"Application startup complete" in line
        drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling
        # a new connection per request, so that requests are spread over the workers
        auth = httpx2.AsyncClient(headers={"authorization": "Bearer s3cret"},
                                  limits=httpx2.Limits(max_keepalive_connections=0))
        # mode="legacy": the initialize handshake, after which a stateful server would
        # expect the session id it minted on whichever worker answered
        async with auth, Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp",
                                                       http_client=auth),
                                mode="legacy") as client:
            call = caller(client)
            session = await asyncio.wait_for(play(call), BOUND)
            await call("export", {"format": "dpo", "path": "pairs.jsonl"})
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), BOUND)
    await drain
    check_pair(session)
    assert (tmp_path / "pairs.jsonl").read_text() == session["export"]["jsonl"]
    assert await _tree_ids(db) == [session["tree_id"]]
