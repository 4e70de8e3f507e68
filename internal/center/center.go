// Package center is the monitoring center: it stores metrics in Prometheus's
// tsdb, scrapes static targets, receives remote write, evaluates Prometheus
// rule files, sends alerts to Alertmanagers and webhooks, writes onward to
// other Prometheus-compatible stores, and serves Prometheus's HTTP API. It
// also receives OTLP traces, stores them and serves the trace query API.
package center

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	promstorage "github.com/prometheus/prometheus/storage"

	"github.com/imwatch/imwatch/internal/center/api"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/notify"
	"github.com/imwatch/imwatch/internal/center/remotewrite"
	"github.com/imwatch/imwatch/internal/center/scrape"
	"github.com/imwatch/imwatch/internal/center/storage"
	"github.com/imwatch/imwatch/internal/center/ui"
)

// ErrImmutable is a reload that changes what only a restart can change.
var ErrImmutable = errors.New("cannot change while the center runs; restart it")

// Center is the monitoring center as one service with Start and Stop.
type Center struct {
	log  *slog.Logger // the center's own
	base *slog.Logger // for the components, each with its own "component"
	cfg  atomic.Pointer[config.Config]

	reloadMu sync.Mutex // one reload at a time
	extra    []config.Target

	reg       *prometheus.Registry
	engineReg atomic.Pointer[prometheus.Registry]
	parser    parser.Parser

	store    *storage.Store
	receiver *remotewrite.Receiver
	scraper  *scrape.Manager
	rules    *rules.Manager
	notifier *notify.Notifier
	writers  *remotewrite.Writers
	api      *api.API
	ui       *ui.Handler
	mux      *http.ServeMux
	token    atomic.Pointer[string]
	faults   *faultSide
	traces   *traceSide

	ln       net.Listener
	srv      *http.Server
	served   chan struct{}
	ready    atomic.Bool
	started  bool
	stopOnce sync.Once
	stopErr  error

	reloads *prometheus.CounterVec
	lastOK  prometheus.Gauge
}

// New checks cfg and makes a center; Start opens the store and listens.
func New(cfg config.Config, log *slog.Logger) (*Center, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Listen == "" {
		cfg.Listen = config.DefaultListen
	}
	c := &Center{log: log.With("component", "center"), base: log, reg: prometheus.NewRegistry(), parser: parser.NewParser(parser.Options{})}
	c.cfg.Store(&cfg)
	return c, nil
}

// Name implements service.Service.
func (c *Center) Name() string { return "center" }

// Addr is the address the center listens on, once started.
func (c *Center) Addr() string {
	if c.ln == nil {
		return c.cfg.Load().Listen
	}
	return c.ln.Addr().String()
}

// URL is the base URL of the center's HTTP API, once started.
func (c *Center) URL() string { return "http://" + c.Addr() }

// Config returns the config in use.
func (c *Center) Config() config.Config { return *c.cfg.Load() }

