"""A real OpenEnv server for the tests: a subprocess serving, with uvicorn on 127.0.0.1, the
``app`` of a module written with OpenEnv's server classes (no Docker).

``python openenv_server.py FILE.py`` imports FILE, binds a free port first, starts uvicorn
on it and prints ``ready http://127.0.0.1:PORT`` once it serves; :func:`openenv_server`
runs that and yields the URL, and stops the server (SIGTERM) at the end.
"""

from __future__ import annotations

import importlib.util
import queue
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_BOUND_S = 120.0  # importing openenv (gradio) takes seconds on a busy 2-core machine


@contextmanager
def openenv_server(module: Path) -> Iterator[str]:
    """Serve ``module``'s ``app`` in a subprocess; yields its base URL.

    Raises:
        RuntimeError: the server exited or did not say it was ready within the bound.
    """
    err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed when the server stops
    proc = subprocess.Popen([sys.executable, __file__, str(module)], stdout=subprocess.PIPE,
                            stderr=err, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        try:
            line = lines.get(timeout=START_BOUND_S)
        except queue.Empty:
            line = None
        if not line or not line.startswith("ready "):
            proc.kill()
            proc.wait(timeout=30)
            err.seek(0)
            raise RuntimeError(f"the OpenEnv test server did not start: {line!r}\n{err.read()}")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
        err.close()


def _serve(path: str) -> None:
    import uvicorn

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(Path(path).parent))
    spec.loader.exec_module(module)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(module.app, log_level="warning"))
    started = threading.Event()

    def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            started.wait(0.01)
        print(f"ready http://127.0.0.1:{port}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run(sockets=[sock])


if __name__ == "__main__":
    _serve(sys.argv[1])
