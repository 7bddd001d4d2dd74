"""The README's SDK example runs as written, and ``branchpoint export dpo`` gives its pair."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.sdk.conftest import REPO


def test_the_readme_example_records_a_fork_that_exports_as_a_pair(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Recording production agents"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    subprocess.run([sys.executable, "-c", code.group(1)], cwd=tmp_path, check=True,
                   timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    cli = Path(sys.executable).parent / "branchpoint"
    out = subprocess.run([str(cli), "export", "dpo", "--db", "sqlite:///agent-runs.db"],
                         cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120)
    (pair,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert "cat /etc/service/service.conf" in json.dumps(pair["chosen"])
    assert "cat /etc/service/README" in json.dumps(pair["rejected"])
    assert "ls /etc/service" in json.dumps(pair["prompt"])