// Start opens the store, replays its WAL, starts scraping, rules and
// notifications, and serves HTTP. It returns once the center is ready.
func (c *Center) Start(ctx context.Context) (err error) {
	cfg := c.cfg.Load()
	defer func() {
		if err != nil {
			c.cleanupFailedStart()
		}
	}()
	c.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imwatch_center_config_reloads_total", Help: "Config reloads, by result (success or failure).",
	}, []string{"result"})
	c.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "imwatch_center_config_last_reload_successful", Help: "Whether the last config reload succeeded (1) or was refused (0).",
	})
	c.reg.MustRegister(c.reloads, c.lastOK)
	c.lastOK.Set(1)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	c.ln = ln

	c.store, err = storage.Open(cfg.Storage, c.reg, c.base.With("component", "storage"))
	if err != nil {
		return err
	}
	c.writers = remotewrite.NewWriters(c.reg, c.base.With("component", "remote-write-out"))
	c.writers.ApplyConfig(ctx, cfg.RemoteWrite)
	if len(cfg.RemoteWrite) > 0 {
		c.store.SetSink(c.writers)
	}
	var durable func() error
	if cfg.Storage.WALFsync {
		durable = c.store.Durable
	}
	c.receiver = remotewrite.NewReceiver(c.store, durable, cfg.Receiver, c.reg, c.base.With("component", "remote-write"))
	c.setToken(cfg.Auth.BearerToken)

	if err := c.startTraces(cfg); err != nil {
		return err
	}

	c.api = &api.API{Queryable: c.store, Parser: c.parser, Log: c.base.With("component", "api")}
	c.api.SetEngine(c.newEngine(cfg))

	c.notifier = notify.New(c.alertingConfig(cfg), c.reg, c.base.With("component", "notify"))
	go c.notifier.Run()

	ext := c.externalURL(cfg)
	c.rules = rules.NewManager(&rules.ManagerOptions{
		ExternalURL:     ext,
		QueryFunc:       c.ruleQuery,
		NotifyFunc:      rules.SendAlerts(c.notifier, ext.String()),
		Context:         context.Background(),
		AppendableV2:    c.store,
		Queryable:       c.store,
		Logger:          c.base.With("component", "rules"),
		Registerer:      c.reg,
		OutageTolerance: time.Hour,
		ForGracePeriod:  10 * time.Minute,
		ResendDelay:     time.Minute,
		Parser:          c.parser,
	})
	c.api.Rules = c.rules
	files, err := cfg.RuleFilePaths()
	if err != nil {
		return err
	}
	if err := c.rules.Update(cfg.EvaluationInterval.D(), files, labels.EmptyLabels(), ext.String(), rules.DefaultEvalIterationFunc); err != nil {
		return fmt.Errorf("load rules: %w", err)
	}
	go c.rules.Run()

	c.scraper = scrape.NewManager(c.store, c.reg, c.base.With("component", "scrape"))
	c.scraper.ApplyConfig(cfg.Scrape, c.extra)
	c.startFaults()

	c.ui, err = ui.New(ui.Options{Has: c.hasRoute, Auth: func() bool { return c.token.Load() != nil }})
	if err != nil {
		return err
	}

	c.srv = &http.Server{
		Handler:           c.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
	}
	c.served = make(chan struct{})
	go func() {
		defer close(c.served)
		if err := c.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("http server", "err", err)
		}
	}()
	c.started = true
	c.ready.Store(true)
	c.log.Info("center ready", "listen", c.Addr(), "storage", cfg.Storage.Path, "targets", len(cfg.Scrape.Targets)+len(c.extra),
		"rule_files", len(files), "alertmanagers", len(cfg.Alerting.Alertmanagers), "webhooks", len(cfg.Alerting.Webhooks),
		"remote_write", len(cfg.RemoteWrite), "auth", cfg.Auth.BearerToken != "", "traces", cfg.TracesPath(), "otlp_grpc", c.OTLPGRPCAddr())
	return nil
}

func (c *Center) cleanupFailedStart() {
	if c.scraper != nil {
		c.scraper.Stop()
	}
	if c.rules != nil {
		c.rules.Stop()
	}
	if c.notifier != nil {
		c.notifier.Stop()
	}
	if c.writers != nil {
		c.writers.Stop(context.Background())
	}
	c.stopFaults()
	_ = c.stopTraces()
	if c.store != nil {
		_ = c.store.Close()
	}
	if c.ln != nil {
		_ = c.ln.Close()
	}
}

// Stop stops taking requests, finishes the ones in flight, stops scraping
// (marking the scraped series stale) and rules, sends what is queued for
// Alertmanagers, webhooks and remote-write destinations within ctx, and
// closes the store.
func (c *Center) Stop(ctx context.Context) error {
	c.stopOnce.Do(func() {
		if !c.started {
			return
		}
		c.ready.Store(false)
		var errs []error
		if err := c.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
			_ = c.srv.Close()
		}
		<-c.served
		c.scraper.Stop()
		c.rules.Stop()
		c.notifier.Stop()
		c.writers.Stop(ctx)
		c.stopFaults()
		if err := c.stopTraces(); err != nil {
			errs = append(errs, err)
		}
		if err := c.store.Close(); err != nil {
			errs = append(errs, err)
		}
		c.stopErr = errors.Join(errs...)
		c.log.Info("center stopped")
	})
	return c.stopErr
}

// AddTarget scrapes t from now on, besides the targets of the config; a
// reload keeps it.
func (c *Center) AddTarget(t config.Target) error {
	if err := t.Validate("target"); err != nil {
		return err
	}
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	c.extra = slices.DeleteFunc(c.extra, func(e config.Target) bool { return e.URL == t.URL })
	c.extra = append(c.extra, t)
	if c.scraper != nil {
		c.scraper.ApplyConfig(c.cfg.Load().Scrape, c.extra)
	}
	return nil
}

