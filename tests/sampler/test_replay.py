"""Replay: a fresh environment re-runs a recorded prefix and must reproduce it exactly."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branchpoint.sampler.envs.registry import make_env
from branchpoint.sampler.replay import RecordedStep, replay, replay_fork
from branchpoint.store.errors import ReplayDivergence
from tests.sampler.actions import env_variants, realize, specs, state_of

VARIANTS = env_variants()
IDS = [f"{n}-{o.get('backend', 'memory')}" for n, o in VARIANTS]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _record(env, actions):
    start = env.reset()
    messages = list(start.messages)
    steps = []
    for spec in actions:
        action = realize(spec, env, start.tools, messages)
        res = env.step(action)
        messages += [action, *res.observation]
        steps.append(RecordedStep(action, res.observation, res.done))
    return start, steps, messages


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
@SETTINGS
@given(task=st.integers(0, 500), actions=st.lists(specs, min_size=1, max_size=10))
def test_replaying_a_recorded_prefix_reproduces_it(name, options, task, actions):
    with make_env(name, task, **options) as recorded, make_env(name, task, **options) as fresh:
        start, steps, messages = _record(recorded, actions)
        assert replay(fresh, steps, opening=start.messages) == messages
        assert state_of(fresh) == state_of(recorded)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
@SETTINGS
@given(task=st.integers(0, 500), actions=st.lists(specs, min_size=1, max_size=10),
       data=st.data())
def test_changing_one_recorded_observation_stops_replay_at_exactly_that_step(
        name, options, task, actions, data):
    with make_env(name, task, **options) as recorded, make_env(name, task, **options) as fresh:
        _, steps, _ = _record(recorded, actions)
        k = data.draw(st.integers(0, len(steps) - 1))
        observation = copy.deepcopy(steps[k].observation)
        observation[0]["content"] = str(observation[0]["content"]) + " (edited)"
        steps[k] = RecordedStep(steps[k].action, observation, steps[k].done)
        with pytest.raises(ReplayDivergence) as err:
            replay(fresh, steps)
        assert err.value.step == k + 1
        assert f"replay diverged at step {k + 1}:" in str(err.value)
        assert "(edited)" in str(err.value)


def test_a_divergence_shows_both_sides():
    with make_env("fs", 4) as env:
        env.reset()
        res = env.step({"role": "assistant", "content": "ls /"})
        wrong = [{"role": "user", "content": "docs/\nsecret/"}]
        with pytest.raises(ReplayDivergence) as err:
            replay(env, [({"role": "assistant", "content": "ls /"}, wrong, False)])
    text = str(err.value)
    assert "step 1" in text
    assert '-  "content": "docs/\\nsecret/"' in text
    assert f'+  "content": {res.observation[0]["content"]!r}'.replace("'", '"') in text


def test_a_recorded_done_flag_is_checked_too():
    with make_env("fs", 4) as env:
        env.reset()
        res = env.step({"role": "assistant", "content": "submit"})
        with pytest.raises(ReplayDivergence, match="done flag"):
            replay(env, [{"action": {"role": "assistant", "content": "submit"},
                          "observation": res.observation, "done": False}])


def test_a_different_opening_is_step_zero():
    with make_env("fs", 4) as env, pytest.raises(ReplayDivergence) as err:
        replay(env, [], opening=[{"role": "user", "content": "another task"}])
    assert err.value.step == 0


def test_replay_fork_rebuilds_the_state_from_the_history():
    with make_env("fs", 9) as env:
        start = env.reset()
        messages = list(start.messages)
        expert = env.expert()
        for _ in range(4):
            action = expert.act(messages)
            messages += [action, *env.step(action).observation]
        with replay_fork(env) as child:
            assert state_of(child) == state_of(env)
