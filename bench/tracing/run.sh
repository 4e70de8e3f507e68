#!/usr/bin/env bash
# Span cost of pkg/imtrace against the bare OpenTelemetry SDK doing the same
# (start a hop span under a remote parent, set the messaging attributes, end
# it, into a processor that does nothing expensive). The figures in
# docs/benchmarks.md ("Tracing: span cost") come from here.
#
# The benchmarks run in ROUNDS rounds; each round runs every benchmark once,
# one after the other, so that a peer and the package see the same load.
# Reported: the median of the rounds per benchmark (ns/op, B/op, allocs/op)
# and the median of the per-round ratios package/SDK. The raw output is kept
# in OUT in the Go benchmark format, so benchstat can read it too.
#
#   ./bench/tracing/run.sh              # 10 rounds of 1s per benchmark: about 2 minutes
#   ROUNDS=3 BENCHTIME=200ms ./bench/tracing/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${ROUNDS:-10}
benchtime=${BENCHTIME:-1s}
out=${OUT:-$(mktemp -t imtrace-bench.XXXXXX)}
bin=$(mktemp -t imtrace-test.XXXXXX)
trap 'rm -f "$bin"' EXIT

go test -c -o "$bin" ./pkg/imtrace/
echo "revision $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty), $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$out"
for i in $(seq "$rounds"); do
	"$bin" -test.run '^$' -test.bench '^Benchmark(Span|Clock)' -test.benchmem -test.count 1 \
		-test.benchtime "$benchtime" | grep '^Benchmark' | sed "s/^/round=$i /" >>"$out"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); raw output: $out"

# median of the values on stdin
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.4g\n", (v[NR/2]+v[NR/2+1])/2}'; }

printf '\n%-38s %10s %8s %10s\n' benchmark ns/op B/op allocs/op
for b in $(awk '{print $2}' "$out" | sed 's/-[0-9]*$//' | awk '!seen[$0]++'); do
	ns=$(awk -v b="$b" '$2 ~ "^"b"(-[0-9]+)?$" {print $4}' "$out" | median)
	bytes=$(awk -v b="$b" '$2 ~ "^"b"(-[0-9]+)?$" {print $6}' "$out" | median)
	allocs=$(awk -v b="$b" '$2 ~ "^"b"(-[0-9]+)?$" {print $8}' "$out" | median)
	printf '%-38s %10s %8s %10s\n' "$b" "$ns" "$bytes" "$allocs"
done

echo
for peer in sdk sdk-prebuilt; do
	for kind in sampled unsampled; do
		r=$(awk -v a="BenchmarkSpan/imtrace/$kind" -v p="BenchmarkSpan/$peer/$kind" '
			{name=$2; sub(/-[0-9]+$/, "", name)}
			name==a {x[$1]=$4} name==p {y[$1]=$4}
			END {for (k in x) if (k in y) printf "%.3f\n", x[k]/y[k]}' "$out" | median)
		echo "ratio imtrace/$peer $kind (median of per-round ratios): $r"
	done
done
for kind in sampled unsampled; do
	r=$(awk -v a="BenchmarkSpan/imtrace/$kind" '
		{name=$2; sub(/-[0-9]+$/, "", name)}
		name==a {x[$1]=$4} name=="BenchmarkClock" {y[$1]=$4}
		END {for (k in x) if (k in y) printf "%.1f\n", x[k]-y[k]}' "$out" | median)
	echo "imtrace $kind minus the two clock reads (median per round, ns): $r"
done
