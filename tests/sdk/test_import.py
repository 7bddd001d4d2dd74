"""``import branchpoint.sdk`` stays light: nothing heavy on its path. (How long the import
takes is a figure of ``bench/bench_sdk.py``, not a timed test.)"""

from __future__ import annotations

import subprocess
import sys

from tests.sdk.conftest import REPO

HEAVY = ("sqlalchemy", "networkx", "litestar", "torch", "transformers", "httpx", "openai",
         "asyncpg", "aiosqlite", "typer", "rich", "numpy")


def test_importing_the_sdk_loads_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, branchpoint.sdk\n"
         "print(sorted({m.split('.')[0] for m in sys.modules}))"],
        capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(eval(out.stdout))
    assert loaded.isdisjoint(HEAVY), loaded & set(HEAVY)
    assert "msgspec" in loaded  # the check can see a module that is there
