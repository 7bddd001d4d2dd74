"""The first stage of SFT reads short windows of the expert's episodes."""

from __future__ import annotations

import pytest

from branchpoint.train.episodes import demonstrations, step_windows

OPTIONS = {"difficulty": "easy", "max_steps": 12}


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_each_action_gets_the_request_and_the_turns_just_before_it(turns: int) -> None:
    episodes = list(demonstrations("fs", 3, options=OPTIONS))
    rows = list(step_windows(episodes, turns=turns))
    assert len(rows) == sum(e.steps for e in episodes)
    for ep in episodes:
        request = [m for m in ep.messages[:2] if m["role"] == "user"]
        assert ep.messages[0]["role"] == "system" and len(request) == 1
        body = ep.messages[2:]
        mine = rows[:ep.steps]
        rows = rows[ep.steps:]
        for k, row in enumerate(mine):
            messages = row["messages"]
            assert messages[0] == request[0]  # the request, never the system message
            assert messages[-1] == body[2 * k]  # the k-th action closes the window
            # up to `turns` actions with their observations, just before it
            assert messages[1:-1] == body[max(0, 2 * (k - turns)):2 * k]
            assert [m["role"] for m in messages[1:]] == \
                ["assistant", "user"] * ((len(messages) - 2) // 2) + ["assistant"]


def test_no_turns_is_the_request_and_the_action_and_negative_turns_are_refused() -> None:
    episodes = list(demonstrations("fs", 1, options=OPTIONS))
    rows = list(step_windows(episodes, turns=0))
    assert all(len(r["messages"]) == 2 for r in rows)
    with pytest.raises(ValueError, match="turns must be 0 or more"):
        list(step_windows(episodes, turns=-1))
