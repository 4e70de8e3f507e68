package probe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// A runner probes one target: it keeps its probe accounts connected and,
// every interval, runs one round on each of its links.
//
// A link is a sender and a receiver. With one account, the account sends
// to itself: one link from its "tx" connection to its "rx" connection.
// With n accounts, n links in a ring: account i sends to account i+1.
type runner struct {
	p      *Prober
	t      Target
	drv    Driver
	m      *targetMetrics
	log    *slog.Logger
	links  []*link
	keeps  []*keeper
	attrs  []attribute.KeyValue
	loc    string
	tracer trace.Tracer

	mu        sync.Mutex
	seq       uint64
	inflight  map[uint64]*round
	ring      []doneEntry // outcome of finished rounds, by seq % len
	okLinks   int
	doneLinks int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type link struct {
	idx      int
	tx, rx   *keeper // persistent connections (nil with fresh_login)
	txOpen   OpenRequest
	rxOpen   OpenRequest
	lastSeq  uint64 // highest seq received on this link in time
	everDone bool
	lastOK   bool
}

// round is one probe message in flight.
type round struct {
	l        *link
	seq      uint64
	start    time.Time
	sent     time.Time
	span     trace.Span
	ackDone  bool
	acked    bool
	received bool
	reason   string // first failure
	errMsg   string
	timer    *time.Timer
	done     chan struct{}
}

// States of finished rounds' messages, kept to classify copies that come later.
const (
	stateReceived uint8 = iota + 1
	stateLost
	stateLate
)

type doneEntry struct {
	seq   uint64
	state uint8
	sent  int64 // Unix ns, for receipts that come after the round
}

// RoundResult is the outcome of one round, for Options.OnRound.
type RoundResult struct {
	Target string
	Link   int
	Seq    uint64
	OK     bool
	Reason string // "" when OK
	Sent   time.Time
	// E2E is send to delivery on the prober's clock; 0 if not received in time.
	E2E     time.Duration
	TraceID string
}

func newRunner(p *Prober, pl *pipeline, t Target) *runner {
	loc := pl.cfg.Location
	r := &runner{
		p: p, t: t, drv: drivers[t.Protocol], loc: loc, tracer: pl.tracer,
		m:        p.m.forTarget(t.Name, t.Protocol, loc),
		log:      p.log.With("target", t.Name, "protocol", t.Protocol),
		inflight: map[uint64]*round{},
		attrs: []attribute.KeyValue{
			attribute.String("imwatch.probe.target", t.Name),
			attribute.String("imwatch.probe.protocol", t.Protocol),
			attribute.String("imwatch.probe.location", loc),
			attribute.Bool("imwatch.probe", true),
			attribute.String("messaging.system", t.Protocol),
		},
	}
	accounts := t.Accounts
	if len(accounts) == 0 {
		accounts = []Account{defaultAccount(t.Protocol, loc)}
	}
	req := func(i int, role string) OpenRequest {
		name := fmt.Sprintf("%s.%s.%d", loc, t.Name, i)
		if role != "" {
			name += "." + role
		}
		return OpenRequest{Target: &r.t, Account: accounts[i], Role: role, Name: name, Deliver: r.deliver, Log: r.log, Tracer: pl.hops}
	}
	if len(accounts) == 1 {
		r.links = []*link{{txOpen: req(0, "tx"), rxOpen: req(0, "rx")}}
	} else {
		for i := range accounts {
			r.links = append(r.links, &link{idx: i, txOpen: req(i, ""), rxOpen: req((i+1)%len(accounts), "")})
		}
	}
	if !t.FreshLogin {
		if len(accounts) == 1 {
			tx, rx := &keeper{r: r, req: r.links[0].txOpen}, &keeper{r: r, req: r.links[0].rxOpen}
			r.keeps = []*keeper{tx, rx}
			r.links[0].tx, r.links[0].rx = tx, rx
		} else {
			for i := range accounts {
				r.keeps = append(r.keeps, &keeper{r: r, req: req(i, "")})
			}
			for i, l := range r.links {
				l.tx, l.rx = r.keeps[i], r.keeps[(i+1)%len(r.keeps)]
			}
		}
		for _, k := range r.keeps {
			k.changed = make(chan struct{})
		}
	}
	// Remember outcomes for ten rounds' worth of time past the timeout.
	per := int((10*(t.Interval.D()+t.Timeout.D()))/t.Interval.D()) + 1
	size := 1024
	for size < len(r.links)*per && size < 1<<22 {
		size *= 2
	}
	r.ring = make([]doneEntry, size)
	return r
}

// defaultAccount is the probe account of a target that lists none.
func defaultAccount(proto, location string) Account {
	if proto == ProtoIMWatch {
		return Account{User: "probe-" + strings.ReplaceAll(location, ".", "-")}
	}
	return Account{} // MQTT without authentication
}

func (r *runner) start() {
	r.ctx, r.cancel = context.WithCancel(context.Background())
	for _, k := range r.keeps {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); k.run(r.ctx) }()
	}
	interval := r.t.Interval.D()
	for i, l := range r.links {
		// Spread the links' rounds over the interval.
		offset := interval * time.Duration(i) / time.Duration(len(r.links))
		if len(r.links) == 1 {
			offset = 0
		}
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.loop(l, offset) }()
	}
}

