"""The README's "Your own environment" example, taken from the README itself (so that what
a user copies is what the tests run) and made importable as a user would: a file saved in
a folder on the path, named by import path."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(first_line: str) -> str:
    """The README's python block that starts with ``first_line``.

    Raises:
        LookupError: no block starts so.
    """
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"),
                            flags=re.S):
        if block.startswith(first_line):
            return str(block)
    raise LookupError(f"no python block in the README starts with {first_line!r}")


@contextmanager
def saved(folder: Path, module: str, first_line: str) -> Iterator[str]:
    """Save the README block as ``folder/module.py`` and put ``folder`` on the path while
    the block runs; yields the module name."""
    (folder / f"{module}.py").write_text(readme_block(first_line), encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        yield module
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[name]


@contextmanager
def guess(folder: Path) -> Iterator[str]:
    """The README's free-text example importable; yields its import path."""
    with saved(folder, "guess", "# guess.py") as module:
        yield f"{module}:GuessEnv"


@contextmanager
def faq(folder: Path) -> Iterator[str]:
    """The README's stateless-tools example importable; yields its import path."""
    with saved(folder, "faq", "# faq.py") as module:
        yield f"{module}:FaqEnv"


def readme_rows() -> str:
    """The README's rows file (its one ``jsonl`` block)."""
    blocks = re.findall(r"```jsonl\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    if len(blocks) != 1:
        raise LookupError(f"expected one jsonl block in the README, found {len(blocks)}")
    return str(blocks[0])


@contextmanager
def support_tools(folder: Path) -> Iterator[list[str]]:
    """The README's TRL-style class and rows saved as a user would; yields the options
    (``KEY=VALUE`` strings) that name them, with the reward and its range."""
    rows = folder / "rows.jsonl"
    rows.write_text(readme_rows(), encoding="utf-8")
    with saved(folder, "support_tools", "# support_tools.py") as module:
        yield [f"class={module}:SupportTools", f"tasks_file={rows}",
               f"reward={module}:refund_reward", "reward_range=-1:1"]
