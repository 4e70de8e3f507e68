// Command tracingcost measures what tracing costs the reference IM: the same
// one-to-one load against in-process clusters with tracing off, at the
// default sampling ratio and at 100%, alternating in one run, and reports per
// configuration the median saturated throughput and the median CPU time per
// delivered message at a fixed offered rate, and their ratios to tracing off
// (goals: default/off >= 0.99, full/off >= 0.95 in throughput).
//
//	go run ./bench/tracingcost -rounds 5 -users 200 -duration 8s
//
// The spans go over OTLP/HTTP to a sink in the same process that reads each
// request and answers 200 (-sink discard, the default), so that the figure is
// the IM's cost, instrumentation and export, and not the ingest of the
// center, which has figures of its own; -sink center sends them to a real
// center in the process instead. The load generator's own client spans are
// off unless -client-tracing.
//
// With -mode toggle (the default) each tracing configuration runs in a
// cluster of its own, started once, against which every round measures it
// on and off: off is the same cluster with its tracers paused
// (imtrace.Tracer.Pause: the hops record nothing and add no trace context,
// as with tracing off), so that the comparison does not carry the
// difference between two cluster starts; reported are the medians of the
// per-round ratios on/off. -mode slices runs the same clusters, each phase
// one long load during which the tracers are switched on and paused every
// -slice (2 s), and reports the median of the pairs' ratios with a 95%
// confidence interval: the VM's speed drifts over seconds to minutes, and
// two measurements seconds apart share more of it.
//
//	go run ./bench/tracingcost -mode slices -pairs 30 -configs default,full
//
// -mode clusters starts a fresh cluster per configuration and round, off
// without tracers, and compares medians.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/imwatch/imwatch/bench/internal/costrun"
	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/pkg/imtrace"
)

