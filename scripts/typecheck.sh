#!/usr/bin/env bash
# mypy (strict, from pyproject.toml) over the installed layout: the top-level folders are
# subpackages of the `branchpoint` namespace, which mypy cannot map from the source tree,
# so a temporary folder of links gives it `branchpoint/store -> store` and so on.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/branchpoint"
for pkg in store sdk sampler mcp_server viewer cli train; do
  ln -s "$repo/$pkg" "$tmp/branchpoint/$pkg"
done
cd "$tmp"
MYPYPATH="$tmp" "$repo/.venv/bin/mypy" --config-file "$repo/pyproject.toml" \
  --namespace-packages --explicit-package-bases --cache-dir "$repo/.mypy_cache" -p branchpoint
