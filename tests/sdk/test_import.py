"""``import branchpoint.sdk`` stays light: nothing heavy on its path, under 100 ms."""

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


def test_importing_the_sdk_takes_under_100_ms() -> None:
    # CPU time of the import, which other processes on a shared machine do not inflate
    # as they do the wall-clock figure of `python -X importtime` (the README's).
    def cpu_ms() -> float:
        out = subprocess.run(
            [sys.executable, "-c", "import time\nt = time.process_time()\n"
             "import branchpoint.sdk\nprint((time.process_time() - t) * 1000)"],
            capture_output=True, text=True, check=True, cwd=REPO).stdout
        return float(out)

    best = min(cpu_ms() for _ in range(3))
    assert best < 100, f"import branchpoint.sdk took {best:.1f} ms of CPU"
