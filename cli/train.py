"""``branchpoint model build``, ``branchpoint train sft|dpo`` and ``branchpoint eval``.

Each needs the ``train`` extra (torch, transformers, TRL); without it the command stops at
once, before any work, with the command that installs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from branchpoint.cli.main import fail
from branchpoint.store.errors import BranchpointError

__all__ = ["parse_options", "register"]

model_app = typer.Typer(name="model", help="Build small models of our own.",
                        no_args_is_help=True, add_completion=False)

EnvOption = Annotated[list[str] | None, typer.Option(
    "--env", help="Environment; repeat for several (default: fs and shop).")]
OptionOption = Annotated[list[str] | None, typer.Option(
    "--option", help="ENV:KEY=VALUE or KEY=VALUE (every environment): an environment "
    "option, the value read as JSON when it parses, else as a string. Repeatable.")]


def parse_options(raw: list[str] | None, envs: list[str]) -> dict[str, dict[str, Any]]:
    """``ENV:KEY=VALUE`` / ``KEY=VALUE`` strings as options per environment.

    Raises:
        ValueError: a string without ``=``, or naming an environment not in ``envs``.
    """
    out: dict[str, dict[str, Any]] = {env: {} for env in envs}
    for item in raw or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--option wants KEY=VALUE or ENV:KEY=VALUE, got {item!r}")
        scope, colon, name = key.rpartition(":")
        targets = [scope] if colon else envs
        if colon and scope not in out:
            raise ValueError(f"--option {item!r} names environment {scope!r}, which is not "
                             f"among --env {', '.join(envs)}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        for env in targets:
            out[env][name] = parsed
    return out


def _guard() -> None:
    from branchpoint.train.deps import missing_train_modules, require_train

    if missing_train_modules():
        try:
            require_train()
        except BranchpointError as exc:
            raise fail(str(exc)) from None


@model_app.command("build")
def build(  # noqa: PLR0917 - Typer reads options from the parameters
    out: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
    env: EnvOption = None,
    option: OptionOption = None,
    demo_tasks: Annotated[int, typer.Option(
        "--demo-tasks", min=1, help="Expert demonstrations per environment that the "
        "tokenizer is trained on.")] = 300,
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=300)] = 2048,
    hidden_size: Annotated[int, typer.Option("--hidden-size", min=16)] = 128,
    layers: Annotated[int, typer.Option("--layers", min=1)] = 4,
    heads: Annotated[int, typer.Option("--heads", min=1)] = 4,
    kv_heads: Annotated[int, typer.Option("--kv-heads", min=1)] = 2,
    intermediate_size: Annotated[int, typer.Option("--intermediate-size", min=16)] = 384,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Build a small chat model no download is needed for: a byte-level BPE tokenizer
    trained on the environments' expert demonstrations, a ChatML chat template, and a
    randomly initialised Qwen2 model, saved to OUT (loadable by transformers and vLLM)."""
    _guard()
    from branchpoint.train.model import ModelSpec, build_model

    envs = list(env or ("fs", "shop"))
    try:
        spec = ModelSpec(envs=tuple(envs), options=parse_options(option, envs),
                         demo_tasks=demo_tasks, vocab_size=vocab_size,
                         hidden_size=hidden_size, layers=layers, heads=heads,
                         kv_heads=kv_heads, intermediate_size=intermediate_size, seed=seed)
        if hidden_size % heads or heads % kv_heads:
            raise ValueError("--hidden-size must be a multiple of --heads, and --heads a "
                             "multiple of --kv-heads")
        target = build_model(out, spec)
    except (BranchpointError, ValueError) as exc:
        raise fail(str(exc)) from None
    info = json.loads((target / "branchpoint_model.json").read_text())
    typer.echo(f"built {target} ({info['parameters']:,} parameters, vocabulary "
               f"{vocab_size}); serve it with: branchpoint serve-model {target}")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app)
