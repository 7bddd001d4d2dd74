"""Fixtures of the SDK's tests: a spool folder of the test's own, a SQLite destination,
and readers of what a destination stored."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every recorder of a test spools under the test's own folder."""
    folder = tmp_path / "spool"
    monkeypatch.setenv("BRANCHPOINT_SPOOL_DIR", str(folder))
    return folder


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


def stored(db: Path) -> list[dict[str, Any]]:
    """Every stored event of a SQLite file, in ``seq`` order."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select seq, event_id, tree_id, type, payload from events "
                           "order by seq").fetchall()
    finally:
        con.close()
    return [{"seq": s, "event_id": e, "tree_id": t, "type": ty, "payload": json.loads(p)}
            for s, e, t, ty, p in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(cond: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for ``cond()`` to hold, polling, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class StoreServer:
    """``branchpoint serve`` over a SQLite file in a subprocess, which a test can kill and
    start again on the same port."""

    def __init__(self, db: Path, port: int) -> None:
        self.db, self.port = db, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cli = Path(sys.executable).parent / "branchpoint"
        self.proc = proc = subprocess.Popen(
            [str(cli), "serve", "--db", f"sqlite:///{self.db}", "--port", str(self.port),
             "--log-level", "warning"], cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

        def up() -> bool:
            assert proc.poll() is None, "branchpoint serve exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, what="branchpoint serve to listen")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[StoreServer]:
    server = StoreServer(tmp_path / "served.db", free_port())
    yield server
    server.kill()


class Upstream:
    """The scripted OpenAI-compatible server (``tests/sdk/upstream.py``) in a subprocess."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}/v1"
        args = [sys.executable, str(HERE / "upstream.py"), str(port)] + ([key] if key else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=REPO)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"ready"

    def requests(self) -> list[dict[str, Any]]:
        import urllib.request

        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/requests") as r:
            out: list[dict[str, Any]] = json.loads(r.read())
            return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream(free_port())
    yield u
    u.stop()


class ProxyServer:
    """``branchpoint serve --upstream`` (the recording proxy among the server's routes)
    over a SQLite file, in front of a scripted upstream that wants ``UPSTREAM_KEY``."""

    UPSTREAM_KEY = "upstream-secret"

    def __init__(self, db: Path, token: str | None = None,
                 upstream_url: str | None = None) -> None:
        """``upstream_url``: forward there instead (e.g. real vLLM), with no key."""
        self.db = db
        self.upstream = None if upstream_url else Upstream(free_port(), self.UPSTREAM_KEY)
        target = upstream_url or self.upstream.url  # type: ignore[union-attr]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cli = Path(sys.executable).parent / "branchpoint"
        self.proc = subprocess.Popen(
            [str(cli), "serve", "--db", f"sqlite:///{db}", "--port", str(port),
             "--upstream", target, "--log-level", "warning",
             *(["--token", token] if token else [])],
            cwd=REPO, stderr=subprocess.PIPE,
            env={**os.environ, "BRANCHPOINT_UPSTREAM_KEY": "" if upstream_url
                 else self.UPSTREAM_KEY})

        def listening() -> bool:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr \
                else "the server exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, what="the server to listen")

    def base(self, trajectory_id: str) -> str:
        return f"{self.url}/proxy/{trajectory_id}/v1"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            _, err = self.proc.communicate(timeout=20)
            if self.upstream is not None:
                self.upstream.stop()
            self.err = err.decode(errors="replace")
        return self.err


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyServer]:
    p = ProxyServer(tmp_path / "proxied.db")
    yield p
    p.stop()
