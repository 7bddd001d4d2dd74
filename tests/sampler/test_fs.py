"""The fs environment: generated tasks, identical memory and disk backends, the jail."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branchpoint.sampler.envs.fs import DIFFICULTIES, FsEnv, make_task, show
from tests.sampler.actions import realize, specs

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def text(line: str) -> dict:
    return {"role": "assistant", "content": line}


def play(env: FsEnv, lines: list[str]) -> list[str]:
    env.reset()
    return [env.step(text(line)).observation[0]["content"] for line in lines]


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_tasks_are_deterministic_and_have_at_least_three_subgoals(difficulty):
    for task_id in range(50):
        a, b = make_task(task_id, difficulty), make_task(task_id, difficulty)
        assert a.files == b.files
        assert a.prompt() == b.prompt()
        with FsEnv(task_id, difficulty=difficulty) as env:
            env.reset()
            check = env.check()
            assert len(check.subgoals) >= (3 if difficulty == "intro" else 4)
            assert 0 < check.score < 1  # untouched: only "intact" holds


def test_intro_tasks_have_no_second_step_and_the_others_rename_or_edit():
    kinds = {d: {make_task(t, d).kind for t in range(60)} for d in DIFFICULTIES}
    assert kinds == {"intro": {"none"}, "easy": {"rename", "edit"},
                     "medium": {"rename", "edit"}, "hard": {"rename", "edit"}}
    task = make_task(0, "intro")
    assert "code" not in task.prompt() and "2. Write /" in task.prompt()
    with FsEnv(0, difficulty="intro") as env:
        env.reset()
        assert [g.name for g in env.check().subgoals] == [
            f"moved {task.names[0]}", "index", "intact"]
    renamed = make_task(next(t for t in range(60) if make_task(t, "easy").kind == "rename"),
                        "easy")
    # The new name is quoted, as every other value the request names.
    assert f'to "{renamed.new_name}", in the same folder' in renamed.prompt()


def test_an_unknown_difficulty_or_option_is_refused():
    with pytest.raises(ValueError, match="difficulty"):
        FsEnv(0, difficulty="insane")
    with pytest.raises(ValueError, match="unknown fs options"):
        FsEnv(0, colour="red")


def test_the_tools_answer_compactly():
    env = FsEnv(3)
    out = play(env, ["ls /", "cd notes", "ls", "cat new/draw.txt", "find code 650",
                     "mkdir /green", "mkdir /green", "mv new/draw.txt /green",
                     "cd ../..", "ls ../../..", "write /x/y.txt hi", "cat /green"])
    assert out[0] == "data/\nnotes/\nsrc/"
    assert out[1] == "/notes"
    assert out[2] == "list.txt\nnew/\nnote.txt\nreport.txt"
    assert out[3] == "tag gold\ncode 650\nowner cy\nsize 7"
    assert out[4] == "/notes/new/draw.txt"
    assert out[5:8] == ["created /green", "error: /green exists",
                        "moved /notes/new/draw.txt to /green/draw.txt"]
    assert out[8] == "/"
    assert out[9] == "data/\ngreen/\nnotes/\nsrc/"
    assert out[10] == "error: no such folder: /x"
    assert out[11] == "error: /green is a folder"


def test_write_turns_backslash_n_into_new_lines_in_both_syntaxes():
    env = FsEnv(1)
    play(env, [r"write /a.txt one\ntwo", 'write /b.txt "one\\ntwo"'])
    assert env.state()["/a.txt"] == env.state()["/b.txt"] == "one\ntwo"


@SETTINGS
@given(task=st.integers(0, 300), difficulty=st.sampled_from(DIFFICULTIES),
       actions=st.lists(specs, max_size=15))
def test_memory_and_disk_backends_behave_identically(task, difficulty, actions):
    with FsEnv(task, difficulty=difficulty) as mem, \
            FsEnv(task, difficulty=difficulty, backend="disk") as disk:
        start = mem.reset()
        assert disk.reset() == start
        messages = list(start.messages)
        for spec in actions:
            action = realize(spec, mem, start.tools, messages)
            a, b = mem.step(action), disk.step(action)
            assert a == b
            messages += [action, *a.observation]
        assert mem.state() == disk.state()
        assert mem.check() == disk.check()


HOSTILE = ["..", "../..", "/..", "/../..", "link", "link/secret.txt", "/link/../link",
           "deep/../../link", "~", "/etc/passwd", "../outside", "./.././link/x", "a\x00b",
           "C:\\x", "%2e%2e", "...", "link/", "/", "."]


@pytest.fixture
def jail(tmp_path):
    """A disk fs with a planted symbolic link to a folder outside its sandbox."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    env = FsEnv(5, backend="disk")
    env.reset()
    os.symlink(outside, env.sandbox.path / "link")
    os.symlink(outside / "secret.txt", env.sandbox.path / "docs" / "s.txt")
    yield env, outside
    env.close()


