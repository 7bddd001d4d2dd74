"""``branchpoint serve`` as a user runs it: a real process on a real port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app as cli
from branchpoint.cli.serve import is_loopback, parse_size
from branchpoint.store.events import encode_event
from tests.store.api_data import ordinary
from tests.store.conftest import pg_url  # noqa: F401 - the fixture, for the worker test

START_S = 60.0
TOKEN = "serve-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``branchpoint serve`` process; its stderr is collected as it comes."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "branchpoint"), "serve", "--port", str(self.port),
             "--log-level", "info", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_ready(self, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {''.join(self.lines)}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)  # polling a condition, bounded by the deadline
        raise AssertionError(f"serve did not answer within {START_S}s: {''.join(self.lines)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextmanager
def served(*args: str) -> Iterator[Server]:
    server = Server(*args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_sizes_read_as_bytes_and_loopback_is_recognised() -> None:
    assert parse_size("32MiB") == 32 * 1024 * 1024
    assert parse_size("500kB") == 500_000
    assert parse_size("1024") == 1024
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_serving_beyond_loopback_without_a_token_is_refused() -> None:
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--db", "memory://"])
    assert result.exit_code == 2
    assert "without --token" in result.stderr and "--insecure" in result.stderr
    result = CliRunner().invoke(cli, ["serve", "--max-body", "huge", "--db", "memory://"])
    assert result.exit_code == 2 and "--max-body" in result.stderr
    result = CliRunner().invoke(cli, ["serve", "--workers", "2", "--db", "memory://"])
    assert result.exit_code == 2 and "shared store" in result.stderr


def test_a_store_that_cannot_be_opened_stops_serve_with_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["serve", "--db", "postgresql://nobody@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    result = CliRunner().invoke(cli, ["serve", "--db", "mysql://x/y"])
    assert result.exit_code == 1 and "error: " in result.stderr


@pytest.mark.slow
def test_insecure_listening_is_logged_at_start() -> None:
    with served("--host", "0.0.0.0", "--insecure", "--db", "memory://") as server:
        assert any("WITHOUT a token" in line for line in server.lines)


@pytest.mark.slow
def test_a_real_server_ingests_json_lines_and_streams_what_the_cli_exports(
        tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'served.db'}"
    body = b"".join(encode_event(e) + b"\n" for e in ordinary(4))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with served("--db", db, "--token", TOKEN, "--max-body", "64KiB") as server:
        r = httpx.post(f"{server.url}/v1/events", content=body,
                       headers={**auth, "content-type": "application/x-ndjson"})
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == body.count(b"\n")
        assert httpx.post(f"{server.url}/v1/events", content=body).status_code == 401
        big = httpx.post(f"{server.url}/v1/events", content=b"[" + b" " * 70_000 + b"]",
                         headers={**auth, "content-type": "application/json"})
        assert big.status_code == 413 and big.json()["limit"] == 64 * 1024
        with httpx.stream("GET", f"{server.url}/v1/export/dpo", headers=auth,
                          params={"with_metadata": "true"}) as stream:
            served_bytes = b"".join(stream.iter_bytes())
    out = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(cli, ["export", "dpo", "--db", db, "--with-metadata",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert served_bytes == out.read_bytes()
    assert served_bytes.count(b"\n") == 8


@pytest.mark.slow
@pytest.mark.postgres
def test_several_workers_share_one_postgresql_store(pg_url: str) -> None:  # noqa: F811
    body = b"".join(encode_event(e) + b"\n" for e in ordinary(6))
    with served("--db", pg_url, "--workers", "2") as server:
        r = httpx.post(f"{server.url}/v1/events", content=body,
                       headers={"content-type": "application/jsonl"})
        assert r.status_code == 200, r.text
        with httpx.Client(base_url=server.url) as client:
            totals = {client.get("/v1/trees").json()["total"] for _ in range(20)}
        assert totals == {6}
        started = [line for line in server.lines if re.search(r"Started server process", line)]
        assert len(started) == 2, server.lines


def test_the_served_app_mounts_the_mcp_endpoint_behind_the_token() -> None:
    from litestar.testing import TestClient

    from branchpoint.cli.app import ServeConfig, build_app

    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "test", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream"}
    with TestClient(build_app("memory://", ServeConfig(token=TOKEN))) as c:
        assert c.post("/mcp", json=hello, headers=headers).status_code == 401
        r = c.post("/mcp", json=hello,
                   headers={**headers, "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and '"serverInfo"' in r.text
