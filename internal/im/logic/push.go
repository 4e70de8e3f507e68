package logic

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

// pusher takes stored messages from the shared durable consumer, pushes each
// to the gateways of its recipients' online devices and holds the stream
// message unacknowledged until every device has acknowledged it. A message
// not acknowledged in time is pushed again; if this node dies, JetStream hands
// it to another node after the consumer's ack wait.
type pusher struct {
	l  *Logic
	cc jetstream.ConsumeContext

	mu      sync.Mutex
	pending map[string]*pendingPush
	queue   []*pendingPush // in deadline order: every deadline is now+AckTimeout when set
	ackSub  *nats.Subscription
	ackBuf  []bus.DeliverAck // handleAck's, reused: the subscription calls it from one goroutine
	done    chan struct{}
	stopped chan struct{}
}

type pendingPush struct {
	msg      jetstream.Msg
	sm       bus.StoredMessage
	members  []string
	waiting  map[bus.Target]struct{}
	attempts int
	deadline time.Time
	finished bool
	kind     string
	pushedAt time.Time
}

// offlineRecheck is when a message with no recipient online is looked at again.
const offlineRecheck = time.Second

func newPusher(l *Logic) *pusher {
	return &pusher{l: l, pending: map[string]*pendingPush{}, done: make(chan struct{}), stopped: make(chan struct{})}
}

func (p *pusher) start(ctx, runCtx context.Context) error {
	var err error
	p.ackSub, err = p.l.nc.Subscribe(bus.AckSubject(p.l.cfg.Node), p.handleAck)
	if err != nil {
		return fmt.Errorf("logic: subscribe acks: %w", err)
	}
	_ = p.ackSub.SetPendingLimits(1<<20, 256<<20)
	cons, err := p.l.stream.Consumer(ctx, bus.ConsumerPush)
	if err != nil {
		return fmt.Errorf("logic: consumer %s: %w", bus.ConsumerPush, err)
	}
	p.cc, err = cons.Consume(p.handleStored, jetstream.PullMaxMessages(2000))
	if err != nil {
		return fmt.Errorf("logic: consume: %w", err)
	}
	go p.redeliverLoop()
	return nil
}

func (p *pusher) stop() {
	if p.cc != nil {
		p.cc.Drain()
		<-p.cc.Closed()
	}
	close(p.done)
	<-p.stopped
	if p.ackSub != nil {
		_ = p.ackSub.Unsubscribe()
	}
	// Unfinished pushes go back to the stream at once instead of after the ack wait.
	p.mu.Lock()
	for _, pp := range p.pending {
		_ = pp.msg.Nak()
	}
	p.pending = map[string]*pendingPush{}
	p.mu.Unlock()
}

