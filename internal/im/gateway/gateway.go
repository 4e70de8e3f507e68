// Package gateway is the reference IM's WebSocket gateway: it authenticates
// clients, keeps their long connections, forwards their frames to the logic
// nodes over NATS and pushes messages the logic nodes send it.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"
)

// Config configures a gateway.
type Config struct {
	ID             string // unique among gateways; a NATS subject token
	Listen         string // address of /ws (and /metrics)
	Secret         []byte // HMAC secret of auth tokens
	AuthTimeout    time.Duration
	IdleTimeout    time.Duration // close a connection that sent nothing for this long
	RateLimit      float64       // frames per second per connection
	RateBurst      int
	OutQueue       int // frames queued to one client before it is a slow consumer
	MaxInflight    int // sends per connection awaiting the logic's answer
	MaxConns       int
	RequestTimeout time.Duration
	Store          bus.StoreConfig
	Log            *slog.Logger
	// Metrics is the IM metric set, served on /metrics beside /ws; nil switches metrics off.
	Metrics *immetrics.Set
	// Tracer makes the gateway's hop spans (im.gateway.receive, .push,
	// .sync); nil switches tracing off: frames and bus messages then carry
	// the trace context they came with, unchanged.
	Tracer *imtrace.Tracer
	// Faults are the faults in force at this gateway's hops (internal/fault); nil: none.
	Faults *fault.Injector
}

// DefaultConfig returns a gateway's defaults for id and listen.
func DefaultConfig(id, listen string, secret []byte) Config {
	return Config{
		ID:             id,
		Listen:         listen,
		Secret:         secret,
		AuthTimeout:    5 * time.Second,
		IdleTimeout:    60 * time.Second,
		RateLimit:      200,
		RateBurst:      400,
		OutQueue:       2048,
		MaxInflight:    256,
		MaxConns:       200000,
		RequestTimeout: 5 * time.Second,
		Store:          bus.DefaultStoreConfig(),
		Log:            slog.Default(),
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if !protocol.ValidUser(c.ID) {
		return fmt.Errorf("gateway id %q: must be 1 to 64 characters of A-Z a-z 0-9 _ -", c.ID)
	}
	if len(c.Secret) < 16 {
		return errors.New("gateway: the token secret must be at least 16 bytes")
	}
	if c.AuthTimeout <= 0 || c.IdleTimeout <= 0 || c.RateLimit <= 0 || c.RateBurst < 1 || c.OutQueue < 16 || c.MaxInflight < 1 || c.MaxConns < 1 || c.RequestTimeout <= 0 {
		return errors.New("gateway: timeouts and limits must be positive")
	}
	return nil
}

// IDFromListen derives a gateway id from its listen address.
func IDFromListen(listen string) string {
	r := strings.NewReplacer(":", "-", ".", "-", "[", "", "]", "")
	return "gw-" + r.Replace(listen)
}

// Gateway is one gateway.
type Gateway struct {
	cfg   Config
	m     *immetrics.Set
	tr    *imtrace.Tracer
	log   *slog.Logger
	nc    *nats.Conn
	js    jetstream.JetStream
	epoch string

	presence jetstream.KeyValue
	gateways jetstream.KeyValue

	ln   net.Listener
	http *http.Server
	mux  *http.ServeMux
	sub  *nats.Subscription

	sends sendCalls
	acks  *ackBatcher

	mu       sync.RWMutex
	conns    map[string]map[string]*conn // user -> device -> connection
	n        int
	live     map[*conn]struct{} // every open connection, authenticated or not
	stopping bool               // Stop began: connections are turned away

	stopLive  chan struct{}
	liveDone  chan struct{}
	sweepDone chan struct{}
	wg        sync.WaitGroup
}

// New makes a gateway on the NATS connection nc.
func New(cfg Config, nc *nats.Conn) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("gateway: jetstream: %w", err)
	}
	g := &Gateway{
		cfg:       cfg,
		m:         cfg.Metrics,
		tr:        cfg.Tracer,
		log:       cfg.Log.With("component", "gateway", "gateway", cfg.ID),
		nc:        nc,
		js:        js,
		epoch:     nuid.Next(),
		conns:     map[string]map[string]*conn{},
		acks:      newAckBatcher(nc),
		live:      map[*conn]struct{}{},
		mux:       http.NewServeMux(),
		stopLive:  make(chan struct{}),
		liveDone:  make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
	g.mux.HandleFunc("/ws", g.serveWS)
	g.mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	if cfg.Metrics != nil {
		g.mux.Handle("/metrics", cfg.Metrics.Handler())
	}
	return g, nil
}

