#!/usr/bin/env bash
# The one test command (README: "Run the tests"). Installs missing test prerequisites first,
# then runs the whole workspace's tests. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real components (binary → package).
declare -A NEED=(
  [prometheus]=prometheus   # real Prometheus for the SLO tests (chaos-tests/tests/slo.rs)
  [prometheus-alertmanager]=prometheus-alertmanager   # real Alertmanager (daemon/tests/notify.rs)
  [kubectl]=kubernetes-client   # real kubectl against the API server emulator (chaos-tests/tests/kube_emulator.rs) and `kubectl kustomize` of deploy/ (chaos-tests/tests/deploy_*.rs)
  [promtool]=prometheus   # `promtool check rules` / `test rules` on the alert rules (chaos-tests/tests/deploy_metrics.rs)
  [chromium]=chromium   # real headless Chromium for the console's browser test (chaos-tests/tests/console_browser.rs)
  [chromedriver]=chromium-driver   # its WebDriver server, started on loopback by that test
)
missing=()
for bin in "${!NEED[@]}"; do
  pkg=${NEED[$bin]}
  if ! command -v "$bin" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
    missing+=("$pkg")
  fi
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

# PyPI packages the tests drive as real components: rotel, a real OTLP receiver that prints
# every span it gets (chaos-tests/tests/traces.rs; its agent binary ships in the wheel).
if ! python3 -c "import rotel" >/dev/null 2>&1; then
  echo "installing test prerequisites: rotel (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check rotel
fi

# Build the daemon binary first: the end-to-end tests drive the real `failoverd`.
cargo build -p failoverd
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary, the last of
# which is usually an empty doc-test run).
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i - 1); if ($i ~ /^failed;?$/) f += $(i - 1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
