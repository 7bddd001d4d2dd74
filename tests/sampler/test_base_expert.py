"""Every registered environment's scripted expert: perfect without mistakes, and with
mistakes a spread of partial scores (what makes step-level pairs possible)."""

from __future__ import annotations

import pytest

from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.sampler.envs.registry import list_envs, make_env


def _standalone(name: str) -> bool:
    """Whether the environment has tasks of its own (an adapter such as ``trl`` is made
    only from options naming the user's code)."""
    try:
        make_env(name, 0).close()
    except ValueError:
        return False
    return True


ENVS = [name for name in list_envs() if _standalone(name)]
TASKS = tasks_in_split("train", 150) + tasks_in_split("heldout", 50)


def episode(name: str, task_id: int, mistakes: float, seed=None) -> tuple[float, list]:
    with make_env(name, task_id) as env:
        messages = list(env.reset().messages)
        expert = env.expert(mistakes=mistakes, seed=seed)
        done = False
        while not done:
            action = expert.act(messages)
            res = env.step(action)
            messages += [action, *res.observation]
            done = res.done
        return env.check().score, messages


@pytest.mark.parametrize("name", ENVS)
def test_the_expert_without_mistakes_solves_every_task(name):
    scores = {t: episode(name, t, 0.0)[0] for t in TASKS}
    assert {t: s for t, s in scores.items() if s != 1.0} == {}


@pytest.mark.parametrize("name", ENVS)
def test_with_mistakes_scores_spread_across_the_open_interval(name):
    scores = [episode(name, t, 0.3)[0] for t in TASKS[:150]]
    inside = [s for s in scores if 0.0 < s < 1.0]
    assert len(inside) >= len(scores) // 4
    assert len({round(s, 2) for s in inside}) >= 3


@pytest.mark.parametrize("name", ENVS)
def test_the_expert_is_a_pure_function_of_the_conversation_and_seed(name):
    _, a = episode(name, 11, 0.5)
    _, b = episode(name, 11, 0.5)
    assert a == b
    draws = {str(episode(name, 11, 0.5, seed=s)[1]) for s in range(6)}
    assert len(draws) > 1


@pytest.mark.parametrize("name", ENVS)
def test_an_expert_continues_a_prefix_it_did_not_write(name):
    with make_env(name, 12) as env:
        messages = list(env.reset().messages)
        for line in ["help", "nonsense here"]:
            action = {"role": "assistant", "content": line}
            messages += [action, *env.step(action).observation]
        expert = env.expert()
        while not env.done:
            action = expert.act(messages)
            messages += [action, *env.step(action).observation]
        assert env.check().score == 1.0


def test_a_mistake_rate_outside_zero_to_one_is_refused():
    with make_env("fs", 0) as env, pytest.raises(ValueError):
        env.expert(mistakes=1.5)