// stop ends the rounds; those in flight are neither lost nor received.
func (r *runner) stop() {
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	for seq, rd := range r.inflight {
		rd.timer.Stop()
		rd.span.SetAttributes(attribute.Bool("imwatch.probe.aborted", true))
		rd.span.End()
		delete(r.inflight, seq)
		close(rd.done)
	}
	r.mu.Unlock()
}

func (r *runner) loop(l *link, offset time.Duration) {
	first := time.NewTimer(offset + time.Duration(rand.Int64N(int64(time.Millisecond))))
	select {
	case <-first.C:
	case <-r.ctx.Done():
		first.Stop()
		return
	}
	tick := time.NewTicker(r.t.Interval.D())
	defer tick.Stop()
	for {
		r.round(l)
		select {
		case <-tick.C:
		case <-r.ctx.Done():
			return
		}
	}
}

var traceContext = propagation.TraceContext{}

// round runs one round on l: a message from its sender to its receiver.
func (r *runner) round(l *link) {
	start := time.Now()
	deadline := start.Add(r.t.Timeout.D())
	ctx, cancel := context.WithDeadline(r.ctx, deadline)
	defer cancel()
	r.mu.Lock()
	r.seq++
	seq := r.seq
	r.mu.Unlock()
	rctx, span := r.tracer.Start(ctx, "im.probe.round", trace.WithNewRoot(), trace.WithTimestamp(start),
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(append(r.attrs, attribute.Int64("imwatch.probe.seq", int64(seq)))...))
	rd := &round{l: l, seq: seq, start: start, span: span, done: make(chan struct{})}

	var tx, rx Endpoint
	var err error
	if r.t.FreshLogin {
		tx, rx, err = r.openFresh(rctx, l)
		defer func() {
			if tx != nil {
				tx.Close()
			}
			if rx != nil {
				rx.Close()
			}
		}()
	} else if tx, err = l.tx.get(rctx); err == nil {
		rx, err = l.rx.get(rctx)
	}
	if err != nil {
		if r.ctx.Err() != nil {
			span.End()
			return
		}
		r.mu.Lock()
		rd.reason, rd.errMsg = reasonOf(err, ReasonConnect), err.Error()
		r.finish(rd, time.Now())
		r.mu.Unlock()
		return
	}

	sctx, sendSpan := r.tracer.Start(rctx, "im.probe.send", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.Int64("imwatch.probe.seq", int64(seq))))
	msg := Message{Location: r.loc, Target: r.t.Name, Run: r.p.run, Seq: seq, Trace: traceparent(sendSpan)}
	to := rx.Address()
	r.mu.Lock()
	r.inflight[seq] = rd
	rd.timer = time.AfterFunc(time.Until(deadline), func() { r.expire(seq) })
	r.m.sent.Inc()
	msg.Sent = time.Now()
	rd.sent = msg.Sent
	r.mu.Unlock()

	err = tx.Send(sctx, to, msg)
	acked := time.Now()
	if err != nil {
		sendSpan.SetStatus(codes.Error, err.Error())
	}
	sendSpan.End(trace.WithTimestamp(acked))
	r.mu.Lock()
	if r.inflight[seq] == rd { // else the deadline passed first
		rd.ackDone = true
		if err == nil {
			rd.acked = true
			r.m.steps[StepSend].Observe(acked.Sub(rd.sent).Seconds())
			if rd.received {
				r.finish(rd, acked)
			}
		} else if rd.reason == "" {
			rd.reason, rd.errMsg = reasonOf(err, ReasonSend), err.Error()
			if errors.Is(err, context.DeadlineExceeded) {
				rd.reason = ReasonAckTimeout
			}
		}
	}
	r.mu.Unlock()
	if r.t.FreshLogin {
		select {
		case <-rd.done:
		case <-r.ctx.Done():
		}
	}
}

