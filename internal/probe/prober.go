// Package probe is the active prober (`imwatch probe`): probe accounts log
// in to a real IM (ours, XMPP, MQTT) as users do and send messages to
// themselves through the whole link, timing send to server ack and send to
// delivery, counting lost, duplicated and reordered messages. Every round
// is one always-sampled trace. Results go to the center through an on-disk
// buffer: metrics by remote write, spans by OTLP/HTTP.
package probe

import (
	"context"
	"errors"
	"fmt"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"log/slog"
	"net/http"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Options are what a Prober takes besides its config.
type Options struct {
	Log *slog.Logger
	// OnRound, when set, is told the outcome of every round (tests, bench/probe).
	OnRound func(RoundResult)
}

// Prober runs the rounds of every target of its config.
type Prober struct {
	opts Options
	log  *slog.Logger
	run  string
	reg  *prometheus.Registry // results and the buffer's metrics: pushed and served
	m    *metrics
	sm   *senderMetrics

	mu      sync.Mutex
	cfg     Config
	pipe    *pipeline
	runners map[string]*runner
	started bool
}

// pipeline is what carries results to the center for one location, center
// and buffer: the tracer provider, the two queues, their senders and the
// metrics pusher.
type pipeline struct {
	cfg     Config
	tp      *sdktrace.TracerProvider
	tracer  trace.Tracer
	hops    *imtrace.Tracer // the IM client's hops of probe messages
	qm, qt  *Queue
	cancel  context.CancelFunc // of the senders and the pusher
	wg      sync.WaitGroup
	sendWG  sync.WaitGroup
	sendCx  context.CancelFunc
	senders []*sender
	lastTS  time.Time // of the last push: each push is stamped later than the one before
}

// New makes a prober for cfg; Start starts it.
func New(cfg Config, opts Options) (*Prober, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	p := &Prober{
		opts: opts, log: opts.Log.With("component", "probe"), run: nuid.Next()[:10],
		reg: reg, m: newMetrics(reg), sm: newSenderMetrics(reg),
		cfg: cfg, runners: map[string]*runner{},
	}
	// The SDK reports export errors (the buffer full or closed) through a
	// global handler that otherwise prints to stderr.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { p.log.Warn("tracing", "err", err) }))
	return p, nil
}

// Name is the prober's name as a service.
func (p *Prober) Name() string { return "prober " + p.cfg.Location }

// Start opens the buffer and starts the rounds.
func (p *Prober) Start(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	pipe, err := p.startPipeline(p.cfg)
	if err != nil {
		return err
	}
	p.pipe = pipe
	for _, t := range p.cfg.Targets {
		p.startRunner(t)
	}
	p.started = true
	p.log.Info("prober started", "location", p.cfg.Location, "targets", len(p.cfg.Targets), "buffer", p.cfg.Buffer, "center", p.cfg.Center.URL)
	return nil
}

func (p *Prober) startRunner(t Target) {
	r := newRunner(p, p.pipe, t)
	r.start()
	p.runners[t.Name] = r
}

func (p *Prober) startPipeline(cfg Config) (*pipeline, error) {
	mSize := max(int64(cfg.BufferMaxSize)/4, 4*segmentSize)
	qm, err := OpenQueue(filepath.Join(cfg.Buffer, queueMetrics), mSize)
	if err != nil {
		return nil, err
	}
	qt, err := OpenQueue(filepath.Join(cfg.Buffer, queueTraces), max(int64(cfg.BufferMaxSize)-mSize, 4*segmentSize))
	if err != nil {
		qm.Close()
		return nil, err
	}
	pl := &pipeline{cfg: cfg, qm: qm, qt: qt}
	pl.tp, pl.hops = newTracerProvider(cfg.Location, qt)
	pl.tracer = pl.tp.Tracer("github.com/imwatch/imwatch/internal/probe")
	ctx, cancel := context.WithCancel(context.Background())
	sctx, scancel := context.WithCancel(context.Background())
	pl.cancel, pl.sendCx = cancel, scancel
	if cfg.Center.URL != "" {
		senders := []*sender{newSender(queueMetrics, qm, cfg.Center, "/api/v1/write", remoteWriteHeader, p.sm, p.log)}
		if cfg.Center.TracesOn() {
			senders = append(senders, newSender(queueTraces, qt, cfg.Center, "/v1/traces", otlpHeader, p.sm, p.log))
		}
		pl.senders = senders
		for _, s := range senders {
			pl.sendWG.Add(1)
			go func() { defer pl.sendWG.Done(); s.run(sctx) }()
		}
	}
	pl.wg.Add(1)
	go func() { defer pl.wg.Done(); p.pushLoop(ctx, pl) }()
	return pl, nil
}

// pushLoop puts the metrics into the buffer every push interval and makes
// the buffer durable every second.
func (p *Prober) pushLoop(ctx context.Context, pl *pipeline) {
	push := time.NewTicker(pl.cfg.Center.PushInterval.D())
	defer push.Stop()
	sync := time.NewTicker(time.Second)
	defer sync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-push.C:
			p.push(pl)
		case <-sync.C:
			_ = pl.qm.Sync()
			_ = pl.qt.Sync()
		}
	}
}

