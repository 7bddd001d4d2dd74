"""The recording proxy through real ports: an OpenAI client -> ``branchpoint serve
--upstream`` -> the scripted upstream; what reaches the agent, what is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from tests.sdk.conftest import ProxyServer, stored, wait_for
from tests.sdk.test_openai_wrapper import KW, OPENING, collect, tool_loop, tree

pytestmark = pytest.mark.slow  # each test starts uvicorn and an upstream


def agent(proxy: ProxyServer, tid: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base(tid), api_key="agent-key", max_retries=0,
                         default_headers=headers)


def test_a_proxied_tool_loop_reaches_the_agent_and_is_recorded_with_env_and_task(
        proxy: ProxyServer) -> None:
    with agent(proxy, "run-1", **{"X-Branchpoint-Env": "files",
                                  "X-Branchpoint-Task": "42"}) as client:
        assert tool_loop(client) == "done: text of file0.txt"
        assert tool_loop(client, seed=3, stream=True,
                         stream_options={"include_usage": True}) == "done: text of file3.txt"
    r = httpx.post(f"{proxy.url}/proxy/run-1/score", json={"value": 1.0})
    assert r.status_code == 200, r.text
    scored = r.json()["node_id"]
    r = httpx.post(f"{proxy.url}/proxy/run-1/close", json={"reason": "done"})
    assert r.status_code == 200, r.text
    nodes = tree(proxy.db)
    root = nodes["root"]
    assert root["task"] == {"env": "files", "task_id": 42} and root["origin"] == "proxy"
    assert root["messages"] == OPENING
    firsts = [n for n in nodes.values() if n.get("parent_id") == "root"]
    assert len(firsts) == 2 and all("run" in n for n in firsts)  # two attempts, a fork
    leaves = [n for n in nodes.values() if n.get("parent_id") not in (None, "root")]
    assert sorted(n["action"]["content"] for n in leaves) == [
        "done: text of file0.txt", "done: text of file3.txt"]
    assert nodes[scored]["action"]["content"] == "done: text of file3.txt"  # the last step
    streamed = next(n for n in leaves if "file3" in n["action"]["content"])
    assert streamed["produced_by"]["via"] == "proxy"
    assert streamed["produced_by"]["usage"]["completion_tokens"] == 4
    # the upstream got the upstream key, never the agent's
    auths = {r["headers"].get("authorization") for r in proxy.upstream.requests()}
    assert auths == {f"Bearer {ProxyServer.UPSTREAM_KEY}"}


def test_a_stream_reaches_the_agent_byte_for_byte(proxy: ProxyServer) -> None:
    body = {**KW, "messages": OPENING, "stream": True, "n": 2, "logprobs": True,
            "user": "deterministic"}
    direct = httpx.post(f"{proxy.upstream.url}/chat/completions", json=body,
                        headers={"authorization": f"Bearer {ProxyServer.UPSTREAM_KEY}"})
    proxied = httpx.post(f"{proxy.base('bytes')}/chat/completions", json=body)
    assert proxied.status_code == direct.status_code == 200
    assert proxied.headers["content-type"].startswith("text/event-stream")
    assert proxied.content == direct.content and direct.content.count(b"data:") > 5
    with agent(proxy, "bytes-2") as client:
        msg, chunks = collect(client.chat.completions.create(
            messages=OPENING, stream=True, **KW))
    assert msg["tool_calls"][0]["function"]["arguments"] == '{"path": "file0.txt"}'
    assert len(chunks) > 3

    def firsts() -> dict[str, int]:  # steps under each root, recorded after the answers
        out: dict[str, int] = {}
        for r in stored(proxy.db) if proxy.db.exists() else []:
            if r["type"] == "node_created" and r["payload"].get("parent_id") == "root":
                out[r["tree_id"]] = out.get(r["tree_id"], 0) + 1
        return out

    wait_for(lambda: firsts() == {"bytes": 2, "bytes-2": 1}, what="both calls recorded")


def test_upstream_errors_reach_the_agent_unchanged_and_nothing_is_recorded(
        proxy: ProxyServer) -> None:
    r = httpx.post(f"{proxy.base('err')}/embeddings", json={"input": "x"})
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    assert stored(proxy.db) == [] if proxy.db.exists() else True


def test_the_answer_reaches_the_agent_when_recording_fails(proxy: ProxyServer) -> None:
    bad = [{"role": "narrator", "content": "not a role the store takes"}, *OPENING]
    r = httpx.post(f"{proxy.base('broken')}/chat/completions",
                   json={**KW, "messages": bad})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["tool_calls"]
    err = proxy.stop()
    assert "recording a call of tree 'broken' failed" in err
    assert all(row["tree_id"] != "broken" for row in stored(proxy.db))


def test_with_a_server_token_the_agents_key_is_that_token_and_never_goes_upstream(
        tmp_path: Path) -> None:
    proxy = ProxyServer(tmp_path / "guarded.db", token="bp-token")
    try:
        with openai.OpenAI(base_url=proxy.base("g"), api_key="wrong", max_retries=0) as c, \
                pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(messages=OPENING, **KW)
        with openai.OpenAI(base_url=proxy.base("g"), api_key="bp-token", max_retries=0) as c:
            c.chat.completions.create(messages=OPENING, **KW)
        auths = [r["headers"].get("authorization") for r in proxy.upstream.requests()]
        assert auths == [f"Bearer {ProxyServer.UPSTREAM_KEY}"]
        bearer = {"authorization": "Bearer bp-token"}
        assert httpx.post(f"{proxy.url}/proxy/g/close", headers=bearer).is_success
        assert httpx.post(f"{proxy.url}/proxy/g/close").status_code == 401
    finally:
        proxy.stop()


def test_score_and_close_refuse_what_they_cannot_record(proxy: ProxyServer) -> None:
    assert httpx.post(f"{proxy.url}/proxy/nobody/score", json={"value": 1}).status_code == 404
    assert httpx.post(f"{proxy.url}/proxy/bad%20id/close").status_code == 400
    with agent(proxy, "t") as client:
        client.chat.completions.create(messages=OPENING, **KW)
    r = httpx.post(f"{proxy.url}/proxy/t/score", json={"value": 7})
    assert r.status_code == 400 and "[0, 1]" in r.text
    assert httpx.post(f"{proxy.url}/proxy/t/close").json()["reason"] == "done"


def test_implicit_forks_through_the_proxy_give_a_pair(proxy: ProxyServer) -> None:
    with agent(proxy, "pairs") as client:
        tool_loop(client, seed=0)
        assert httpx.post(f"{proxy.url}/proxy/pairs/score", json={"value": 1}).is_success
        tool_loop(client, seed=1)
        assert httpx.post(f"{proxy.url}/proxy/pairs/score", json={"value": 0}).is_success
    from branchpoint.cli.main import app

    out = CliRunner().invoke(app, ["export", "dpo", "--db", f"sqlite:///{proxy.db}"])
    assert out.exit_code == 0, out.output
    (pair,) = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert "file0" in json.dumps(pair["chosen"]) and "file1" in json.dumps(pair["rejected"])



def test_the_proxy_routes_are_part_of_the_served_app(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from branchpoint.cli.app import ServeConfig, build_app

    app = build_app(f"sqlite:///{tmp_path / 'in-process.db'}",
                    ServeConfig(upstream="http://127.0.0.1:9"))
    with TestClient(app) as client:
        assert client.post("/proxy/nobody/score", json={"value": 1}).status_code == 404
        assert client.post("/proxy/a%20b/close").status_code == 400
        r = client.post("/proxy/t/v1/chat/completions", json={**KW, "messages": OPENING})
        assert r.status_code == 502 and "did not answer" in r.json()["detail"]
