#!/usr/bin/env bash
# One-to-one delivery benchmark of the reference IM on this machine: the
# figures in docs/benchmarks.md come from here.
#
# Every run gets a fresh `imwatch up` (embedded NATS with JetStream, two
# gateways, a logic node) on free loopback ports with a temporary --data
# directory. For each user count it runs `imwatch im bench --json` up a ladder
# of rates, REPEAT times each, and calls a rate sustainable when most repeats
# lose nothing, reach the rate and keep the send-to-delivery p99 within
# P99_LIMIT_MS. It then drives the server far past what it can take
# (SATURATE_RATE) to measure the most it delivers, taking a CPU profile of
# the server meanwhile, and measures the server's memory per idle connection.
# The load generator runs on the same machine and its CPU time is reported.
#
#   ./bench/im-delivery.sh                         # everything: 30 to 60 minutes
#   USERS_LIST=1000 REPEAT=1 ./bench/im-delivery.sh  # a quick look
#
# Settings (environment):
#   USERS_LIST     user counts                               (default "1000 10000")
#   RATES          rate ladder, msg/s, ascending             (default "1000 2000 3000 4000 5000 6000 8000 10000")
#   REPEAT         runs per rate; medians are reported       (default 3)
#   DURATION       seconds of sending per run                (default 20)
#   P99_LIMIT_MS   send-to-delivery p99 allowed              (default 50)
#   SATURATE_RATE  rate of the throughput run, 0 skips it    (default 50000)
#   SATURATE_INFLIGHT  sends in flight in that run, so that it measures
#                  throughput, not timeouts                  (default 2000)
#   IDLE_USERS     idle connection counts for memory, "" skips (default "1000 10000")
#   QUIET_WAIT     seconds to wait for the machine to be idle before each run (default 180)
#   NOISE_LIMIT    a run during which other processes used more than this % of
#                  a core is noisy: it is run again, up to NOISY_RETRIES times
#                  (defaults 25 and 2); the last try is kept, marked noisy
#   OUT            result directory                          (default bench/results/im-delivery-UTCSTAMP)
#   BIN            directory of another build's imwatch and imwatch-pprof to
#                  measure, e.g. bench/im-compare.sh's bin/rev-REV (default:
#                  this tree, built into bin/)
#
# Output: OUT/runs.jsonl (every run's report plus the CPU seconds the server
# and the load generator used), OUT/summary.txt (the tables), OUT/cpu-*.pprof
# OUT/cpu-*.top.txt and OUT/cpu-*.split.txt (server CPU profiles), OUT/idle.jsonl
# and OUT/heap-idle-*.top.txt (idle connections).
set -euo pipefail
cd "$(dirname "$0")/.."

USERS_LIST=${USERS_LIST:-"1000 10000"}
RATES=${RATES-"1000 2000 3000 4000 5000 6000 8000 10000"}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-20}
P99_LIMIT_MS=${P99_LIMIT_MS:-50}
SATURATE_RATE=${SATURATE_RATE:-50000}
SATURATE_INFLIGHT=${SATURATE_INFLIGHT:-2000}
IDLE_USERS=${IDLE_USERS-"1000 10000"}
OUT=${OUT:-bench/results/im-delivery-$(date -u +%Y%m%dT%H%M%SZ)}
QUIET_WAIT=${QUIET_WAIT:-180}
NOISE_LIMIT=${NOISE_LIMIT:-25}
NOISY_RETRIES=${NOISY_RETRIES:-2}
GO=${GO:-go}

for tool in jq curl; do
	command -v "$tool" >/dev/null || { echo "im-delivery.sh: $tool is needed (apt-get install $tool)" >&2; exit 1; }
done
# 10,000 clients and 10,000 server-side connections: one descriptor each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
	echo "im-delivery.sh: ulimit -n is $(ulimit -n); 10,000 users need about 11,000" >&2
fi

mkdir -p "$OUT" bin
REV=$(git describe --always --dirty 2>/dev/null || cat REVISION 2>/dev/null || echo unknown)
# BIN: a directory with another build's imwatch and imwatch-pprof (such as
# bench/im-compare.sh's bin/rev-REV) to measure that instead of this tree.
BIN=${BIN:-bin}
if [ "$BIN" = bin ]; then
	$GO build -o bin/imwatch ./cmd/imwatch
	$GO build -o bin/imwatch-pprof ./bench/imwatch-pprof
else
	REV="$REV, measuring $BIN"
