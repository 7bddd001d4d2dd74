"""The optional LLM judge, against a scripted endpoint (a real local HTTP server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.judge import Judge, parse_verdict
from branchpoint.store.events import ScoreAssigned
from tests.sampler.scripted_endpoint import ScriptedEndpoint
from tests.sampler.test_branch import read

runner = CliRunner()
CONVERSATION = [{"role": "user", "content": "Move a.txt to b/."},
                {"role": "assistant", "content": "mv a.txt b/"},
                {"role": "user", "content": "moved"}]


def verdicts(*texts: str) -> Any:
    """Replies in order, then the last one again."""
    seen = {"n": 0}

    def reply(body: dict[str, Any]) -> Any:
        i = min(seen["n"], len(texts) - 1)
        seen["n"] += 1
        return [{"content": texts[i]}]

    return reply


def test_a_verdict_is_the_first_json_object_with_a_score_in_range() -> None:
    assert parse_verdict('Sure. {"score": 0.75, "rationale": "most of it"} done') is not None
    assert parse_verdict('{"score": 0.75, "rationale": "x"}').score == 0.75  # type: ignore[union-attr]
    for bad in (None, "", "no json", '{"score": 1.5}', '{"score": "high"}', '{"score": true}'):
        assert parse_verdict(bad) is None


async def test_an_unparsable_reply_is_asked_again_once_then_counted_and_skipped() -> None:
    with ScriptedEndpoint(verdicts("hmm", '{"score": 0.5, "rationale": "half"}')) as ep:
        judge = Judge(ep.base_url, "tiny")
        first = await judge.verdict(CONVERSATION)
        await judge.close()
    assert first is not None and first.score == 0.5 and len(ep.requests) == 2
    with ScriptedEndpoint(verdicts("hmm", "still no")) as ep:
        judge = Judge(ep.base_url, "tiny")
        assert await judge.verdict(CONVERSATION) is None
        await judge.close()
    assert len(ep.requests) == 2 and judge.unparsed == 1


async def test_identical_inputs_are_not_sent_twice() -> None:
    with ScriptedEndpoint(verdicts('{"score": 1, "rationale": "ok"}')) as ep:
        judge = Judge(ep.base_url, "tiny", "rubric A")
        await judge.verdict(CONVERSATION)
        await judge.verdict(list(CONVERSATION))
        other = Judge(ep.base_url, "tiny", "rubric B", policy=judge.policy)
        await other.verdict(CONVERSATION)  # another rubric is another input
        await judge.close()
    assert len(ep.requests) == 2
    assert ep.requests[0]["messages"][0]["content"] == "rubric A"
    assert ep.requests[0]["temperature"] == 0.0


def test_sample_with_a_judge_records_judge_scores_beside_the_checker(tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Grade it. Answer JSON.")
    with ScriptedEndpoint(lambda body: [{"content": "submit"}] * body["n"]) as policy_ep, \
            ScriptedEndpoint(verdicts('{"score": 0.25, "rationale": "barely"}'),
                             model="judge") as judge_ep:
        result = runner.invoke(app, [
            "sample", "--env", "fs", "--tasks", "1", "--base-url", policy_ep.base_url,
            "--model", "tiny", "--branching", "2", "--depth", "1", "--db", f"sqlite:///{db}",
            "--run", "j", "--quiet", "--judge-base-url", judge_ep.base_url, "--judge-model",
            "judge", "--rubric", str(rubric)])
    assert result.exit_code == 0, result.output
    from branchpoint.sampler.envs.base import tasks_in_split

    events = read(db, f"j/fs/{tasks_in_split('train', 1)[0]}")
    scores = [e.payload for e in events if isinstance(e.payload, ScoreAssigned)]
    assert sorted(s.source for s in scores) == ["checker", "judge"]
    judged = next(s for s in scores if s.source == "judge")
    assert judged.value == 0.25 and judged.detail["rationale"] == "barely"
    assert judge_ep.requests[0]["messages"][0]["content"] == "Grade it. Answer JSON."