// RemoveTarget stops scraping a target added with AddTarget.
func (c *Center) RemoveTarget(targetURL string) {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	c.extra = slices.DeleteFunc(c.extra, func(e config.Target) bool { return e.URL == targetURL })
	if c.scraper != nil {
		c.scraper.ApplyConfig(c.cfg.Load().Scrape, c.extra)
	}
}

// Queryable is the store, for PromQL evaluated in this process; nil before Start.
func (c *Center) Queryable() promstorage.Queryable {
	if c.store == nil {
		return nil
	}
	return c.store
}

// QueryEngine is the PromQL engine the API uses; nil before Start.
func (c *Center) QueryEngine() promql.QueryEngine {
	if c.api == nil {
		return nil
	}
	return c.api.Engine().Engine
}

// Targets reports the scrape targets and their health.
func (c *Center) Targets() []scrape.TargetStatus {
	if c.scraper == nil {
		return nil
	}
	return c.scraper.Targets()
}

// Reload reads the config file again and applies it, or keeps the running
// config and says why not.
func (c *Center) Reload() error {
	file := c.cfg.Load().File
	if file == "" {
		err := errors.New("reload: the center was started without a config file")
		c.countReload(err)
		return err
	}
	cfg, err := config.Load(file)
	if err != nil {
		err = fmt.Errorf("reload refused, the running config is kept: %w", err)
		c.countReload(err)
		return err
	}
	return c.ApplyConfig(cfg)
}

func (c *Center) countReload(err error) {
	if c.reloads == nil {
		return
	}
	if err != nil {
		c.reloads.WithLabelValues("failure").Inc()
		c.lastOK.Set(0)
		c.log.Error("config reload", "err", err)
		return
	}
	c.reloads.WithLabelValues("success").Inc()
	c.lastOK.Set(1)
}

// ApplyConfig swaps the whole config, or keeps the running one if cfg is
// invalid, changes what only a restart can change, or its rules fail to load.
func (c *Center) ApplyConfig(cfg config.Config) (err error) {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	defer func() { c.countReload(err) }()
	old := c.cfg.Load()
	cfg.Listen = old.Listen // from the command line, never from the file
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("reload refused, the running config is kept: %w", err)
	}
	var immutable []string
	if cfg.Storage.Path != old.Storage.Path {
		immutable = append(immutable, "storage.path")
	}
	if cfg.Storage.WALCompression != old.Storage.WALCompression {
		immutable = append(immutable, "storage.wal_compression")
	}
	if cfg.Storage.WALFsync != old.Storage.WALFsync {
		immutable = append(immutable, "storage.wal_fsync")
	}
	immutable = append(immutable, traceImmutable(&cfg, old)...)
	if len(immutable) > 0 {
		return fmt.Errorf("reload refused, the running config is kept: %s %w", strings.Join(immutable, ", "), ErrImmutable)
	}
	if !c.started {
		c.cfg.Store(&cfg)
		return nil
	}
	// Rules first: they are the only part that can still fail, and the
	// rules manager keeps its old rules when they do.
	files, err := cfg.RuleFilePaths()
	if err != nil {
		return fmt.Errorf("reload refused, the running config is kept: %w", err)
	}
	ext := c.externalURL(&cfg)
	if err := c.rules.Update(cfg.EvaluationInterval.D(), files, labels.EmptyLabels(), ext.String(), rules.DefaultEvalIterationFunc); err != nil {
		return fmt.Errorf("reload refused, the running config is kept: %w", err)
	}
	if cfg.Storage != old.Storage {
		if err := c.store.ApplyRetention(cfg.Storage); err != nil {
			c.log.Error("reload: apply retention", "err", err)
		}
	}
	if !reflect.DeepEqual(cfg.Query, old.Query) || cfg.EvaluationInterval != old.EvaluationInterval {
		c.api.SetEngine(c.newEngine(&cfg))
	}
	c.receiver.SetLimits(cfg.Receiver)
	c.applyTraces(&cfg)
	c.notifier.ApplyConfig(c.alertingConfig(&cfg))
	c.writers.ApplyConfig(context.Background(), cfg.RemoteWrite)
	if len(cfg.RemoteWrite) > 0 {
		c.store.SetSink(c.writers)
	} else {
		c.store.SetSink(nil)
	}
	c.setToken(cfg.Auth.BearerToken)
	c.scraper.ApplyConfig(cfg.Scrape, c.extra)
	c.cfg.Store(&cfg)
	c.log.Info("config reloaded", "file", cfg.File, "rule_files", len(files), "targets", len(cfg.Scrape.Targets)+len(c.extra))
	return nil
}

