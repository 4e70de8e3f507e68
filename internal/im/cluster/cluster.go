// Package cluster wires a whole reference IM cluster in one process: NATS
// (embedded or external), logic nodes and gateways. `imwatch up` and the
// tests use it.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/gateway"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/logic"
	"github.com/imwatch/imwatch/internal/service"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Options says what to run.
type Options struct {
	DataDir       string
	NATSURL       string // external NATS; empty embeds one
	NATSListen    string // the embedded server's address (default 127.0.0.1:0)
	GatewayListen []string
	LogicNodes    int
	// Metrics switches the IM metric set on: gateways serve it on /metrics
	// beside /ws, logic node i on LogicMetricsListen's port + i.
	Metrics            bool
	LogicMetricsListen string // default 127.0.0.1:0
	Secret             []byte
	Log                *slog.Logger
	// Tracing, when set, traces messages: each part gets a tracer made from
	// it, with Service imwatch-gateway or imwatch-logic and Instance the
	// part's id; nil switches tracing off. Tune can take a part's away
	// (cfg.Tracer = nil) to leave that hop untraced.
	Tracing *imtrace.Config
	// Tune, when set, changes each part's config before it starts.
	TuneGateway func(*gateway.Config)
	TuneLogic   func(*logic.Config)
	// Faults lets the parts take faults from the center (internal/fault):
	// an agent on the bus, each gateway and logic node registered with its
	// id, and a stop fault stops and restarts it.
	Faults bool
}

// Cluster is a running cluster.
type Cluster struct {
	NATSURL  string
	Embedded *bus.Embedded
	Gateways []*gateway.Gateway
	Logics   []*logic.Logic
	// LogicMetrics are the logic nodes' /metrics servers, when metrics are on.
	LogicMetrics []*service.HTTP
	// FaultAgent applies the center's faults, when Options.Faults is set.
	FaultAgent *fault.Agent
	group      *service.Group
	conns      []*nats.Conn
	tracers    []*imtrace.Tracer
	mu         sync.Mutex                // Gateways, Logics, LogicMetrics, sets as stop faults restart them
	sets       map[string]*immetrics.Set // each part's metric set, by part name
}

// MetricSets are the metric sets of the parts running now (none with
// metrics off), for a benchmark that pauses them (immetrics.Set.Pause).
func (c *Cluster) MetricSets() []*immetrics.Set {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*immetrics.Set
	for _, s := range c.sets {
		out = append(out, s)
	}
	return out
}

func (c *Cluster) keepSet(part string, s *immetrics.Set) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sets == nil {
		c.sets = map[string]*immetrics.Set{}
	}
	c.sets[part] = s
}

// Start starts NATS (unless external), the logic nodes, then the gateways.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.LogicNodes <= 0 {
		o.LogicNodes = 1
	}
	c := &Cluster{NATSURL: o.NATSURL, group: service.NewGroup(o.Log)}
	fail := func(err error) (*Cluster, error) {
		c.Stop(5 * time.Second)
		return nil, err
	}
	if c.NATSURL == "" {
		listen := o.NATSListen
		if listen == "" {
			listen = "127.0.0.1:0"
		}
		emb, err := bus.StartEmbedded(listen, o.DataDir, o.Log)
		if err != nil {
			return fail(err)
		}
		c.Embedded = emb
		c.NATSURL = emb.URL()
	}
	if o.Faults {
		nc, err := c.connect("fault-agent", o.Log)
		if err != nil {
			return fail(err)
		}
		c.FaultAgent = fault.NewAgent(nc, o.Log)
	}
	for i := 0; i < o.LogicNodes; i++ {
		if err := c.startLogic(ctx, o, i); err != nil {
			return fail(err)
		}
	}
	for i, listen := range o.GatewayListen {
		if err := c.startGateway(ctx, o, i, listen); err != nil {
			return fail(err)
		}
	}
	if c.FaultAgent != nil {
		if err := c.FaultAgent.Start(); err != nil {
			return fail(err)
		}
		_ = c.group.Start(ctx, service.Func{N: "fault agent", StopFn: func(context.Context) error { c.FaultAgent.Stop(); return nil }})
	}
	return c, nil
}

