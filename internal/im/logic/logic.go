// Package logic is the reference IM's logic node: it de-duplicates and
// sequences messages, stores them durably in JetStream, pushes them to the
// recipients' gateways, redelivers what is not acknowledged, serves sync and
// keeps groups. Logic nodes are stateless: any number share the work.
package logic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config configures a logic node.
type Config struct {
	Node        string // instance name, unique among logic nodes
	Store       bus.StoreConfig
	AckTimeout  time.Duration // wait for a device's deliver-ack before pushing again
	MaxAttempts int           // pushes per device before it is left to sync
	MaxInflight int           // requests handled at once; more are refused as overloaded
	Log         *slog.Logger
	Metrics     *immetrics.Set // the IM metric set; nil switches metrics off
	// Tracer makes the node's hop spans (im.logic.handle, im.store.append,
	// im.logic.ack); nil switches tracing off: stored messages then carry
	// the trace context the send came with, unchanged.
	Tracer *imtrace.Tracer
	// Faults are the faults in force at this node's hops (internal/fault); nil: none.
	Faults *fault.Injector
}

// DefaultConfig returns the defaults of a logic node named node.
func DefaultConfig(node string) Config {
	return Config{
		Node:        node,
		Store:       bus.DefaultStoreConfig(),
		AckTimeout:  2 * time.Second,
		MaxAttempts: 4,
		MaxInflight: 8192,
		Log:         slog.Default(),
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if !protocol.ValidUser(c.Node) {
		return fmt.Errorf("logic node name %q: must be 1 to 64 characters of A-Z a-z 0-9 _ -", c.Node)
	}
	if c.AckTimeout <= 0 || c.MaxAttempts < 1 || c.MaxInflight < 1 {
		return errors.New("logic: ack timeout, max attempts and max inflight must be positive")
	}
	return nil
}

// Logic is one logic node.
type Logic struct {
	cfg Config
	m   *immetrics.Set
	tr  *imtrace.Tracer
	log *slog.Logger
	nc  *nats.Conn
	js  jetstream.JetStream

	stream   jetstream.Stream
	convsKV  jetstream.KeyValue
	groupsKV jetstream.KeyValue
	dir      *directory

	sem  chan struct{}
	work chan job      // a request for an idle worker (bounded)
	quit chan struct{} // closed by Stop: idle workers exit
	stop sync.Once

	convMu sync.Mutex
	convs  map[string]*convState
	known  sync.Map // "user.conv" membership keys already written

	push *pusher

	cancel context.CancelFunc
	subs   []*nats.Subscription
	wg     sync.WaitGroup
}

// New makes a logic node on the NATS connection nc.
func New(cfg Config, nc *nats.Conn) (*Logic, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxInflight), jetstream.WithPublishAsyncTimeout(storeTimeout))
	if err != nil {
		return nil, fmt.Errorf("logic: jetstream: %w", err)
	}
	return &Logic{
		cfg:   cfg,
		m:     cfg.Metrics,
		tr:    cfg.Tracer,
		log:   cfg.Log.With("component", "logic", "node", cfg.Node),
		nc:    nc,
		js:    js,
		dir:   newDirectory(),
		sem:   make(chan struct{}, cfg.MaxInflight),
		work:  make(chan job),
		quit:  make(chan struct{}),
		convs: map[string]*convState{},
	}, nil
}

// Name is the service's name.
func (l *Logic) Name() string { return "logic " + l.cfg.Node }

