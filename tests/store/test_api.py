"""The HTTP API in process, through Litestar's test client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient
from typer.testing import CliRunner

from branchpoint.cli.app import CSP, ServeConfig, create_app
from branchpoint.cli.main import app as cli
from branchpoint.store.errors import StoreUnavailable
from branchpoint.store.events import Event, encode_event
from branchpoint.store.exports import ExportOptions, TreeView
from branchpoint.store.log import EventLog, MemoryEventLog, open_log
from tests.serving import run_async
from tests.store.api_data import big, ordinary
from tests.store.builders import TreeBuilder, action, sequenced, two_step_tree
from tests.store.test_core_exports import CASES, GOLDEN, scenario

TOKEN = "tok-123"


def as_array(events: list[Event]) -> bytes:
    return b"[" + b",".join(encode_event(e) for e in events) + b"]"


def as_lines(events: list[Event]) -> bytes:
    return b"".join(encode_event(e) + b"\n" for e in events)


def post(c: TestClient[Any], body: bytes, media: str = "application/json") -> Any:
    return c.post("/v1/events", content=body, headers={"content-type": media})


@pytest.fixture
def log() -> MemoryEventLog:
    return MemoryEventLog()


@pytest.fixture
def client(log: MemoryEventLog) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(log)) as c:
        yield c


def stored(log: EventLog) -> list[Event]:
    return list(run_async(log.read_after, 0))


# --- ingest ---------------------------------------------------------------------------------


def test_a_json_array_is_stored_and_a_resend_stores_nothing_twice(client: Any, log: Any) -> None:
    events = two_step_tree("run/fs/1").events
    r = post(client, as_array(events))
    assert r.status_code == 200
    assert r.json() == {"stored": len(events), "duplicates": 0, "last_seq": len(events)}
    again = post(client, as_array(events))
    assert again.json() == {"stored": 0, "duplicates": len(events), "last_seq": len(events)}
    assert len(stored(log)) == len(events)


@pytest.mark.parametrize("media", ["application/jsonl", "application/x-ndjson",
                                   "application/jsonl; charset=utf-8"])
def test_json_lines_are_accepted_under_each_media_type(client: Any, log: Any, media: str) -> None:
    events = two_step_tree("t").events
    r = post(client, as_lines(events) + b"\n\n", media)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == len(events)


def test_a_bad_batch_lists_every_bad_event_and_stores_nothing(client: Any, log: Any) -> None:
    events = two_step_tree("t").events
    raw = [msgspec.json.decode(encode_event(e)) for e in events]
    raw[1]["payload"]["action"] = 5  # node a: an action that is no message
    raw[5]["payload"]["value"] = "high"  # the score of b: not a number
    del raw[12]["payload"]["reason"]  # the close: no reason
    body = b"\n".join(msgspec.json.encode(r) for r in raw)
    r = post(client, body, "application/jsonl")
    assert r.status_code == 400
    errors = r.json()["errors"]
    direct = [e for e in errors if not e.get("dependent")]
    assert [(e["index"], e["line"], e["event_id"], e["field"]) for e in direct] == [
        (1, 2, "t-e2", "payload.action"), (5, 6, "t-e6", "payload.value"),
        (12, 13, "t-e13", "payload.reason")]
    assert all(e["reason"] for e in errors)
    # a's execution, its children a1 and a2, and theirs, hang on the refused node a:
    # listed as refused only because of it
    dependent = {e["index"] for e in errors if e.get("dependent")}
    assert dependent == {2, 6, 7, 8, 9, 10, 11}
    assert "index 1" in next(e["reason"] for e in errors if e["index"] == 2)
    assert stored(log) == []


def test_a_batch_breaking_a_store_rule_is_refused_whole_with_every_event_listed(
        client: Any, log: Any) -> None:
    b = TreeBuilder("t").root().step("a", "r").step("x", "missing-parent").step("y", "x")
    r = post(client, as_array(b.events))
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert [(e["index"], e["event_id"], e.get("depends_on")) for e in errors] == [
        (3, "t-e4", None), (4, "t-e5", "t-e4"), (5, "t-e6", "t-e4"), (6, "t-e7", "t-e6")]
    assert "missing-parent" in errors[0]["reason"] and not errors[0].get("dependent")
    assert all(e["dependent"] for e in errors[1:])
    assert stored(log) == []
    # in JSON Lines the report also names the line, blank lines counted
    r = post(client, b"\n" + as_lines(b.events).replace(b"\n", b"\n\n", 1),
             "application/jsonl")
    assert r.status_code == 400
    assert [(e["index"], e["line"]) for e in r.json()["errors"]] == [
        (3, 6), (4, 7), (5, 8), (6, 9)]


def test_a_conflicting_resend_is_409_and_stores_nothing(client: Any, log: Any) -> None:
    events = two_step_tree("t").events
    assert post(client, as_array(events)).status_code == 200
    changed = msgspec.structs.replace(
        events[-2], payload=msgspec.structs.replace(events[-2].payload, value=0.5))
    fresh = TreeBuilder("u").root().events
    r = post(client, as_array([*fresh, changed]))
    assert r.status_code == 409
    (error,) = r.json()["errors"]
    assert error["event_id"] == changed.event_id and error["conflict"] is True
    assert error["index"] == 1
    assert len(stored(log)) == len(events)


def test_a_body_over_the_limit_is_413_and_names_the_limit(log: Any) -> None:
    with TestClient(create_app(log, ServeConfig(max_body=2000))) as c:
        r = post(c, as_array(big(nodes=40)))
        assert r.status_code == 413
        assert r.json()["limit"] == 2000
        assert "2000 bytes" in r.json()["detail"]
        assert post(c, as_array(TreeBuilder("t").root().events)).status_code == 200


def test_a_body_that_is_no_batch_is_400_and_another_media_type_415(client: Any) -> None:
    assert post(client, b'{"not": "an array"}').status_code == 400
    assert post(client, b"[1, 2").status_code == 400
    r = post(client, b"a,b", "text/csv")
    assert r.status_code == 415
    assert "application/jsonl" in r.json()["detail"]


class DownLog(MemoryEventLog):
    """A store whose database has gone away: every call fails as the SQL adapter's do."""

    async def append(self, *a: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")

    async def list_trees(self, *a: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")

    async def read_heads(self, *a: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")


def test_a_store_outage_is_503_never_400() -> None:
    with TestClient(create_app(DownLog())) as c:
        r = post(c, as_array(two_step_tree("t").events))
        assert r.status_code == 503
        assert "unavailable" in r.json()["detail"]
        assert c.get("/v1/trees").status_code == 503
        assert c.get("/v1/trees/t").status_code == 503
        assert c.get("/v1/export/dpo").status_code == 503
        assert c.get("/health").status_code == 200


# --- reading --------------------------------------------------------------------------------


@pytest.fixture
def filled(client: Any) -> Any:
    assert post(client, as_array(ordinary(3))).status_code == 200
    b = TreeBuilder("flat/tie", env="shop", task_id=9).root()
    b.step("p", "r", action("one")).score("p", 0.5)
    b.step("q", "r", action("two")).score("q", 0.5)
    assert post(client, as_array(b.events)).status_code == 200
    return client


def test_trees_are_listed_with_filters_and_counts(filled: Any) -> None:
    body = filled.get("/v1/trees").json()
    assert body["total"] == 4 and body["next_cursor"] is None
    first = body["trees"][0]
    assert first == {**first, "tree_id": "run/fs/0", "env": "fs", "task_id": "0",
                     "nodes": 5, "leaves": 3, "value": 0.25, "pairs": 2,
                     "branching_points": 2, "closed": "done", "origin": "sampler"}
    assert [t["tree_id"] for t in filled.get("/v1/trees?env=shop").json()["trees"]] == [
        "run/shop/1", "flat/tie"]
    assert [t["tree_id"] for t in filled.get("/v1/trees?has_pairs=false").json()["trees"]] == [
        "flat/tie"]
    assert filled.get("/v1/trees?has_pairs=true").json()["total"] == 3
    assert filled.get("/v1/trees?q=TIE").json()["total"] == 1
    assert filled.get("/v1/trees?task=9").json()["total"] == 1
    assert filled.get("/v1/trees?min_value=0.3").json()["total"] == 1  # flat/tie: 0.5
    # the page's value options change the pairs: at margin 0.6 only a's 1.0-vs-0.0 counts
    counted = filled.get("/v1/trees?margin=0.6&env=fs").json()["trees"][0]
    assert counted["pairs"] == 1 and counted["branching_points"] == 2


def test_paging_with_the_cursor_visits_every_tree_once(filled: Any) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        url = "/v1/trees?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = filled.get(url).json()
        assert page["total"] == 4
        seen += [t["tree_id"] for t in page["trees"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["run/fs/0", "run/shop/1", "run/fs/2", "flat/tie"]
    assert filled.get("/v1/trees?cursor=nope").status_code == 400


def test_a_tree_with_slashes_in_its_id_shows_values_evidence_and_pairs(filled: Any) -> None:
    body = filled.get("/v1/trees/run/fs/0").json()
    assert body["tree_id"] == "run/fs/0" and body["root"] == "r"
    nodes = {n["node_id"]: n for n in body["nodes"]}
    assert nodes["r"]["value"] == 0.25 and nodes["r"]["leaves"] == 3
    # the evidence is the core's estimate: leaves under the value and its standard error
    core = TreeView("run/fs/0", sequenced(ordinary(1)), ExportOptions()).estimates["r"]
    assert (nodes["r"]["leaves"], nodes["r"]["stderr"]) == (core.leaves, core.se)
    assert nodes["a"]["role"] == "chosen" and nodes["b"]["role"] == "rejected"
    assert nodes["a"]["branch"]["pair"] is True and nodes["a"]["branch"]["margin"] == 1.0
    assert nodes["a1"]["scores"] == {"checker": 1.0}
    assert [p["parent"] for p in body["pairs"]] == ["r", "a"]
    assert body["counts"]["pairs"] == 2
    tie = filled.get("/v1/trees/flat/tie").json()
    assert tie["nodes"][0]["branch"] == {"pair": False, "reason": "tie"}


def test_a_big_tree_loads_in_windows(client: Any) -> None:
    assert post(client, as_array(big(nodes=500))).status_code == 200
    first = client.get("/v1/trees/big/5000?depth=2&limit=50").json()
    assert first["node_count"] == 500
    nodes = {n["node_id"]: n for n in first["nodes"]}
    assert len(nodes) == 1 + 4 + 16
    assert nodes["r"]["children_loaded"] and not nodes["n5"]["children_loaded"]
    below = client.get("/v1/trees/big/5000?node=n5&depth=1").json()
    assert [n["node_id"] for n in below["nodes"]] == ["n5", "n21", "n22", "n23", "n24"]
    assert client.get("/v1/trees/big/5000?node=nope").status_code == 404
    assert client.get("/v1/trees/no/such/tree").status_code == 404


def test_a_node_shows_its_prompt_action_observation_and_scores(filled: Any) -> None:
    r = filled.post("/v1/scores", json={"tree_id": "run/fs/0", "node_id": "a2", "value": 0.25,
                                        "note": "partly right"})
    assert r.status_code == 201
    d = filled.get("/v1/node", params={"tree_id": "run/fs/0", "node_id": "a2"}).json()
    assert [m["role"] for m in d["prompt"]] == ["system", "user", "assistant", "tool"]
    assert d["action"]["tool_calls"][0]["function"]["arguments"] == {"path": "nope.txt"}
    assert d["observation"][0]["content"] == "no such file"
    assert [(s["source"], s["value"], s["detail"]) for s in d["scores"]] == [
        ("checker", 0.0, None), ("human", 0.25, {"note": "partly right"})]
    assert d["own_score"] == 0.25  # the latest score counts
    assert filled.get("/v1/node", params={"tree_id": "run/fs/0", "node_id": "zz"}
                      ).status_code == 404


def test_a_human_score_is_an_ordinary_event_and_moves_the_values(filled: Any, log: Any) -> None:
    before = filled.get("/v1/trees/run/fs/0").json()["nodes"][0]["value"]
    r = filled.post("/v1/scores", json={"tree_id": "run/fs/0", "node_id": "b", "value": 1.0})
    assert r.status_code == 201
    ev = stored(log)[-1]
    assert ev.event_id == r.json()["event_id"] and ev.payload.source == "human"
    after = filled.get("/v1/trees/run/fs/0").json()["nodes"][0]["value"]
    assert (before, after) == (0.25, 0.75)
    assert filled.post("/v1/scores", json={"tree_id": "run/fs/0", "node_id": "b",
                                           "value": 2}).status_code == 400
    assert filled.post("/v1/scores", json={"tree_id": "nope", "node_id": "b",
                                           "value": 1}).status_code == 404


def test_stats_and_summary_count_what_the_cli_counts(filled: Any) -> None:
    stats = filled.get("/v1/stats").json()
    assert stats["trees"] == 4 and stats["pairs"] == 6 and stats["dropped"]["tie"] == 1
    summary = filled.get("/v1/summary").json()
    assert summary["stats"] == stats
    assert sum(summary["leaf_scores"]["fs"]) == 6
    assert sum(summary["tree_sizes"]["counts"]) == 4
    assert filled.get("/v1/stats?margin=-1").status_code == 400
    assert filled.get("/v1/stats?sources=,").status_code == 400
    assert filled.get("/v1/stats", params={"env": "shop"}).json()["trees"] == 2
    assert filled.get("/v1/stats", params={"since": "yesterday"}).status_code == 400
    # a confidence bar no pair of single leaves can clear drops them as low_confidence
    strict = filled.get("/v1/stats", params={"confidence": 50}).json()
    assert strict["pairs"] < stats["pairs"]


# --- export ---------------------------------------------------------------------------------


@pytest.fixture
def scenario_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        log = await open_log(url)
        for b in scenario():
            await log.append(b.events)
        await log.close()

    run_async(fill)
    return url


@pytest.mark.parametrize("fmt", list(CASES))
def test_an_export_streams_the_very_bytes_the_cli_writes(scenario_db: str, fmt: str,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    flags = []
    for key, value in CASES[fmt].items():
        flags += [f"--{key.replace('_', '-')}"] if value is True else [
            f"--{key.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(cli, ["export", fmt, "--db", scenario_db, "--out", str(out),
                                      *flags])
    assert result.exit_code == 0, result.stderr
    with TestClient(create_app(scenario_db)) as c:
        r = c.get(f"/v1/export/{fmt}", params={k: str(v).lower() if v is True else v
                                               for k, v in CASES[fmt].items()})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/jsonl")
    assert r.content == out.read_bytes() == (GOLDEN / f"{fmt}.jsonl").read_bytes()


def test_an_export_of_one_tree_holds_only_its_pairs(filled: Any) -> None:
    r = filled.get("/v1/export/dpo", params={"tree": "run/shop/1", "with_metadata": "true"})
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 2 and {row["metadata"]["tree_id"] for row in rows} == {"run/shop/1"}
    assert filled.get("/v1/export/dpo", params={"tree": "none"}).content == b""
    events = filled.get("/v1/export/events", params={"tree": "run/shop/1"})
    assert events.status_code == 200
    trees = {json.loads(line)["tree_id"] for line in events.text.splitlines()}
    assert trees == {"run/shop/1"}


def test_an_export_refuses_bad_options_before_its_first_byte(filled: Any) -> None:
    assert filled.get("/v1/export/parquet").status_code == 404
    assert filled.get("/v1/export/dpo?margin=-0.5").status_code == 400
    assert filled.get("/v1/export/dpo?judge_weight=3").status_code == 400
    assert filled.get("/v1/export/dpo?value=median").status_code == 400


# --- security -------------------------------------------------------------------------------


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """A mounted part: answers with the path it was given."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


@pytest.fixture
def guarded(log: Any) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(log, ServeConfig(token=TOKEN),
                               mounts={"/mcp": echo_app})) as c:
        yield c


def test_with_a_token_every_api_and_mounted_route_needs_it(guarded: Any) -> None:
    ok = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v1/trees", "/v1/stats", "/v1/export/dpo", "/mcp", "/mcp/x"):
        r = guarded.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert guarded.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert guarded.get(path, headers={"Authorization": TOKEN}).status_code == 401
        assert guarded.get(path, headers=ok).status_code == 200, path
    r = guarded.post("/v1/events", content=as_array(TreeBuilder("t").root().events),
                     headers={"content-type": "application/json"})
    assert r.status_code == 401
    assert guarded.get("/mcp/x", headers=ok).text.startswith("/x")  # the sub-path


def test_health_the_viewer_and_the_schema_need_no_token(guarded: Any) -> None:
    for path in ("/health", "/", "/static/app.js", "/static/app.css",
                 "/schema/openapi.json"):
        assert guarded.get(path).status_code == 200, path


def test_every_answer_carries_the_content_security_policy(guarded: Any) -> None:
    for path in ("/", "/static/app.js", "/health", "/v1/trees", "/nowhere"):
        r = guarded.get(path)
        if r.status_code != 404:
            assert r.headers["content-security-policy"] == CSP, path
            assert r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP


def test_the_page_has_no_inline_script_or_handler() -> None:
    from html.parser import HTMLParser

    from branchpoint.viewer.routes import STATIC

    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Collect().feed((STATIC / "index.html").read_text())
    scripts = [dict(a) for t, a in found if t == "script"]
    assert scripts and all(s.get("src", "").startswith("/static/") for s in scripts)
    assert not [a for _, attrs in found for a, _ in attrs if a.startswith("on") or a == "style"]
    js = (STATIC / "app.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


@pytest.mark.parametrize("args", [[], ["--margin", "0.5", "--value", "max"],
                                  ["--env", "fs", "--confidence", "1"]])
def test_stats_are_what_the_cli_prints(scenario_db: str, args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["stats", "--json", "--db", scenario_db, *args])
    assert result.exit_code == 0, result.stderr
    params = dict(zip(args[::2], args[1::2], strict=True))
    with TestClient(create_app(scenario_db)) as c:
        r = c.get("/v1/stats", params={k.lstrip("-"): v for k, v in params.items()})
    assert r.json() == json.loads(result.stdout)


def test_the_api_runs_on_each_sql_store(db_url: str) -> None:
    events = ordinary(2)
    with TestClient(create_app(db_url)) as c:
        assert post(c, as_lines(events), "application/jsonl").json()["stored"] == len(events)
        assert post(c, as_array(events)).json()["duplicates"] == len(events)
        changed = msgspec.structs.replace(
            events[5], payload=msgspec.structs.replace(events[5].payload, value=0.9))
        assert post(c, as_array([*TreeBuilder("new").root().events, changed])
                    ).status_code == 409
        assert post(c, as_array(TreeBuilder("x").root().step("a", "nope").events)
                    ).status_code == 400
        assert c.get("/v1/stats").json()["trees"] == 2  # neither refused batch stored
        assert c.get("/v1/trees?limit=1").json()["next_cursor"] is not None
        tree = c.get("/v1/trees/run/shop/1").json()
        assert tree["counts"]["pairs"] == 2 and len(tree["nodes"]) == 5
        assert c.post("/v1/scores", json={"tree_id": "run/shop/1", "node_id": "b",
                                          "value": 1.0}).status_code == 201
        assert c.get("/v1/trees/run/shop/1").json()["nodes"][0]["value"] == 0.75
        assert c.get("/v1/export/dpo").text.count("\n") == 4
