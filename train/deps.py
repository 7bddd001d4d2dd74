"""The ``train`` extra: one check, one message with the command that installs it."""

from __future__ import annotations

import importlib.util

from branchpoint.store.errors import MissingDependency

__all__ = ["INSTALL_HINT", "TRAIN_MODULES", "require_train"]

TRAIN_MODULES = ("torch", "transformers", "trl", "datasets", "tokenizers", "accelerate")
INSTALL_HINT = 'pip install "torch==2.13.0" && pip install "branchpoint[train]"'


def missing_train_modules() -> list[str]:
    """The modules of the ``train`` extra that cannot be imported."""
    return [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]


def require_train() -> None:
    """Raise at once when the ``train`` extra is missing.

    Raises:
        MissingDependency: naming the missing modules and the install command.
    """
    missing = missing_train_modules()
    if missing:
        raise MissingDependency(
            f"this needs the train extra (missing: {', '.join(missing)}); install it with: "
            f"{INSTALL_HINT}")
