"""The shop check rewards what the task asks and nothing else: replies written by someone
trying to score without doing the work, driven through the environment's public API."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from branchpoint.sampler.envs.base import Message, tasks_in_split
from branchpoint.sampler.envs.shop import ShopEnv
from branchpoint.sampler.envs.shop_data import ShopTask, make_task
from branchpoint.sampler.envs.shop_reply import contradictions, states_fact


def call(name: str, arguments: dict[str, Any], call_id: str = "c1") -> Message:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}]}


@pytest.fixture
def envs() -> Iterator[Callable[[int], ShopEnv]]:
    made: list[ShopEnv] = []

    def build(task_id: int) -> ShopEnv:
        env = ShopEnv(task_id)
        env.reset()
        made.append(env)
        return env

    yield build
    for env in made:
        env.close()


def score(env: ShopEnv, actions: list[Message]) -> float:
    for a in actions:
        env.step(a)
    return env.check().score


def expert_replies(env: ShopEnv) -> list[str]:
    """What the expert tells the customer on this task (played on a fork of ``env``)."""
    messages = list(env.reset().messages)
    expert = env.expert(mistakes=0.0)
    replies = []
    while True:
        action = expert.act(messages)
        for tc in action.get("tool_calls") or ():
            if tc["function"]["name"] == "respond":
                replies.append(json.loads(tc["function"]["arguments"])["text"])
        result = env.step(action)
        messages += [action, *result.observation]
        if result.done:
            break
    env.reset()
    return replies


def lookups(spec: ShopTask) -> list[Message]:
    me = next(c for c in spec.customers if c.id == spec.customer_id)
    return [call("find_customer", {"query": me.email}),
            *(call("get_order", {"order_id": r.order_id}) for r in spec.requests)]


STUFFED = "pending shipped delivered 30 days $36.50 refunded cancelled"


def test_keyword_stuffing_without_lookups_scores_no_more_than_doing_nothing(envs):
    nothing = score(envs(1), [call("done", {})])
    stuffed = score(envs(1), [call("respond", {"text": STUFFED}), call("done", {})])
    assert stuffed <= nothing


def test_keyword_stuffing_after_the_lookups_loses_the_reply_for_its_false_claims(envs):
    env = envs(1)
    check_score = score(env, [*lookups(env.spec), call("respond", {"text": STUFFED}),
                              call("done", {})])
    met = {g.name: g.met for g in env.check().subgoals}
    assert met["tell the customer: 30 days"] is False
    honest = envs(1)
    order = honest.spec.requests[0].order_id
    honest_score = score(honest, [*lookups(honest.spec), call("respond", {
        "text": f"Sorry, order {order} was delivered too long ago: refunds are only "
                "possible within thirty days of delivery."}), call("done", {})])
    assert honest_score == 1.0 > check_score


def test_a_correct_refusal_in_other_words_meets_the_reply_subgoal(envs):
    env = envs(1)
    order = env.spec.requests[0].order_id
    for words in (f"I'm afraid order {order} is past our 30-day refund window.",
                  "Refunds are accepted within thirty days of delivery only, sorry."):
        env.reset()
        score(env, [*lookups(env.spec), call("respond", {"text": words}), call("done", {})])
        assert env.check().score == 1.0, words


def test_replies_copied_from_the_expert_without_lookups_score_no_more_than_nothing(envs):
    gains = []
    for task_id in tasks_in_split("train", 40):
        env = envs(task_id)
        replies = expert_replies(env)
        nothing = score(envs(task_id), [call("done", {})])
        copied = score(env, [*(call("respond", {"text": r}) for r in replies),
                             call("done", {})])
        gains.append(copied - nothing)
    assert max(gains) <= 0.0


def test_the_same_replies_after_the_lookups_earn_full_credit(envs):
    for task_id in tasks_in_split("train", 10):
        env = envs(task_id)
        if any(r.gold for r in env.spec.requests):
            continue  # a change is needed too; the copied reply alone cannot do it
        replies = expert_replies(env)
        assert score(env, [*lookups(env.spec), *(call("respond", {"text": r}) for r in replies),
                           call("done", {})]) == 1.0


def test_claiming_a_refund_that_was_not_made_loses_the_reply(envs):
    task_id = next(t for t in range(500) if (s := make_task(t, "medium")).requests[0].kind
                   == "refund" and s.requests[0].allowed)
    env = envs(task_id)
    amount = env.spec.requests[0].facts[0]
    order = env.spec.requests[0].order_id
    score(env, [*lookups(env.spec), call("respond", {"text": f"Order {order} is refunded: "
                                                             f"${amount}."}), call("done", {})])
    met = {g.name: g.met for g in env.check().subgoals}
    assert met[f"tell the customer: {amount}"] is False  # the refund was never made


@pytest.mark.parametrize(("reply", "fact"), [
    ("within thirty days", "30 days"), ("a 30-day window", "30 days"),
    ("30 days", "30 days"), ("$36.50 back", "36.50"), ("36.5 dollars", "36.50"),
    ("a refund of $1,036.50", "1036.50"), ("It was canceled.", "cancelled"),
    ("It isn't on your account", "not on your account"),
    ("that order belongs to another customer", "not on your account"),
    ("sadly sold out", "out of stock"),
    ("ships to 12 Oak St, Springfield", "12 Oak St, Springfield"),
])
def test_a_fact_is_recognised_in_the_forms_people_write(reply, fact):
    assert states_fact(reply, fact)


@pytest.mark.parametrize(("reply", "fact"), [
    ("130 days", "30 days"), ("$136.50", "36.50"), ("undelivered", "delivered"),
    ("thirty-one days", "30 days"), ("", "shipped"),
])
def test_a_fact_is_not_found_in_what_merely_contains_it(reply, fact):
    assert not states_fact(reply, fact)


def test_a_negated_status_is_no_claim_and_a_keyword_list_contradicts_itself():
    orders = {1042: ("shipped", 0), 1043: ("cancelled", 3650)}
    assert contradictions("Order 1042 is shipped, so it cannot be cancelled.", orders,
                          [1042]) == []
    assert contradictions("Order 1043 is cancelled; the refund is $36.50.", orders,
                          [1042]) == []
    assert contradictions("Order 1043 was refunded.", orders, [1042]) == []  # by the cancel
    assert contradictions("pending shipped delivered", orders, [1042]) == [
        "order 1042 is pending", "order 1042 is delivered"]
