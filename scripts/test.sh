#!/usr/bin/env bash
# The one test command (README: "Run the tests"). Installs missing test prerequisites first,
# then runs the whole workspace's tests. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real components (binary → package).
declare -A NEED=(
  [prometheus]=prometheus   # real Prometheus for the SLO tests (chaos-tests/tests/slo.rs)
  [prometheus-alertmanager]=prometheus-alertmanager   # real Alertmanager (daemon/tests/notify.rs)
)
missing=()
for bin in "${!NEED[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${NEED[$bin]}")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing test prerequisites: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing test prerequisites; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# Build the daemon binary first: the end-to-end tests drive the real `failoverd`.
cargo build -p failoverd
cargo test --workspace "$@"
