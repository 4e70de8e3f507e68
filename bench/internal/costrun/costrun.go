// Package costrun holds what bench/metricscost and bench/tracingcost share:
// the two load phases against a running cluster (saturated throughput, and
// CPU time per delivered message at a fixed rate) and the median.
package costrun

import (
	"context"
	"fmt"
	"log/slog"
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
		before := cpuTime()
		rep, err := lg(l.SatRate)
		if err != nil {
			return Result{}, err
		}
		res.DPS = rep.DeliveredPerSecond
		res.SatCPUPerMsg = float64((cpuTime() - before).Microseconds()) / float64(max(rep.Delivered, 1))
	}
	if l.FixedRate > 0 {
		before := cpuTime()
		rep, err := lg(l.FixedRate)
		if err != nil {
			return Result{}, err
		}
		res.CPUPerMsg = float64((cpuTime() - before).Microseconds()) / float64(max(rep.Delivered, 1))
	}
	return res, nil
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
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
