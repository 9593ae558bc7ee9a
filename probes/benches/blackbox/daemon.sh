#!/usr/bin/env bash
# Probe cost of the whole daemon, side by side, as users run it:
#   1. the real failoverd binary (release) with PLAYBOOKS playbooks (2 HTTP probes each:
#      250 → 500 probes) at 1 s against one nginx, file store, audit on, default limits;
#   2. Prometheus blackbox_exporter on the same targets, driven by a real Prometheus
#      scraping /probe every 1 s (the exporter's CPU; Prometheus's own is not counted).
# Each side: WARM s of warm-up, then CPU (utime + stime from /proc/PID/stat, all threads)
# over SECS s, divided by the requests nginx served in that window (its stub_status), so
# the ratio is per probe really sent. RSS is VmRSS / VmHWM from /proc/PID/status. The load
# average is printed with each number: the machine may be shared, and CPU time (not wall
# time) is what counts.
#
#   cargo build --release -p failoverd && probes/benches/blackbox/daemon.sh
#   PLAYBOOKS=1000 SIDE=daemon probes/benches/blackbox/daemon.sh   # 2,000 probes, no blackbox
#   PERF=1 SIDE=daemon ...   # also `perf record` (DWARF call graphs) the daemon over the window
#   BIN=/path/to/failoverd ...   # another build (e.g. the baseline) on the same script
# Needs: apt-get install -y nginx prometheus prometheus-blackbox-exporter curl (perf for PERF=1)
# Bounded: each side runs WARM + SECS s plus start-up (≤ 60 s); everything started is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
root=$(cd ../../.. && pwd)
PLAYBOOKS=${PLAYBOOKS:-250}
SECS=${SECS:-30}
WARM=${WARM:-10}
SIDE=${SIDE:-both}
BIN=${BIN:-$root/target/release/failoverd}
N=$((2 * PLAYBOOKS))
work=/tmp/failoverd-bb
rm -rf "$work" && mkdir -p "$work"
cleanup() { for p in "$work"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done; }
trap cleanup EXIT
nginx -c "$here/nginx.conf"
sleep 1

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
served() { curl -sf http://127.0.0.1:28418/status | awk '/^ *[0-9]+ +[0-9]+ +[0-9]+/ { print $3 }'; }
kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# measure NAME PID: prints one line and sets $per (ms CPU per probe).
measure() {
    local name=$1 pid=$2 t0 t1 r0 r1 l0
    sleep "$WARM"
    l0=$(load)
    t0=$(ticks "$pid"); r0=$(served)
    if [ "${PERF:-0}" = 1 ] && [ "$name" = failoverd ]; then
        # DWARF unwinding: a release build has no frame pointers, but has .eh_frame.
        perf record --call-graph dwarf,16384 -o "$work/perf.data" -p "$pid" -- sleep "$SECS" > "$work/perf.log" 2>&1
    else
        sleep "$SECS"
    fi
    t1=$(ticks "$pid"); r1=$(served)
    per=$(awk -v t=$((t1 - t0)) -v r=$((r1 - r0 - 1)) 'BEGIN { printf "%.4f", t * 10 / r }')
    echo "$name: $((t1 - t0)) ticks (1/100 s) CPU over ${SECS}s, $((r1 - r0 - 1)) probes served" \
        "= $per ms CPU per probe; VmRSS $(kib "$pid" VmRSS) KiB (anon $(kib "$pid" RssAnon), file $(kib "$pid" RssFile)), VmHWM $(kib "$pid" VmHWM) KiB;" \
        "load average $l0 → $(load)"
}

if [ "$SIDE" != blackbox ]; then
    [ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p failoverd" >&2; exit 2; }
    mkdir -p "$work/playbooks" "$work/store/bench"
    for i in $(seq 0 $((PLAYBOOKS - 1))); do
        name=$(printf 'web-%04d' "$i")
        cat > "$work/playbooks/pb-$i.yaml" <<YML
apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: pb-$i }
spec:
  virtualService: { namespace: bench, name: $name }
  route: primary
  primary: { host: $name.bench.svc.cluster.local }
  failover:
    - { host: $name.bench-dr.svc.cluster.local }
  probes:
    - { name: primary-health, target: primary, http: { url: "http://127.0.0.1:28417/t/$((2 * i))" }, interval: 1s, timeout: 500ms }
    - { name: dr-health, target: "failover[0]", http: { url: "http://127.0.0.1:28417/t/$((2 * i + 1))" }, interval: 1s, timeout: 500ms }
YML
        cat > "$work/store/bench/$name.yaml" <<YML
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: $name, namespace: bench }
spec:
  hosts: [ $name.bench.svc.cluster.local ]
  http:
    - name: primary
      route: [ { destination: { host: $name.bench.svc.cluster.local } } ]
YML
    done
    echo '{}' > "$work/config.yaml"
    POD_NAME=bench-replica "$BIN" run --config "$work/config.yaml" --playbooks "$work/playbooks" \
        --store "file:$work/store" --listen 127.0.0.1:29180 --audit "$work/audit.jsonl" \
        --log warn > "$work/failoverd.log" 2>&1 &
    echo $! > "$work/failoverd.pid"
    pid=$(cat "$work/failoverd.pid")
    for _ in $(seq 1 600); do
        curl -sf -o /dev/null http://127.0.0.1:29180/readyz && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/failoverd.log" >&2; exit 1; }
        sleep 0.1
    done
    curl -sf -o /dev/null http://127.0.0.1:29180/readyz || { echo "failoverd not ready in 60 s" >&2; exit 1; }
    echo "failoverd $BIN: $PLAYBOOKS playbooks, $N HTTP probes at 1 s, file store, audit on"
    measure failoverd "$pid"
    daemon_per=$per
    unhealthy=$(curl -sf http://127.0.0.1:29180/metrics | awk '/^failoverd_probe_results_total/ && !/result="healthy"/ { s += $NF } END { print s + 0 }')
    echo "failoverd: $unhealthy results not healthy since start (must be 0 for a fair comparison)"
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$work/failoverd.pid"
    if [ "${PERF:-0}" = 1 ]; then
        # Flat self time per symbol; the call graphs stay in perf.data (`perf report -i`).
        perf report -i "$work/perf.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -60 > "$work/perf.txt"
        echo "perf report: $work/perf.txt (perf.data next to it; the next run deletes both)"
    fi
fi

if [ "$SIDE" != daemon ]; then
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
    echo "blackbox_exporter: $N targets scraped by Prometheus every 1 s"
    measure blackbox_exporter "$(cat "$work/bbe.pid")"
    bb_per=$per
fi

if [ "$SIDE" = both ]; then
    echo "ratio failoverd / blackbox_exporter CPU per probe: $(awk -v a="$daemon_per" -v b="$bb_per" 'BEGIN { printf "%.3f", a / b }')"
fi
