"""Fixtures for the integration tests against real vLLM (the sampler's, and the SDK's
wrapper and recording proxy): ONE real vLLM server per test session, shared by all.

``served_model`` builds the small model once (``branchpoint model build``), starts
``branchpoint serve-model`` on it (a real subprocess, vLLM's CPU build in its cached
virtual environment, with the ``hermes`` tool-call parser so tool mode can be tested too),
waits for the base URL it prints, and at the end of the session stops it with SIGTERM
and checks the whole server exited.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_BOUND_S = 900.0  # a bare machine installs vLLM's CPU build first (a few minutes)


@dataclass(frozen=True)
class ServedModel:
    base_url: str
    name: str
    folder: Path
    pid: int


def _branchpoint() -> str:
    return str(Path(sys.executable).with_name("branchpoint"))


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own small model, built by ``branchpoint model build``."""
    out = tmp_path_factory.mktemp("model") / "tiny-qwen"
    subprocess.run([_branchpoint(), "model", "build", str(out), "--demo-tasks", "50"],
                   check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="session")
def served_model(model_folder: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServedModel]:
    folder = tmp_path_factory.mktemp("vllm")
    log, err_path = folder / "server.log", folder / "serve-model.stderr"
    cmd = [_branchpoint(), "serve-model", str(model_folder), "--port", "0",
           "--max-model-len", "2048", "--tool-call-parser", "hermes", "--log", str(log)]
    err_file = err_path.open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        url = lines.get(timeout=STARTUP_BOUND_S)
    except queue.Empty:
        url = None
    if not url:
        proc.kill()
        proc.communicate(timeout=60)
        err_file.close()
        pytest.fail(f"branchpoint serve-model printed no URL; stderr:\n"
                    f"{err_path.read_text()[-3000:]}")
    yield ServedModel(url, model_folder.name, model_folder, proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    err_file.close()
    code = proc.returncode
    assert code == 0, f"serve-model exited {code} on SIGTERM"
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "vLLM still listens after SIGTERM"


# The store's database fixtures (a fresh PostgreSQL schema per test, a SQLite file).
from tests.store.conftest import pg_url, sqlite_url  # noqa: E402, F401