fi
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=bench/im-lib.sh
. bench/im-lib.sh
goroutines() {
	curl -s -o "$OUT/goroutines.txt" "http://$PPROF/debug/pprof/goroutine?debug=1"
	awk 'NR == 1 {print $NF}' "$OUT/goroutines.txt"
	rm -f "$OUT/goroutines.txt"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

cleanup() {
	stop_server
	[ -n "${IDLE_PID:-}" ] && kill "$IDLE_PID" 2>/dev/null || true
}
trap cleanup EXIT

# bench USERS RATE TAG [PROFILE] [ARGS...]: one run against a fresh server,
# again when other processes disturbed it; appends to runs.jsonl.
bench() {
	local try noisy
	for try in $(seq 0 "$NOISY_RETRIES"); do
		bench_once "$@"
		noisy=$(jq -r --argjson lim "$NOISE_LIMIT" '(.other_cpu_seconds // 0) / (.cpu_window_seconds // 1) * 100 > $lim' "$OUT/run-$3.last" 2>/dev/null || echo false)
		if [ "$noisy" != true ] || [ "$try" = "$NOISY_RETRIES" ]; then
			jq -c --argjson noisy "$noisy" '. + {noisy: $noisy}' "$OUT/run-$3.last" >>"$OUT/runs.jsonl" 2>/dev/null || true
			return
		fi
		cat "$OUT/run-$3.last" >>"$OUT/runs-noisy.jsonl"
		log "$3: other processes used more than $NOISE_LIMIT% of a core meanwhile; again"
	done
}

bench_once() {
	local users=$1 rate=$2 tag=$3 profile=${4:-} f pid sampler srv_cpu=null lg_cpu=null other_cpu=null window=null t0=$SECONDS
	wait_quiet
	start_server
	f="$OUT/run-$tag"
	"$BIN/imwatch" im bench --data "$DATA" --gateway "$GATEWAYS" --users "$users" --rate "$rate" \
		--duration "${DURATION}s" --json --log-level info "${@:5}" >"$f.json" 2>"$f.err" &
	pid=$!
	sample_cpu "$pid" "$f" $((DURATION - 2)) "$profile" &
	sampler=$!
	wait "$pid" || true
	wait "$sampler" || true
	if [ -n "$profile" ] && [ -s "$OUT/cpu-$profile.pprof" ]; then
		$GO tool pprof -top -nodecount=40 "$BIN/imwatch-pprof" "$OUT/cpu-$profile.pprof" >"$OUT/cpu-$profile.top.txt" 2>/dev/null || true
		./bench/pprof-split.sh "$BIN/imwatch-pprof" "$OUT/cpu-$profile.pprof" >"$OUT/cpu-$profile.split.txt" 2>/dev/null || true
	fi
	stop_server
	rm -f "$f.last"
	if ! jq -e . "$f.json" >/dev/null 2>&1; then
		log "run $tag failed: $(tail -3 "$f.err")"
		return
	fi
	[ -s "$f.cpu" ] && read -r srv_cpu lg_cpu other_cpu window <"$f.cpu"
	jq -c --arg tag "$tag" --argjson srv "$srv_cpu" --argjson lg "$lg_cpu" --argjson other "$other_cpu" --argjson window "$window" \
		--argjson wall $((SECONDS - t0)) '. + {tag: $tag, server_cpu_seconds: $srv, loadgen_cpu_seconds: $lg, other_cpu_seconds: $other,
		cpu_window_seconds: $window, wall_seconds: $wall}' "$f.json" >"$f.last"
	log "$tag: $(jq -r '"sent \(.sent) delivered \(.delivered) lost \(.lost) dup \(.duplicates) err \(.errors) delivered/s \(.delivered_per_second) e2e p50 \(.e2e_p50_ms) p99 \(.e2e_p99_ms) ms, ack p99 \(.ack_p99_ms) ms, achieved \(.rate_achieved)"' "$f.json"), CPU in ${window}s of sending: server ${srv_cpu}s, load generator ${lg_cpu}s, other processes ${other_cpu}s"
}

# passes: a run is good when it lost nothing, failed no send, reached the rate
# and kept p99 within the limit.
PASS_FILTER='.lost == 0 and .duplicates == 0 and .errors == 0 and .rate_achieved and .e2e_p99_ms <= ($lim | tonumber)'