func (c *Center) setToken(tok string) {
	if tok == "" {
		c.token.Store(nil)
		return
	}
	c.token.Store(&tok)
}

func (c *Center) alertingConfig(cfg *config.Config) config.Alerting {
	a := cfg.Alerting
	if a.ExternalURL == "" {
		a.ExternalURL = c.URL()
	}
	return a
}

func (c *Center) externalURL(cfg *config.Config) *url.URL {
	s := cfg.Alerting.ExternalURL
	if s == "" {
		s = c.URL()
	}
	u, err := url.Parse(s)
	if err != nil {
		u = &url.URL{Scheme: "http", Host: c.Addr()}
	}
	return u
}

// newEngine makes a PromQL engine for cfg; its metrics replace the old
// engine's on /metrics.
func (c *Center) newEngine(cfg *config.Config) *api.Engine {
	reg := prometheus.NewRegistry()
	step := cfg.EvaluationInterval.D().Milliseconds()
	e := promql.NewEngine(promql.EngineOpts{
		Logger:                   c.base.With("component", "promql"),
		Reg:                      reg,
		MaxSamples:               cfg.Query.MaxSamples,
		Timeout:                  cfg.Query.Timeout.D(),
		LookbackDelta:            cfg.Query.LookbackDelta.D(),
		EnableAtModifier:         true,
		EnableNegativeOffset:     true,
		NoStepSubqueryIntervalFn: func(int64) int64 { return step },
		Parser:                   c.parser,
	})
	c.engineReg.Store(reg)
	return &api.Engine{Engine: e, LookbackDelta: cfg.Query.LookbackDelta.D(), Slots: make(chan struct{}, cfg.Query.MaxConcurrent)}
}

// ruleQuery evaluates a rule's expression with the current engine.
func (c *Center) ruleQuery(ctx context.Context, q string, t time.Time) (promql.Vector, error) {
	e := c.api.Engine()
	return rules.EngineQueryFunc(e.Engine, c.store)(ctx, q, t)
}

// gatherers is the center's registry plus the current engine's.
func (c *Center) gatherers() prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		g := prometheus.Gatherers{c.reg}
		if r := c.engineReg.Load(); r != nil {
			g = append(g, r)
		}
		return g.Gather()
	})
}

func (c *Center) routes() http.Handler {
	mux := http.NewServeMux()
	auth := c.requireToken
	c.api.Register(mux, auth)
	c.faultRoutes(mux, auth)
	c.traceRoutes(mux, auth)
	mux.Handle("POST /api/v1/write", auth(c.receiver))
	mux.Handle("/api/v1/write", auth(c.receiver)) // 405 for other methods
	mux.Handle("GET /metrics", auth(promhttp.HandlerFor(c.gatherers(), promhttp.HandlerOpts{})))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "imwatch center is Healthy.")
	})
	mux.HandleFunc("GET /-/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !c.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "imwatch center is not ready.")
			return
		}
		fmt.Fprintln(w, "imwatch center is Ready.")
	})
	reload := auth(http.HandlerFunc(c.serveReload))
	mux.Handle("POST /-/reload", reload)
	mux.Handle("PUT /-/reload", reload)
	c.ui.Register(mux) // GET / and /ui/
	c.mux = mux
	return mux
}

// hasRoute reports whether the center serves method and path: the UI asks,
// so that its pages call only the APIs this center has.
func (c *Center) hasRoute(method, path string) bool {
	if c.mux == nil {
		return false
	}
	r, err := http.NewRequest(method, path, nil)
	if err != nil {
		return false
	}
	_, pattern := c.mux.Handler(r)
	return pattern != ""
}

func (c *Center) serveReload(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := c.Reload(); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, config.ErrInvalid) || errors.Is(err, ErrImmutable) {
			code = http.StatusBadRequest
		}
		w.WriteHeader(code)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "config reloaded")
}

// requireToken checks the bearer token when auth is on.
func (c *Center) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := c.token.Load()
		if tok == nil {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(*tok)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="imwatch center"`)
			msg := "missing bearer token"
			if ok {
				msg = "wrong bearer token"
			}
			api.WriteError(w, http.StatusUnauthorized, "unauthorized", msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}
