#!/usr/bin/env bash
# Probe cost, side by side: 500 HTTP targets on one nginx at 1 probe/s each for 30 s,
#   1. failoverd's probe engine (probes/benches/probe_cpu.rs, CPU from /proc/self/stat);
#   2. Prometheus blackbox_exporter driven by a real Prometheus scraping /probe every 1 s
#      (CPU of the exporter process from /proc/PID/stat).
# Needs: apt-get install -y nginx prometheus prometheus-blackbox-exporter
# Bounded: each side runs 30 s (plus start-up); everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
N=${N:-500}
SECS=${SECS:-30}
work=/tmp/failoverd-bb
rm -rf "$work" && mkdir -p "$work"
cleanup() { for p in "$work"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done; }
trap cleanup EXIT
nginx -c "$here/nginx.conf"
sleep 1
cargo bench -p failover-probes --bench probe_cpu -- http://127.0.0.1:28417 "$N" "$SECS"

targets=$(seq 0 $((N - 1)) | sed "s|.*|'http://127.0.0.1:28417/t/&'|" | paste -sd, -)
cat > "$work/prom.yml" <<YML
global: { scrape_interval: 1s, scrape_timeout: 900ms }
scrape_configs:
  - job_name: blackbox
    metrics_path: /probe
    params: { module: [http_2xx] }
    static_configs: [ { targets: [$targets] } ]
    relabel_configs:
      - { source_labels: [__address__], target_label: __param_target }
      - { source_labels: [__param_target], target_label: instance }
      - { target_label: __address__, replacement: '127.0.0.1:29115' }
YML
prometheus-blackbox-exporter --config.file="$here/blackbox.yml" --web.listen-address=127.0.0.1:29115 > "$work/bbe.log" 2>&1 &
echo $! > "$work/bbe.pid"
prometheus --config.file="$work/prom.yml" --storage.tsdb.path="$work/data" --web.listen-address=127.0.0.1:29090 > "$work/prom.log" 2>&1 &
echo $! > "$work/prom.pid"
sleep 10
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
b0=$(ticks "$(cat "$work/bbe.pid")")
sleep "$SECS"
b1=$(ticks "$(cat "$work/bbe.pid")")
echo "blackbox_exporter: $(( (b1 - b0) )) ticks (1/100 s) of CPU over ${SECS}s for $N targets at 1/s"
echo "  = $(awk -v t=$((b1 - b0)) -v n="$N" -v s="$SECS" 'BEGIN { printf "%.2f ms CPU per probe (assuming n*s probes)", t * 10 / (n * s) }')"