// startLogic starts logic node i (and its /metrics), as a part that a stop
// fault can stop and start again.
func (c *Cluster) startLogic(ctx context.Context, o Options, i int) error {
	name := "logic-" + strconv.Itoa(i+1)
	nc, err := c.connect(name, o.Log)
	if err != nil {
		return err
	}
	cfg := logic.DefaultConfig(name)
	cfg.Log = o.Log
	listen := ""
	if o.Metrics {
		cfg.Metrics = immetrics.New("logic")
		c.keepSet(name, cfg.Metrics)
		listen = o.LogicMetricsListen
		if listen == "" {
			listen = "127.0.0.1:0"
		}
		if listen, err = NextPort(listen, i); err != nil {
			return err
		}
	}
	// One tracer for the node's life, across restarts by a stop fault;
	// stopped after the node, flushing its last spans.
	if cfg.Tracer, err = c.tracer(ctx, o.Tracing, ServiceLogic, name); err != nil {
		return err
	}
	cfg.Metrics.Tracing(cfg.Tracer)
	if o.TuneLogic != nil {
		o.TuneLogic(&cfg)
	}
	if _, err := logic.New(cfg, nc); err != nil { // a bad config fails here, not at a restart
		return err
	}
	slot := len(c.Logics)
	c.Logics = append(c.Logics, nil)
	if o.Metrics {
		c.LogicMetrics = append(c.LogicMetrics, nil)
	}
	part := &service.Restartable{N: "logic " + name, New: func() (service.Service, error) {
		var parts []service.Service
		if o.Metrics {
			mux := http.NewServeMux()
			mux.Handle("/metrics", cfg.Metrics.Handler())
			parts = append(parts, &service.HTTP{N: name + " metrics", Listen: listen, Handler: mux, Log: o.Log})
		}
		l, err := logic.New(cfg, nc)
		if err != nil {
			return nil, err
		}
		return &partGroup{name: name, parts: append(parts, l), log: o.Log}, nil
	}, OnStart: func(s service.Service) {
		pg := s.(*partGroup)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.Logics[slot] = pg.parts[len(pg.parts)-1].(*logic.Logic)
		if o.Metrics {
			hs := pg.parts[0].(*service.HTTP)
			c.LogicMetrics[slot] = hs
			listen = hs.Addr() // a restart binds the same port
		}
	}}
	cfg.Faults = c.registerFaults(name, fault.ServiceLogic, part, cfg.Metrics)
	return c.group.Start(ctx, part)
}

// startGateway starts gateway i on listen, as a part that a stop fault can
// stop and start again on the same address.
func (c *Cluster) startGateway(ctx context.Context, o Options, i int, listen string) error {
	id := "gw-" + strconv.Itoa(i+1)
	nc, err := c.connect(id, o.Log)
	if err != nil {
		return err
	}
	cfg := gateway.DefaultConfig(id, listen, o.Secret)
	cfg.Log = o.Log
	if o.Metrics {
		cfg.Metrics = immetrics.New("gateway")
		c.keepSet(id, cfg.Metrics)
	}
	if cfg.Tracer, err = c.tracer(ctx, o.Tracing, ServiceGateway, id); err != nil {
		return err
	}
	cfg.Metrics.Tracing(cfg.Tracer)
	if o.TuneGateway != nil {
		o.TuneGateway(&cfg)
	}
	slot := len(c.Gateways)
	c.Gateways = append(c.Gateways, nil)
	part := &service.Restartable{N: "gateway " + id, New: func() (service.Service, error) {
		return gateway.New(cfg, nc)
	}, OnStart: func(s service.Service) {
		g := s.(*gateway.Gateway)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.Gateways[slot] = g
		cfg.Listen = g.Addr() // a restart binds the same port
	}}
	cfg.Faults = c.registerFaults(id, fault.ServiceGateway, part, cfg.Metrics)
	return c.group.Start(ctx, part)
}

