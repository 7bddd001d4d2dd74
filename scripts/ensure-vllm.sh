#!/usr/bin/env bash
# Creates (once) the virtual environment `branchpoint serve-model` runs vLLM's CPU build
# from (see sampler/serve.py: where it lives, what it installs, every pitfall handled).
# Prints its folder. `make test` calls this so the integration tests find it ready.
set -euo pipefail
PY="${PY:-.venv/bin/python}"
exec "$PY" -m branchpoint.sampler.serve ensure "$@"
