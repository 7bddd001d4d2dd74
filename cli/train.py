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
from branchpoint.cli.options import option_value
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
        parsed = option_value(value)
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
    pretokenizer: Annotated[str, typer.Option(
        "--pretokenizer", help="qwen2 (Qwen2's own splitting) or names (punctuation "
        "marks stand alone, so a name is spelt with the same tokens wherever it "
        "stands); both load the same in transformers and vLLM.")] = "qwen2",
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
                         kv_heads=kv_heads, intermediate_size=intermediate_size, seed=seed,
                         pretokenizer=pretokenizer)
        if hidden_size % heads or heads % kv_heads:
            raise ValueError("--hidden-size must be a multiple of --heads, and --heads a "
                             "multiple of --kv-heads")
        target = build_model(out, spec)
    except (BranchpointError, ValueError) as exc:
        raise fail(str(exc)) from None
    info = json.loads((target / "branchpoint_model.json").read_text())
    typer.echo(f"built {target} ({info['parameters']:,} parameters, vocabulary "
               f"{vocab_size}); serve it with: branchpoint serve-model {target}")


train_app = typer.Typer(name="train", help="Fine-tune a model with TRL (SFT, DPO).",
                        no_args_is_help=True, add_completion=False)


def _progress_printer(label: str) -> Any:
    def show(log: dict[str, Any]) -> None:
        loss = log.get("loss", log.get("train_loss"))
        if loss is not None:
            typer.echo(f"{label}: step {log['step']}/{log['max_steps']} loss {loss:.4f}",
                       err=True)
    return show


@train_app.command("sft")
def sft(  # noqa: PLR0917 - Typer reads options from the parameters
    model: Annotated[str, typer.Argument(help="Model folder or hub name to start from.")],
    out: Annotated[Path, typer.Argument(help="Folder to save the fine-tuned model to.")],
    env: EnvOption = None,
    option: OptionOption = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="JSONL of conversations (rows with `messages`, as `branchpoint "
        "export sft` writes) instead of the scripted experts' demonstrations.")] = None,
    demos: Annotated[int, typer.Option("--demos", min=1, help="Expert demonstrations per "
                                       "environment (training tasks).")] = 1000,
    mistakes: Annotated[float, typer.Option(
        "--mistakes", min=0.0, max=1.0, help="The expert's error rate in the "
        "demonstrations.")] = 0.15,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01)] = 6.0,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    max_length: Annotated[int, typer.Option("--max-length", min=16)] = 1024,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (peft) and "
                                       "merge them.")] = False,
    windows: Annotated[int | None, typer.Option(
        "--windows", min=0, help="Train on step windows instead of whole conversations: "
        "for each assistant turn, the request, the TURNS turns before it and the turn "
        "(how the demo's small model first learns to copy names from its context).")
        ] = None,
) -> None:
    """Supervised fine-tuning with TRL's SFTTrainer, loss on the assistant turns only."""
    _guard()
    from branchpoint.train.episodes import demonstrations, step_windows
    from branchpoint.train.trainers import SftSettings, read_jsonl, train_sft

    envs = list(env or ["fs"])
    try:
        if data is not None:
            rows = read_jsonl(data)
        else:
            options = parse_options(option, envs)
            rows = [{"messages": ep.messages} for name in envs for ep in
                    demonstrations(name, demos, mistakes=mistakes, options=options[name])]
        if windows is not None:
            for number, row in enumerate(rows, start=1):
                if not isinstance(row.get("messages"), list):
                    raise ValueError(f"conversation {number} has no `messages` list to cut "
                                     "into --windows")
            rows = list(step_windows((row["messages"] for row in rows), windows))
        settings = SftSettings(epochs=epochs, learning_rate=lr, batch_size=batch_size,
                               max_length=max_length, seed=seed, lora=lora)
        typer.echo(f"SFT of {model} on {len(rows)} conversations", err=True)
        target = train_sft(model, rows, out, settings, on_log=_progress_printer("sft"))
    except (BranchpointError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"saved {target}")


