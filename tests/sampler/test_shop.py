"""The ``shop`` environment: tasks, tools, policy-aware scoring, forks and the expert."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from branchpoint.sampler.envs.base import Message, StepResult, tasks_in_split
from branchpoint.sampler.envs.shop import TOOLS, ShopEnv, canonical_hash
from branchpoint.sampler.envs.shop_data import ShopTask, make_task
from branchpoint.sampler.fork import fork
from branchpoint.sampler.replay import replay
from branchpoint.store.errors import ReplayDivergence


def call(name: str, arguments: Any, call_id: str = "c1") -> Message:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": raw}}]}


def say(text: str) -> Message:
    return {"role": "assistant", "content": text}


@pytest.fixture
def envs() -> Iterator[Callable[..., ShopEnv]]:
    """Builds environments and closes every one at the end of the test."""
    made: list[ShopEnv] = []

    def build(task_id: int, **options: Any) -> ShopEnv:
        env = ShopEnv(task_id, **options)
        made.append(env)
        return env

    yield build
    for env in made:
        env.close()


def play(env: ShopEnv, *, mistakes: float = 0.0, seed: int | str | None = None,
         text: bool = False) -> list[Message]:
    """Reset and let the expert play to the end; returns the conversation."""
    messages = list(env.reset().messages)
    expert = env.expert(mistakes=mistakes, seed=seed, text=text)
    done = False
    while not done:
        action = expert.act(messages)
        result = env.step(action)
        messages += [action, *result.observation]
        done = result.done
    return messages


def run(env: ShopEnv, actions: list[Message]) -> list[StepResult]:
    return [env.step(a) for a in actions]


def find_task(pred: Callable[[ShopTask], bool], difficulty: str = "medium") -> int:
    return next(t for t in range(1000) if pred(make_task(t, difficulty)))  # type: ignore[arg-type]


def first_request(kind: str, *, allowed: bool) -> Callable[[ShopTask], bool]:
    return lambda s: s.requests[0].kind == kind and s.requests[0].allowed == allowed


def contents(observation: list[Message]) -> list[str]:
    return [m["content"] for m in observation]


# --- the expert -----------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_the_expert_without_mistakes_solves_every_task(envs, difficulty):
    tasks = tasks_in_split("train", 80) + tasks_in_split("validation", 10) + \
        tasks_in_split("heldout", 10)
    failed = []
    for i, task_id in enumerate(tasks):
        env = ShopEnv(task_id, difficulty=difficulty)
        try:
            play(env, text=i % 2 == 1)
            check = env.check()
        finally:
            env.close()
        if not (check.score == 1.0 and check.success):
            failed.append((task_id, check))
    assert failed == []


def test_the_erring_expert_spreads_scores_across_the_open_interval():
    scores = []
    for task_id in range(150):
        for difficulty in ("medium", "hard"):
            env = ShopEnv(task_id, difficulty=difficulty)
            play(env, mistakes=0.3)
            scores.append(env.check().score)
            env.close()
    between = [s for s in scores if 0 < s < 1]
    assert len(between) > 0.3 * len(scores)
    assert 0 < sum(s == 1.0 for s in scores) < 0.7 * len(scores)
    # Partial credit lands in every fifth of the range, not on one value.
    assert {int(s * 5) for s in between} >= {0, 1, 2, 3, 4}


def test_the_expert_draws_its_mistakes_from_its_seed(envs):
    def trajectory(seed):
        return play(envs(3, difficulty="hard"), mistakes=0.5, seed=seed)

    assert trajectory(1) == trajectory(1)
    assert any(trajectory(s) != trajectory(1) for s in (2, 3, 4))


def test_the_expert_looks_the_customer_and_order_up_before_acting(envs):
    task_id = find_task(first_request("cancel", allowed=True))
    messages = play(envs(task_id))
    calls = [m["tool_calls"][0]["function"]["name"] for m in messages if m["role"] == "assistant"]
    assert calls[0] == "find_customer"
    assert calls.index("get_order") < calls.index("cancel_order")


def test_the_expert_believes_the_observations_not_the_hidden_state(envs):
    # A delivered order must not be cancelled; tamper with what get_order showed, and the
    # expert, which only reads the conversation, cancels it.
    task_id = find_task(lambda s: s.requests[0].kind == "cancel" and not s.requests[0].allowed
                        and s.requests[0].facts == ("delivered",))
    env = envs(task_id)
    expert = env.expert()
    messages = list(env.reset().messages)
    while True:
        action = expert.act(messages)
        result = env.step(action)
        observation = [dict(m) for m in result.observation]
        for m in observation:
            if m["content"].startswith("order ") and "\nstatus: delivered" in m["content"]:
                m["content"] = m["content"].split("\nstatus: ")[0] + "\nstatus: pending\n" + \
                    m["content"].split("\nstatus: ")[1].split("\n", 1)[1]
        messages += [action, *observation]
        if action["tool_calls"][0]["function"]["name"] in ("cancel_order", "respond"):
            break
    assert action["tool_calls"][0]["function"]["name"] == "cancel_order"


# --- the check ------------------------------------------------------------------------------


def test_a_task_has_at_least_three_weighted_subgoals(envs):
    for task_id in range(30):
        check = envs(task_id, difficulty="hard").check()
        assert len(check.subgoals) >= 3
        assert all(g.weight > 0 for g in check.subgoals)
        assert len({g.name for g in check.subgoals}) == len(check.subgoals)


def refusal_actions(env: ShopEnv, reply: str) -> list[Message]:
    spec = env.spec
    me = next(c for c in spec.customers if c.id == spec.customer_id)
    return [call("find_customer", {"query": me.email}),
            call("get_order", {"order_id": spec.requests[0].order_id}),
            call("respond", {"text": reply}), call("done", {})]


def test_a_refusal_scores_full_only_when_nothing_changed(envs):
    task_id = find_task(lambda s: s.requests[0].kind == "cancel" and not s.requests[0].allowed)
    right, wrong = envs(task_id), envs(task_id)
    order_id = right.spec.requests[0].order_id
    status = right.spec.requests[0].facts[0]
    reply = f"Sorry, order {order_id} is already {status}, so it cannot be cancelled."
    right.reset()
    run(right, refusal_actions(right, reply))
    wrong.reset()
    actions = refusal_actions(wrong, reply)
    run(wrong, [*actions[:2], call("cancel_order", {"order_id": order_id}), *actions[2:]])

    assert right.check().score == 1.0 and right.check().success
    check = wrong.check()
    assert not check.success
    met = {g.name: g.met for g in check.subgoals}
    assert met["database matches the expected one"] is False
    # The forbidden change costs the database sub-goal (2) and a penalty of 1 per row;
    # and the reply, sent after it, now claims a status the database no longer shows (2).
    assert met[f"tell the customer: {status}"] is False
    total = sum(g.weight for g in check.subgoals)
    assert check.score == pytest.approx((total - 2 - 1 - 2) / total, abs=1e-6)


def test_an_allowed_request_that_is_refused_loses_the_change_credit(envs):
    task_id = find_task(first_request("refund", allowed=True))
    env = envs(task_id)
    env.reset()
    run(env, refusal_actions(env, "Sorry, I cannot refund that."))
    check = env.check()
    order_id = env.spec.requests[0].order_id
    met = {g.name: g.met for g in check.subgoals}
    assert met[f"refund order {order_id}"] is False
    assert met["identify the customer"] and met[f"look up order {order_id}"]
    assert 0 < check.score < 1


def test_changing_an_order_the_customer_did_not_ask_about_is_penalised(envs):
    task_id = find_task(first_request("status", allowed=True))
    clean, meddling = envs(task_id), envs(task_id)
    spec = clean.spec
    other = next(o for o in spec.orders if o.id != spec.requests[0].order_id
                 and o.status not in ("cancelled", "refunded"))
    for env in (clean, meddling):
        env.reset()
    run(clean, [call("respond", {"text": "hello"})])
    run(meddling, [call("refund_order", {"order_id": other.id}),
                   call("respond", {"text": "hello"})])
    assert meddling.check().score < clean.check().score
    assert meddling.db_hash() != meddling.expected_hash()


def test_the_facts_asked_for_must_appear_in_a_reply(envs):
    task_id = find_task(first_request("refund", allowed=True))
    vague, precise = envs(task_id), envs(task_id)
    order_id = vague.spec.requests[0].order_id
    amount = vague.spec.requests[0].facts[0]
    for env, reply in ((vague, "Done, refunded."), (precise, f"Refunded ${amount}.")):
        env.reset()
        actions = refusal_actions(env, reply)
        run(env, [*actions[:2], call("refund_order", {"order_id": order_id}), *actions[2:]])
    label = f"tell the customer: {amount}"
    assert {g.name: g.met for g in vague.check().subgoals}[label] is False
    assert {g.name: g.met for g in precise.check().subgoals}[label] is True
    assert precise.check().score == 1.0 > vague.check().score


def test_the_expected_database_is_the_gold_calls_applied_to_the_start(envs):
    task_id = find_task(first_request("exchange", allowed=True))
    env = envs(task_id)
    env.reset()
    start = env.db_hash()
    assert start != env.expected_hash()
    (name, args), = env.spec.requests[0].gold
    env.step(call(name, args))
    assert env.db_hash() == env.expected_hash()


# --- tools and malformed actions ------------------------------------------------------------


def test_text_syntax_and_tool_calls_do_the_same(envs):
    task_id = find_task(first_request("address", allowed=True))
    by_text, by_call = envs(task_id), envs(task_id)
    order_id = by_text.spec.requests[0].order_id
    address = by_text.spec.requests[0].facts[0]
    by_text.reset()
    by_call.reset()
    texts = [f"get_order {order_id}", f"update_address {order_id} {address}",
             f"respond Your order {order_id} will ship to {address}."]
    calls = [call("get_order", {"order_id": order_id}),
             call("update_address", {"order_id": order_id, "address": address}),
             call("respond", {"text": f"Your order {order_id} will ship to {address}."})]
    for t, c in zip(texts, calls, strict=True):
        a, b = by_text.step(say(t)), by_call.step(c)
        assert a.observation[0]["role"] == "user" and b.observation[0]["role"] == "tool"
        assert contents(a.observation) == contents(b.observation)
    assert by_text.db_hash() == by_call.db_hash() == by_text.expected_hash()


@pytest.mark.parametrize(("action", "message"), [
    (call("teleport", {}), "error: unknown tool 'teleport'; tools: find_customer, "
     "list_orders, get_order, get_product, cancel_order, refund_order, exchange_item, "
     "update_address, respond, done"),
    (call("get_order", '{"order_id": 12'), "error: get_order: arguments are not valid JSON"),
    (call("get_order", {"order_id": "1042"}),
     "error: get_order: argument 'order_id' must be an integer, got string"),
    (call("exchange_item", {"order_id": 1}),
     "error: exchange_item: missing required argument 'product_id'"),
    (call("done", {"now": True}), "error: done: unknown argument 'now'"),
    (say("get_order one"), "error: get_order: argument 'order_id' must be an integer"),
    (say('get_order "1042'), "error: cannot parse arguments of get_order: unclosed quote"),
    (say("get_order 1042 1043"), "error: get_order takes at most 1 arguments"),
    (say("cancel_order"), "error: cancel_order: missing required argument 'order_id'"),
    (say("hello there"), "error: unknown tool 'hello'"),
    (say(""), "error: empty action"),
    ({"role": "assistant", "content": None}, "error: empty action"),
    (call("get_order", {"order_id": 1}), "error: no order 1"),
    (call("exchange_item", {"order_id": 1, "product_id": 100, "new_product_id": 101}),
     "error: no order 1"),
])
def test_a_malformed_action_costs_a_step_and_says_what_was_wrong(envs, action, message):
    env = envs(5)
    env.reset()
    before = env.db_hash()
    result = env.step(action)
    assert env.steps == 1 and not result.done
    assert len(result.observation) == 1
    assert result.observation[0]["content"].startswith(message)
    assert env.db_hash() == before


def test_domain_errors_are_observations_and_change_nothing(envs):
    task_id = find_task(first_request("exchange", allowed=False))
    env = envs(task_id)
    env.reset()
    (req,) = env.spec.requests
    order = next(o for o in env.spec.orders if o.id == req.order_id)
    item = order.items[0]
    new = next(p for p in range(100, 126) if make_task(task_id, "medium").stock[p] == 0
               and p != item and env.conn.execute(
                   "SELECT kind FROM products WHERE id = ?", (p,)).fetchone()[0]
               == env.conn.execute("SELECT kind FROM products WHERE id = ?",
                                   (item,)).fetchone()[0])
    before = env.db_hash()
    result = env.step(call("exchange_item", {"order_id": order.id, "product_id": item,
                                             "new_product_id": new}))
    assert contents(result.observation) == [f"error: product {new} is out of stock"]
    assert env.db_hash() == before


def test_the_episode_ends_with_done_or_at_the_step_limit(envs):
    env = envs(1, max_steps=3)
    env.reset()
    results = run(env, [say("get_order 1"), say("get_order 2"), say("get_order 3")])
    assert [r.done for r in results] == [False, False, True]
    assert "step limit reached" in results[-1].observation[-1]["content"]
    ended = envs(1)
    ended.reset()
    assert ended.step(say("done")).done
    after = ended.step(say("get_order 1"))
    assert after.done and contents(after.observation) == ["error: the episode is over"]


# --- determinism ----------------------------------------------------------------------------


def test_a_task_is_a_function_of_its_id_and_difficulty(envs):
    a, b, c = envs(17, difficulty="hard"), envs(17, difficulty=3), envs(18, difficulty="hard")
    ra, rb, rc = a.reset(), b.reset(), c.reset()
    assert ra.messages == rb.messages and a.db_hash() == b.db_hash()
    assert a.task == b.task == {"env": "shop", "task_id": 17, "options": {"difficulty": "hard"}}
    assert ra.messages[1] != rc.messages[1] and a.db_hash() != c.db_hash()
    assert ra.messages[0]["role"] == "system" and "policy" in ra.messages[0]["content"]
    assert ra.tools == TOOLS


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="difficulty"):
        ShopEnv(1, difficulty="extreme")
    with pytest.raises(ValueError, match="backend"):
        ShopEnv(1, backend="cloud")
    with pytest.raises(ValueError, match="unknown shop options: colour"):
        ShopEnv(1, colour="red")


def test_reset_returns_to_the_start_after_changes(envs):
    env = envs(find_task(first_request("cancel", allowed=True)), backend="disk")
    first = env.reset()
    start = env.db_hash()
    play(env, mistakes=0.0)
    assert env.db_hash() != start
    assert env.reset() == first and env.db_hash() == start and env.check().score < 1


# --- forks ----------------------------------------------------------------------------------


def expert_prefix(env: ShopEnv, n: int, mistakes: float = 0.3) -> list[Message]:
    """Reset and play ``n`` steps of the erring expert; returns the conversation."""
    messages = list(env.reset().messages)
    expert = env.expert(mistakes=mistakes)
    for _ in range(n):
        action = expert.act(messages)
        messages += [action, *env.step(action).observation]
    return messages


@pytest.mark.parametrize(("backend", "how"), [
    ("memory", "snapshot"), ("memory", "replay"), ("disk", "sandbox"), ("disk", "replay")])
def test_the_same_continuation_after_a_fork_gives_the_same_observations_and_database(
        envs, backend, how):
    for task_id in range(6):
        env = envs(task_id, difficulty="hard", backend=backend)
        messages = expert_prefix(env, 3)
        child = fork(env, how)
        try:
            expert = env.expert(mistakes=0.4, seed="continuation")
            theirs = list(messages)
            for _ in range(5):
                action = expert.act(messages)
                mine, other = env.step(action), child.step(action)
                assert mine == other
                messages += [action, *mine.observation]
                theirs += [action, *other.observation]
            assert env.db_hash() == child.db_hash()
            assert env.check() == child.check()
        finally:
            child.close()


@pytest.mark.parametrize("backend", ["memory", "disk"])
def test_what_one_sibling_does_never_shows_in_another(envs, backend):
    task_id = find_task(first_request("cancel", allowed=True))
    env = envs(task_id, backend=backend)
    env.reset()
    order_id = env.spec.requests[0].order_id
    start = env.db_hash()
    left, right = fork(env), fork(env)
    try:
        left.step(call("cancel_order", {"order_id": order_id}))
        left.step(call("respond", {"text": "cancelled"}))
        assert left.db_hash() != start
        assert right.db_hash() == start and env.db_hash() == start
        assert right.steps == env.steps == 0
        right_check = {g.name: g.met for g in right.check().subgoals}
        assert right_check[f"cancel order {order_id}"] is False
        if backend == "disk":
            assert len({left.db_path, right.db_path, env.db_path}) == 3
            # The parent's real file on disk still holds the start state.
            with sqlite3.connect(env.db_path) as conn:
                assert canonical_hash(conn) == start
            conn.close()
    finally:
        left.close()
        right.close()


def test_a_snapshot_restores_state_and_stays_reusable(envs):
    task_id = find_task(first_request("cancel", allowed=True))
    env = envs(task_id)
    expert_prefix(env, 2, mistakes=0.0)
    snap = env.snapshot()
    before = (env.db_hash(), env.check(), env.steps)
    order_id = env.spec.requests[0].order_id
    for _ in range(2):
        env.step(call("cancel_order", {"order_id": order_id}))
        env.step(call("respond", {"text": "cancelled"}))
        assert env.db_hash() != before[0]
        env.restore(snap)
        assert (env.db_hash(), env.check(), env.steps) == before


def test_a_disk_environment_works_on_a_real_file_and_removes_its_sandbox(envs):
    task_id = find_task(first_request("cancel", allowed=True))
    env = ShopEnv(task_id, backend="disk")
    env.reset()
    path = env.db_path
    assert path is not None and path.is_file()
    order_id = env.spec.requests[0].order_id
    env.step(call("cancel_order", {"order_id": order_id}))
    # Another connection sees the change: it is on disk, not in a cache.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT status FROM orders WHERE id = ?",
                        (order_id,)).fetchone() == ("cancelled",)
    conn.close()
    env.close()
    env.close()
    assert not Path(path).parent.exists()


def test_disk_and_memory_behave_the_same(envs):
    for task_id in range(5):
        on_disk = play(envs(task_id, difficulty="hard", backend="disk"), mistakes=0.4)
        in_memory = play(envs(task_id, difficulty="hard"), mistakes=0.4)
        assert on_disk == in_memory


# --- replay ---------------------------------------------------------------------------------


def test_replaying_a_recorded_trajectory_reproduces_its_observations(envs):
    env = envs(9, difficulty="hard")
    play(env, mistakes=0.4)
    fresh = envs(9, difficulty="hard")
    replay(fresh, env.history)
    assert fresh.db_hash() == env.db_hash() and fresh.check() == env.check()


def test_replay_stops_at_the_step_whose_observation_was_changed(envs):
    env = envs(9, difficulty="hard")
    play(env)
    steps = [(a, list(r.observation), r.done) for a, r in env.history]
    action, observation, done = steps[2]
    steps[2] = (action, [{**observation[0], "content": "order 1 was never here"}], done)
    with pytest.raises(ReplayDivergence) as err:
        replay(envs(9, difficulty="hard"), steps)
    assert err.value.step == 3


def test_a_request_about_someone_elses_order_must_be_refused(envs):
    task_id = find_task(lambda s: len(s.requests) == 2
                        and s.requests[1].facts == ("not on your account",), "hard")
    right, wrong = envs(task_id, difficulty="hard"), envs(task_id, difficulty="hard")
    play(right)
    assert right.check().success
    foreign = right.spec.requests[1]
    assert next(o for o in right.spec.orders if o.id == foreign.order_id).customer_id != \
        right.spec.customer_id
    # The same conversation, but the agent also does what the stranger's order request asked.
    change = {"cancel": "cancel_order", "refund": "refund_order"}.get(foreign.kind)
    args: dict[str, Any] = {"order_id": foreign.order_id}
    if change is None:
        change, args["address"] = "update_address", "1 Nowhere St, Ashford"
    wrong.reset()
    for action, _ in right.history[:-1]:
        wrong.step(action)
    wrong.step(call(change, args))
    wrong.step(say("done"))
    assert not wrong.check().success and wrong.check().score < right.check().score


@pytest.mark.parametrize("action", [
    say("get_order 99999999999999999999999"),
    call("get_product", {"product_id": -(2 ** 70)}),
    call("find_customer", '{"query": "\\ud800"}'),
    say('find_customer "ana\\udfff"'),
])
def test_numbers_sqlite_cannot_hold_and_lone_surrogates_cost_a_step(envs, action):
    env = envs(3, backend="disk")
    env.reset()
    result = env.step(action)
    assert result.done is False and env.steps == 1
    assert contents(result.observation)[0].startswith("error: ")


def test_the_expert_does_not_act_for_a_customer_someone_else_looked_up(envs):
    # A prefix written by a model may have found another customer; continuing it, the
    # expert finds the customer of the opening message before touching any order.
    env = envs(3)
    other = env.spec.customers[1]
    messages = list(env.reset().messages)
    wrong = call("find_customer", {"query": f"{other.first} {other.last}"})
    messages += [wrong, *env.step(wrong).observation]
    assert f"customer {other.id}:" in messages[-1]["content"]
    nxt = env.expert().act(messages)
    fn = nxt["tool_calls"][0]["function"]
    assert fn["name"] == "find_customer"
    assert other.last not in json.loads(fn["arguments"])["query"]
