#!/usr/bin/env bash
# A/B comparison of two builds of the reference IM on this shared machine:
# the server's and the load generator's CPU time per delivered message at
# fixed offered rates, measured in alternating runs (A B, then B A, ...) so
# that both builds see the same background load. Each run is a fresh
# `imwatch-pprof up` of that build driven by the same build's `imwatch im bench`.
#
#   ./bench/im-compare.sh BASE [NEW]
#     BASE, NEW: a git revision, or a directory holding imwatch and imwatch-pprof
#     (NEW defaults to the working tree, built into bin/)
#   USERS_LIST="1000 10000" RATES="2000 5000 50000:2000" REPEAT=3 ./bench/im-compare.sh b6b542d
#
# Settings (environment): USERS_LIST (default "1000 10000"), RATES: offered
# msg/s, RATE:INFLIGHT to also set --max-inflight (default "2000 5000"),
# REPEAT runs per build and rate (default 3), DURATION seconds of sending
# (default 20), QUIET_WAIT (default 60), OUT (default
# bench/results/im-compare-UTCSTAMP). A run during which other processes used
# more than NOISE_LIMIT % of a core (default 50) is run again, up to
# NOISY_RETRIES times (default 2); the last try is kept, marked noisy.
#
# Output: OUT/runs.jsonl (each run's report, build, CPU seconds of server,
# load generator and other processes over the sending phase) and
# OUT/summary.txt: per build the medians of delivered/s, e2e p50/p99 and
# CPU µs per delivered message, and NEW/BASE ratios of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
USERS_LIST=${USERS_LIST:-"1000 10000"}
RATES=${RATES:-"2000 5000"}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-20}
QUIET_WAIT=${QUIET_WAIT:-60}
NOISE_LIMIT=${NOISE_LIMIT:-50}
NOISY_RETRIES=${NOISY_RETRIES:-2}
OUT=${OUT:-bench/results/im-compare-$(date -u +%Y%m%dT%H%M%SZ)}
GO=${GO:-go}
CLK_TCK=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$OUT" bin
# shellcheck source=bench/im-lib.sh
. bench/im-lib.sh
trap stop_server EXIT

# bindir SPEC: a directory with the two binaries of SPEC, built if needed.
bindir() {
	local spec=$1 dir tmp
	if [ -d "$spec" ]; then echo "$spec"; return; fi
	if [ "$spec" = worktree ]; then
		$GO build -o bin/imwatch ./cmd/imwatch && $GO build -o bin/imwatch-pprof ./bench/imwatch-pprof
		echo bin
		return
	fi
	dir=bin/rev-$(git rev-parse --short "$spec")
	if [ ! -x "$dir/imwatch-pprof" ]; then
		tmp=$(mktemp -d)
		git archive "$spec" | tar -x -C "$tmp"
		mkdir -p "$dir"
		(cd "$tmp" && $GO build -o "$OLDPWD/$dir/imwatch" ./cmd/imwatch && $GO build -o "$OLDPWD/$dir/imwatch-pprof" ./bench/imwatch-pprof)
		rm -rf "$tmp"
	fi
	echo "$dir"
}
A=$(bindir "$1")
B=$(bindir "${2:-worktree}")
log "A (base) = $1 in $A, B (new) = ${2:-working tree $(git describe --always --dirty)} in $B; $(nproc) CPUs, $(uname -r)"
log "settings: USERS_LIST='$USERS_LIST' RATES='$RATES' REPEAT=$REPEAT DURATION=$DURATION"

# run BUILD BINDIR USERS RATE INFLIGHT TAG: one run, again when noisy.
run() {
	local try noisy
	for try in $(seq 0 "$NOISY_RETRIES"); do
		run_once "$@"
		noisy=$(jq -r --argjson lim "$NOISE_LIMIT" '(.other_cpu_seconds // 0) / (.cpu_window_seconds // 1) * 100 > $lim' "$OUT/run-$6.last" 2>/dev/null || echo false)
		if [ "$noisy" != true ] || [ "$try" = "$NOISY_RETRIES" ]; then
			jq -c --argjson noisy "$noisy" '. + {noisy: $noisy}' "$OUT/run-$6.last" >>"$OUT/runs.jsonl" 2>/dev/null || true
			return
		fi
		cat "$OUT/run-$6.last" >>"$OUT/runs-noisy.jsonl"
		log "$6: other processes used more than $NOISE_LIMIT% of a core meanwhile; again"
	done
}