type setup struct {
	name   string
	ratio  float64 // <0: tracing off
	noTail bool    // TailBuffer -1: head sampling only
}

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each runs every configuration once, the order rotating")
	users := flag.Int("users", 200, "connected users")
	satRate := flag.Float64("rate", 100000, "offered messages/s of the saturating phase, above what the cluster can take; 0 skips it")
	fixedRate := flag.Float64("fixed-rate", 2000, "offered messages/s of the CPU-per-message phase, below saturation; 0 skips it")
	duration := flag.Duration("duration", 8*time.Second, "sending time per phase")
	configs := flag.String("configs", "off,default,full", "configurations: off, default (imtrace.DefaultRatio), full (ratio 1), or a ratio; a suffix -notail switches the tail sampling off")
	sink := flag.String("sink", "discard", "where spans go: discard (an OTLP/HTTP endpoint in the process that reads and drops them) or center")
	clientTracing := flag.Bool("client-tracing", false, "also trace the load generator's clients (im.client.*)")
	compression := flag.String("compression", "auto", "compression of the OTLP requests: auto (none to the loopback sink, as imwatch up's parts), gzip or none")
	mode := flag.String("mode", "toggle", "toggle: a cluster per tracing configuration, measured on and paused (off) in every round; slices: the same clusters, on and paused alternating every -slice within one long load; clusters: a fresh cluster per configuration and round")
	pairs := flag.Int("pairs", 30, "-mode slices: pairs of slices (one on, one paused) per phase")
	slice := flag.Duration("slice", 2*time.Second, "-mode slices: length of one slice")
	settle := flag.Duration("settle", 300*time.Millisecond, "-mode slices: the start of each slice that is not measured, after the switch")
	flag.IntVar(&tailBuffer, "tail-buffer", 0, "imtrace.Config.TailBuffer of the parts' tracers (0: the default)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&sliceProfiles, "slice-profiles", "", "-mode slices: write a CPU profile of each measured slice into this directory (CONFIG-PHASE-on-N.pprof, ...-paused-N.pprof; merge with go tool pprof -proto)")
	memProfile := flag.String("memprofile", "", "write an allocation profile of the whole run to this file (go tool pprof -sample_index=alloc_space)")
	flag.Parse()
	if *cpuProfile != "" && sliceProfiles != "" {
		fail(fmt.Errorf("-cpuprofile and -slice-profiles: one CPU profile at a time; choose one"))
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer pprof.StopCPUProfile()
	}
	if *memProfile != "" {
		runtime.MemProfileRate = 64 << 10
		defer func() {
			f, err := os.Create(*memProfile)
			if err == nil {
				err = pprof.Lookup("allocs").WriteTo(f, 0)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "tracingcost: memprofile:", err)
			}
		}()
	}
	var setups []setup
	for _, c := range strings.Split(*configs, ",") {
		noTail := strings.HasSuffix(c, "-notail")
		name := c
		c = strings.TrimSuffix(c, "-notail")
		n := len(setups)
		switch c {
		case "off":
			setups = append(setups, setup{c, -1, false})
		case "default":
			setups = append(setups, setup{c, imtrace.DefaultRatio, false})
		case "full":
			setups = append(setups, setup{c, 1, false})
		default:
			var r float64
			if _, err := fmt.Sscan(c, &r); err != nil || r < 0 || r > 1 {
				fail(fmt.Errorf("config %q: off, default, full or a ratio in [0, 1]", c))
			}
			setups = append(setups, setup{c, r, false})
		}
		setups[n].name, setups[n].noTail = name, noTail
	}
	endpoint, stopSink, err := startSink(*sink)
	if err != nil {
		fail(err)
	}
	defer stopSink()
	secret := []byte("tracingcost-secret-0123456789")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if *mode == "slices" {
		if *pairs < 6 || *slice <= *settle || *settle < 0 {
			fail(fmt.Errorf("-mode slices: want -pairs at least 6 and -slice longer than -settle"))
		}
		sliced(setups, *pairs, *slice, *settle, *compression, endpoint, *clientTracing, secret, *users, *satRate, *fixedRate, log)
		return
	}
	if *mode == "toggle" {
		toggle(setups, *rounds, *compression, endpoint, *clientTracing, secret, *users, *satRate, *fixedRate, *duration, log)
		return
	} else if *mode != "clusters" {
		fail(fmt.Errorf("-mode %q: toggle, slices or clusters", *mode))
	}
	dps := map[string][]float64{}
	cpu := map[string][]float64{}
	for r := 0; r < *rounds; r++ {
		for i := range setups {
			s := setups[(i+r)%len(setups)]
			res, err := run(s, *compression, endpoint, *clientTracing, secret, *users, *satRate, *fixedRate, *duration, log)
			if err != nil {
				fail(err)
			}
			fmt.Printf("round %d %-8s saturated %7.0f delivered/s (%6.1f µs CPU per message)   at %g/s: %6.1f µs CPU per message   spans exported %d (promoted %d), dropped %d\n",
				r+1, s.name, res.dps, res.satCPU, *fixedRate, res.cpuPerMsg, res.exported, res.promoted, res.dropped)
			dps[s.name] = append(dps[s.name], res.dps)
			cpu[s.name] = append(cpu[s.name], res.cpuPerMsg)
		}
	}
	base := setups[0].name
	fmt.Printf("\nmedians of %d rounds; ratios against %s\n", *rounds, base)
	fmt.Printf("%-8s %12s %8s %14s %8s\n", "config", "delivered/s", "ratio", "µs CPU/msg", "ratio")
	for _, s := range setups {
		fmt.Printf("%-8s %12.0f %8.3f %14.1f %8.3f\n", s.name, costrun.Median(dps[s.name]), costrun.Median(dps[s.name])/costrun.Median(dps[base]),
			costrun.Median(cpu[s.name]), costrun.Median(cpu[s.name])/costrun.Median(cpu[base]))
	}
}

type result struct {
	dps, satCPU, cpuPerMsg      float64
	exported, dropped, promoted uint64
}

func run(s setup, compression, endpoint string, clientTracing bool, secret []byte, users int, satRate, fixedRate float64, d time.Duration, log *slog.Logger) (result, error) {
	t, err := start(s, compression, endpoint, clientTracing, secret, log)
	if err != nil {
		return result{}, err
	}
	defer t.stop()
	return t.measure(users, satRate, fixedRate, d, secret, log, s.name)
}

