#!/usr/bin/env bash
# Span cost of pkg/imtrace against the bare OpenTelemetry SDK doing the same
# (start a hop span under a remote parent, set the messaging attributes, end
# it, into a processor that does nothing expensive). The figures in
# docs/benchmarks.md ("Tracing: span cost") come from here.
#
# The benchmarks run in ROUNDS rounds; each round runs every benchmark once,
# one after the other, so that a peer and the package see the same load.
# Reported: the median of the rounds per benchmark (ns/op, cpu-ns/op, B/op,
# allocs/op) and the median of the per-round ratios package/SDK. The raw output is kept
# in OUT in the Go benchmark format, so benchstat can read it too.
#
#   ./bench/tracing/run.sh              # 10 rounds of 1s per benchmark: about 3 minutes
#   ROUNDS=3 BENCHTIME=200ms ./bench/tracing/run.sh
#   SUMMARY_ONLY=/tmp/raw.txt ./bench/tracing/run.sh   # summarise a kept run again
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${ROUNDS:-10}
benchtime=${BENCHTIME:-1s}
out=${OUT:-$(mktemp -t imtrace-bench.XXXXXX)}
bin=$(mktemp -t imtrace-test.XXXXXX)
trap 'rm -f "$bin"' EXIT

if [ -n "${SUMMARY_ONLY:-}" ]; then
	out=$SUMMARY_ONLY # summarise an earlier run's raw output
else
	go test -c -o "$bin" ./pkg/imtrace/
	echo "revision $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty), $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
	: >"$out"
	for i in $(seq "$rounds"); do
		"$bin" -test.run '^$' -test.bench '^Benchmark(Span|Clock)' -test.benchmem -test.count 1 \
			-test.benchtime "$benchtime" | grep '^Benchmark' | sed "s/^/round=$i /" >>"$out"
	done
	echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); raw output: $out"
fi

# median of the values on stdin
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.4g\n", (v[NR/2]+v[NR/2+1])/2}'; }

# value UNIT: the number before the unit on each line of benchmark $1
field() { awk -v b="$1" -v u="$2" '{n=$2; sub(/-[0-9]+$/, "", n)} n==b {for (i=3; i<NF; i++) if ($(i+1)==u) print $i}' "$out"; }
# per-round ratio of benchmark $1 to $2 in UNIT $3, or difference with OP=-
ratio() {
	awk -v a="$1" -v p="$2" -v u="$3" -v op="${OP:-/}" '
		{n=$2; sub(/-[0-9]+$/, "", n); v=""; for (i=3; i<NF; i++) if ($(i+1)==u) v=$i}
		n==a {x[$1]=v} n==p {y[$1]=v}
		END {for (k in x) if (k in y) {if (op=="-") printf "%.1f\n", x[k]-y[k]; else printf "%.3f\n", x[k]/y[k]}}' "$out" | median
}

printf '\n%-40s %10s %12s %8s %10s\n' benchmark ns/op cpu-ns/op B/op allocs/op
for b in $(awk '{n=$2; sub(/-[0-9]+$/, "", n); print n}' "$out" | awk '!seen[$0]++'); do
	printf '%-40s %10s %12s %8s %10s\n' "$b" "$(field "$b" ns/op | median)" "$(field "$b" cpu-ns/op | median)" \
		"$(field "$b" B/op | median)" "$(field "$b" allocs/op | median)"
done
echo "(medians of the rounds; cpu-ns/op is the benchmark thread's CPU time, which a loaded machine inflates less)"
echo
for pkg in imtrace imtrace-given; do
	for peer in sdk sdk-prebuilt; do
		for kind in sampled unsampled; do
			echo "ratio $pkg/$peer $kind, cpu-ns/op (median of per-round ratios): $(ratio "BenchmarkSpan/$pkg/$kind" "BenchmarkSpan/$peer/$kind" cpu-ns/op)"
		done
	done
done
for kind in sampled unsampled; do # (headonly reads no clock)
	echo "imtrace $kind minus the two clock reads, cpu-ns/op (median per round): $(OP=- ratio "BenchmarkSpan/imtrace/$kind" BenchmarkClock cpu-ns/op)"
	echo "imtrace $kind reading the clock minus given its times, cpu-ns/op (median per round): $(OP=- ratio "BenchmarkSpan/imtrace/$kind" "BenchmarkSpan/imtrace-given/$kind" cpu-ns/op)"
done