// openFresh logs in the link's sender and receiver for one round.
func (r *runner) openFresh(ctx context.Context, l *link) (tx, rx Endpoint, err error) {
	tx, err = r.open(ctx, l.txOpen)
	if err != nil {
		return nil, nil, err
	}
	rx, err = r.open(ctx, l.rxOpen)
	if err != nil {
		tx.Close()
		return nil, nil, err
	}
	return tx, rx, nil
}

// open opens one endpoint, recording its steps as metrics and, inside a
// round, as spans.
func (r *runner) open(ctx context.Context, req OpenRequest) (Endpoint, error) {
	var tm Timing
	req.Timing = &tm
	start := time.Now()
	ep, err := r.drv.Open(ctx, req)
	if err != nil {
		return nil, err
	}
	r.m.steps[StepConnect].Observe(tm.Connect.Seconds())
	r.m.steps[StepLogin].Observe(tm.Login.Seconds())
	if trace.SpanFromContext(ctx).IsRecording() {
		_, cs := r.tracer.Start(ctx, "im.probe.connect", trace.WithTimestamp(start))
		cs.End(trace.WithTimestamp(start.Add(tm.Connect)))
		_, ls := r.tracer.Start(ctx, "im.probe.login", trace.WithTimestamp(start.Add(tm.Connect)))
		ls.End(trace.WithTimestamp(start.Add(tm.Connect + tm.Login)))
	}
	return ep, nil
}

func traceparent(s trace.Span) string {
	c := propagation.MapCarrier{}
	traceContext.Inject(trace.ContextWithSpan(context.Background(), s), c)
	return c["traceparent"]
}