// Start sets up the store, loads the directory and begins serving.
func (l *Logic) Start(ctx context.Context) error {
	if err := bus.SetupWithRetry(ctx, l.js, l.cfg.Store); err != nil {
		return fmt.Errorf("logic: %w", err)
	}
	var err error
	if l.stream, err = l.js.Stream(ctx, bus.StreamMsgs); err != nil {
		return fmt.Errorf("logic: stream: %w", err)
	}
	kvs := map[string]*jetstream.KeyValue{bus.BucketConvs: &l.convsKV, bus.BucketGroups: &l.groupsKV}
	for name, dst := range kvs {
		if *dst, err = l.js.KeyValue(ctx, name); err != nil {
			return fmt.Errorf("logic: bucket %s: %w", name, err)
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	watches := []struct {
		bucket string
		apply  func(jetstream.KeyValueEntry)
	}{
		{bus.BucketPresence, l.dir.applyPresence},
		{bus.BucketGateways, l.dir.applyGateway},
		{bus.BucketGroups, l.dir.applyGroup},
	}
	for _, w := range watches {
		kv, err := l.js.KeyValue(ctx, w.bucket)
		if err != nil {
			cancel()
			return fmt.Errorf("logic: bucket %s: %w", w.bucket, err)
		}
		ready := make(chan struct{})
		if err := l.dir.watch(runCtx, kv, w.apply, ready); err != nil {
			cancel()
			return fmt.Errorf("logic: watch %s: %w", w.bucket, err)
		}
		select {
		case <-ready:
		case <-ctx.Done():
			cancel()
			return ctx.Err()
		}
	}
	l.push = newPusher(l)
	if err := l.push.start(ctx, runCtx); err != nil {
		cancel()
		return err
	}
	for subj, h := range map[string]nats.MsgHandler{
		bus.SubjSend:  l.bounded(l.handleSend),
		bus.SubjSync:  l.bounded(l.handleSync),
		bus.SubjGroup: l.bounded(l.handleGroup),
	} {
		sub, err := l.nc.QueueSubscribe(subj, bus.QueueLogic, h)
		if err != nil {
			cancel()
			return fmt.Errorf("logic: subscribe %s: %w", subj, err)
		}
		_ = sub.SetPendingLimits(65536, 64<<20)
		l.subs = append(l.subs, sub)
	}
	if err := l.nc.Flush(); err != nil {
		cancel()
		return fmt.Errorf("logic: flush: %w", err)
	}
	l.log.Info("logic node started")
	return nil
}

// Stop stops taking requests, finishes those in flight and hands unfinished
// pushes back to the stream for another node.
func (l *Logic) Stop(ctx context.Context) error {
	closed := make([]<-chan nats.SubStatus, 0, len(l.subs))
	for _, s := range l.subs {
		closed = append(closed, s.StatusChanged(nats.SubscriptionClosed))
		_ = s.Drain()
	}
	// Drain returns at once; a subscription closes once the requests it
	// had taken are handed to bounded, which counts them in wg. Only then
	// may wg.Wait begin: a WaitGroup must not be added to from zero while
	// it is being waited on.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, ch := range closed {
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
		l.wg.Wait()
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	l.stop.Do(func() { close(l.quit) })
	if l.push != nil {
		l.push.stop()
	}
	if l.cancel != nil {
		l.cancel()
	}
	err := l.nc.FlushTimeout(2 * time.Second)
	l.log.Info("logic node stopped")
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("logic: flush: %w", err)
	}
	return nil
}

// bounded runs h on a worker goroutine, refusing with overloaded when
// MaxInflight requests are already running.
func (l *Logic) bounded(h func(*nats.Msg)) nats.MsgHandler {
	return func(m *nats.Msg) {
		select {
		case l.sem <- struct{}{}:
		default:
			l.log.Debug("refused request: overloaded", "subject", m.Subject)
			l.m.Fail(strings.TrimPrefix(m.Subject, "im.logic."), protocol.CodeOverloaded)
			replyJSON(m, bus.SendReply{Code: protocol.CodeOverloaded, Error: "logic node is overloaded"})
			return
		}
		l.wg.Add(1)
		j := job{h: h, m: m}
		select {
		case l.work <- j: // an idle worker takes it
		default:
			go l.worker(j)
		}
	}
}

// job is one request for a worker.
type job struct {
	h func(*nats.Msg)
	m *nats.Msg
}

// workerIdle is how long a worker waits for another request before it
// exits.
const workerIdle = 10 * time.Second

// worker runs j, then the requests bounded hands it, until it has been
// idle for workerIdle or the node stops. A goroutine per request started
// on a small stack and grew it, copying, on nearly every request (the
// handlers' calls go deep into JetStream): stack growth took 4.3% of the
// CPU at 2,000 msg/s in a profile, 1.7% after (docs/benchmarks.md). A
// worker keeps its grown stack. There are about as many workers as
// requests ran at once at the busiest moment of the last workerIdle, each
// request holding one of the MaxInflight slots.
func (l *Logic) worker(j job) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		j.h(j.m)
		<-l.sem
		l.wg.Done()
		idle.Reset(workerIdle)
		select {
		case j = <-l.work:
		case <-idle.C:
			return
		case <-l.quit:
			return
		}
	}
}

func replyJSON(m *nats.Msg, v any) {
	if m.Reply == "" {
		return
	}
	data, err := json.Marshal(v)
	if err != nil {
		return
	}
	_ = m.Respond(data)
}

// Tracer is the node's tracer (nil when it does not trace).
func (l *Logic) Tracer() *imtrace.Tracer { return l.tr }