// Handle adds a handler beside /ws, such as /metrics.
func (g *Gateway) Handle(pattern string, h http.Handler) { g.mux.Handle(pattern, h) }

// Name is the service's name.
func (g *Gateway) Name() string { return "gateway " + g.cfg.ID }

// Addr is the address the gateway listens on, once started.
func (g *Gateway) Addr() string { return g.ln.Addr().String() }

// ID is the gateway's id.
func (g *Gateway) ID() string { return g.cfg.ID }

// Start binds the listener, announces the gateway and begins serving.
func (g *Gateway) Start(ctx context.Context) error {
	if err := bus.SetupWithRetry(ctx, g.js, g.cfg.Store); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	var err error
	if g.presence, err = g.js.KeyValue(ctx, bus.BucketPresence); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if g.gateways, err = g.js.KeyValue(ctx, bus.BucketGateways); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.sub, err = g.nc.Subscribe(bus.DeliverSubject(g.cfg.ID), g.handleDeliver)
	if err != nil {
		return fmt.Errorf("gateway: subscribe: %w", err)
	}
	_ = g.sub.SetPendingLimits(1<<20, 256<<20)
	if err := g.startSendCalls(); err != nil {
		return fmt.Errorf("gateway: subscribe: %w", err)
	}
	if err := g.announce(ctx); err != nil {
		return err
	}
	g.ln, err = net.Listen("tcp", g.cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway: listen on %s: %w", g.cfg.Listen, err)
	}
	g.http = &http.Server{Handler: g.mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := g.http.Serve(g.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("http server failed", "err", err)
		}
	}()
	go g.liveLoop()
	go g.sweepLoop()
	go g.acks.run()
	g.log.Info("gateway started", "listen", g.Addr())
	return nil
}

func (g *Gateway) announce(ctx context.Context) error {
	data, _ := json.Marshal(bus.GatewayInfo{ID: g.cfg.ID, Epoch: g.epoch, Addr: g.cfg.Listen, TS: time.Now().UnixMilli()})
	if _, err := g.gateways.Put(ctx, g.cfg.ID, data); err != nil {
		return fmt.Errorf("gateway: announce: %w", err)
	}
	return nil
}

func (g *Gateway) liveLoop() {
	defer close(g.liveDone)
	t := time.NewTicker(bus.GatewayRefresh)
	defer t.Stop()
	for {
		select {
		case <-g.stopLive:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), bus.GatewayRefresh)
			if err := g.announce(ctx); err != nil {
				g.log.Warn("liveness refresh failed", "err", err)
			}
			cancel()
		}
	}
}

// sweepInterval is how often the sweeper checks every connection's auth
// and idle timeouts and stuck writes: one goroutine and one ticker for the
// whole gateway rather than one per connection.
const sweepInterval = 250 * time.Millisecond

func (g *Gateway) sweepLoop() {
	defer close(g.sweepDone)
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stopLive:
			return
		case now := <-t.C:
			g.mu.RLock()
			for c := range g.live {
				c.check(now)
			}
			g.mu.RUnlock()
			g.sends.expire(now)
		}
	}
}

