#!/bin/bash
# Where one agent's CPU goes during fleet-bench's batch workload: CPU per thread name (cores), the store's fsync and
# checkpoint counters per second, and how busy each CPU was, sampled over 6 s in the middle of the workload.
#
#   cargo build --release -p meterd -p meterd-tests
#   tests/bench/fleet-cpu.sh target/release/meterd local1 --split-cpus 0:1
#   tests/bench/fleet-cpu.sh target/release/meterd sled --split-cpus 0:1
#
# CONFIG is one of fleet-bench's --only names (sled, local1, ...; the first agent is the one sampled); the rest of
# the arguments go to fleet-bench (e.g. --fleet-toml $'forward_interval = "60s"\ndown_after = "300s"' to hold
# forwarding back). Needs curl and ss. Linux only (/proc).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 METERD_BIN CONFIG [fleet-bench args...]" >&2; exit 2; }
BIN=$(realpath "$1"); CONFIG=$2; shift 2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
mkdir -p "$ROOT/target/bench"
(cd "$ROOT/target/bench" && METERD_BIN=$BIN METERD_LOG=warn "$ROOT/target/release/fleet-bench" --seconds 10 \
    --rounds 1 --start-budget 8 --only "$CONFIG" --no-hour "$@" > "$WORK/bench.log" 2>&1) &
BENCH=$!
P=
for _ in $(seq 1 120); do P=$(pgrep -f "^$BIN run" | head -1 || true); [ -n "$P" ] && break; sleep 0.25; done
[ -n "$P" ] || { echo "no agent started" >&2; cat "$WORK/bench.log" >&2; exit 1; }
# Into the batch workload (the unary one runs first, 10 s).
sleep 12.5
ADMIN=$(ss -ltnp | { grep "pid=$P," || true; } | awk '{print $4}' | while read -r a; do
    if curl -s -m1 "http://$a/metrics" | grep '^meterd_fsyncs_total' > /dev/null; then echo "$a"; fi; done | head -1)
[ -n "$ADMIN" ] || { echo "agent $P: no admin listener answering /metrics" >&2; exit 1; }
threads() {
    for t in /proc/"$P"/task/*; do
        echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
    done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
counters() {
    curl -s "http://$ADMIN/metrics" | grep -E '^meterd_(fsyncs_total|fsync_seconds_total|write_groups_total|checkpoints_total|checkpoint_seconds_total) ' | sort
}
grep -E '^cpu[0-9]+ ' /proc/stat > "$WORK/c1"; counters > "$WORK/m1"; threads > "$WORK/t1"
sleep 6
threads > "$WORK/t2"; counters > "$WORK/m2"; grep -E '^cpu[0-9]+ ' /proc/stat > "$WORK/c2"
wait "$BENCH"
HZ=$(getconf CLK_TCK)
echo "agent threads (cores):"
join "$WORK/t1" "$WORK/t2" | awk -v hz="$HZ" '{d = ($3 - $2) / hz / 6; if (d > 0.005) printf "  %-20s %.3f\n", $1, d; s += d}
    END {printf "  %-20s %.3f\n", "all", s}'
echo "store counters (per second):"
join "$WORK/m1" "$WORK/m2" | awk '{printf "  %s %.3f\n", $1, ($3 - $2) / 6}'
echo "CPUs (busy share, iowait share):"
paste "$WORK/c1" "$WORK/c2" | awk '{n = NF / 2; busy = 0; tot = 0
    for (i = 2; i <= n; i++) {d = $(i + n) - $i; tot += d; if (i != 5 && i != 6) busy += d}
    printf "  %s %.2f %.2f\n", $1, busy / tot, ($(6 + n) - $6) / tot}'
grep -E '^\| .* \| batch \|' "$WORK/bench.log" || cat "$WORK/bench.log"
