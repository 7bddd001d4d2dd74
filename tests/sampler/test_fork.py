"""Forking, every way, for every registered environment: a fork is an exact, independent
copy of the state at the fork point."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branchpoint.sampler.envs.registry import make_env
from branchpoint.sampler.fork import Sandbox, SqliteSandbox, copy_database, fork
from tests.sampler.actions import env_variants, realize, specs, state_of

VARIANTS = env_variants()
CASES = [(name, opts, how) for name, opts in VARIANTS
         for how in ("natural", "snapshot", "replay")]
IDS = [f"{n}-{o.get('backend', 'memory')}-{h}" for n, o, h in CASES]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def test_every_built_in_environment_is_covered():
    assert "fs" in {name for name, _ in VARIANTS}


def _run(env, tools, messages, actions):
    observations = []
    for spec in actions:
        action = realize(spec, env, tools, messages)
        res = env.step(action)
        messages += [action, *res.observation]
        observations.append((res.observation, res.done))
    return observations


def _fork(env, how):
    return fork(env, None if how == "natural" else how)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@SETTINGS
@given(task=st.integers(0, 500), prefix=st.lists(specs, max_size=8),
       continuation=st.lists(specs, min_size=1, max_size=6))
def test_a_fork_and_its_parent_answer_the_same_continuation_identically(
        case, task, prefix, continuation):
    name, options, how = case
    env = make_env(name, task, **options)
    start = env.reset()
    messages = list(start.messages)
    _run(env, start.tools, messages, prefix)
    child = _fork(env, how)
    try:
        assert state_of(child) == state_of(env)
        # The continuation is drawn against the parent's conversation and given to both.
        actions = []
        for spec in continuation:
            action = realize(spec, env, start.tools, messages)
            actions.append(action)
            a, b = env.step(action), child.step(action)
            assert a == b
            messages += [action, *a.observation]
        assert state_of(child) == state_of(env)
    finally:
        child.close()
        env.close()


@pytest.mark.parametrize("case", CASES, ids=IDS)
@SETTINGS
@given(task=st.integers(0, 500), prefix=st.lists(specs, max_size=6),
       sibling=st.lists(specs, min_size=1, max_size=6),
       probe=st.lists(specs, min_size=1, max_size=4))
def test_what_one_sibling_does_never_shows_in_another(case, task, prefix, sibling, probe):
    name, options, how = case
    env = make_env(name, task, **options)
    start = env.reset()
    messages = list(start.messages)
    _run(env, start.tools, messages, prefix)
    busy, idle = _fork(env, how), _fork(env, how)
    try:
        before = state_of(env)
        _run(busy, start.tools, list(messages), sibling)
        assert state_of(env) == before
        assert state_of(idle) == before
        # And the untouched ones still answer alike, which a shared resource would break.
        assert (_run(env, start.tools, list(messages), probe)
                == _run(idle, start.tools, list(messages), probe))
    finally:
        busy.close()
        idle.close()
        env.close()


def test_forking_a_disk_environment_gives_each_branch_its_own_directory():
    env = make_env("fs", 3, backend="disk")
    env.reset()
    child = fork(env)
    try:
        assert child.sandbox.path != env.sandbox.path
        child.step({"role": "assistant", "content": "write /only-in-child.txt hi"})
        assert (child.sandbox.path / "only-in-child.txt").exists()
        assert not (env.sandbox.path / "only-in-child.txt").exists()
    finally:
        child.close()
        env.close()
    assert not child.sandbox.path.exists()
    assert not env.sandbox.path.exists()


def test_sandboxes_are_removed_when_closed_or_collected():
    box = Sandbox()
    (box.path / "f").write_text("x")
    copy = Sandbox.copy_of(box)
    assert (copy.path / "f").read_text() == "x"
    path = copy.path
    box.close()
    box.close()
    assert box.closed
    assert not box.path.exists()
    del copy
    import gc

    gc.collect()
    assert not path.exists()


def test_sqlite_sandboxes_copy_the_database_and_nothing_leaks_between_them():
    with SqliteSandbox() as a:
        conn = a.connect()
        conn.execute("create table t (x)")
        conn.execute("insert into t values (1)")
        conn.commit()
        with SqliteSandbox.copy_of(conn) as b, SqliteSandbox.copy_of(a) as c:
            cb = b.connect()
            cb.execute("insert into t values (2)")
            cb.commit()
            cc = c.connect()
            assert cc.execute("select x from t").fetchall() == [(1,)]
            assert conn.execute("select x from t").fetchall() == [(1,)]
            assert cb.execute("select x from t order by x").fetchall() == [(1,), (2,)]
            b.replace_with(c)
            assert b.connect().execute("select count(*) from t").fetchone() == (1,)
            cb.close()
            cc.close()
        conn.close()
    assert not a.path.exists()


def test_copy_database_copies_a_file_while_it_is_open(tmp_path):
    import sqlite3

    src = tmp_path / "src.db"
    conn = sqlite3.connect(src)
    conn.execute("create table t (x)")
    conn.execute("insert into t values (7)")
    conn.commit()
    copy_database(src, tmp_path / "dst.db")
    conn.close()
    dst = sqlite3.connect(tmp_path / "dst.db")
    assert dst.execute("select x from t").fetchall() == [(7,)]
    dst.close()


def test_an_unknown_fork_mode_is_refused():
    env = make_env("fs", 0)
    env.reset()
    with pytest.raises(ValueError, match="fork mode"):
        fork(env, "teleport")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sandbox"):
        fork(env, "sandbox")
