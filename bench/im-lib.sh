# Shell functions shared by bench/im-delivery.sh and bench/im-compare.sh:
# free loopback ports, a fresh `imwatch up` per run, CPU time from /proc and
# waiting for the shared machine to be quiet. Source it; it expects OUT,
# QUIET_WAIT and CLK_TCK to be set, and BIN (default bin) to hold imwatch and
# imwatch-pprof.

# log MESSAGE: a timestamped line on stderr and in OUT/log.txt.
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }

# free_port [N]: a loopback port P below the ephemeral range with P..P+N-1 free.
free_port() {
	local n=${1:-1} p i ok
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 12000))
		ok=1
		for ((i = 0; i < n; i++)); do
			if (exec 3<>"/dev/tcp/127.0.0.1/$((p + i))") 2>/dev/null; then ok=0; break; fi
		done
		[ $ok = 1 ] && { echo "$p"; return; }
	done
	echo "no free port" >&2
	exit 1
}

SERVER_PID=""
DATA=""

# start_server: a fresh `$BIN/imwatch-pprof up` on free ports. Sets DATA,
# PPROF, GATEWAYS and SERVER_PID. Tries again on other ports when one was
# taken meanwhile by another process on this shared machine.
start_server() {
	local try
	for try in 1 2 3; do
		start_server_once && return
		stop_server
	done
	echo "imwatch up did not start three times; the last error:" >&2
	cat "${LAST_UP_ERR:-/dev/null}" >&2
	exit 1
}

start_server_once() {
	local bin=${BIN:-bin}
	DATA=$(mktemp -d "${TMPDIR:-/tmp}/imwatch-bench.XXXXXX")
	local gw nats center
	gw=$(free_port 2)
	nats=$(free_port)
	center=$(free_port)
	PPROF=127.0.0.1:$(free_port)
	GATEWAYS="ws://127.0.0.1:$gw/ws,ws://127.0.0.1:$((gw + 1))/ws"
	local extra=()
	# Newer `imwatch up` also runs an agent on a fixed port: give it a free one.
	"$bin/imwatch" up --help 2>&1 | grep -q -- -agent-listen && extra+=(--agent-listen "127.0.0.1:$(free_port)")
	IMWATCH_PPROF_LISTEN=$PPROF "$bin/imwatch-pprof" up --data "$DATA" --gateway-listen "127.0.0.1:$gw" \
		--nats-listen "127.0.0.1:$nats" --listen "127.0.0.1:$center" --log-level warn "${extra[@]}" \
		>"$DATA/up.out" 2>"$DATA/up.err" &
	SERVER_PID=$!
	for _ in $(seq 300); do
		grep -q "imwatch is up" "$DATA/up.out" 2>/dev/null && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	LAST_UP_ERR=${TMPDIR:-/tmp}/imwatch-bench-up.err
	cp "$DATA/up.err" "$LAST_UP_ERR" 2>/dev/null || true
	log "imwatch up did not start: $(tail -1 "$DATA/up.err" 2>/dev/null)"
	return 1
}

stop_server() {
	if [ -n "$SERVER_PID" ]; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=""
	fi
	[ -n "$DATA" ] && rm -rf "$DATA"
	DATA=""
}

# cpu_ticks PID: user+system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# busy_ticks: CPU time the whole machine spent busy, in clock ticks.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# wait_quiet: other work on the machine (tests, builds) skews the figures, so
# wait up to QUIET_WAIT seconds for it to use less than a fifth of a core.
wait_quiet() {
	local b0 b1 waited=0
	while [ $waited -lt "$QUIET_WAIT" ]; do
		b0=$(busy_ticks)
		sleep 2
		b1=$(busy_ticks)
		[ $((b1 - b0)) -le $((2 * CLK_TCK / 5)) ] && return
		waited=$((waited + 2))
	done
	log "the machine is still busy after ${QUIET_WAIT}s (other processes); running anyway"
}

# sample_cpu PID FILE SECONDS [PROFILE]: the CPU time the server, the load
# generator (PID) and every other process use during the sending phase, which
# starts when the load generator logs "warm-up done"; with PROFILE, a CPU
# profile of the server over that phase into OUT/cpu-PROFILE.pprof. Writes
# "server loadgen other window" seconds to FILE.cpu.
sample_cpu() {
	local pid=$1 f=$2 secs=$3 profile=${4:-} s0 l0 b0 t0 s1 l1 b1 t1
	for _ in $(seq 3000); do
		grep -q "warm-up done" "$f.err" 2>/dev/null && break
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.2
	done
	s0=$(cpu_ticks "$SERVER_PID") l0=$(cpu_ticks "$pid") b0=$(busy_ticks) t0=$(date +%s%N)
	if [ -n "$profile" ]; then
		curl -s -o "$OUT/cpu-$profile.pprof" "http://$PPROF/debug/pprof/profile?seconds=$secs"
	else
		sleep "$secs"
	fi
	s1=$(cpu_ticks "$SERVER_PID") l1=$(cpu_ticks "$pid") b1=$(busy_ticks) t1=$(date +%s%N)
	awk -v s=$((s1 - s0)) -v l=$((l1 - l0)) -v b=$((b1 - b0)) -v t="$CLK_TCK" -v w=$((t1 - t0)) \
		'BEGIN {printf "%.2f %.2f %.2f %.2f\n", s / t, l / t, (b - s - l) / t, w / 1e9}' >"$f.cpu"
}

# JQ_MEDIAN: a jq definition of median over an array of numbers.
JQ_MEDIAN='def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;'
