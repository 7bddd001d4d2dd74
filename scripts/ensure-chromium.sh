#!/usr/bin/env bash
# Make sure the headless Chromium the viewer's browser tests drive is installed: Debian's
# `chromium` package (Playwright's own browser download cannot reach its host here).
# Does nothing when $BRANCHPOINT_CHROMIUM (default /usr/bin/chromium) is already there.
set -eu
browser=${BRANCHPOINT_CHROMIUM:-/usr/bin/chromium}
if [ -x "$browser" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "ensure-chromium: no $browser and no apt-get; install Chromium and set BRANCHPOINT_CHROMIUM" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
test -x "$browser"
