"""``branchpoint ingest`` through the command line: exit codes, messages, atomicity."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.store.events import encode_event
from branchpoint.store.log import open_log
from tests.store.test_log_contract import Tree, small_tree

runner = CliRunner()


def jsonl(path: Path, lines: list[bytes | str]) -> Path:
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n"
                              for x in lines))
    return path


def stored(url: str) -> list[str]:
    async def read() -> list[str]:
        log = await open_log(url)
        try:
            return [e.event_id for e in await log.read_after(0, limit=100_000)]
        finally:
            await log.close()

    return asyncio.run(read())


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_ingest_stores_a_file_and_exits_zero(tmp_path: Path, db: str) -> None:
    events = small_tree("t1") + small_tree("t2")
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in events] + [""])
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 0, res.stderr
    assert "stored 16 events, 0 already present" in res.stderr
    assert res.stdout == ""
    assert stored(db) == [e.event_id for e in events]
    again = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert again.exit_code == 0
    assert "stored 0 events, 16 already present" in again.stderr


def test_malformed_json_exits_one_naming_the_line_and_stores_nothing(
        tmp_path: Path, db: str) -> None:
    good = [encode_event(e) for e in small_tree()]
    src = jsonl(tmp_path / "in.jsonl", [*good[:3], '{"event_id": "x", "tree_id": ', *good[3:]])
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert "line 4" in res.stderr and "malformed JSON" in res.stderr
    assert "nothing of this batch was stored" in res.stderr
    assert stored(db) == []


def test_an_unknown_field_exits_one_naming_line_event_and_field(tmp_path: Path,
                                                                 db: str) -> None:
    events = small_tree()
    bad = encode_event(events[1]).replace(b'"node_id":', b'"colour":"red","node_id":')
    src = jsonl(tmp_path / "in.jsonl", [encode_event(events[0]), bad])
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert "line 2" in res.stderr and "'t1-2'" in res.stderr and "payload.colour" in res.stderr
    assert stored(db) == []


def test_a_rule_broken_late_in_the_file_stores_nothing_of_it(tmp_path: Path, db: str) -> None:
    t = Tree()
    events = [t.root(), t.node("a", "r"), t.score("ghost", 0.5)]
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in events])
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert "line 3, event_id 't1-3', field payload.node_id" in res.stderr
    assert stored(db) == []


def test_batch_size_commits_the_chunks_before_the_bad_one(tmp_path: Path, db: str) -> None:
    t = Tree()
    events = [t.root(), t.node("a", "r"), t.node("b", "r"), t.node("c", "r"),
              t.score("ghost", 0.5), t.node("d", "r")]
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in events])
    res = runner.invoke(app, ["ingest", str(src), "--db", db, "--batch-size", "2"])
    assert res.exit_code == 1
    assert "line 5" in res.stderr
    assert "the 2 earlier batches were stored (4 events new, 0 already present)" in res.stderr
    assert stored(db) == ["t1-1", "t1-2", "t1-3", "t1-4"]


def test_batch_size_claims_no_earlier_batches_when_the_first_one_fails(
        tmp_path: Path, db: str) -> None:
    t = Tree()
    events = [t.root(), t.score("ghost", 0.5), t.node("a", "r")]
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in events])
    res = runner.invoke(app, ["ingest", str(src), "--db", db, "--batch-size", "2"])
    assert res.exit_code == 1
    assert "line 2" in res.stderr and "nothing of this batch was stored" in res.stderr
    assert "earlier batch" not in res.stderr
    assert stored(db) == []


def test_a_db_url_of_no_backend_exits_one_with_a_message(tmp_path: Path) -> None:
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in small_tree()])
    res = runner.invoke(app, ["ingest", str(src), "--db", "nosuchdb://x"])
    assert res.exit_code == 1
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "error: unsupported database 'nosuchdb'" in res.stderr


def test_a_bad_line_after_chunks_went_in_stores_nothing_of_the_file(
        tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the store gets five chunks of three before line 16
    monkeypatch.setattr("branchpoint.cli.ingest.CHUNK", 3)
    good = [encode_event(e) for e in small_tree("t1") + small_tree("t2")]
    src = jsonl(tmp_path / "in.jsonl", [*good[:15], "{oops", *good[15:]])
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert "line 16" in res.stderr and "nothing of this batch was stored" in res.stderr
    assert stored(db) == []
    # without the bad line, the same chunks make one batch
    jsonl(src, good)
    assert runner.invoke(app, ["ingest", str(src), "--db", db]).exit_code == 0
    assert len(stored(db)) == 16


def test_batch_size_batches_span_several_chunks_and_stay_atomic(
        tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("branchpoint.cli.ingest.CHUNK", 2)
    t = Tree()
    events = [t.root(), *(t.node(f"n{i}", "r") for i in range(6)), t.score("ghost", 0.5),
              t.node("z", "r")]
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in events])
    res = runner.invoke(app, ["ingest", str(src), "--db", db, "--batch-size", "5"])
    assert res.exit_code == 1
    assert "line 8" in res.stderr
    assert "the 1 earlier batch was stored (5 events new, 0 already present)" in res.stderr
    assert stored(db) == [e.event_id for e in events[:5]]
    ok = jsonl(tmp_path / "ok.jsonl", [encode_event(e) for e in small_tree("t2")])
    res = runner.invoke(app, ["ingest", str(ok), "--db", db, "--batch-size", "4"])
    assert res.exit_code == 0, res.stderr
    assert "stored 8 events, 0 already present" in res.stderr


def test_a_conflicting_resend_exits_one_naming_the_event(tmp_path: Path, db: str) -> None:
    events = small_tree()
    jsonl(tmp_path / "a.jsonl", [encode_event(e) for e in events])
    changed = msgspec.structs.replace(events[5], payload=msgspec.structs.replace(
        events[5].payload, value=0.0))
    jsonl(tmp_path / "b.jsonl", [encode_event(changed)])
    assert runner.invoke(app, ["ingest", str(tmp_path / "a.jsonl"), "--db", db]).exit_code == 0
    res = runner.invoke(app, ["ingest", str(tmp_path / "b.jsonl"), "--db", db])
    assert res.exit_code == 1
    assert "'t1-6'" in res.stderr and "different content" in res.stderr


@pytest.mark.parametrize("args", [["ingest"], ["ingest", "x.jsonl", "--batch-size", "0"],
                                  ["ingest", "no-such-file.jsonl"], ["ingest", "--nope", "-"]])
def test_usage_errors_exit_two(tmp_path: Path, db: str, args: list[str]) -> None:
    res = runner.invoke(app, [*args, "--db", db])
    assert res.exit_code == 2, res.output


@pytest.mark.slow
def test_the_installed_command_reads_stdin(tmp_path: Path, db: str) -> None:
    events = small_tree()
    data = b"".join(encode_event(e) + b"\n" for e in events)
    cli = Path(sys.executable).parent / "branchpoint"
    res = subprocess.run([str(cli), "ingest", "-", "--db", db], input=data,
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stderr
    assert stored(db) == [e.event_id for e in events]
    bad = subprocess.run([str(cli), "ingest", "-", "--db", db], input=b"{oops\n",
                         capture_output=True, check=False)
    assert bad.returncode == 1
    assert b"line 1" in bad.stderr and bad.stdout == b""


def test_an_unreachable_database_exits_one(tmp_path: Path) -> None:
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in small_tree()])
    res = runner.invoke(app, ["ingest", str(src), "--db", f"sqlite:///{tmp_path}/no/x.db"])
    assert res.exit_code == 1
    assert "error:" in res.stderr



def test_a_folder_is_named_as_a_folder(tmp_path: Path, db: str) -> None:
    res = runner.invoke(app, ["ingest", str(tmp_path), "--db", db])
    assert res.exit_code == 2
    assert f"{tmp_path} is a folder" in res.stderr and "no such file" not in res.stderr


def test_a_byte_order_mark_at_the_start_is_skipped(tmp_path: Path, db: str) -> None:
    events = small_tree()
    src = jsonl(tmp_path / "in.jsonl", [encode_event(e) for e in events])
    src.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 0, res.stderr
    assert stored(db) == [e.event_id for e in events]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_file_holding_one_json_array_is_one_batch(tmp_path: Path, db: str, bom: bytes,
                                                    indent: int | None) -> None:
    import json

    events = small_tree("t1") + small_tree("t2")
    as_json = [json.loads(encode_event(e)) for e in events]
    src = tmp_path / "events.json"
    src.write_bytes(bom + b"\n" + json.dumps(as_json, indent=indent).encode())
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 0, res.stderr
    assert stored(db) == [e.event_id for e in events]
    again = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert "stored 0 events, 16 already present" in again.stderr


def test_an_array_is_atomic_and_a_bad_element_is_named_by_its_line(
        tmp_path: Path, db: str) -> None:
    import json

    events = small_tree()
    items = [json.loads(encode_event(e)) for e in events]
    items[3]["payload"]["colour"] = "red"
    src = tmp_path / "events.json"
    src.write_text(json.dumps(items, indent=1))
    starts = [i + 1 for i, text in enumerate(src.read_text().splitlines()) if text == " {"]
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert f"line {starts[3]}," in res.stderr and "payload.colour" in res.stderr
    assert stored(db) == []


def test_an_array_is_chunked_under_batch_size(tmp_path: Path, db: str) -> None:
    import json

    t = Tree()
    events = [t.root(), t.node("a", "r"), t.node("b", "r"), t.score("ghost", 0.5)]
    src = tmp_path / "events.json"
    src.write_text(json.dumps([json.loads(encode_event(e)) for e in events]))
    res = runner.invoke(app, ["ingest", str(src), "--db", db, "--batch-size", "2"])
    assert res.exit_code == 1
    assert "the 1 earlier batch was stored (2 events new, 0 already present)" in res.stderr
    assert stored(db) == ["t1-1", "t1-2"]


@pytest.mark.parametrize(("text", "message"), [
    ('[{"event_id": "x"', "malformed JSON array"),
    ("[@1, @2] junk", "text after the closing ']'"),
    ("[@1 @2]", "expected ',' or ']'"),
])
def test_a_malformed_array_stores_nothing_and_says_so(tmp_path: Path, db: str, text: str,
                                                      message: str) -> None:
    a, b = (encode_event(e).decode() for e in small_tree()[:2])
    src = tmp_path / "events.json"
    src.write_text(text.replace("@1", a).replace("@2", b))
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert message in res.stderr
    assert stored(db) == []


def test_a_line_nested_too_deep_exits_one_naming_the_line(tmp_path: Path, db: str) -> None:
    good = [encode_event(e) for e in small_tree()]
    deep = good[0].replace(b'"content":"list the files"',
                           b'"content":' + b"[" * 2000 + b"]" * 2000)
    src = jsonl(tmp_path / "in.jsonl", [*good[1:3], deep])
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert "line 3" in res.stderr and "nested deeper than 64 levels" in res.stderr
    assert "RecursionError" not in res.stderr + res.stdout
    assert stored(db) == []


def test_an_array_element_nested_too_deep_is_refused_at_its_line(tmp_path: Path,
                                                                  db: str) -> None:
    good = [encode_event(e).decode() for e in small_tree()]
    deep = good[2].replace('"node_id"', '"meta":{"x":' + "[" * 5000 + "]" * 5000
                           + '},"node_id"', 1)
    src = tmp_path / "events.json"
    src.write_text("[\n" + ",\n".join([*good[:2], deep]) + "\n]")
    res = runner.invoke(app, ["ingest", str(src), "--db", db])
    assert res.exit_code == 1
    assert "line 4" in res.stderr and "nested deeper than 64 levels" in res.stderr
    assert stored(db) == []
