package gateway

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
)

// sendCalls are the sends of every connection of a gateway waiting for a
// logic node's answer. A send is published with a reply subject under the
// gateway's own inbox, and its answer is matched by that subject in one
// subscription: no goroutine, timer or context per send. The sweeper
// expires calls not answered within the request timeout.
type sendCalls struct {
	prefix string // reply subjects are prefix + call number
	sub    *nats.Subscription

	mu    sync.Mutex
	next  uint64
	calls map[uint64]*sendCall
}

type sendCall struct {
	c        *conn
	f        protocol.Frame
	start    time.Time
	deadline time.Time
	span     imtrace.Span // im.gateway.receive, ended with the answer
}

func (g *Gateway) startSendCalls() error {
	g.sends.prefix = g.nc.NewInbox() + "."
	g.sends.calls = map[uint64]*sendCall{}
	sub, err := g.nc.Subscribe(g.sends.prefix+"*", g.handleSendReply)
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(1<<20, 256<<20)
	g.sends.sub = sub
	return nil
}

// forwardSend hands a send frame to a logic node; the send_ack (or error)
// goes to the client when the answer comes.
func (c *conn) forwardSend(f protocol.Frame) {
	call := &sendCall{c: c, f: f}
	c.g.tr.StartInto(&call.span, imtrace.Parse(f.Trace), imtrace.SpanGatewayReceive, trace.SpanKindServer, imtrace.Message{
		ClientID: f.ID, User: c.user, Recipient: f.To, Dest: bus.SubjSend, Probe: f.Probe})
	// A fault here holds or drops the send inside its span, so that a
	// dropped message's trace ends at this hop.
	if d := c.g.cfg.Faults.Hold(fault.HopGatewayReceive); d.Drop {
		call.span.SetErrorCode(fault.ErrorType, d.DropMessage(fault.HopGatewayReceive))
		call.span.End()
		return // no send-ack: the client times out and resends
	}
	select {
	case c.inflight <- struct{}{}:
	default:
		perr := protocol.Errorf(protocol.CodeOverloaded, "over %d requests in flight on this connection", c.g.cfg.MaxInflight)
		call.span.SetErrorCode(perr.Code, perr.Message)
		call.span.End()
		c.fail(f, perr)
		return
	}
	start := time.Now()
	c.g.m.Request("send")
	c.g.m.Message(immetrics.Kind(f.Group), immetrics.StageSent, 1)
	// The logic hangs below this hop; with tracing off the context the
	// frame brought goes on unchanged.
	tp := f.Trace
	call.span.Inject(imtrace.Field(&tp))
	req := bus.SendRequest{From: c.user, Device: c.device, Gateway: c.g.cfg.ID, ID: f.ID,
		To: f.To, Group: f.Group, Body: f.Body, Probe: f.Probe, RecvNS: start.UnixNano()}
	s := &c.g.sends
	call.start, call.deadline = start, start.Add(c.g.cfg.RequestTimeout)
	s.mu.Lock()
	s.next++
	n := s.next
	s.calls[n] = call
	s.mu.Unlock()
	m := &nats.Msg{Subject: bus.SubjSend, Reply: s.prefix + strconv.FormatUint(n, 10),
		Data: bus.AppendSendRequest(make([]byte, 0, 160+len(f.Body)+len(tp)), &req)}
	if tp != "" { // in the header only: the JSON copy cost bytes on every hop
		th := bus.NewTraceHeader(tp)
		defer th.Release()
		m.Header = th.Header()
	}
	if err := c.g.nc.PublishMsg(m); err != nil {
		c.g.log.Debug("send to logic failed", "err", err)
		if s.take(n) != nil {
			call.finish(nil, protocol.Errorf(protocol.CodeUnavailable, "no logic node answered in time; retry"))
		}
	}
}

// take removes call n; nil when it was answered or expired already.
func (s *sendCalls) take(n uint64) *sendCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	call := s.calls[n]
	delete(s.calls, n)
	return call
}

// expire fails the calls whose deadline has passed.
func (s *sendCalls) expire(now time.Time) {
	var late []*sendCall
	s.mu.Lock()
	for n, call := range s.calls {
		if now.After(call.deadline) {
			late = append(late, call)
			delete(s.calls, n)
		}
	}
	s.mu.Unlock()
	for _, call := range late {
		call.c.g.log.Debug("send to logic timed out", "id", call.f.ID)
		call.finish(nil, protocol.Errorf(protocol.CodeUnavailable, "no logic node answered in time; retry"))
	}
}

func (g *Gateway) handleSendReply(m *nats.Msg) {
	n, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, g.sends.prefix), 10, 64)
	if err != nil {
		return
	}
	call := g.sends.take(n)
	if call == nil {
		return // expired: the client got unavailable and resends
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		call.finish(nil, protocol.Errorf(protocol.CodeUnavailable, "no logic node answered in time; retry"))
		return
	}
	var rep bus.SendReply
	if bus.DecodeSendReply(m.Data, &rep) != nil {
		call.finish(nil, protocol.Errorf(protocol.CodeInternal, "undecodable answer from logic"))
		return
	}
	call.finish(&rep, nil)
}

// finish answers the client with the send_ack or the error.
func (call *sendCall) finish(rep *bus.SendReply, perr *protocol.Error) {
	c, f := call.c, call.f
	defer func() { <-c.inflight }()
	if perr == nil && rep.Code != "" {
		perr = protocol.Errorf(rep.Code, "%s", rep.Error)
	}
	if perr != nil {
		c.fail(f, perr)
		call.span.SetErrorCode(perr.Code, perr.Message)
		call.span.End()
		return
	}
	c.send(protocol.Frame{Type: protocol.TypeSendAck, ID: f.ID, MsgID: rep.MsgID, Conv: rep.Conv, Seq: rep.Seq, TS: rep.TS, Dup: rep.Dup})
	c.g.m.Stage(immetrics.LatGatewayReceive, call.start)
	call.span.SetStored(rep.MsgID, rep.Conv, rep.Seq)
	call.span.End()
}