func (p *pusher) handleStored(msg jetstream.Msg) {
	var sm bus.StoredMessage
	if err := bus.DecodeStoredMessage(msg.Data(), &sm); err != nil {
		p.l.log.Warn("dropping undecodable stored message", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	conv, err := protocol.ParseConv(sm.Conv)
	if err != nil {
		_ = msg.Term()
		return
	}
	members, ok := p.l.dir.recipients(conv, sm.Seq)
	if !ok {
		_ = msg.Ack() // the group is gone
		return
	}
	routes := p.l.dir.route(members, bus.Target{User: sm.From, Device: sm.FromDevice}, nil)
	if len(routes) == 0 {
		// Nobody online: devices get it by sync. Look once more a moment
		// later, in case a device connected after its sync read the stream
		// but before this node's presence view caught up.
		if md, err := msg.Metadata(); err == nil && md.NumDelivered == 1 {
			_ = msg.NakWithDelay(offlineRecheck)
			return
		}
		_ = msg.Ack()
		return
	}
	now := time.Now()
	pp := &pendingPush{msg: msg, sm: sm, members: members, waiting: map[bus.Target]struct{}{}, attempts: 1,
		kind: immetrics.Kind(sm.Group), pushedAt: now}
	for _, ts := range routes {
		for _, t := range ts {
			pp.waiting[t] = struct{}{}
		}
	}
	p.mu.Lock()
	if old := p.pending[sm.MsgID]; old != nil {
		old.finished = true
	}
	pp.deadline = now.Add(p.l.cfg.AckTimeout)
	p.pending[sm.MsgID] = pp
	p.queue = append(p.queue, pp)
	p.l.m.SetPending(len(p.pending))
	pushed := len(pp.waiting)
	p.mu.Unlock()
	p.publish(sm, routes, 1)
	p.l.m.Message(pp.kind, immetrics.StagePushed, pushed)
	if sm.TS > 0 {
		p.l.m.Stage(immetrics.LatPush, time.UnixMilli(sm.TS))
	}
}

// publish pushes sm to the devices of each gateway in routes; attempt is
// 1 for the first push, more for redeliveries.
func (p *pusher) publish(sm bus.StoredMessage, routes map[string][]bus.Target, attempt int) {
	for gw, targets := range routes {
		d := bus.Deliver{Node: p.l.cfg.Node, Targets: targets, Msg: sm, AckBatch: true, Attempt: attempt}
		d.Msg.Trace = "" // in the header only: the JSON copy cost bytes on every push
		data := bus.AppendDeliver(make([]byte, 0, 320+len(sm.Body)), &d)
		m := &nats.Msg{Subject: bus.DeliverSubject(gw), Data: data}
		var th *bus.TraceHeader
		if sm.Trace != "" {
			th = bus.NewTraceHeader(sm.Trace)
			m.Header = th.Header()
		}
		if err := p.l.nc.PublishMsg(m); err != nil {
			p.l.log.Debug("push publish failed", "gateway", gw, "err", err)
		}
		if th != nil {
			th.Release()
		}
	}
}

// handleAck takes a gateway's deliver-acks, one or a batch, and acks each
// stream message all of whose devices have acknowledged it.
func (p *pusher) handleAck(m *nats.Msg) {
	acks, err := bus.DecodeAcks(m.Data, p.ackBuf[:0])
	p.ackBuf = acks[:0]
	if err != nil || len(acks) == 0 {
		return
	}
	var done []jetstream.Msg
	now := time.Now()
	p.mu.Lock()
	for i := range acks {
		a := &acks[i]
		pp := p.pending[a.MsgID]
		// The device's ACK closes the message's trace (its parent: the
		// device's im.client.ack, which the gateway passed on).
		msg := imtrace.Message{ID: a.MsgID, Recipient: a.User}
		if pp != nil {
			msg.Conv, msg.Seq, msg.User, msg.Probe = pp.sm.Conv, pp.sm.Seq, pp.sm.From, pp.sm.Probe
		}
		// A point in time, when the batch arrived: the time the metrics use.
		sp := p.l.tr.StartAt(imtrace.Parse(a.Trace), imtrace.SpanLogicAck, trace.SpanKindConsumer, msg, now)
		sp.EndAt(now)
		if pp == nil {
			continue
		}
		t := bus.Target{User: a.User, Device: a.Device}
		if _, ok := pp.waiting[t]; !ok {
			continue
		}
		delete(pp.waiting, t)
		p.l.m.Message(pp.kind, immetrics.StageAcked, 1)
		p.l.m.StageAt(immetrics.LatAck, pp.pushedAt, now)
		if pp.sm.RecvNS > 0 {
			p.l.m.E2E(pp.kind, now.Sub(time.Unix(0, pp.sm.RecvNS)))
		}
		if len(pp.waiting) > 0 {
			continue
		}
		pp.finished = true
		delete(p.pending, a.MsgID)
		done = append(done, pp.msg)
	}
	p.l.m.SetPending(len(p.pending))
	p.mu.Unlock()
	for _, msg := range done {
		_ = msg.Ack()
	}
}

func (p *pusher) redeliverLoop() {
	defer close(p.stopped)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			p.redeliverDue(now)
		}
	}
}

func (p *pusher) redeliverDue(now time.Time) {
	type again struct {
		sm      bus.StoredMessage
		routes  map[string][]bus.Target
		attempt int
	}
	var pushes []again
	var acks []jetstream.Msg
	p.mu.Lock()
	i := 0
	for ; i < len(p.queue); i++ {
		pp := p.queue[i]
		if pp.finished {
			continue
		}
		if pp.deadline.After(now) {
			break
		}
		if pp.attempts >= p.l.cfg.MaxAttempts {
			// Left to sync: the devices still connected will see the gap and sync.
			pp.finished = true
			delete(p.pending, pp.sm.MsgID)
			acks = append(acks, pp.msg)
			p.l.m.AckTimedOut(len(pp.waiting))
			p.l.log.Debug("giving up pushing", "msg_id", pp.sm.MsgID, "devices", len(pp.waiting))
			continue
		}
		routes := p.l.dir.route(pp.members, bus.Target{User: pp.sm.From, Device: pp.sm.FromDevice}, pp.waiting)
		if len(routes) == 0 { // the devices went offline: they sync when back
			pp.finished = true
			delete(p.pending, pp.sm.MsgID)
			acks = append(acks, pp.msg)
			continue
		}
		pp.attempts++
		pp.deadline = now.Add(p.l.cfg.AckTimeout)
		for _, ts := range routes {
			p.l.m.Redelivered(len(ts))
		}
		_ = pp.msg.InProgress()
		pushes = append(pushes, again{pp.sm, routes, pp.attempts})
		p.queue = append(p.queue, pp)
	}
	if i > 0 {
		p.queue = append(p.queue[:0:0], p.queue[i:]...)
	}
	p.l.m.SetPending(len(p.pending))
	p.mu.Unlock()
	for _, m := range acks {
		_ = m.Ack()
	}
	for _, a := range pushes {
		p.publish(a.sm, a.routes, a.attempt)
	}
}