// toggle is -mode toggle: a cluster per tracing configuration, each round
// measuring every one on and paused, in alternating order.
func toggle(setups []setup, rounds int, compression, endpoint string, clientTracing bool, secret []byte, users int, satRate, fixedRate float64, d time.Duration, log *slog.Logger) {
	on, targets := startOn(setups, compression, endpoint, clientTracing, secret, log)
	defer stopAll(targets)
	type series struct{ dpsOn, dpsOff, cpuOn, cpuOff, satRatio, cpuRatio []float64 }
	res := make([]series, len(on))
	for r := 0; r < rounds; r++ {
		for i, s := range on {
			t := targets[i]
			var got [2]result // off, on
			for k := range 2 {
				tracing := (k+r)%2 == 0
				for _, tr := range t.tracers {
					tr.Pause(!tracing)
				}
				name := s.name
				if !tracing {
					name += "-paused"
				}
				x, err := t.measure(users, satRate, fixedRate, d, secret, log, name)
				if err != nil {
					fail(err)
				}
				if tracing {
					got[1] = x
				} else {
					got[0] = x
				}
				fmt.Printf("round %d %-16s saturated %7.0f delivered/s (%6.1f µs CPU per message)   at %g/s: %6.1f µs CPU per message   spans exported %d (promoted %d), dropped %d\n",
					r+1, name, x.dps, x.satCPU, fixedRate, x.cpuPerMsg, x.exported, x.promoted, x.dropped)
			}
			sr := &res[i]
			sr.dpsOn, sr.dpsOff = append(sr.dpsOn, got[1].dps), append(sr.dpsOff, got[0].dps)
			sr.cpuOn, sr.cpuOff = append(sr.cpuOn, got[1].cpuPerMsg), append(sr.cpuOff, got[0].cpuPerMsg)
			sr.satRatio = append(sr.satRatio, got[1].dps/got[0].dps)
			sr.cpuRatio = append(sr.cpuRatio, got[0].cpuPerMsg/got[1].cpuPerMsg)
		}
	}
	fmt.Printf("\nmedians of %d rounds; on against the same cluster paused\n", rounds)
	fmt.Printf("%-8s %10s %10s %22s %10s %10s %22s\n", "config", "sat. on", "paused", "ratio (min-max)", "µs/msg on", "paused", "off/on (min-max)")
	for i, s := range on {
		sr := res[i]
		fmt.Printf("%-8s %10.0f %10.0f %8.3f (%.3f-%.3f) %10.1f %10.1f %8.3f (%.3f-%.3f)\n", s.name,
			costrun.Median(sr.dpsOn), costrun.Median(sr.dpsOff), costrun.Median(sr.satRatio), slices.Min(sr.satRatio), slices.Max(sr.satRatio),
			costrun.Median(sr.cpuOn), costrun.Median(sr.cpuOff), costrun.Median(sr.cpuRatio), slices.Min(sr.cpuRatio), slices.Max(sr.cpuRatio))
	}
}

// startOn starts a cluster for each configuration with tracing on (off is
// each one's own cluster, paused).
func startOn(setups []setup, compression, endpoint string, clientTracing bool, secret []byte, log *slog.Logger) ([]setup, []*target) {
	var on []setup
	var targets []*target
	for _, s := range setups {
		if s.ratio < 0 {
			continue
		}
		t, err := start(s, compression, endpoint, clientTracing, secret, log)
		if err != nil {
			stopAll(targets)
			fail(err)
		}
		on, targets = append(on, s), append(targets, t)
	}
	if len(on) == 0 {
		stopAll(targets)
		fail(fmt.Errorf("this mode needs a configuration with tracing on"))
	}
	return on, targets
}

func stopAll(ts []*target) {
	for _, t := range ts {
		t.stop()
	}
}

// target is a running cluster of one configuration, and its tracers.
type target struct {
	c       *cluster.Cluster
	tracers []*imtrace.Tracer
	client  *imtrace.Tracer // the load generator's, with -client-tracing
	stop    func()
}

