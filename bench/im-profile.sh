#!/usr/bin/env bash
# Profiles the reference IM server under one load, for docs/benchmarks.md's
# "what limits it": starts a fresh `imwatch up` (with Go's profiling endpoints,
# bench/imwatch-pprof) on free loopback ports, runs `imwatch im bench` against
# it and takes a CPU profile of the server over the sending phase. RATE 0
# profiles USERS idle connections instead; PHASE=connect profiles the server
# while the users connect.
#
#   ./bench/im-profile.sh USERS RATE [SECONDS]
#   ./bench/im-profile.sh 1000 2000 20        # 1,000 users, 2,000 msg/s, 20 s
#   ./bench/im-profile.sh 10000 0 20          # 10,000 idle users
#   PHASE=connect ./bench/im-profile.sh 10000 0 20
#
# Output in OUT (default bench/results/im-profile-USERS-RATE-UTCSTAMP):
# cpu.pprof, top.txt (flat and cumulative), heap.pprof and heap.txt (what the
# server's heap holds at the end), split.txt (the server's CPU split
# by part and kind of work, bench/pprof-split.sh), gctrace.txt (the
# server's GODEBUG=gctrace=1 lines), bench.json, and the CPU seconds used.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
USERS=$1 RATE=$2 SECS=${3:-20}
PHASE=${PHASE:-send}
OUT=${OUT:-bench/results/im-profile-$USERS-$RATE-$(date -u +%Y%m%dT%H%M%SZ)}
GO=${GO:-go}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$OUT" bin
$GO build -o bin/imwatch ./cmd/imwatch
$GO build -o bin/imwatch-pprof ./bench/imwatch-pprof

# shellcheck source=bench/im-lib.sh
. bench/im-lib.sh
CLK_TCK=$(getconf CLK_TCK)
# Other work on the machine skews a profile: wait up to QUIET_WAIT seconds
# (default 300) for it to use less than a fifth of a core.
waited=0
while [ $waited -lt "${QUIET_WAIT:-300}" ]; do
	b0=$(busy_ticks); sleep 2; b1=$(busy_ticks)
	[ $((b1 - b0)) -le $((2 * CLK_TCK / 5)) ] && break
	waited=$((waited + 2))
done
DATA=$(mktemp -d "${TMPDIR:-/tmp}/imwatch-profile.XXXXXX")
GW=$(free_port 2)
PPROF=127.0.0.1:$(free_port)
SERVER_PID="" BENCH_PID=""
cleanup() {
	[ -n "$BENCH_PID" ] && kill -TERM "$BENCH_PID" 2>/dev/null && wait "$BENCH_PID" 2>/dev/null
	[ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
	rm -rf "$DATA"
}
trap cleanup EXIT
extra=()
bin/imwatch up --help 2>&1 | grep -q -- -agent-listen && extra+=(--agent-listen "127.0.0.1:$(free_port)")
GODEBUG=gctrace=1 IMWATCH_PPROF_LISTEN=$PPROF bin/imwatch-pprof up --data "$DATA" --gateway-listen "127.0.0.1:$GW" \
	--nats-listen "127.0.0.1:$(free_port)" --listen "127.0.0.1:$(free_port)" --log-level warn "${extra[@]}" \
	>"$DATA/up.out" 2>"$OUT/gctrace.txt" &
SERVER_PID=$!
for _ in $(seq 300); do
	grep -q "imwatch is up" "$DATA/up.out" 2>/dev/null && break
	sleep 0.1
done
grep -q "imwatch is up" "$DATA/up.out" || { echo "imwatch up did not start" >&2; cat "$OUT/gctrace.txt" >&2; exit 1; }

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
if [ "$RATE" = 0 ]; then
	bench_secs=$((SECS + 3600))
	start_mark="all users connected"
else
	bench_secs=$SECS
	start_mark="warm-up done"
fi
[ "$PHASE" = connect ] && start_mark="connecting\|all users connected"
bin/imwatch im bench --data "$DATA" --gateway "ws://127.0.0.1:$GW/ws,ws://127.0.0.1:$((GW + 1))/ws" \
	--users "$USERS" --rate "$RATE" --duration "${bench_secs}s" --json --log-level info >"$OUT/bench.json" 2>"$OUT/bench.err" &
BENCH_PID=$!
if [ "$PHASE" = connect ]; then
	sleep 0.3 # the profile covers the connecting; stop it at SECONDS or when all are connected
else
	until grep -q "$start_mark" "$OUT/bench.err"; do
		kill -0 "$BENCH_PID" 2>/dev/null || { echo "bench failed:" >&2; cat "$OUT/bench.err" >&2; exit 1; }
		sleep 0.2
	done
	[ "$RATE" = 0 ] && sleep 5 # let the connections settle
fi
s0=$(ticks "$SERVER_PID") l0=$(ticks "$BENCH_PID") b0=$(busy_ticks) t0=$(date +%s%N)
prof_secs=$SECS
[ "$PHASE" != connect ] && [ "$RATE" != 0 ] && prof_secs=$((SECS - 2))
curl -s -o "$OUT/cpu.pprof" "http://$PPROF/debug/pprof/profile?seconds=$prof_secs"
s1=$(ticks "$SERVER_PID") l1=$(ticks "$BENCH_PID") b1=$(busy_ticks) t1=$(date +%s%N)
curl -s -o "$OUT/heap.pprof" "http://$PPROF/debug/pprof/heap"
if [ "$RATE" = 0 ]; then
	kill -TERM "$BENCH_PID"
fi
wait "$BENCH_PID" || true
BENCH_PID=""
awk -v c=$((s1 - s0)) -v l=$((l1 - l0)) -v b=$((b1 - b0)) -v t="$CLK_TCK" -v w=$((t1 - t0)) 'BEGIN {
	w /= 1e9
	printf "CPU in %.1f s, in %% of one core: server %.0f%%, load generator %.0f%%, other processes %.0f%%\n",
		w, c / t / w * 100, l / t / w * 100, (b - c - l) / t / w * 100 }' | tee "$OUT/cpu.txt"

$GO tool pprof -top -nodecount=40 bin/imwatch-pprof "$OUT/cpu.pprof" >"$OUT/top.txt" 2>/dev/null
$GO tool pprof -top -cum -nodecount=80 bin/imwatch-pprof "$OUT/cpu.pprof" >>"$OUT/top.txt" 2>/dev/null
$GO tool pprof -sample_index=inuse_space -top -nodecount=30 bin/imwatch-pprof "$OUT/heap.pprof" >"$OUT/heap.txt" 2>/dev/null
./bench/pprof-split.sh bin/imwatch-pprof "$OUT/cpu.pprof" | tee "$OUT/split.txt"
echo "results in $OUT"
