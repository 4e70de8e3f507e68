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
	flag.IntVar(&tailBuffer, "tail-buffer", 0, "imtrace.Config.TailBuffer of the parts' tracers (0: the default)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	memProfile := flag.String("memprofile", "", "write an allocation profile of the whole run to this file (go tool pprof -sample_index=alloc_space)")
	flag.Parse()
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
	dir, err := os.MkdirTemp("", "tracingcost")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
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
		return result{}, err
	}
	defer c.Stop(10 * time.Second)
	for _, g := range c.Gateways {
		tracers = append(tracers, g.Tracer())
	}
	for _, l := range c.Logics {
		tracers = append(tracers, l.Tracer())
	}
	var ct *imtrace.Tracer
	if clientTracing && tmpl != nil {
		cfg := *tmpl
		cfg.Service, cfg.Instance = cluster.ServiceClient, "loadgen"
		if ct, err = imtrace.New(cfg); err != nil {
			return result{}, err
		}
		defer ct.Shutdown(context.Background())
		tracers = append(tracers, ct)
	}
	cr, err := costrun.Run(c, costrun.Load{Users: users, SatRate: satRate, FixedRate: fixedRate, Duration: d,
		Secret: secret, Log: log, Tracer: ct}, s.name)
	if err != nil {
		return result{}, err
	}
	res := result{dps: cr.DPS, satCPU: cr.SatCPUPerMsg, cpuPerMsg: cr.CPUPerMsg}
	for _, tr := range tracers {
		_ = tr.ForceFlush(context.Background())
		st := tr.Stats()
		res.exported += st.Exported
		res.dropped += st.ExportDropped
		res.promoted += st.Promoted
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

var tailBuffer int // -tail-buffer

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tracingcost:", err)
	os.Exit(1)
}
