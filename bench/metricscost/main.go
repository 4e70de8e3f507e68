// Command metricscost measures what the IM metric set costs on the message
// path: the same one-to-one load against an in-process cluster with metrics
// on and against one with metrics off, alternating in one run. Per
// configuration it reports the median saturated throughput and the median
// CPU time of the process per delivered message at a fixed offered rate
// below saturation, and their ratios (goal: throughput on/off >= 0.99).
//
// With -mode toggle (the default) both configurations run against one
// cluster, whose parts' metric sets are paused for "off"
// (immetrics.Set.Pause, which makes every message-path call return as on a
// nil set): the same processes, connections, streams and heap, so that the
// comparison does not carry the difference between two cluster starts.
// -mode clusters starts a fresh cluster per configuration and round
// (metrics off there is no metric set at all).
//
// On a machine whose cores the cluster and the load generator saturate, the
// throughput is the cores over the CPU time per message, so off/on of the
// CPU time per message estimates the throughput ratio too, and it is far
// less noisy than a saturated throughput on a shared machine.
//
//	go run ./bench/metricscost -rounds 15 -users 200 -duration 8s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/imwatch/imwatch/bench/internal/costrun"
	"github.com/imwatch/imwatch/internal/im/cluster"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each runs metrics on and off once, in alternating order")
	users := flag.Int("users", 200, "connected users")
	satRate := flag.Float64("rate", 100000, "offered messages/s of the saturating phase, above what the cluster can take; 0 skips it")
	fixedRate := flag.Float64("fixed-rate", 2000, "offered messages/s of the CPU-per-message phase, below saturation; 0 skips it")
	duration := flag.Duration("duration", 8*time.Second, "sending time per phase")
	only := flag.String("only", "", "run only one configuration: on or off (with -cpuprofile, to profile it alone)")
	mode := flag.String("mode", "toggle", "toggle: one cluster, its metric sets paused for off; clusters: a fresh cluster per configuration, off without metric sets")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "metricscost:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	secret := []byte("metricscost-secret-0123456789")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dps := map[bool][]float64{}
	cpu := map[bool][]float64{}
	var ratios, cpuRatios []float64 // per round: on/off throughput, off/on CPU per message
	runOne := func(metrics bool) (costrun.Result, error) {
		return run(metrics, secret, *users, *satRate, *fixedRate, *duration, log)
	}
	if *mode == "toggle" {
		c, stop, err := startCluster(true, secret, log)
		if err != nil {
			fmt.Fprintln(os.Stderr, "metricscost:", err)
			os.Exit(1)
		}
		defer stop()
		sets := c.MetricSets()
		runOne = func(metrics bool) (costrun.Result, error) {
			for _, s := range sets {
				s.Pause(!metrics)
			}
			return costrun.Run(c, costrun.Load{Users: *users, SatRate: *satRate, FixedRate: *fixedRate, Duration: *duration, Secret: secret, Log: log},
				fmt.Sprintf("metrics=%v", metrics))
		}
	} else if *mode != "clusters" {
		fmt.Fprintf(os.Stderr, "metricscost: -mode %q: toggle or clusters\n", *mode)
		os.Exit(2)
	}
	for r := 0; r < *rounds; r++ {
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, metrics := range order {
			if (*only == "on" && !metrics) || (*only == "off" && metrics) {
				continue
			}
			res, err := runOne(metrics)
			if err != nil {
				fmt.Fprintln(os.Stderr, "metricscost:", err)
				pprof.StopCPUProfile()
				os.Exit(1)
			}
			fmt.Printf("round %d metrics=%-5v saturated %7.0f delivered/s   at %g/s: %6.1f µs CPU per message\n",
				r+1, metrics, res.DPS, *fixedRate, res.CPUPerMsg)
			dps[metrics] = append(dps[metrics], res.DPS)
			cpu[metrics] = append(cpu[metrics], res.CPUPerMsg)
		}
		if len(dps[true]) == r+1 && len(dps[false]) == r+1 {
			ratios = append(ratios, dps[true][r]/dps[false][r])
			cpuRatios = append(cpuRatios, cpu[false][r]/cpu[true][r])
		}
	}
	fmt.Printf("\nmedians of %d rounds\n", *rounds)
	fmt.Printf("saturated delivered/s: metrics on %.0f, off %.0f, ratio on/off %.3f\n",
		costrun.Median(dps[true]), costrun.Median(dps[false]), costrun.Median(dps[true])/costrun.Median(dps[false]))
	fmt.Printf("µs CPU per message at %g/s: metrics on %.1f, off %.1f, ratio off/on %.3f (the throughput ratio it implies)\n",
		*fixedRate, costrun.Median(cpu[true]), costrun.Median(cpu[false]), costrun.Median(cpu[false])/costrun.Median(cpu[true]))
	if len(ratios) > 0 {
		fmt.Printf("median of the per-round ratios: saturated on/off %.3f (%.3f to %.3f), CPU per message off/on %.3f (%.3f to %.3f); rounds with metrics on as cheap or cheaper by CPU: %d of %d\n",
			costrun.Median(ratios), slices.Min(ratios), slices.Max(ratios),
			costrun.Median(cpuRatios), slices.Min(cpuRatios), slices.Max(cpuRatios), countAtLeast(cpuRatios, 1), len(cpuRatios))
	}
}

func countAtLeast(xs []float64, v float64) (n int) {
	for _, x := range xs {
		if x >= v {
			n++
		}
	}
	return n
}

func run(metrics bool, secret []byte, users int, satRate, fixedRate float64, d time.Duration, log *slog.Logger) (costrun.Result, error) {
	c, stop, err := startCluster(metrics, secret, log)
	if err != nil {
		return costrun.Result{}, err
	}
	defer stop()
	return costrun.Run(c, costrun.Load{Users: users, SatRate: satRate, FixedRate: fixedRate, Duration: d, Secret: secret, Log: log},
		fmt.Sprintf("metrics=%v", metrics))
}

// startCluster starts an in-process cluster (two gateways, one logic node,
// embedded NATS) in a temporary directory; stop stops it and removes it.
func startCluster(metrics bool, secret []byte, log *slog.Logger) (*cluster.Cluster, func(), error) {
	dir, err := os.MkdirTemp("", "metricscost")
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{DataDir: dir, Secret: secret, Log: log, Metrics: metrics,
		GatewayListen: []string{"127.0.0.1:0", "127.0.0.1:0"}})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return c, func() { _ = c.Stop(10 * time.Second); os.RemoveAll(dir) }, nil
}
