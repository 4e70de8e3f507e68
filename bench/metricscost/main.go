// Command metricscost measures what the IM metric set costs on the message
// path: the same saturating one-to-one load against a cluster with metrics on
// and against one with metrics off, alternating in one run, and reports the
// median throughput of each and their ratio (goal: on/off >= 0.99).
//
//	go run ./bench/metricscost -rounds 5 -users 200 -duration 10s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/loadgen"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each runs metrics on and off once, in alternating order")
	users := flag.Int("users", 200, "connected users")
	rate := flag.Float64("rate", 100000, "offered messages/s, above what the cluster can take so that it saturates")
	duration := flag.Duration("duration", 10*time.Second, "sending time per run")
	flag.Parse()
	secret := []byte("metricscost-secret-0123456789")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var on, off []float64
	for r := 0; r < *rounds; r++ {
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, metrics := range order {
			dps, err := run(metrics, secret, *users, *rate, *duration, log)
			if err != nil {
				fmt.Fprintln(os.Stderr, "metricscost:", err)
				os.Exit(1)
			}
			fmt.Printf("round %d metrics=%-5v delivered/s %.0f\n", r+1, metrics, dps)
			if metrics {
				on = append(on, dps)
			} else {
				off = append(off, dps)
			}
		}
	}
	mOn, mOff := median(on), median(off)
	fmt.Printf("median delivered/s: metrics on %.0f, off %.0f, ratio on/off %.3f\n", mOn, mOff, mOn/mOff)
}

func run(metrics bool, secret []byte, users int, rate float64, d time.Duration, log *slog.Logger) (float64, error) {
	dir, err := os.MkdirTemp("", "metricscost")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{DataDir: dir, Secret: secret, Log: log, Metrics: metrics,
		GatewayListen: []string{"127.0.0.1:0", "127.0.0.1:0"}})
	if err != nil {
		return 0, err
	}
	defer c.Stop(10 * time.Second)
	rep, err := loadgen.Run(context.Background(), loadgen.Config{URLs: c.URLs(), Secret: secret, Users: users,
		Rate: rate, Duration: d, Drain: 5 * time.Second, MaxInflight: 4000, Log: log})
	if err != nil {
		return 0, err
	}
	if rep.Lost != 0 || rep.Duplicates != 0 {
		return 0, fmt.Errorf("metrics=%v: %d lost, %d duplicates", metrics, rep.Lost, rep.Duplicates)
	}
	return rep.DeliveredPerSecond, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