def _outside_listing(outside):
    return sorted((p.name, p.read_text()) for p in outside.iterdir())


@SETTINGS
@given(tool=st.sampled_from(["ls", "cd", "cat", "find", "mkdir", "mv", "write"]),
       a=st.sampled_from(HOSTILE), b=st.sampled_from([*HOSTILE, "docs/s.txt", "docs/x"]))
def test_hostile_paths_never_escape_the_sandbox(jail, tool, a, b):
    env, outside = jail
    before = _outside_listing(outside)
    args = {"ls": {"path": a}, "cd": {"path": a}, "cat": {"path": b}, "find": {"text": "SEC"},
            "mkdir": {"path": f"{a}/{b}"}, "mv": {"src": b, "dst": a},
            "write": {"path": b, "text": "pwned"}}[tool]
    for path in (a, b):
        env.step({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                  "function": {"name": "cd", "arguments": f'{{"path": "{path}"}}'
                               if '"' not in path and "\\" not in path else "{}"}}]})
    import json

    res = env.step({"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": tool,
                                                     "arguments": json.dumps(args)}}]})
    assert "SECRET" not in json.dumps(res.observation)
    assert _outside_listing(outside) == before
    # Every regular file on disk is one the environment knows, inside its root.
    real = set()
    for here, _, names in os.walk(env.sandbox.path):
        for n in names:
            full = os.path.join(here, n)
            if not os.path.islink(full):
                real.add("/" + os.path.relpath(full, env.sandbox.path))
    assert real == set(env.state())


def test_links_are_refused_by_name(jail):
    env, _ = jail
    for line, expected in [("cat /link/secret.txt", "error: /link is a link; links are not "
                            "followed"),
                           ("cat /docs/s.txt", "error: /docs/s.txt is a link; links are not "
                            "followed"),
                           ("write /link/new.txt x", "error: /link is a link; links are not "
                            "followed"),
                           ("find SECRET", "no match")]:
        assert env.step(text(line)).observation[0]["content"] == expected
    assert "link" not in env.step(text("ls /")).observation[0]["content"]


def test_dot_dot_and_absolute_paths_stay_at_the_jail_root():
    with FsEnv(2, backend="disk") as env:
        out = play(env, ["write ../../../escape.txt x", "write /../../escape2.txt y",
                         "ls /"])
        assert out[:2] == ["wrote /escape.txt", "wrote /escape2.txt"]
        assert (env.sandbox.path / "escape.txt").read_text() == "x"
        assert not (env.sandbox.path.parent / "escape.txt").exists()


def test_closing_a_disk_environment_removes_its_directory():
    env = FsEnv(1, backend="disk")
    env.reset()
    path = env.sandbox.path
    assert path.is_dir()
    env.close()
    assert not path.exists()


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_the_expert_solves_tasks_in_text_syntax_too(difficulty):
    for task_id in range(20):
        with FsEnv(task_id, difficulty=difficulty) as env:
            messages = list(env.reset().messages)
            expert = env.expert(text=True)
            while not env.done:
                action = expert.act(messages)
                assert "tool_calls" not in action
                messages += [action, *env.step(action).observation]
            assert env.check().score == 1.0


def test_the_expert_needs_at_least_four_steps_and_never_peeks():
    with FsEnv(7) as env:
        messages = list(env.reset().messages)
        expert = env.expert()
        first = expert.act(messages)
        # With only the opening messages it can make the folder the request names, and
        # then it must explore: no path of a file comes from anywhere but an observation.
        assert first["tool_calls"][0]["function"]["name"] == "mkdir"
        messages += [first, *env.step(first).observation]
        second = expert.act(messages)
        assert second["tool_calls"][0]["function"]["name"] == "find"
        while not env.done:
            action = expert.act(messages)
            messages += [action, *env.step(action).observation]
        assert env.steps >= 6


@pytest.mark.parametrize("backend", ["memory", "disk"])
def test_a_lone_surrogate_in_written_text_is_an_error_on_both_backends(backend):
    action = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "write", "arguments": '{"path": "/a.txt", "text": "\\ud800"}'}}]}
    with FsEnv(1, backend=backend) as env:
        env.reset()
        result = env.step(action)
        assert result.observation[0]["content"] == (
            "error: write: argument 'text' is not valid Unicode text (a lone surrogate)")
        assert "/a.txt" not in env.state()