// deliver classifies a message an endpoint received. A probe message of
// this run is:
//   - received: its first copy, within the timeout (reordered too if a
//     later message of its link was received before it);
//   - late: its first copy, after the timeout counted it lost;
//   - duplicated: any further copy.
//
// Anything else on a probe connection is foreign.
func (r *runner) deliver(d Delivery) {
	if d.Receipt {
		r.mu.Lock()
		if rd := r.inflight[d.Seq]; rd != nil {
			r.m.steps[StepReceipt].Observe(d.At.Sub(rd.sent).Seconds())
		} else if e := r.ring[d.Seq%uint64(len(r.ring))]; e.seq == d.Seq && e.sent > 0 {
			r.m.steps[StepReceipt].Observe(d.At.Sub(time.Unix(0, e.sent)).Seconds())
		}
		r.mu.Unlock()
		return
	}
	m, err := ParseMessage(d.Body)
	if err != nil || m.Run != r.p.run || m.Location != r.loc || m.Target != r.t.Name {
		r.m.foreign.Inc()
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if rd := r.inflight[m.Seq]; rd != nil {
		if rd.received {
			r.m.duplicated.Inc()
			return
		}
		rd.received = true
		r.m.received.Inc()
		e2e := d.At.Sub(rd.sent)
		r.m.e2e.Observe(e2e.Seconds())
		rd.span.AddEvent("delivered", trace.WithTimestamp(d.At))
		if m.Seq < rd.l.lastSeq {
			r.m.reordered.Inc()
			rd.span.SetAttributes(attribute.Bool("imwatch.probe.reordered", true))
		} else {
			rd.l.lastSeq = m.Seq
		}
		if rd.ackDone {
			r.finish(rd, d.At)
		}
		return
	}
	e := &r.ring[m.Seq%uint64(len(r.ring))]
	switch {
	case e.seq == m.Seq && e.state == stateLost:
		e.state = stateLate
		r.m.late.Inc()
	case e.seq == m.Seq:
		r.m.duplicated.Inc()
	case m.Seq <= r.seq:
		r.m.late.Inc() // older than the outcomes kept: it came very late
	default:
		r.m.foreign.Inc()
	}
}

// expire is the round's deadline.
func (r *runner) expire(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rd := r.inflight[seq]
	if rd == nil {
		return
	}
	if rd.reason == "" {
		switch {
		case !rd.ackDone:
			rd.reason, rd.errMsg = ReasonAckTimeout, "no ack from the server within the timeout"
		case !rd.received:
			rd.reason, rd.errMsg = ReasonDeliveryTimeout, "the message did not arrive within the timeout"
		}
	}
	r.finish(rd, time.Now())
}

// finish records a round's outcome; r.mu is held.
func (r *runner) finish(rd *round, at time.Time) {
	if rd.timer != nil {
		rd.timer.Stop()
		delete(r.inflight, rd.seq)
		state := stateReceived
		if !rd.received {
			state = stateLost
			r.m.lost.Inc()
		}
		r.ring[rd.seq%uint64(len(r.ring))] = doneEntry{seq: rd.seq, state: state, sent: rd.sent.UnixNano()}
	}
	ok := rd.reason == "" && rd.acked && rd.received
	l := rd.l
	if !l.everDone {
		l.everDone = true
		r.doneLinks++
	} else if l.lastOK {
		r.okLinks--
	}
	if ok {
		r.okLinks++
	}
	l.lastOK = ok
	r.m.success.Set(float64(r.okLinks) / float64(r.doneLinks))
	if ok {
		rd.span.SetStatus(codes.Ok, "")
	} else {
		r.m.failures[rd.reason].Inc()
		rd.span.SetAttributes(attribute.String("imwatch.probe.reason", rd.reason))
		rd.span.SetStatus(codes.Error, rd.errMsg)
		r.log.Debug("probe round failed", "seq", rd.seq, "reason", rd.reason, "err", rd.errMsg,
			"trace_id", rd.span.SpanContext().TraceID().String())
	}
	rd.span.End(trace.WithTimestamp(at))
	close(rd.done)
	if r.p.opts.OnRound != nil {
		res := RoundResult{Target: r.t.Name, Link: l.idx, Seq: rd.seq, OK: ok, Reason: rd.reason, Sent: rd.sent,
			TraceID: rd.span.SpanContext().TraceID().String()}
		if rd.received && !rd.sent.IsZero() {
			res.E2E = at.Sub(rd.sent)
		}
		r.p.opts.OnRound(res)
	}
}

// keeper keeps one probe connection open, reconnecting with backoff.
type keeper struct {
	r   *runner
	req OpenRequest

	mu      sync.Mutex
	ep      Endpoint
	err     error
	changed chan struct{} // closed and replaced at every change
}

func (k *keeper) set(ep Endpoint, err error) {
	k.mu.Lock()
	k.ep, k.err = ep, err
	close(k.changed)
	k.changed = make(chan struct{})
	k.mu.Unlock()
}

// get returns the open endpoint, waiting for one until ctx ends; then the
// error is the last attempt's.
func (k *keeper) get(ctx context.Context) (Endpoint, error) {
	for {
		k.mu.Lock()
		ep, err, ch := k.ep, k.err, k.changed
		k.mu.Unlock()
		if ep != nil {
			return ep, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if err == nil {
				err = failf(ReasonConnect, "not connected within the timeout")
			}
			return nil, err
		}
	}
}

func (k *keeper) run(ctx context.Context) {
	const minWait = 100 * time.Millisecond
	maxWait := min(max(k.r.t.Interval.D(), minWait), 30*time.Second)
	wait := minWait
	for ctx.Err() == nil {
		octx, cancel := context.WithTimeout(ctx, k.r.t.Timeout.D())
		ep, err := k.r.open(octx, k.req)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			k.set(nil, err)
			k.r.log.Debug("probe connection failed", "connection", k.req.Name, "err", err)
			sleepCtx(ctx, wait+time.Duration(rand.Int64N(int64(wait/4)+1)))
			wait = min(wait*2, maxWait)
			continue
		}
		k.set(ep, nil)
		opened := time.Now()
		select {
		case <-ep.Lost():
			k.r.log.Debug("probe connection lost", "connection", k.req.Name)
		case <-ctx.Done():
		}
		k.set(nil, failf(ReasonConnect, "connection to %s lost", k.r.t.Address))
		ep.Close()
		if time.Since(opened) > maxWait {
			wait = minWait
		}
		sleepCtx(ctx, wait)
		wait = min(wait*2, maxWait)
	}
}
