// Package agent is imwatch's system-metrics layer: it reads the host's
// /proc (through github.com/prometheus/procfs) and serves CPU, memory,
// disk, filesystem, network, socket, pressure and imwatch-process metrics on
// /metrics under node_exporter's names, so node dashboards work unchanged.
package agent

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/blockdevice"
)

// Agent collects the host's metrics on each scrape. It is a
// prometheus.Collector that runs the enabled collectors concurrently and
// keeps the scrape within Config.MaxSeries.
type Agent struct {
	cfg        Config
	log        *slog.Logger
	collectors []namedCollector
	reg        *prometheus.Registry
	reserved   int

	durationDesc *prometheus.Desc
	successDesc  *prometheus.Desc
	seriesDesc   *prometheus.Desc
	limitDesc    *prometheus.Desc
	droppedDesc  *prometheus.Desc
	refusedDesc  *prometheus.Desc

	dropped atomic.Uint64
	refused atomic.Uint64
}

// reservedSeries is how many series the agent itself adds to a scrape with
// n collectors: a duration and a success per collector, and four of its own.
func reservedSeries(n int) int { return 2*n + 4 }

// New checks cfg and builds the enabled collectors.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = log.With("component", "agent")
	proc, err := procfs.NewFS(cfg.ProcPath)
	if err != nil {
		return nil, fmt.Errorf("--path.procfs %s: %w", cfg.ProcPath, err)
	}
	block, err := blockdevice.NewFS(cfg.ProcPath, cfg.SysPath)
	if err != nil {
		return nil, fmt.Errorf("--path.procfs %s, --path.sysfs %s: %w", cfg.ProcPath, cfg.SysPath, err)
	}
	e := &env{cfg: cfg, proc: proc, block: block, log: log}
	cs, err := buildCollectors(e)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:        cfg,
		log:        log,
		collectors: cs,
		reserved:   reservedSeries(len(cs)),
		durationDesc: prometheus.NewDesc("node_scrape_collector_duration_seconds",
			"How long a collector took to read its metrics in the last scrape.", []string{"collector"}, nil),
		successDesc: prometheus.NewDesc("node_scrape_collector_success",
			"Whether a collector succeeded in the last scrape: 1 yes, 0 no (error, no data, or dropped by --max-series).", []string{"collector"}, nil),
		seriesDesc: prometheus.NewDesc("imwatch_agent_series",
			"Series the last scrape would have had without the --max-series bound, the agent's own included.", nil, nil),
		limitDesc: prometheus.NewDesc("imwatch_agent_series_limit",
			"The --max-series bound on series per scrape.", nil, nil),
		droppedDesc: prometheus.NewDesc("imwatch_agent_series_dropped_total",
			"Series left out of scrapes because they would have exceeded --max-series.", nil, nil),
		refusedDesc: prometheus.NewDesc("imwatch_agent_scrapes_refused_total",
			"Scrapes refused with 503 because too many were in flight.", nil, nil),
	}
	a.reg = prometheus.NewRegistry()
	if err := a.reg.Register(a); err != nil {
		return nil, fmt.Errorf("register agent: %w", err)
	}
	return a, nil
}

// Gatherer returns the registry the agent serves.
func (a *Agent) Gatherer() prometheus.Gatherer { return a.reg }

// CollectorNames lists the enabled collectors in priority order.
func (a *Agent) CollectorNames() []string {
	out := make([]string, len(a.collectors))
	for i, c := range a.collectors {
		out[i] = c.name
	}
	return out
}

// Describe sends nothing: which series exist depends on the host (CPUs,
// devices, mounts), so the agent is an unchecked collector.
func (a *Agent) Describe(chan<- *prometheus.Desc) {}

type collectResult struct {
	metrics  []prometheus.Metric
	duration time.Duration
	err      error
}