# summarize USERS RATE: medians of the runs at that rate and whether most passed.
summarize() {
	jq -s -r --argjson u "$1" --argjson r "$2" --arg lim "$P99_LIMIT_MS" '
		'"$JQ_MEDIAN"'
		[.[] | select(.users == $u and .target_rate == $r and (.tag | startswith("ladder")))] as $runs
		| if ($runs | length) == 0 then empty else
		  ([$runs[] | select('"$PASS_FILTER"')] | length) as $ok
		  | [$u, $r, ($runs | length), $ok, ([$runs[] | select(.noisy)] | length),
		     ([$runs[].delivered_per_second] | median),
		     ([$runs[].e2e_p50_ms] | median), ([$runs[].e2e_p99_ms] | median), ([$runs[].ack_p99_ms] | median),
		     ([$runs[].lost] | add), ([$runs[].errors] | add),
		     ([$runs[] | (.server_cpu_seconds // 0) / (.cpu_window_seconds // 1) * 100 | round] | median),
		     ([$runs[] | (.loadgen_cpu_seconds // 0) / (.cpu_window_seconds // 1) * 100 | round] | median),
		     ([$runs[] | (.other_cpu_seconds // 0) / (.cpu_window_seconds // 1) * 100 | round] | max),
		     ([$runs[].connect_seconds] | median),
		     (if $ok * 2 > ($runs | length) then "yes" else "no" end)]
		  | @tsv end' "$OUT/runs.jsonl"
}

log "results in $OUT; $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r), $($GO version)"
log "revision: $REV, uncommitted changes: $(git diff --shortstat 2>/dev/null | tr -d '\n')"
log "settings: USERS_LIST='$USERS_LIST' RATES='$RATES' REPEAT=$REPEAT DURATION=$DURATION P99_LIMIT_MS=$P99_LIMIT_MS SATURATE_RATE=$SATURATE_RATE IDLE_USERS='$IDLE_USERS'"
touch "$OUT/runs.jsonl"
declare -A BEST
for users in $USERS_LIST; do
	BEST[$users]=none
	fails=0
	for rate in $RATES; do
		for i in $(seq "$REPEAT"); do
			bench "$users" "$rate" "ladder-u$users-r$rate-$i"
		done
		line=$(summarize "$users" "$rate")
		if [ "$(echo "$line" | awk -F'\t' '{print $NF}')" = yes ]; then
			BEST[$users]=$rate
			fails=0
		else
			fails=$((fails + 1))
			# Two rates in a row that do not hold: the higher ones will not either.
			[ $fails -ge 2 ] && break
		fi
	done
	if [ "$SATURATE_RATE" != 0 ]; then
		for i in $(seq "$REPEAT"); do
			profile=""
			[ "$i" = 1 ] && profile="u$users-r$SATURATE_RATE"
			bench "$users" "$SATURATE_RATE" "saturate-u$users-r$SATURATE_RATE-$i" "$profile" --max-inflight "$SATURATE_INFLIGHT"
		done
	fi
done

# Idle connections: the server's memory before and after N users connect and
# sit idle, after a forced GC (the heap endpoint with gc=1 runs one).
idle_memory() {
	local n=$1 tag=$2 rss0 heap0 sys0 gor0 rss1 heap1 sys1 gor1 lgrss c0 c1
	start_server
	sleep 3
	curl -s -o /dev/null "http://$PPROF/debug/pprof/heap?gc=1"
	rss0=$(rss_kb "$SERVER_PID")
	read -r heap0 sys0 < <(curl -s "http://$PPROF/debug/vars" | jq -r '"\(.memstats.HeapInuse) \(.memstats.Sys)"')
	gor0=$(goroutines)
	"$BIN/imwatch" im bench --data "$DATA" --gateway "$GATEWAYS" --users "$n" --rate 0 --duration 3600s \
		--json --log-level info >"$OUT/idle-$tag.json" 2>"$OUT/idle-$tag.err" &
	IDLE_PID=$!
	while ! grep -q "all users connected" "$OUT/idle-$tag.err"; do
		kill -0 "$IDLE_PID" 2>/dev/null || { log "idle $n: the load generator failed: $(tail -2 "$OUT/idle-$tag.err")"; return; }
		sleep 0.5
	done
	sleep 5
	c0=$(cpu_ticks "$SERVER_PID")
	sleep 10
	c1=$(cpu_ticks "$SERVER_PID")
	curl -s -o /dev/null "http://$PPROF/debug/pprof/heap?gc=1"
	sleep 1
	rss1=$(rss_kb "$SERVER_PID")
	read -r heap1 sys1 < <(curl -s "http://$PPROF/debug/vars" | jq -r '"\(.memstats.HeapInuse) \(.memstats.Sys)"')
	gor1=$(goroutines)
	curl -s -o "$OUT/heap-idle-$tag.pprof" "http://$PPROF/debug/pprof/heap"
	$GO tool pprof -sample_index=inuse_space -top -nodecount=25 "$BIN/imwatch-pprof" "$OUT/heap-idle-$tag.pprof" >"$OUT/heap-idle-$tag.top.txt" 2>/dev/null || true
	lgrss=$(rss_kb "$IDLE_PID")
	kill -TERM "$IDLE_PID"
	wait "$IDLE_PID" || true
	IDLE_PID=""
	stop_server
	jq -c -n --argjson n "$n" --arg tag "$tag" --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson heap0 "$heap0" --argjson heap1 "$heap1" \
		--argjson sys0 "$sys0" --argjson sys1 "$sys1" --argjson gor0 "$gor0" --argjson gor1 "$gor1" --argjson lgrss "$lgrss" \
		--argjson cpu "$(awk -v c=$((c1 - c0)) -v t="$CLK_TCK" 'BEGIN {printf "%.3f", c / t / 10 * 100}')" \
		--argjson connect "$(jq .connect_seconds "$OUT/idle-$tag.json" 2>/dev/null || echo null)" \
		'{users: $n, tag: $tag, rss_kb_before: $rss0, rss_kb_after: $rss1, heap_inuse_before: $heap0, heap_inuse_after: $heap1,
		  sys_before: $sys0, sys_after: $sys1, goroutines_before: $gor0, goroutines_after: $gor1, loadgen_rss_kb: $lgrss,
		  idle_cpu_percent: $cpu, connect_seconds: $connect}' >>"$OUT/idle.jsonl"
	log "idle $n: server RSS $rss0 -> $rss1 kB, heap in use $heap0 -> $heap1 B, goroutines $gor0 -> $gor1, idle CPU $((c1 - c0)) ticks in 10s, load generator RSS $lgrss kB"
}
for n in $IDLE_USERS; do
	for i in $(seq "$REPEAT"); do
		wait_quiet
		idle_memory "$n" "u$n-$i"
	done
done

{
	echo "# im-delivery.sh, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r), $($GO version | awk '{print $3}')"
	echo "# revision: $REV"
	echo "# settings: USERS_LIST='$USERS_LIST' RATES='$RATES' REPEAT=$REPEAT DURATION=${DURATION}s P99_LIMIT_MS=$P99_LIMIT_MS"
	echo
	echo "## Rate ladder (medians of the runs; CPU in % of one core over the sending time)"
	printf 'users\trate\truns\tpassed\tnoisy\tdelivered/s\te2e_p50_ms\te2e_p99_ms\tack_p99_ms\tlost\terrors\tserver_cpu%%\tloadgen_cpu%%\tother_cpu%%_max\tconnect_s\tsustained\n'
	for users in $USERS_LIST; do
		for rate in $RATES; do summarize "$users" "$rate"; done
	done
	echo
	echo "## Highest sustained rate (lost 0, rate reached, e2e p99 <= $P99_LIMIT_MS ms in most runs)"
	for users in $USERS_LIST; do echo "users $users: ${BEST[$users]} msg/s"; done
	if [ "$SATURATE_RATE" != 0 ]; then
		echo
		echo "## Saturation: offered $SATURATE_RATE msg/s (the most the server delivers, latency unbounded)"
		printf 'users\truns\tnoisy\tsent/s\tdelivered/s\te2e_p50_ms\te2e_p99_ms\tlost\terrors\tserver_cpu%%\tloadgen_cpu%%\tother_cpu%%_max\n'
		for users in $USERS_LIST; do
			jq -s -r --argjson u "$users" '
				'"$JQ_MEDIAN"'
				def pct(f): [.[] | (f // 0) / (.cpu_window_seconds // 1) * 100 | round];
				[.[] | select(.users == $u and (.tag | startswith("saturate")))] | select(length > 0)
				| [$u, length, ([.[] | select(.noisy)] | length), ([.[].sent_per_second] | median), ([.[].delivered_per_second] | median),
				   ([.[].e2e_p50_ms] | median), ([.[].e2e_p99_ms] | median), ([.[].lost] | add), ([.[].errors] | add),
				   (pct(.server_cpu_seconds) | median), (pct(.loadgen_cpu_seconds) | median), (pct(.other_cpu_seconds) | max)] | @tsv' "$OUT/runs.jsonl"
		done
	fi
	if [ -s "$OUT/idle.jsonl" ]; then
		echo
		echo "## Idle connections: the server's cost per connection, after a forced GC (medians)"
		printf 'users\truns\tRSS_bytes/conn\theap_inuse_bytes/conn\truntime_sys_bytes/conn\tgoroutines/conn\tidle_server_cpu%%\tloadgen_RSS_bytes/user\tconnect_s\n'
		for n in $IDLE_USERS; do
			jq -s -r --argjson u "$n" '
				'"$JQ_MEDIAN"'
				[.[] | select(.users == $u)] | select(length > 0)
				| [$u, length, ([.[] | (.rss_kb_after - .rss_kb_before) * 1024 / $u | round] | median),
				   ([.[] | (.heap_inuse_after - .heap_inuse_before) / $u | round] | median),
				   ([.[] | (.sys_after - .sys_before) / $u | round] | median),
				   ([.[] | (.goroutines_after - .goroutines_before) / $u] | median),
				   ([.[].idle_cpu_percent] | median), ([.[] | .loadgen_rss_kb * 1024 / $u | round] | median),
				   ([.[].connect_seconds] | median)] | @tsv' "$OUT/idle.jsonl"
		done
	fi
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
