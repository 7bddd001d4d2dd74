"""``branchpoint envs`` and ``branchpoint env play``: list environments, play a task.

``env play`` plays one task in the terminal: typed commands in the environment's text
syntax (``ls /docs``; for a free-text environment, any text, taken as it is) or JSON
assistant messages, the scripted expert (``--expert``), or a
file of actions (``--actions FILE``, one per line: a line starting with ``{`` is a JSON
assistant message, any other non-blank line the text syntax; play stops at the end of the
file or when the episode ends and never reads stdin). ``--option KEY=VALUE`` sets
environment options; ``--action-format text|tools`` picks the expert's format where the
environment has both. At the end it shows the check with
its sub-goals. ``--json`` prints exactly one JSON object instead and exits 0 whatever the
score::

    {"env", "task_id", "options", "transcript": [{"action", "observation", "done"}],
     "done", "score", "success", "subgoals": [{"name", "met", "weight"}]}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from branchpoint.cli.main import fail, given, usage_error
from branchpoint.cli.options import EnvOptions, ExpertFormat, parse_options
from branchpoint.store.errors import BranchpointError, UnknownEnvironment

__all__ = ["register"]

env_app = typer.Typer(name="env", help="Play and inspect task environments.",
                      no_args_is_help=True, add_completion=False)


def _content(msg: dict[str, Any]) -> str:
    content = msg.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def _file_actions(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise fail(f"{path}:{number}: not a JSON assistant message ({exc.msg})"
                               ) from None
                yield msg
            else:
                yield {"role": "assistant", "content": line}


def _typed_actions() -> Iterator[dict[str, Any]]:
    while True:
        try:
            line = input("> ")
        except EOFError:
            typer.echo("")
            return
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                typer.echo(f"not a JSON message: {exc.msg}")
            continue
        yield {"role": "assistant", "content": line}


def _check_modes(ctx: typer.Context, *, expert: bool, actions: Path | None) -> None:
    """Refuse options of one way of playing given with another (usage errors, exit 2)."""
    if expert and actions is not None:
        raise usage_error(ctx, "--expert and --actions cannot be combined")
    for name, flag in (("mistakes", "--mistakes"), ("seed", "--seed"),
                       ("action_format", "--action-format")):
        if given(ctx, name) and not expert:
            raise usage_error(ctx, f"{flag} applies only with --expert")


def _make(ctx: typer.Context, env_name: str, task: int, option: list[str] | None,
          difficulty: str | None) -> tuple[dict[str, Any], Any]:
    """The options and the environment ``env play`` was asked for (errors exit)."""
    from branchpoint.sampler.envs.registry import make_env

    try:
        options = parse_options(option)
    except ValueError as exc:
        raise usage_error(ctx, str(exc)) from None
    if difficulty is not None:
        options["difficulty"] = difficulty
    try:
        return options, make_env(env_name, task, **options)
    except (UnknownEnvironment, ValueError, TypeError) as exc:
        raise fail(str(exc)) from None


def _show_opening(env: Any, start: Any) -> None:
    from branchpoint.sampler.envs.base import usage

    for m in start.messages:
        typer.echo(f"[{m['role']}] {_content(m)}")
    if env.free_text or not start.tools:
        typer.echo("free text: each line you type is one message, as it is")
    else:
        typer.echo("commands: " + "; ".join(usage(t) for t in start.tools))


def register(app: typer.Typer) -> None:
    @app.command("envs")
    def envs() -> None:
        """List the registered environments, one line each."""
        from branchpoint.sampler.envs.registry import get_env, list_envs

        for name in list_envs():
            typer.echo(f"{name:<8} {get_env(name).description}")

    @env_app.command("play")
    def play(  # noqa: PLR0917 - a Typer command takes its options as parameters
        ctx: typer.Context,
        env_name: Annotated[str, typer.Argument(metavar="ENV", help="Environment name.")],
        task: Annotated[int, typer.Option("--task", min=0, help="Task id (any split).")],
        expert: Annotated[bool, typer.Option("--expert", help="Let the scripted expert play.")
                          ] = False,
        mistakes: Annotated[float, typer.Option(
            "--mistakes", min=0.0, max=1.0, help="With --expert: its mistake rate.")] = 0.0,
        seed: Annotated[int | None, typer.Option(
            "--seed", help="With --expert: its seed (default: the task id).")] = None,
        actions: Annotated[Path | None, typer.Option(
            "--actions", exists=True, dir_okay=False, help="Play a file of actions.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")
                           ] = False,
        difficulty: Annotated[str | None, typer.Option(
            "--difficulty", help="The environment's difficulty option (the same as "
            "--option difficulty=VALUE).")] = None,
        option: EnvOptions = None,
        action_format: Annotated[ExpertFormat | None, typer.Option(
            "--action-format", help="With --expert: answer in text commands or tool calls "
            "(default: the environment's).")] = None,
    ) -> None:
        """Play one task and show its check with the sub-goals."""
        _check_modes(ctx, expert=expert, actions=actions)
        options, env = _make(ctx, env_name, task, option, difficulty)
        try:
            start = env.reset()
            messages = list(start.messages)
            if not as_json:
                _show_opening(env, start)
            if expert:
                from branchpoint.sampler.expert import expert_for

                try:
                    policy = expert_for(env, mistakes=mistakes, seed=seed,
                                        action_format=action_format and action_format.value)
                except (ValueError, NotImplementedError) as exc:
                    raise fail(str(exc)) from None
                source: Iterator[dict[str, Any]] = iter(lambda: policy.act(messages), None)
            elif actions is not None:
                source = _file_actions(actions)
            else:
                source = _typed_actions()
            transcript: list[dict[str, Any]] = []
            done = False
            for action in source:
                result = env.step(action)
                messages += [action, *result.observation]
                done = result.done
                transcript.append({"action": action, "observation": result.observation,
                                   "done": result.done})
                if not as_json:
                    if expert:
                        typer.echo(f"> {_action_text(action)}")
                    for m in result.observation:
                        typer.echo(_content(m))
                if done:
                    break
            check: Any
            try:
                check = env.check()
            except NotImplementedError as exc:  # no checker: leaves are scored by a judge
                check = str(exc)
        except BranchpointError as exc:  # the environment's server failed, or a divergence
            raise fail(str(exc)) from None
        finally:
            env.close()
        _report(check, {"env": env_name, "task_id": task, "options": options,
                        "transcript": transcript, "done": done}, as_json=as_json)

    app.add_typer(env_app, name="env")


def _report(check: Any, played: dict[str, Any], *, as_json: bool) -> None:
    """What ``env play`` prints at the end: the check with its sub-goals, or (for an
    environment scored by a judge alone, whose ``check`` is the reason it has none) no
    score."""
    done = str(played["done"]).lower()
    if isinstance(check, str):
        if as_json:
            typer.echo(json.dumps({**played, "score": None, "success": None, "subgoals": []}))
        else:
            typer.echo(f"\nno score: {check}\ndone {done}")
        return
    subgoals = [{"name": g.name, "met": g.met, "weight": g.weight} for g in check.subgoals]
    if as_json:
        typer.echo(json.dumps({**played, "score": check.score, "success": check.success,
                               "subgoals": subgoals}))
        return
    typer.echo(f"\nscore {check.score:.3f}  success {str(check.success).lower()}  done {done}")
    for g in subgoals:
        typer.echo(f"  [{'x' if g['met'] else ' '}] {g['name']} (weight {g['weight']:g})")


def _action_text(action: dict[str, Any]) -> str:
    from branchpoint.sampler.envs.base import tool_call_to_text

    calls = action.get("tool_calls") or []
    if not calls:
        return _content(action)
    out = []
    for c in calls:
        fn = c.get("function", {})
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except json.JSONDecodeError:
            args = {"?": fn.get("arguments")}
        out.append(tool_call_to_text(fn.get("name", "?"), args if isinstance(args, dict) else {}))
    return "; ".join(out)
