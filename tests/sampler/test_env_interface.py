"""The environment interface a user's own environment stands on: how its trees name it,
what replay needs, and which methods are optional."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.envs.base import (
    FORK_MODES,
    Environment,
    Outcome,
    Reset,
    StepResult,
    ToolEnvironment,
    score_of,
)
from branchpoint.sampler.envs.fs import FsEnv
from branchpoint.sampler.envs.registry import get_env, make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.replay import replay_fork
from tests.sampler.userenv import ENTRY_POINT, IMPORT_PATH, installed


@pytest.fixture(scope="module")
def userpkg(tmp_path_factory):
    with installed(tmp_path_factory.mktemp("site")) as root:
        yield root


def _play(env: Environment, moves: int) -> list[dict[str, Any]]:
    messages = list(env.reset().messages)
    expert = env.expert(mistakes=0.5, seed=1)
    for _ in range(moves):
        action = expert.act(messages)
        messages += [action, *env.step(action).observation]
    return messages


@pytest.mark.parametrize("name", [IMPORT_PATH, ENTRY_POINT])
def test_the_root_names_the_environment_by_the_name_it_was_made_by(userpkg, name):
    env = make_env(name, 3)
    assert env.name == "game"
    assert env.task["env"] == name
    assert get_env(env.task["env"]) is type(env)


def test_a_class_built_directly_names_itself_by_a_name_the_registry_resolves(userpkg):
    cls = get_env(IMPORT_PATH)
    assert cls(1).env_name == IMPORT_PATH  # "game" is registered for nothing
    assert FsEnv(1).env_name == "fs"  # the built-in's name is its entry point's


@pytest.mark.parametrize("how", [None, "replay"])
def test_forks_and_replays_keep_the_name(userpkg, how):
    env = make_env(ENTRY_POINT, 2)
    _play(env, 1)
    with fork(env, how) as child:
        assert child.task["env"] == ENTRY_POINT
        with replay_fork(child) as grandchild:
            assert grandchild.task["env"] == ENTRY_POINT


def test_an_environment_without_snapshot_forks_by_replay_into_the_same_state(userpkg):
    env = make_env(IMPORT_PATH, 5)
    assert env.fork_mode == "replay"
    assert not env.can_snapshot()
    _play(env, 3)
    child = fork(env)
    assert (child.total, child.over, child.history) == (env.total, env.over, env.history)
    action = {"role": "assistant", "content": "add 7"}
    assert child.step(action) == env.step(action)
    with pytest.raises(ValueError, match="fork them by replay"):
        fork(env, "snapshot")


def test_the_base_class_keeps_the_history_whatever_the_subclass_does(userpkg):
    env = make_env(IMPORT_PATH, 5)
    messages = _play(env, 2)
    assert [a for a, _ in env.history] == [m for m in messages if m["role"] == "assistant"]
    assert all(isinstance(r, StepResult) for _, r in env.history)
    env.reset()
    assert env.history == []


class Twice(FsEnv):
    """A subclass that wraps step and calls the parent's: still one step per call."""

    def step(self, action):
        return super().step(action)


def test_a_subclass_calling_super_step_records_one_step_per_call():
    env = Twice(2)
    env.reset()
    env.step({"role": "assistant", "content": "ls"})
    assert len(env.history) == 1
    with replay_fork(env) as child:
        assert child.state() == env.state() and len(child.history) == 1


def test_a_snapshot_carries_the_history_it_was_taken_with():
    env = FsEnv(4)
    env.reset()
    env.step({"role": "assistant", "content": "ls"})
    snap = env.snapshot()
    env.step({"role": "assistant", "content": "mkdir x"})
    env.restore(snap)
    assert [a["content"] for a, _ in env.history] == ["ls"]
    with replay_fork(env) as child:
        assert child.state() == env.state()


def test_restore_refuses_what_snapshot_did_not_return():
    env = FsEnv(4)
    env.reset()
    with pytest.raises(TypeError, match="what snapshot"):
        env.restore(("not", "a", "snapshot"))


def test_a_fork_mode_outside_the_declared_ones_is_refused_when_the_class_is_made():
    assert FORK_MODES == ("snapshot", "sandbox", "replay", "stateless")
    with pytest.raises(TypeError, match="fork_mode must be one of"):
        class Bad(ToolEnvironment):
            name = "bad"
            description = "bad"
            fork_mode = "copy"  # type: ignore[assignment]


def test_only_reset_step_and_check_are_required():
    class Minimal(Environment):
        name = "minimal"
        description = "nothing"

        def reset(self):
            return Reset([{"role": "user", "content": "hi"}], [])

        def step(self, action):
            return StepResult([{"role": "user", "content": "ok"}], True)

        def check(self):
            return score_of([])

    env = Minimal(0)
    env.reset()
    env.step({"role": "assistant", "content": "x"})
    with pytest.raises(NotImplementedError, match="fork them by replay"):
        env.snapshot()
    assert len(env.history) == 1
    assert Outcome("x").content == "x"


@pytest.mark.parametrize("name", [IMPORT_PATH, ENTRY_POINT])
def test_the_demo_on_a_user_environment_runs_twice_and_skips_stored_trees(userpkg, tmp_path,
                                                                         name):
    args = ["demo", "--policy", "expert", "--env", name, "--tasks", "3",
            "--branch-points", "1", "--branches", "2", "--out", str(tmp_path), "--quiet"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "recorded 3 trees" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "recorded 0 trees" in second.output and "3 already in the store" in second.output
    stats = CliRunner().invoke(app, ["stats", "--json", "--db",
                                     f"sqlite:///{tmp_path}/branchpoint.db"])
    assert json.loads(stats.stdout)["by_env"].keys() == {name}