// Collect runs every enabled collector concurrently, then sends their
// metrics in priority order while they fit in MaxSeries.
func (a *Agent) Collect(ch chan<- prometheus.Metric) {
	results := make([]collectResult, len(a.collectors))
	var wg sync.WaitGroup
	for i := range a.collectors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = runCollector(a.collectors[i].c)
		}()
	}
	wg.Wait()

	budget := a.cfg.MaxSeries - a.reserved
	total := a.reserved
	for i, nc := range a.collectors {
		r := results[i]
		n := len(r.metrics)
		total += n
		success := 1.0
		switch {
		case errors.Is(r.err, ErrNoData):
			success = 0
			a.log.Debug("collector has no data", "collector", nc.name)
		case r.err != nil:
			success = 0
			a.log.Warn("collector failed", "collector", nc.name, "err", r.err)
		}
		if n > budget {
			a.dropped.Add(uint64(n))
			success = 0
			a.log.Warn("collector dropped: its series would exceed --max-series; raise --max-series or narrow the collector",
				"collector", nc.name, "series", n, "left", budget, "max_series", a.cfg.MaxSeries)
		} else {
			budget -= n
			for _, m := range r.metrics {
				ch <- m
			}
		}
		ch <- prometheus.MustNewConstMetric(a.durationDesc, prometheus.GaugeValue, r.duration.Seconds(), nc.name)
		ch <- prometheus.MustNewConstMetric(a.successDesc, prometheus.GaugeValue, success, nc.name)
	}
	ch <- prometheus.MustNewConstMetric(a.seriesDesc, prometheus.GaugeValue, float64(total))
	ch <- prometheus.MustNewConstMetric(a.limitDesc, prometheus.GaugeValue, float64(a.cfg.MaxSeries))
	ch <- prometheus.MustNewConstMetric(a.droppedDesc, prometheus.CounterValue, float64(a.dropped.Load()))
	ch <- prometheus.MustNewConstMetric(a.refusedDesc, prometheus.CounterValue, float64(a.refused.Load()))
}

// runCollector buffers one collector's metrics so they can be counted
// before any is sent. A panic in a collector fails that collector, not the
// agent.
func runCollector(c Collector) (r collectResult) {
	ch := make(chan prometheus.Metric, 64)
	done := make(chan []prometheus.Metric)
	go func() {
		var ms []prometheus.Metric
		for m := range ch {
			ms = append(ms, m)
		}
		done <- ms
	}()
	start := time.Now()
	func() {
		defer func() {
			if p := recover(); p != nil {
				r.err = fmt.Errorf("collector panicked: %v", p)
			}
		}()
		r.err = c.Update(ch)
	}()
	r.duration = time.Since(start)
	close(ch)
	r.metrics = <-done
	return r
}

// Handler serves /metrics, at most MaxConcurrentScrapes at a time.
func (a *Agent) Handler() http.Handler {
	metrics := promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      promLogger{a.log},
		// Compressed below, faster than promhttp's default gzip level.
		DisableCompression: true,
	})
	inFlight := make(chan struct{}, a.cfg.MaxConcurrentScrapes)
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		select {
		case inFlight <- struct{}{}:
			defer func() { <-inFlight }()
		default:
			a.refused.Add(1)
			http.Error(w, fmt.Sprintf("imwatch agent: more than %d scrapes in flight; scrape less often", a.cfg.MaxConcurrentScrapes), http.StatusServiceUnavailable)
			return
		}
		if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
			metrics.ServeHTTP(w, r)
			return
		}
		gz := gzipWriters.Get().(*gzip.Writer)
		gz.Reset(w)
		defer func() {
			_ = gz.Close()
			gzipWriters.Put(gz)
		}()
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Add("Vary", "Accept-Encoding")
		metrics.ServeHTTP(gzipResponseWriter{w, gz}, r)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<html><head><title>imwatch agent</title></head><body><h1>imwatch agent</h1><p><a href="/metrics">/metrics</a></p></body></html>`+"\n")
	})
	return mux
}

// A scrape is a few kilobytes: compressing it at gzip's fastest level
// costs a third of the default level's CPU and a few hundred bytes more.
var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return w
}}

type gzipResponseWriter struct {
	http.ResponseWriter
	gz *gzip.Writer
}

func (w gzipResponseWriter) Write(b []byte) (int, error) { return w.gz.Write(b) }

func (w gzipResponseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// acceptsGzip says whether an Accept-Encoding header allows gzip.
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		if !ok {
			return true
		}
		v, err := strconv.ParseFloat(q, 64)
		return err == nil && v > 0
	}
	return false
}

// promLogger sends promhttp's errors (encoding, gathering) to slog.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn("serve metrics", "err", fmt.Sprint(v...)) }
