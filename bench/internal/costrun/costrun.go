// Package costrun holds what bench/metricscost and bench/tracingcost share:
// the two load phases against a running cluster (saturated throughput, and
// CPU time per delivered message at a fixed rate) and the median.
package costrun

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"syscall"
	"time"

	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/loadgen"
	"github.com/imwatch/imwatch/pkg/imtrace"
)

// Load is the one-to-one load of both phases.
type Load struct {
	Users              int
	SatRate, FixedRate float64 // offered messages/s of each phase; 0 skips it
	Duration           time.Duration
	Secret             []byte
	Log                *slog.Logger
	Tracer             *imtrace.Tracer // the load generator's clients' tracer; nil: untraced
}

// Result is what the phases measured.
type Result struct {
	DPS          float64 // delivered/s, saturated
	SatCPUPerMsg float64 // µs of this process's CPU per delivered message in the saturated phase
	CPUPerMsg    float64 // µs of this process's CPU per delivered message at FixedRate
}

// Run runs the phases against c; name labels a loss or duplicate in the error.
func Run(c *cluster.Cluster, l Load, name string) (Result, error) {
	lg := func(rate float64) (loadgen.Report, error) {
		rep, err := loadgen.Run(context.Background(), loadgen.Config{URLs: c.URLs(), Secret: l.Secret, Users: l.Users,
			Rate: rate, Duration: l.Duration, Drain: 5 * time.Second, MaxInflight: 4000, Log: l.Log, Tracer: l.Tracer})
		if err == nil && (rep.Lost != 0 || rep.Duplicates != 0) {
			err = fmt.Errorf("%s: %d lost, %d duplicates", name, rep.Lost, rep.Duplicates)
		}
		return rep, err
	}
	var res Result
	if l.SatRate > 0 {
		before := CPUTime()
		rep, err := lg(l.SatRate)
		if err != nil {
			return Result{}, err
		}
		res.DPS = rep.DeliveredPerSecond
		res.SatCPUPerMsg = float64((CPUTime() - before).Microseconds()) / float64(max(rep.Delivered, 1))
	}
	if l.FixedRate > 0 {
		before := CPUTime()
		rep, err := lg(l.FixedRate)
		if err != nil {
			return Result{}, err
		}
		res.CPUPerMsg = float64((CPUTime() - before).Microseconds()) / float64(max(rep.Delivered, 1))
	}
	return res, nil
}

// CPUTime is the user and system CPU time of this process so far.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Median of xs; 0 for none.
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// MedianCI is the median of xs and a distribution-free confidence interval
// of at least 95% for it: the order statistics x(k) and x(n+1-k), for the
// largest k with P(B < k) <= 0.025, B binomial (n, 1/2). With fewer than 6
// values no interval reaches 95%, and the range is returned.
func MedianCI(xs []float64) (lo, med, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0, 0, 0
	}
	k := 0 // P(B < k+1) <= 0.025: the CI is s[k], s[n-1-k] (0-indexed)
	cum := 0.0
	for j := 0; j < n/2; j++ {
		cum += binomHalf(n, j)
		if cum > 0.025 {
			break
		}
		k = j + 1
	}
	k = max(k-1, 0)
	return s[k], Median(s), s[n-1-k]
}

// binomHalf is P(B = j) for B binomial (n, 1/2).
func binomHalf(n, j int) float64 {
	lg := func(x int) float64 { v, _ := math.Lgamma(float64(x + 1)); return v }
	return math.Exp(lg(n) - lg(j) - lg(n-j) - float64(n)*math.Ln2)
}