run_once() {
	local build=$1 users=$3 rate=$4 inflight=$5 tag=$6 f pid srv=null lg=null other=null window=null
	local args=()
	[ -n "$inflight" ] && args=(--max-inflight "$inflight")
	BIN=$2
	wait_quiet
	start_server
	f="$OUT/run-$tag"
	"$BIN/imwatch" im bench --data "$DATA" --gateway "$GATEWAYS" --users "$users" --rate "$rate" \
		--duration "${DURATION}s" --json --log-level info "${args[@]}" >"$f.json" 2>"$f.err" &
	pid=$!
	sample_cpu "$pid" "$f" $((DURATION - 2)) &
	local sampler=$!
	wait "$pid" || true
	wait "$sampler" || true
	stop_server
	rm -f "$f.last"
	if ! jq -e . "$f.json" >/dev/null 2>&1; then
		log "$tag failed: $(tail -3 "$f.err")"
		return
	fi
	[ -s "$f.cpu" ] && read -r srv lg other window <"$f.cpu"
	jq -c --arg build "$build" --arg tag "$tag" --argjson srv "$srv" --argjson lg "$lg" --argjson other "$other" --argjson window "$window" \
		'. + {build: $build, tag: $tag, server_cpu_seconds: $srv, loadgen_cpu_seconds: $lg, other_cpu_seconds: $other, cpu_window_seconds: $window}' \
		"$f.json" >"$f.last"
	log "$tag: delivered/s $(jq .delivered_per_second "$f.json"), e2e p99 $(jq .e2e_p99_ms "$f.json") ms, lost $(jq .lost "$f.json"), errors $(jq .errors "$f.json"); CPU s in ${window}s: server $srv, load generator $lg, other $other"
}

touch "$OUT/runs.jsonl"
for users in $USERS_LIST; do
	for spec in $RATES; do
		rate=${spec%%:*} inflight=""
		[ "$spec" != "$rate" ] && inflight=${spec#*:}
		for i in $(seq "$REPEAT"); do
			if [ $((i % 2)) = 1 ]; then order="A B"; else order="B A"; fi
			for b in $order; do
				if [ $b = A ]; then dir=$A; else dir=$B; fi
				run "$b" "$dir" "$users" "$rate" "$inflight" "u$users-r$rate-$b-$i"
			done
		done
	done
done

{
	echo "# im-compare.sh, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r); A = $1, B = ${2:-working tree $(git describe --always --dirty)}"
	echo "# medians of $REPEAT runs each; CPU in µs per delivered message over the sending phase; ratio = B / A"
	printf 'users\trate\tbuild\truns\tnoisy\tdelivered/s\te2e_p50_ms\te2e_p99_ms\tlost\terrors\tserver_us/msg\tloadgen_us/msg\tother_cpu%%_max\n'
	jq -s -r "$JQ_MEDIAN"'
		def permsg(f): [.[] | (f // 0) / ((.delivered_per_second // 0) * (.cpu_window_seconds // 1) + 1e-9) * 1e6] | median | . * 10 | round / 10;
		def row: [.[0].users, .[0].target_rate, .[0].build, length, ([.[] | select(.noisy)] | length), ([.[].delivered_per_second] | median), ([.[].e2e_p50_ms] | median),
		          ([.[].e2e_p99_ms] | median), ([.[].lost] | add), ([.[].errors] | add), permsg(.server_cpu_seconds), permsg(.loadgen_cpu_seconds),
		          ([.[] | (.other_cpu_seconds // 0) / (.cpu_window_seconds // 1) * 100 | round] | max)];
		group_by([.users, .target_rate]) | .[] as $g
		| ($g | map(select(.build == "A")) | select(length > 0) | row),
		  ($g | map(select(.build == "B")) | select(length > 0) | row),
		  (($g | map(select(.build == "A"))) as $a | ($g | map(select(.build == "B"))) as $b
		   | select(($a | length) > 0 and ($b | length) > 0)
		   | ($a | row) as $ra | ($b | row) as $rb
		   | [$ra[0], $ra[1], "B/A", "", "", ($rb[5] / $ra[5] * 100 | round / 100), "", ($rb[7] / $ra[7] * 100 | round / 100), "", "",
		      ($rb[10] / $ra[10] * 100 | round / 100), ($rb[11] / $ra[11] * 100 | round / 100), ""])
		| @tsv' "$OUT/runs.jsonl"
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
