// Command metricscost measures what the IM metric set costs on the message
// path: the same one-to-one load against an in-process cluster with metrics
// on and against one with metrics off, alternating in one run. Per
// configuration it reports the median saturated throughput and the median
// CPU time of the process per delivered message at a fixed offered rate
// below saturation, and their ratios (goal: throughput on/off >= 0.99).
//
// On a machine whose cores the cluster and the load generator saturate, the
// throughput is the cores over the CPU time per message, so off/on of the
// CPU time per message estimates the throughput ratio too, and it is far
// less noisy than a saturated throughput on a shared machine.
//
//	go run ./bench/metricscost -rounds 7 -users 200 -duration 8s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
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
	for r := 0; r < *rounds; r++ {
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, metrics := range order {
			if (*only == "on" && !metrics) || (*only == "off" && metrics) {
				continue
			}
			res, err := run(metrics, secret, *users, *satRate, *fixedRate, *duration, log)
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
	}
	fmt.Printf("\nmedians of %d rounds\n", *rounds)
	fmt.Printf("saturated delivered/s: metrics on %.0f, off %.0f, ratio on/off %.3f\n",
		costrun.Median(dps[true]), costrun.Median(dps[false]), costrun.Median(dps[true])/costrun.Median(dps[false]))
	fmt.Printf("µs CPU per message at %g/s: metrics on %.1f, off %.1f, ratio off/on %.3f (the throughput ratio it implies)\n",
		*fixedRate, costrun.Median(cpu[true]), costrun.Median(cpu[false]), costrun.Median(cpu[false])/costrun.Median(cpu[true]))
}

func run(metrics bool, secret []byte, users int, satRate, fixedRate float64, d time.Duration, log *slog.Logger) (costrun.Result, error) {
	dir, err := os.MkdirTemp("", "metricscost")
	if err != nil {
		return costrun.Result{}, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{DataDir: dir, Secret: secret, Log: log, Metrics: metrics,
		GatewayListen: []string{"127.0.0.1:0", "127.0.0.1:0"}})
	if err != nil {
		return costrun.Result{}, err
	}
	defer c.Stop(10 * time.Second)
	return costrun.Run(c, costrun.Load{Users: users, SatRate: satRate, FixedRate: fixedRate, Duration: d, Secret: secret, Log: log},
		fmt.Sprintf("metrics=%v", metrics))
}