func start(s setup, compression, endpoint string, clientTracing bool, secret []byte, log *slog.Logger) (*target, error) {
	dir, err := os.MkdirTemp("", "tracingcost")
	if err != nil {
		return nil, err
	}
	var tmpl *imtrace.Config
	var tracers []*imtrace.Tracer
	o := cluster.Options{DataDir: dir, Secret: secret, Log: log, Metrics: true, GatewayListen: []string{"127.0.0.1:0", "127.0.0.1:0"}}
	if s.ratio >= 0 {
		tmpl = &imtrace.Config{Endpoint: endpoint, Ratio: s.ratio, Compression: compression}
		tmpl.TailBuffer = tailBuffer
		if s.noTail {
			tmpl.TailBuffer = -1
		}
		o.Tracing = tmpl
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, o)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	t := &target{c: c}
	t.stop = func() {
		if t.client != nil {
			_ = t.client.Shutdown(context.Background())
		}
		_ = c.Stop(10 * time.Second)
		os.RemoveAll(dir)
	}
	for _, g := range c.Gateways {
		tracers = append(tracers, g.Tracer())
	}
	for _, l := range c.Logics {
		tracers = append(tracers, l.Tracer())
	}
	if clientTracing && tmpl != nil {
		cfg := *tmpl
		cfg.Service, cfg.Instance = cluster.ServiceClient, "loadgen"
		if t.client, err = imtrace.New(cfg); err != nil {
			t.stop()
			return nil, err
		}
		tracers = append(tracers, t.client)
	}
	for _, tr := range tracers {
		if tr != nil {
			t.tracers = append(t.tracers, tr)
		}
	}
	return t, nil
}

// measure runs the load against the target; the span counts are those of
// this run.
func (t *target) measure(users int, satRate, fixedRate float64, d time.Duration, secret []byte, log *slog.Logger, name string) (result, error) {
	before := make([]imtrace.Stats, len(t.tracers))
	for i, tr := range t.tracers {
		_ = tr.ForceFlush(context.Background()) // what the last measurement left counts there
		before[i] = tr.Stats()
	}
	cr, err := costrun.Run(t.c, costrun.Load{Users: users, SatRate: satRate, FixedRate: fixedRate, Duration: d,
		Secret: secret, Log: log, Tracer: t.client}, name)
	if err != nil {
		return result{}, err
	}
	res := result{dps: cr.DPS, satCPU: cr.SatCPUPerMsg, cpuPerMsg: cr.CPUPerMsg}
	for i, tr := range t.tracers {
		_ = tr.ForceFlush(context.Background())
		st, b := tr.Stats(), before[i]
		res.exported += st.Exported - b.Exported
		res.dropped += st.ExportDropped - b.ExportDropped
		res.promoted += st.Promoted - b.Promoted
	}
	return res, nil
}

// startSink starts where the spans go and returns its OTLP/HTTP traces URL.
func startSink(kind string) (string, func(), error) {
	switch kind {
	case "discard":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.WriteHeader(http.StatusOK) // an empty ExportTraceServiceResponse
		})}
		go srv.Serve(ln)
		return "http://" + ln.Addr().String() + "/v1/traces", func() { srv.Close() }, nil
	case "center":
		dir, err := os.MkdirTemp("", "tracingcost-center")
		if err != nil {
			return "", nil, err
		}
		cfg := config.Default()
		cfg.Listen = "127.0.0.1:0"
		cfg.Storage.Path = filepath.Join(dir, "tsdb")
		cen, err := center.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil {
			err = cen.Start(context.Background())
		}
		if err != nil {
			os.RemoveAll(dir)
			return "", nil, err
		}
		return cen.URL() + "/v1/traces", func() { cen.Stop(context.Background()); os.RemoveAll(dir) }, nil
	}
	return "", nil, fmt.Errorf("-sink %q: discard or center", kind)
}

var (
	tailBuffer    int    // -tail-buffer
	sliceProfiles string // -slice-profiles
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tracingcost:", err)
	os.Exit(1)
}