// registerFaults gives an instance to the fault agent, if faults are on,
// with its fault counters on its metric set.
func (c *Cluster) registerFaults(name, svc string, part fault.Part, m *immetrics.Set) *fault.Injector {
	if c.FaultAgent == nil {
		return nil
	}
	var reg prometheus.Registerer
	if m != nil { // with the service label the rest of the set carries
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"service": svc}, m.Registry)
	}
	return c.FaultAgent.Register(name, svc, part, reg)
}

// partGroup is parts that start in order and stop in reverse as one.
type partGroup struct {
	name  string
	parts []service.Service
	log   *slog.Logger
	g     *service.Group
}

func (p *partGroup) Name() string { return p.name }

func (p *partGroup) Start(ctx context.Context) error {
	p.g = service.NewGroup(p.log)
	for _, s := range p.parts {
		if err := p.g.Start(ctx, s); err != nil {
			_ = p.g.Stop(5 * time.Second)
			return err
		}
	}
	return nil
}

func (p *partGroup) Stop(ctx context.Context) error {
	timeout := 15 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	return p.g.Stop(timeout)
}

// Service names of the parts' spans (resource attribute service.name).
const (
	ServiceGateway = "imwatch-gateway"
	ServiceLogic   = "imwatch-logic"
	ServiceClient  = "imwatch-client"
)

// tracer makes a part's tracer from the template tmpl (nil: tracing off),
// shut down, flushing its spans, after the part has stopped.
func (c *Cluster) tracer(ctx context.Context, tmpl *imtrace.Config, svc, instance string) (*imtrace.Tracer, error) {
	if tmpl == nil {
		return nil, nil
	}
	cfg := *tmpl
	cfg.Service, cfg.Instance = svc, instance
	tr, err := imtrace.New(cfg)
	if err != nil || tr == nil {
		return nil, err
	}
	// Stopped after the part, flushing its last spans; bounded, for a
	// receiver that is gone by then (`imwatch up` stops its center first
	// and flushes the tracers before, FlushTracing).
	stop := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, tracingStopTimeout)
		defer cancel()
		return tr.Shutdown(ctx)
	}
	if err := c.group.Start(ctx, service.Func{N: instance + " tracing", StopFn: stop}); err != nil {
		_ = stop(ctx)
		return nil, err
	}
	c.tracers = append(c.tracers, tr)
	return tr, nil
}

// tracingStopTimeout bounds how long a part's tracer may take to send its
// last spans when the cluster stops.
const tracingStopTimeout = time.Second

// FlushTracing sends the spans the parts' tracers hold now.
func (c *Cluster) FlushTracing(ctx context.Context) error {
	var errs []error
	for _, tr := range c.tracers {
		errs = append(errs, tr.ForceFlush(ctx))
	}
	return errors.Join(errs...)
}

func (c *Cluster) connect(name string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := bus.Connect(c.NATSURL, name, log)
	if err != nil {
		return nil, err
	}
	c.conns = append(c.conns, nc)
	return nc, nil
}

// URLs are the gateways' WebSocket URLs.
func (c *Cluster) URLs() []string {
	var out []string
	for _, g := range c.Gateways {
		out = append(out, "ws://"+g.Addr()+"/ws")
	}
	return out
}

// Stop stops the gateways, the logic nodes, then NATS.
func (c *Cluster) Stop(timeout time.Duration) error {
	err := c.group.Stop(timeout)
	for _, nc := range c.conns {
		_ = nc.Drain()
	}
	for _, nc := range c.conns {
		for i := 0; i < 100 && !nc.IsClosed(); i++ {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if c.Embedded != nil {
		c.Embedded.Shutdown()
	}
	return err
}

// NextPort returns listen with its port plus n ("127.0.0.1:7080", 1 -> "127.0.0.1:7081").
func NextPort(listen string, n int) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", fmt.Errorf("address %q: bad port", listen)
	}
	if p == 0 {
		return listen, nil
	}
	return net.JoinHostPort(host, strconv.Itoa(p+n)), nil
}
