#!/usr/bin/env bash
# Called by make before it creates .venv: is "$1" (make's PY) a Python 3.11? The CPU
# builds of torch (pinned in the Makefile) and of vLLM exist for 3.11 only, so another
# version would fail much later, deep inside pip.
py="${1:-python3.11}"
how="install Python 3.11 (pyenv, uv python install 3.11, or your package manager), or point make at one: make PY=/path/to/python3.11"
if ! command -v "$py" >/dev/null 2>&1; then
    echo "error: no $py found on PATH; $how" >&2
    exit 1
fi
version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
if [ "$version" != "3.11" ]; then
    echo "error: $py is Python ${version:-of unknown version}, and branchpoint needs 3.11; $how" >&2
    exit 1
fi