// push gathers the results into one remote-write record.
func (p *Prober) push(pl *pipeline) {
	p.sm.observe(queueMetrics, pl.qm)
	p.sm.observe(queueTraces, pl.qt)
	mfs, err := p.reg.Gather()
	if err != nil {
		p.log.Warn("gathering metrics failed", "err", err)
		return
	}
	ts := pushTime(pl.lastTS, time.Now())
	pl.lastTS = ts
	body, err := writeRequest(mfs, map[string]string{"job": "imwatch-probe", "instance": pl.cfg.Location}, ts)
	if err != nil || body == nil {
		return
	}
	if err := pl.qm.Append(body); err != nil {
		p.log.Warn("buffering metrics failed", "err", err)
	}
}

// pushTime is the timestamp of a push at now after one at last: now to the
// millisecond, but always later than last. Two pushes within one millisecond
// (a tick and the push at stop) would give a series two values for one
// timestamp, which the center refuses as a duplicate sample.
func pushTime(last, now time.Time) time.Time {
	ts := now.Truncate(time.Millisecond)
	if !ts.After(last) {
		ts = last.Add(time.Millisecond)
	}
	return ts
}

// stopPipeline flushes what it holds into the buffer, sends what it can
// until ctx ends, and closes the buffer.
func (p *Prober) stopPipeline(ctx context.Context, pl *pipeline) error {
	pl.cancel()
	pl.wg.Wait()
	p.push(pl)
	err := pl.tp.Shutdown(ctx)
	// Give the senders that the center answers until ctx ends to empty
	// the buffer; what is left is sent after the next start. One that is
	// waiting out a backoff tries once more first: the center may be back.
	for _, s := range pl.senders {
		if s.failing() && s.q.Stats().Pending > 0 {
			n := s.retryNow()
			for ctx.Err() == nil && s.triesMade() == n {
				sleepCtx(ctx, 10*time.Millisecond)
			}
		}
	}
	for ctx.Err() == nil {
		busy := false
		for _, s := range pl.senders {
			busy = busy || (!s.failing() && s.q.Stats().Pending > 0)
		}
		if !busy {
			break
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
	pl.sendCx()
	pl.sendWG.Wait()
	return errors.Join(err, pl.qm.Close(), pl.qt.Close())
}

// Stop ends the rounds, flushes the results into the buffer and sends what
// the center takes before ctx ends; the rest is sent after the next start.
func (p *Prober) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		return nil
	}
	p.started = false
	for name, r := range p.runners {
		r.stop()
		delete(p.runners, name)
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return p.stopPipeline(sctx, p.pipe)
}

// ApplyConfig swaps in cfg, or keeps the running config and says why not.
// Targets whose config is unchanged keep their connections; a change of
// location, center or buffer restarts everything.
func (p *Prober) ApplyConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		p.cfg = cfg
		return nil
	}
	old := p.cfg
	if old.Location != cfg.Location || old.Buffer != cfg.Buffer || old.BufferMaxSize != cfg.BufferMaxSize || !reflect.DeepEqual(old.Center, cfg.Center) {
		for name, r := range p.runners {
			r.stop()
			delete(p.runners, name)
			p.m.deleteTarget(r.t.Name, r.t.Protocol, old.Location)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.stopPipeline(ctx, p.pipe)
		cancel()
		if err != nil {
			p.log.Warn("stopping the old result pipeline", "err", err)
		}
		pipe, err := p.startPipeline(cfg)
		if err != nil {
			// The old pipeline is gone: start it again with the old config.
			p.pipe, _ = p.startPipeline(old)
			for _, t := range old.Targets {
				p.startRunner(t)
			}
			return fmt.Errorf("new config: %w (kept the old one)", err)
		}
		p.pipe, p.cfg = pipe, cfg
		for _, t := range cfg.Targets {
			p.startRunner(t)
		}
		return nil
	}
	want := map[string]Target{}
	for _, t := range cfg.Targets {
		want[t.Name] = t
	}
	for name, r := range p.runners {
		if t, ok := want[name]; !ok || !reflect.DeepEqual(t, r.t) {
			r.stop()
			delete(p.runners, name)
			p.m.deleteTarget(r.t.Name, r.t.Protocol, old.Location)
		}
	}
	p.cfg = cfg
	for _, t := range cfg.Targets {
		if _, ok := p.runners[t.Name]; !ok {
			p.startRunner(t)
		}
	}
	return nil
}

// Reload reads the config file again and applies it, or keeps the running
// config and returns why.
func (p *Prober) Reload() error {
	p.mu.Lock()
	file := p.cfg.File
	p.mu.Unlock()
	if file == "" {
		return errors.New("reload: the prober was not started from a config file")
	}
	cfg, err := Load(file)
	if err == nil {
		err = p.ApplyConfig(cfg)
	}
	if err != nil {
		p.log.Error("config reload refused; keeping the running config", "err", err)
		return err
	}
	p.log.Info("config reloaded", "targets", len(cfg.Targets))
	return nil
}

// Config is the running config.
func (p *Prober) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Registry holds the probe results (and the buffer's metrics).
func (p *Prober) Registry() *prometheus.Registry { return p.reg }

// Handler serves /metrics, POST /-/reload, /-/healthy and /-/ready.
func (p *Prober) Handler() http.Handler {
	own := prometheus.NewRegistry()
	own.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{p.reg, own}, promhttp.HandlerOpts{}))
	reload := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err := p.Reload(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, "config reloaded")
	})
	mux.Handle("POST /-/reload", reload)
	mux.Handle("PUT /-/reload", reload)
	ok := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "OK") }
	mux.HandleFunc("GET /-/healthy", ok)
	mux.HandleFunc("GET /-/ready", ok)
	return mux
}
