package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/imwatch/imwatch/bench/internal/costrun"
	"github.com/imwatch/imwatch/internal/im/loadgen"
)

// sliced is -mode slices: a cluster per tracing configuration, and for each
// phase (saturated, then the fixed rate) one long load during which the
// cluster's tracers are switched on and paused every slice. A pair of
// slices is one on and one paused, on first in even pairs and paused first
// in odd ones, so that a drift of the machine's speed within pairs cancels
// over the run. A slice measures, after its first settle (the switch has
// reached the messages under way), delivered messages per second and µs of
// the process's CPU per delivered message; each pair gives the ratios
// on/paused of the one and paused/on of the other, and the report is their
// median with a 95% confidence interval (costrun.MedianCI).
//
// Against -mode toggle it measures many short stretches instead of a few
// long ones, with no dialling, warm-up or drain between them: the VM's
// speed changes over seconds to minutes, and a ratio of two measurements a
// few seconds apart carries less of it.
func sliced(setups []setup, pairs int, slice, settle time.Duration, compression, endpoint string, clientTracing bool, secret []byte, users int, satRate, fixedRate float64, log *slog.Logger) {
	on, targets := startOn(setups, compression, endpoint, clientTracing, secret, log)
	defer stopAll(targets)
	type row struct {
		config, phase                string
		dpsOn, dpsOff, cpuOn, cpuOff float64
		sat, cpu                     [3]float64 // lo, median, hi
	}
	var rows []row
	for i, s := range on {
		for _, ph := range []struct {
			name string
			rate float64
		}{{"saturated", satRate}, {fmt.Sprintf("%g/s", fixedRate), fixedRate}} {
			if ph.rate <= 0 {
				continue
			}
			ps, err := targets[i].slices(ph.rate, pairs, slice, settle, users, secret, log, s.name+" "+ph.name)
			if err != nil {
				fail(err)
			}
			var dOn, dOff, cOn, cOff, sat, cpu []float64
			for k, p := range ps {
				fmt.Printf("%-8s %-10s pair %2d  on %7.0f/s %6.1f µs/msg %5.2f r %5.2f w   paused %7.0f/s %6.1f µs/msg %5.2f r %5.2f w   on/paused %.3f   CPU paused/on %.3f\n",
					s.name, ph.name, k+1, p[1].dps, p[1].cpu, p[1].reads, p[1].writes, p[0].dps, p[0].cpu, p[0].reads, p[0].writes, p[1].dps/p[0].dps, p[0].cpu/p[1].cpu)
				dOn, dOff = append(dOn, p[1].dps), append(dOff, p[0].dps)
				cOn, cOff = append(cOn, p[1].cpu), append(cOff, p[0].cpu)
				sat, cpu = append(sat, p[1].dps/p[0].dps), append(cpu, p[0].cpu/p[1].cpu)
			}
			r := row{config: s.name, phase: ph.name, dpsOn: costrun.Median(dOn), dpsOff: costrun.Median(dOff),
				cpuOn: costrun.Median(cOn), cpuOff: costrun.Median(cOff)}
			r.sat[0], r.sat[1], r.sat[2] = costrun.MedianCI(sat)
			r.cpu[0], r.cpu[1], r.cpu[2] = costrun.MedianCI(cpu)
			rows = append(rows, r)
		}
	}
	fmt.Printf("\nmedians of %d pairs of %s slices (first %s of each not measured), 95%% confidence intervals of the medians\n", pairs, slice, settle)
	fmt.Printf("%-8s %-10s %10s %10s %24s %10s %10s %24s\n", "config", "phase", "on /s", "paused /s", "on/paused (95% CI)", "µs/msg on", "paused", "CPU paused/on (95% CI)")
	for _, r := range rows {
		fmt.Printf("%-8s %-10s %10.0f %10.0f %8.3f (%.3f-%.3f) %10.1f %10.1f %8.3f (%.3f-%.3f)\n", r.config, r.phase,
			r.dpsOn, r.dpsOff, r.sat[1], r.sat[0], r.sat[2], r.cpuOn, r.cpuOff, r.cpu[1], r.cpu[0], r.cpu[2])
	}
}

// sliceMeasure is what one slice measured.
type sliceMeasure struct {
	dps float64 // delivered per second
	cpu float64 // µs of the process's CPU per delivered message
	// read and write system calls of the process per delivered message
	// (/proc/self/io): the parts' batching of frames and bus messages
	reads, writes float64
}

// syscalls reads the process's read and write system calls so far from
// /proc/self/io (syscr, syscw); 0 where there is none.
func syscalls() (reads, writes uint64) {
	b, _ := os.ReadFile("/proc/self/io")
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

// slices runs one load at rate for pairs × 2 slices, switching the tracers
// every slice, and returns each pair's measurements: [0] paused, [1] on.
func (t *target) slices(rate float64, pairs int, slice, settle time.Duration, users int, secret []byte, log *slog.Logger, name string) ([][2]sliceMeasure, error) {
	got := make([][2]sliceMeasure, 0, pairs)
	done := make(chan struct{})
	var started atomic.Bool
	sending := func(delivered func() uint64) {
		started.Store(true)
		go func() {
			defer close(done)
			for p := range pairs {
				var m [2]sliceMeasure
				for k := range 2 {
					on := (p+k)%2 == 0
					for _, tr := range t.tracers {
						tr.Pause(!on)
					}
					time.Sleep(settle)
					stopProfile := profileSlice(name, on, p)
					r0, w0 := syscalls()
					c0, d0, t0 := costrun.CPUTime(), delivered(), time.Now()
					time.Sleep(slice - settle)
					c1, d1, t1 := costrun.CPUTime(), delivered(), time.Now()
					r1, w1 := syscalls()
					stopProfile()
					n := float64(d1 - d0)
					i := 0
					if on {
						i = 1
					}
					m[i] = sliceMeasure{dps: n / t1.Sub(t0).Seconds(), cpu: float64((c1 - c0).Microseconds()) / max(n, 1),
						reads: float64(r1-r0) / max(n, 1), writes: float64(w1-w0) / max(n, 1)}
				}
				got = append(got, m)
			}
		}()
	}
	defer func() {
		for _, tr := range t.tracers {
			tr.Pause(false)
		}
	}()
	// The load outlasts the slices by one, so that the last is measured
	// while sending at the full rate.
	d := time.Duration(2*pairs+1) * slice
	rep, err := loadgen.Run(context.Background(), loadgen.Config{URLs: t.c.URLs(), Secret: secret, Users: users,
		Rate: rate, Duration: d, Drain: 5 * time.Second, MaxInflight: 4000, Log: log, Tracer: t.client, Sending: sending})
	if err == nil && (rep.Lost != 0 || rep.Duplicates != 0) {
		err = fmt.Errorf("%s: %d lost, %d duplicates", name, rep.Lost, rep.Duplicates)
	}
	if started.Load() {
		<-done
	}
	if err != nil {
		return nil, err
	}
	return got, nil
}

// profileSlice starts the CPU profile of one slice, with -slice-profiles,
// and returns what stops it.
func profileSlice(name string, on bool, pair int) func() {
	if sliceProfiles == "" {
		return func() {}
	}
	state := "paused"
	if on {
		state = "on"
	}
	file := filepath.Join(sliceProfiles, fmt.Sprintf("%s-%s-%02d.pprof", strings.NewReplacer(" ", "-", "/", "").Replace(name), state, pair+1))
	f, err := os.Create(file)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fail(fmt.Errorf("slice profile: %w", err))
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