// Stop closes every connection with "going away" so that clients reconnect
// to another gateway, withdraws presence and stops.
func (g *Gateway) Stop(ctx context.Context) error {
	// Shutdown waits up to 5 s for a connection that has not sent its
	// request yet (a client still dialling): give it stopGrace, then close.
	sctx, cancelShutdown := context.WithTimeout(ctx, stopGrace)
	if err := g.http.Shutdown(sctx); err != nil {
		_ = g.http.Close()
	}
	cancelShutdown()
	close(g.stopLive)
	<-g.liveDone
	<-g.sweepDone
	g.mu.Lock()
	g.stopping = true
	all := make([]*conn, 0, len(g.live))
	for c := range g.live {
		all = append(all, c)
	}
	g.mu.Unlock()
	for _, c := range all {
		c.close(websocket.StatusGoingAway, "gateway shutting down", nil)
	}
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	// A client that does not answer the close frame (one still dialling, or
	// gone without closing its socket) would hold the stop for writeTimeout:
	// give the handshakes stopGrace, then drop what is left.
	grace := time.NewTimer(stopGrace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		g.mu.Lock()
		for c := range g.live {
			c.drop()
		}
		g.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	g.acks.stop() // sends what the connections acknowledged last
	_ = g.sub.Unsubscribe()
	_ = g.sends.sub.Unsubscribe()
	dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = g.gateways.Delete(dctx, g.cfg.ID)
	err := g.nc.FlushTimeout(2 * time.Second)
	g.log.Info("gateway stopped")
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("gateway: flush: %w", err)
	}
	return nil
}

// register makes c the connection of its user and device, replacing an older one.
func (g *Gateway) register(c *conn) error {
	g.mu.Lock()
	devs := g.conns[c.user]
	old := devs[c.device]
	// A device connecting again replaces its connection and does not add one:
	// at the limit it is still let in, or it could not come back until its
	// dead connection timed out.
	if old == nil && g.n >= g.cfg.MaxConns {
		g.mu.Unlock()
		return protocol.Errorf(protocol.CodeOverloaded, "gateway is at its connection limit; try another")
	}
	if devs == nil {
		devs = map[string]*conn{}
		g.conns[c.user] = devs
	}
	devs[c.device] = c
	if old == nil {
		g.n++
		g.m.ConnDelta(1)
	}
	g.mu.Unlock()
	if old != nil {
		old.close(websocket.StatusPolicyViolation, protocol.CodeReplaced, protocol.Errorf(protocol.CodeReplaced, "the same user and device connected again"))
	}
	data, _ := json.Marshal(bus.Presence{Gateway: g.cfg.ID, Epoch: g.epoch})
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RequestTimeout)
	defer cancel()
	rev, err := g.presence.Put(ctx, c.user+"."+c.device, data)
	if err != nil {
		g.unregister(c)
		return protocol.Errorf(protocol.CodeUnavailable, "presence store unavailable; retry")
	}
	c.presenceRev.Store(rev)
	return nil
}

func (g *Gateway) unregister(c *conn) {
	g.mu.Lock()
	if devs := g.conns[c.user]; devs != nil && devs[c.device] == c {
		delete(devs, c.device)
		g.n--
		g.m.ConnDelta(-1)
		if len(devs) == 0 {
			delete(g.conns, c.user)
		}
	}
	g.mu.Unlock()
	if rev := c.presenceRev.Load(); rev != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		// Only if still ours: the device may have reconnected elsewhere already.
		_ = g.presence.Delete(ctx, c.user+"."+c.device, jetstream.LastRevision(rev))
	}
}

func (g *Gateway) lookup(t bus.Target) *conn {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.conns[t.User][t.Device]
}

// Conns is the number of authenticated connections.
func (g *Gateway) Conns() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.n
}

