"""Recorders in agent processes: killed with SIGKILL, restarted, several at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from branchpoint.sdk import Recorder
from tests.sdk.conftest import HERE, REPO, stored, wait_for

pytestmark = pytest.mark.slow

TREES, STEPS = 20, 5
PER_TREE = 1 + 2 * STEPS + 2  # root, steps and runs, score, close


def agent(url: str, prefix: str, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "agent.py"), url, prefix, str(TREES), str(STEPS), *flags],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})


def kill_after_flush(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == b"flushed True"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stdin.close()


def test_an_agent_killed_right_after_flush_loses_nothing(db_path: Path) -> None:
    kill_after_flush(agent(f"sqlite:///{db_path}", "k", "--hang"))
    rows = stored(db_path)
    assert len(rows) == TREES * PER_TREE
    assert {r["tree_id"] for r in rows} == {f"k-{i}" for i in range(TREES)}


def test_what_a_killed_agent_left_in_the_spool_is_sent_by_the_next_process(
        tmp_path: Path, spool_dir: Path) -> None:
    db = tmp_path / "later" / "runs.db"  # down while the first agent runs
    kill_after_flush(agent(f"sqlite:///{db}", "s", "--hang"))
    assert list(spool_dir.rglob("*.seg"))  # the killed agent's events wait there
    db.parent.mkdir()
    rec = Recorder(f"sqlite:///{db}")  # a new process would do the same at start
    wait_for(lambda: rec.stats().resent == TREES * PER_TREE, what="the orphans re-sent")
    rec.close()
    ids = [r["event_id"] for r in stored(db)]
    assert len(ids) == TREES * PER_TREE and len(set(ids)) == len(ids)
    assert not list(spool_dir.rglob("*.seg")) and not list(spool_dir.rglob("*.lock"))


def test_an_agent_that_exits_without_flushing_is_flushed_at_exit(db_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[4:] = []\n"
         "from branchpoint.sdk import Recorder\n"
         f"rec = Recorder('sqlite:///{db_path}', linger_s=60)\n"
         "with rec.trajectory('x', env='e', task_id=1) as t:\n"
         "    t.step('a', 'b')\n"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, timeout=60, check=True)
    assert proc.returncode == 0
    assert len(stored(db_path)) == 1 + 2 + 1


def test_several_processes_record_into_one_sqlite_file_at_once(db_path: Path) -> None:
    procs = [agent(f"sqlite:///{db_path}", f"p{i}") for i in range(4)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert out.strip() == b"flushed True"
    rows = stored(db_path)
    assert len(rows) == 4 * TREES * PER_TREE
    per_tree = Counter(r["tree_id"] for r in rows)
    assert set(per_tree.values()) == {PER_TREE} and len(per_tree) == 4 * TREES
