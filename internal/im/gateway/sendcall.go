package gateway

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/nats-io/nats.go"
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
	select {
	case c.inflight <- struct{}{}:
	default:
		c.fail(f, protocol.Errorf(protocol.CodeOverloaded, "over %d requests in flight on this connection", c.g.cfg.MaxInflight))
		return
	}
	start := time.Now()
	c.g.m.Request("send")
	c.g.m.Message(immetrics.Kind(f.Group), immetrics.StageSent, 1)
	req := bus.SendRequest{From: c.user, Device: c.device, Gateway: c.g.cfg.ID, ID: f.ID,
		To: f.To, Group: f.Group, Body: f.Body, Probe: f.Probe, Trace: f.Trace, RecvNS: start.UnixNano()}
	s := &c.g.sends
	call := &sendCall{c: c, f: f, start: start, deadline: start.Add(c.g.cfg.RequestTimeout)}
	s.mu.Lock()
	s.next++
	n := s.next
	s.calls[n] = call
	s.mu.Unlock()
	m := &nats.Msg{Subject: bus.SubjSend, Reply: s.prefix + strconv.FormatUint(n, 10),
		Data: bus.AppendSendRequest(make([]byte, 0, 160+len(f.Body)+len(f.Trace)), &req)}
	if f.Trace != "" {
		m.Header = nats.Header{bus.HeaderTrace: []string{f.Trace}}
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
		return
	}
	c.send(protocol.Frame{Type: protocol.TypeSendAck, ID: f.ID, MsgID: rep.MsgID, Conv: rep.Conv, Seq: rep.Seq, TS: rep.TS, Dup: rep.Dup})
	c.g.m.Stage(immetrics.LatGatewayReceive, call.start)
}