@train_app.command("dpo")
def dpo(  # noqa: PLR0917 - Typer reads options from the parameters
    model: Annotated[str, typer.Argument(help="Model folder or hub name to start from "
                                         "(also the reference model).")],
    pairs: Annotated[Path, typer.Argument(help="DPO JSONL (`branchpoint export dpo`).")],
    out: Annotated[Path, typer.Argument(help="Folder to save the trained model to.")],
    epochs: Annotated[float, typer.Option("--epochs", min=0.01)] = 2.0,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 5e-5,
    beta: Annotated[float, typer.Option("--beta", min=0.0)] = 0.1,
    loss_type: Annotated[list[str] | None, typer.Option(
        "--loss-type", help="TRL loss type; repeat to combine (default: sigmoid and sft). "
        "Any of TRL's: sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, "
        "sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, "
        "sigmoid_norm.")] = None,
    loss_weight: Annotated[list[float] | None, typer.Option(
        "--loss-weight", help="Weight of each --loss-type, in order.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    max_length: Annotated[int, typer.Option("--max-length", min=16)] = 1024,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (peft) and "
                                       "merge them.")] = False,
) -> None:
    """DPO with TRL's DPOTrainer from MODEL on preference pairs."""
    _guard()
    from branchpoint.train.trainers import DpoSettings, read_jsonl, train_dpo

    losses = tuple(loss_type or ("sigmoid", "sft"))
    known = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
             "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
             "sigmoid_norm"}
    try:
        unknown = [t for t in losses if t not in known]
        if unknown:
            raise ValueError(f"unknown --loss-type {', '.join(unknown)}; TRL's are: "
                             f"{', '.join(sorted(known))}")
        if loss_weight and len(loss_weight) != len(losses):
            raise ValueError(f"{len(loss_weight)} --loss-weight for {len(losses)} loss types")
        rows = read_jsonl(pairs)
        settings = DpoSettings(epochs=epochs, learning_rate=lr, beta=beta, loss_type=losses,
                               loss_weights=tuple(loss_weight) if loss_weight else None,
                               batch_size=batch_size, max_length=max_length, seed=seed,
                               lora=lora)
        typer.echo(f"DPO of {model} on {len(rows)} pairs", err=True)
        target = train_dpo(model, rows, out, settings, on_log=_progress_printer("dpo"))
    except (BranchpointError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"saved {target}")


def evaluate_command(  # noqa: PLR0917 - Typer reads options from the parameters
    env: Annotated[str, typer.Option("--env", help="Environment.")] = "fs",
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Served model name (with --base-url) or, with --local, a model "
        "folder run in-process with transformers.")] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="Run --model in-process with transformers instead of a "
        "server (quick experiments).")] = False,
    split: Annotated[str, typer.Option("--split", help="train, validation or heldout.")
                     ] = "heldout",
    tasks: Annotated[int, typer.Option("--tasks", min=1)] = 50,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Episodes per task.")
                       ] = 4,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.7,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 96,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 32,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="KEY=VALUE environment option (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Per-task JSONL (default runs/eval/MODEL-ENV-SPLIT.jsonl); the "
        "summary goes beside it.")] = None,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Per-task JSONL of an earlier eval on the same tasks: print the "
        "difference with its paired-bootstrap 95% interval.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Success rate on held-out tasks: S sampled episodes per task; writes per-task JSONL
    and a summary; with --baseline, the paired bootstrap of after minus before."""
    _guard()
    from branchpoint.train.evaluate import (
        evaluate,
        paired_bootstrap,
        read_results,
        write_results,
    )
    from branchpoint.train.policies import endpoint_policy, local_policy

    if model is None:
        raise fail("--model is required (a served model name, or a folder with --local)")
    if split not in ("train", "validation", "heldout"):
        raise fail(f"--split must be train, validation or heldout, got {split!r}")
    if not local and base_url is None:
        raise fail("--base-url is required (or --local to run the model in-process)")
    try:
        options = parse_options(option, [env])[env]
        if local:
            policy, closer = local_policy(model, temperature=temperature,
                                          max_tokens=max_tokens, seed=seed)
        else:
            assert base_url is not None
            policy, closer = endpoint_policy(base_url, model, temperature=temperature,
                                             max_tokens=max_tokens, seed=seed,
                                             concurrency=concurrency)
        from rich.progress import Progress

        try:
            with Progress(transient=True) as bar:
                job = bar.add_task(f"eval {env} {split}", total=tasks * samples)
                result = evaluate(policy, env, split=split,  # type: ignore[arg-type]
                                  tasks=tasks, samples=samples, options=options,
                                  progress=lambda done, total: bar.update(job,
                                                                          completed=done))
        finally:
            closer()
        name = Path(model).name if local else model
        target = out or Path("runs/eval") / f"{name}-{env}-{split}.jsonl"
        write_results(result, target, {"model": model, "base_url": base_url,
                                       "samples": samples, "temperature": temperature,
                                       "options": options})
        typer.echo(f"{env} {split}: success {result.success:.3f} over {len(result.tasks)} "
                   f"tasks x {samples} episodes (mean score {result.mean_score:.3f}); "
                   f"per-task results in {target}")
        if baseline is not None:
            before = read_results(baseline)
            by_id = {t.task_id: t.success_rate for t in before.tasks}
            missing = [t.task_id for t in result.tasks if t.task_id not in by_id]
            if missing:
                raise ValueError(f"the baseline {baseline} lacks tasks {missing[:5]}")
            mean, low, high = paired_bootstrap(
                [by_id[t.task_id] for t in result.tasks],
                [t.success_rate for t in result.tasks])
            typer.echo(f"difference after - before: {mean:+.3f}, 95% interval "
                       f"[{low:+.3f}, {high:+.3f}] (paired bootstrap, 10,000 resamples)")
    except (BranchpointError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    app.add_typer(model_app)
    app.add_typer(train_app)
    app.command("eval")(evaluate_command)