def test_deep_paths_get_the_same_answer_on_both_backends():
    # 63 nested folders of 64-character names would pass PATH_MAX on disk but not in
    # memory; a depth limit makes both backends answer alike.
    name = "d" * 64
    lines = [f"mkdir /{'/'.join([name] * k)}" for k in range(1, 70)]
    lines += [f"cd /{'/'.join([name] * 33)}", f"write /{'/'.join([name] * 33)}.txt x", "ls"]
    with FsEnv(3, max_steps=120) as memory, FsEnv(3, backend="disk", max_steps=120) as disk:
        seen = play(memory, lines)
        assert seen == play(disk, lines)
    assert seen[31] == "ok" or not seen[31].startswith("error")
    assert seen[32] == "error: path too deep: at most 32 folders"
    assert seen[-3].startswith("error: path too deep")


def _play_editing(task_id: int, change: Callable[[str], str]) -> Any:
    """The expert's play, with the text of its edit of the target passed through ``change``."""
    env = FsEnv(task_id)
    try:
        messages = list(env.reset().messages)
        target = show(env.spec.target)
        expert = env.expert()
        while True:
            action = expert.act(messages)
            fn = (action.get("tool_calls") or [{}])[0].get("function", {})
            if fn.get("name") == "write":
                args = json.loads(fn["arguments"])
                if args["path"] == target:
                    args["text"] = change(args["text"])
                    fn["arguments"] = json.dumps(args)
            result = env.step(action)
            messages += [action, *result.observation]
            if result.done:
                return env.check()
    finally:
        env.close()


def test_an_edit_that_differs_only_by_a_trailing_newline_meets_the_subgoal():
    task_id = next(t for t in range(100) if make_task(t).kind == "edit")
    for change in (lambda t: t + "\n", lambda t: t + "\n\n", lambda t: t):
        check = _play_editing(task_id, change)
        assert {g.name: g.met for g in check.subgoals}["edited"] is True
        assert check.score == 1.0
    wrong = _play_editing(task_id, lambda t: t.replace("code", "kode"))
    assert {g.name: g.met for g in wrong.subgoals}["edited"] is False


def full_state(env: FsEnv) -> tuple:
    """Everything a snapshot must bring back: every folder and file with its text, the
    current folder, the step count, whether the episode is over, and the history."""
    dirs, files, todo = [], {}, [()]
    while todo:
        folder = todo.pop()
        dirs.append(folder)
        for name, is_dir in env.tree.listdir(folder):
            if is_dir:
                todo.append((*folder, name))
            else:
                files[(*folder, name)] = env.tree.read((*folder, name))
    return (sorted(dirs), files, env.cwd, env.steps, env.done, list(env.history))


# Changes are drawn on purpose beside the whole tool space: a write, a new folder and a
# move change the state in place, which is what a snapshot that shared it would miss.
_NAMES = st.sampled_from(["/docs", "/logs", "/new", "/docs/x.txt", "/tmp.txt", "/red", ".."])
changes = st.one_of(
    st.builds(lambda p, t: f"write {p}.txt {t}", _NAMES, st.text("ab \n", max_size=5)),
    st.builds(lambda p: f"mkdir {p}", _NAMES),
    st.builds(lambda a, b: f"mv {a} {b}", _NAMES, _NAMES),
    st.builds(lambda p: f"cd {p}", _NAMES),
)
steps_ = st.lists(st.one_of(specs, changes), max_size=8)


@pytest.mark.parametrize("backend", ["memory", "disk"])
@SETTINGS
@given(task=st.integers(0, 300), before=steps_, after=st.lists(st.one_of(specs, changes),
                                                               min_size=1, max_size=8))
def test_restoring_a_snapshot_after_any_actions_brings_back_exactly_the_state(
        backend, task, before, after):
    def run(env, actions, messages, tools):
        for a in actions:
            action = text(a) if isinstance(a, str) else realize(a, env, tools, messages)
            messages += [action, *env.step(action).observation]

    with FsEnv(task, backend=backend) as env:
        start = env.reset()
        messages = list(start.messages)
        run(env, before, messages, start.tools)
        taken = full_state(env)
        snap = env.snapshot()
        run(env, after, list(messages), start.tools)
        env.restore(snap)
        assert full_state(env) == taken
        run(env, after, list(messages), start.tools)
        env.restore(snap)  # the snapshot stays reusable
        assert full_state(env) == taken
