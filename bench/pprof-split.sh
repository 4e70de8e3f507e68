#!/usr/bin/env bash
# Splits a CPU profile of the reference IM server by part and by kind of work,
# as docs/benchmarks.md quotes it:
#
#   ./bench/pprof-split.sh bin/imwatch-pprof cpu.pprof
#
# A sample counts for the first part, in the order listed, that has a frame in
# its stack, so the parts add up to about 100%; the kinds of work overlap.
set -euo pipefail
[ $# = 2 ] || { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
BIN=$1 PROF=$2
GO=${GO:-go}
# share FOCUS [IGNORE]: % of the samples with a frame matching FOCUS and none matching IGNORE.
share() {
	$GO tool pprof -top -nodecount=1000000 -nodefraction=0 -focus="$1" ${2:+-ignore="$2"} "$BIN" "$PROF" 2>/dev/null |
		awk '/^Showing nodes accounting/ {print $6; exit}'
}
echo "by part"
printf '  %-30s %s\n' "gateway" "$(share 'im/gateway\.')"
printf '  %-30s %s\n' "logic" "$(share 'im/logic\.' 'im/gateway\.')"
printf '  %-30s %s\n' "NATS server (JetStream too)" "$(share 'nats-server' 'im/gateway\.|im/logic\.')"
printf '  %-30s %s\n' "NATS client, own goroutines" "$(share 'nats%2ego|nats\.go' 'im/gateway\.|im/logic\.|nats-server')"
printf '  %-30s %s\n' "GC, background" "$(share 'gcBgMarkWorker|bgsweep|bgscavenge' 'im/gateway\.|im/logic\.|nats')"
echo "by kind of work (overlapping)"
printf '  %-30s %s\n' "encoding/json" "$(share 'encoding/json')"
printf '  %-30s %s\n' "syscalls" "$(share 'Syscall6')"
printf '  %-30s %s\n' "  outside NATS (websocket)" "$(share 'Syscall6' 'nats')"
printf '  %-30s %s\n' "coder/websocket" "$(share 'coder/websocket')"
printf '  %-30s %s\n' "memory allocation" "$(share 'runtime\.mallocgc')"
printf '  %-30s %s\n' "context package" "$(share '^context\.')"
printf '  %-30s %s\n' "regexp (protocol.ValidUser)" "$(share '^regexp\.')"
printf '  %-30s %s\n' "IM metrics" "$(share 'immetrics|client_golang')"
printf '  %-30s %s\n' "scheduler" "$(share 'runtime\.(schedule|findRunnable|netpoll|park_m|goready|ready)$')"
printf '  %-30s %s\n' "timers" "$(share 'runtime\.(\(\*timers\)\.run|runTimer|checkTimers)|time\.sendTime')"
