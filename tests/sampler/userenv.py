"""A user's environment, written the way a user would: a package of its own on the path,
named by import path (``userpkg.envs:GameEnv``) or by an entry point whose name is not the
class's ``name`` (``textgame``). It implements only reset, step, check and an expert, so it
forks by replay."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PACKAGE = "userpkg"
IMPORT_PATH = "userpkg.envs:GameEnv"
ENTRY_POINT = "textgame"

SOURCE = '''
"""Reach a target total by adding numbers; stop when there."""

from branchpoint.sampler.envs.base import (
    Environment, Reset, StepResult, SubGoal, function_tool, parse_action, reply, score_of)
from branchpoint.sampler.expert import Expert

TOOLS = [function_tool("add", "add N to the total", {"n": {"type": "integer"}}),
         function_tool("stop", "end the game")]


class GameEnv(Environment):
    name = "game"
    description = "reach a target total"

    def __init__(self, task_id, **options):
        super().__init__(task_id, **options)
        self.target = task_id % 4 + 2
        self.total = 0
        self.over = False

    def reset(self):
        self.total, self.over = 0, False
        return Reset([{"role": "user", "content": f"reach {self.target}"}], TOOLS)

    def step(self, action):
        out = []
        for call in parse_action(action, TOOLS):
            if call.error or self.over:
                out.append(reply(call, f"error: {call.error or 'over'}"))
            elif call.name == "add":
                self.total += call.arguments["n"]
                out.append(reply(call, f"total {self.total}"))
            else:
                self.over = True
                out.append(reply(call, "stopped"))
        self.over = self.over or len(self.history) >= 9
        return StepResult(out, self.over)

    def check(self):
        return score_of([SubGoal("reached", 1, self.total >= self.target),
                         SubGoal("exact", 1, self.total == self.target)])

    def expert(self, mistakes=0.0, seed=None):
        return GameExpert(TOOLS, mistakes=mistakes, seed=self.task_id if seed is None else seed)


class GameExpert(Expert):
    def choose(self, opening, turns, rng, wrong):
        target = int(opening[-1]["content"].split()[-1])
        total = 0
        for t in turns:
            if t.ok and t.output.startswith("total "):
                total = int(t.output.split()[1])
        if total >= target:
            return "stop", {}
        return "add", {"n": 2 if wrong else 1}
'''


def write_package(root: Path) -> None:
    """The package and, beside it, the installed-distribution metadata that registers its
    environment under the entry point ``textgame``."""
    pkg = root / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "envs.py").write_text(SOURCE)
    dist = root / "userpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[branchpoint.envs]\n{ENTRY_POINT} = {IMPORT_PATH}\n")


@contextmanager
def installed(root: Path) -> Iterator[Path]:
    """The package importable (and its entry point visible) while the block runs."""
    write_package(root)
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