func (g *Gateway) handleDeliver(m *nats.Msg) {
	start := time.Now()
	var d bus.Deliver
	if err := bus.DecodeDeliver(m.Data, &d); err != nil {
		g.log.Debug("undecodable deliver", "err", err)
		return
	}
	// The push hangs below the stored message's append (the header, or the
	// stored message itself from a node that sets no header). A group's
	// pushes, one per gateway, also link to it, with this gateway's share.
	if d.Msg.Trace == "" { // the logic node puts it in the header (bus.HeaderTrace)
		d.Msg.Trace = m.Header.Get(bus.HeaderTrace)
	}
	parent := imtrace.ParseHeader(m.Header)
	if !parent.IsValid() {
		parent = imtrace.Parse(d.Msg.Trace)
	}
	var links []trace.Link
	if d.Msg.Group != "" && g.tr != nil {
		links = []trace.Link{imtrace.FanoutLink(parent, len(d.Targets))}
	}
	// The span starts when the push arrived, the time its metrics use.
	sp := g.tr.StartLinkedAt(parent, imtrace.SpanGatewayPush, trace.SpanKindConsumer, imtrace.Message{
		ID: d.Msg.MsgID, Conv: d.Msg.Conv, Seq: d.Msg.Seq, User: d.Msg.From, Dest: g.cfg.ID,
		Recipients: len(d.Targets), Attempt: d.Attempt, Probe: d.Msg.Probe}, links, start)
	// A fault here drops or holds the push inside its span, so that a
	// dropped message's trace ends at this hop. This runs on the bus
	// subscription's goroutine, shared by every push: a delay holds the
	// push on a timer, not the goroutine.
	if fd := g.cfg.Faults.At(fault.HopGatewayPush); fd.Drop {
		sp.SetErrorCode(fault.ErrorType, fd.DropMessage(fault.HopGatewayPush))
		sp.End()
		return
	} else if fd.Delay > 0 {
		held, dm := sp, d // copies, so that the path without a fault allocates nothing
		if !g.cfg.Faults.Later(fd.Delay, func() { g.push(&dm, &held, start) }) {
			held.SetErrorCode(fault.ErrorType, "dropped at gateway.push: latency fault "+fd.Fault+" already holds the most messages")
			held.End()
		}
		return
	}
	g.push(&d, &sp, start)
}

// push sends the deliver d, whose push span is sp, to the devices of its
// targets connected here; start is when the push arrived from the bus.
func (g *Gateway) push(d *bus.Deliver, sp *imtrace.Span, start time.Time) {
	// One rendering of the frame for every device it goes to.
	f := protocol.Frame{
		Type: protocol.TypeDeliver, MsgID: d.Msg.MsgID, Conv: d.Msg.Conv, Seq: d.Msg.Seq,
		From: d.Msg.From, FromDevice: d.Msg.FromDevice, Group: d.Msg.Group, Body: d.Msg.Body,
		Probe: d.Msg.Probe, Trace: d.Msg.Trace, TS: d.Msg.TS,
	}
	sp.Inject(imtrace.Field(&f.Trace))
	data := protocol.AppendFrame(nil, &f) // sized for the frame by AppendFrame
	kind := immetrics.Kind(d.Msg.Group)
	to := ackTo{node: d.Node, batch: d.AckBatch}
	queued, offline := 0, 0
	for _, t := range d.Targets {
		if c := g.lookup(t); c == nil {
			offline++
		} else if c.deliver(data, d.Msg.MsgID, to, kind, start) {
			queued++
		}
	}
	if queued < len(d.Targets) {
		code := protocol.CodeSlowConsumer
		if offline > 0 {
			code = "offline"
		}
		sp.SetErrorCode(code, fmt.Sprintf("pushed to %d of %d devices: %d not connected here, %d too slow", queued, len(d.Targets), offline, len(d.Targets)-queued-offline))
	}
	sp.End()
}

// Tracer is the gateway's tracer (nil when it does not trace).
func (g *Gateway) Tracer() *imtrace.Tracer { return g.tr }
