package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

const (
	maxPendingAcks = 4096 // deliveries awaiting a deliver_ack, per connection
	writeTimeout   = 10 * time.Second
	stopGrace      = time.Second // Stop waits this long for close handshakes
	// A connection that has floodLimit frames dropped for rate within one
	// floodWindow is closed: it is flooding, not just bursting.
	floodLimit  = 2000
	floodWindow = 10 * time.Second
)

// outFrame is a frame queued to a client: its bytes, and what the metrics
// need to know of it once written.
type outFrame struct {
	data  []byte
	typ   string
	kind  string    // deliver: direct or group; "" for a synced one
	start time.Time // deliver: when the push came in from the bus
}

// outQueue is a connection's queue of frames to write. It holds nothing
// while the connection is idle and grows on demand, so that an idle
// connection costs no queue memory; pending bounds what is queued or being
// written.
type outQueue struct {
	mu      sync.Mutex
	items   []outFrame
	pending atomic.Int32  // frames queued or in the writer's hands
	wake    chan struct{} // 1-buffered: items is not empty
	room    chan struct{} // 1-buffered: the writer wrote a batch
}

// push queues of unless limit frames are pending.
func (q *outQueue) push(of outFrame, limit int) bool {
	if q.pending.Add(1) > int32(limit) {
		q.pending.Add(-1)
		return false
	}
	q.mu.Lock()
	q.items = append(q.items, of)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// take moves every queued frame to dst.
func (q *outQueue) take(dst []outFrame) []outFrame {
	q.mu.Lock()
	dst = append(dst, q.items...)
	clear(q.items)
	if cap(q.items) > 64 { // a burst is over: do not keep its memory
		q.items = nil
	} else {
		q.items = q.items[:0]
	}
	q.mu.Unlock()
	return dst
}

// written marks n frames of a batch as written and wakes a sender waiting for room.
func (q *outQueue) written(n int) {
	q.pending.Add(int32(-n))
	select {
	case q.room <- struct{}{}:
	default:
	}
}

// conn is one client's WebSocket connection.
type conn struct {
	g      *Gateway
	ws     *websocket.Conn
	raw    net.Conn // the hijacked socket under ws: closing it ends a close handshake that waits
	user   string   // set once by the read loop on auth
	device string
	authed atomic.Bool // user is set; read by the sweeper
	start  time.Time   // accepted; the auth timeout counts from here

	out       outQueue
	closed    chan struct{}
	closeOnce sync.Once
	closeCode websocket.StatusCode
	closeWhy  string
	closeErr  []byte

	limiter     *rate.Limiter
	dropped     int       // frames dropped for rate since droppedFrom
	droppedFrom time.Time // start of the current flood window
	inflight    chan struct{}
	lastRecv    atomic.Int64 // Unix ns of the last frame received
	writing     atomic.Int64 // Unix ns the current write began; 0 between writes

	presenceRev atomic.Uint64

	ackMu    sync.Mutex
	ackNode  map[string]ackTo // msg id -> logic node awaiting its deliver_ack
	ackOrder []string
}

func (g *Gateway) serveWS(w http.ResponseWriter, r *http.Request) {
	hw := &hijackRecorder{ResponseWriter: w}
	ws, err := websocket.Accept(hw, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		g.log.Debug("websocket accept failed", "err", err)
		return
	}
	ws.SetReadLimit(-1) // frame size is checked by readFrame, which can answer with an error frame
	c := &conn{
		g:        g,
		ws:       ws,
		raw:      hw.conn,
		start:    time.Now(),
		closed:   make(chan struct{}),
		limiter:  rate.NewLimiter(rate.Limit(g.cfg.RateLimit), g.cfg.RateBurst),
		inflight: make(chan struct{}, g.cfg.MaxInflight),
	}
	c.out.wake = make(chan struct{}, 1)
	c.out.room = make(chan struct{}, 1)
	c.lastRecv.Store(c.start.UnixNano())
	g.wg.Add(1)
	defer g.wg.Done()
	g.mu.Lock()
	g.live[c] = struct{}{}
	stopping := g.stopping
	g.mu.Unlock()
	if stopping { // accepted while Stop was closing the others
		c.close(websocket.StatusGoingAway, "gateway shutting down", nil)
	}
	defer func() {
		g.mu.Lock()
		delete(g.live, c)
		g.mu.Unlock()
	}()
	writerDone := make(chan struct{})
	go func() { c.writeLoop(); close(writerDone) }()
	c.readLoop()
	c.close(websocket.StatusNormalClosure, "", nil)
	<-writerDone
	if c.user != "" {
		g.unregister(c)
	}
}

// readFrame reads one text frame of at most MaxFrameBytes into buf (reused
// from frame to frame: decoding copies what it keeps). It passes no
// cancellable context, which would cost a registration per frame: the
// sweeper and close end a read by closing the connection.
func (c *conn) readFrame(buf []byte) ([]byte, error) {
	typ, r, err := c.ws.Reader(context.Background())
	if err != nil {
		return buf, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, 512)
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > protocol.MaxFrameBytes {
			return buf, protocol.Errorf(protocol.CodeFrameTooLarge, "frame is over the limit of %d bytes", protocol.MaxFrameBytes)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return buf, err
		}
	}
	if typ != websocket.MessageText {
		return buf, protocol.Errorf(protocol.CodeBadFrame, "frames are JSON text; got a binary frame")
	}
	return buf, nil
}

func (c *conn) readLoop() {
	var buf []byte
	for {
		if cap(buf) > 4096 { // a large frame is over: do not keep its memory
			buf = nil
		}
		data, err := c.readFrame(buf)
		buf = data
		var perr *protocol.Error
		if errors.As(err, &perr) && perr.Code == protocol.CodeFrameTooLarge {
			c.g.m.Frame("in", "invalid")
			c.close(websocket.StatusMessageTooBig, perr.Code, perr)
			return
		}
		if err != nil && perr == nil {
			return
		}
		select {
		case <-c.closed:
			// Closing: read on only to complete the close handshake.
			continue
		default:
		}
		// Every frame counts, binary ones too: against the idle timeout and
		// against the rate limit.
		now := time.Now()
		c.lastRecv.Store(now.UnixNano())
		if !c.limiter.AllowN(now, 1) {
			if now.Sub(c.droppedFrom) > floodWindow {
				c.dropped, c.droppedFrom = 0, now
			}
			c.dropped++
			if c.dropped >= floodLimit {
				c.close(websocket.StatusPolicyViolation, protocol.CodeRateLimited, protocol.Errorf(protocol.CodeRateLimited, "flood: %d frames over the rate within %s; connection closed", c.dropped, floodWindow))
				return
			}
			c.g.m.Fail("frame", protocol.CodeRateLimited)
			if c.dropped%100 == 1 {
				c.sendError("", protocol.Errorf(protocol.CodeRateLimited, "over %g frames/s; frames are being dropped", c.g.cfg.RateLimit))
			}
			continue
		}
		var f protocol.Frame
		if perr == nil {
			f, err = protocol.DecodeClientFrame(data)
			if err != nil {
				perr = err.(*protocol.Error)
			}
		}
		if perr != nil {
			c.g.m.Frame("in", "invalid")
			c.g.m.Fail("frame", perr.Code)
			if c.user == "" {
				// Before auth_ok only a valid auth frame is acceptable.
				if f.Type != protocol.TypeAuth {
					perr = protocol.Errorf(protocol.CodeUnauthenticated, "the first frame must be a valid auth frame (%s)", perr.Message)
				}
				c.close(websocket.StatusPolicyViolation, perr.Code, perr)
				return
			}
			c.sendError(f.ID, perr)
			continue
		}
		c.g.m.Frame("in", f.Type)
		if c.user == "" {
			if !c.authenticate(f) {
				return
			}
			continue
		}
		c.handle(f)
	}
}

// check closes the connection when auth or any frame did not come in time,
// and drops it when a write has been stuck for writeTimeout. The gateway's
// sweeper calls it for every connection every sweepInterval.
func (c *conn) check(now time.Time) {
	if w := c.writing.Load(); w != 0 && now.UnixNano()-w > int64(writeTimeout) {
		c.close(websocket.StatusAbnormalClosure, "", nil)
		_ = c.ws.CloseNow()
		return
	}
	select {
	case <-c.closed:
		return
	default:
	}
	if !c.authed.Load() && now.Sub(c.start) > c.g.cfg.AuthTimeout {
		c.close(websocket.StatusPolicyViolation, protocol.CodeAuthTimeout, protocol.Errorf(protocol.CodeAuthTimeout, "no auth frame within %s", c.g.cfg.AuthTimeout))
		return
	}
	if now.UnixNano()-c.lastRecv.Load() > int64(c.g.cfg.IdleTimeout) {
		c.close(websocket.StatusPolicyViolation, protocol.CodeIdleTimeout, protocol.Errorf(protocol.CodeIdleTimeout, "nothing received for %s", c.g.cfg.IdleTimeout))
	}
}

func (c *conn) authenticate(f protocol.Frame) bool {
	if f.Type != protocol.TypeAuth {
		c.close(websocket.StatusPolicyViolation, protocol.CodeUnauthenticated, protocol.Errorf(protocol.CodeUnauthenticated, "the first frame must be auth"))
		return false
	}
	c.g.m.Request("auth")
	claims, err := protocol.VerifyToken(c.g.cfg.Secret, f.Token, time.Now())
	if err != nil {
		code := protocol.CodeBadToken
		if errors.Is(err, protocol.ErrTokenExpired) {
			code = protocol.CodeTokenExpired
		}
		c.g.log.Debug("auth refused", "err", err)
		c.g.m.Fail("auth", code)
		c.close(websocket.StatusPolicyViolation, code, protocol.Errorf(code, "%v", err))
		return false
	}
	c.user, c.device = claims.User, claims.Device
	if err := c.g.register(c); err != nil {
		c.user = ""
		var perr *protocol.Error
		errors.As(err, &perr)
		c.g.m.Fail("auth", perr.Code)
		c.close(websocket.StatusTryAgainLater, perr.Code, perr)
		return false
	}
	c.authed.Store(true)
	c.send(protocol.Frame{Type: protocol.TypeAuthOK, User: c.user, Device: c.device, Gateway: c.g.cfg.ID,
		HeartbeatMS: c.g.cfg.IdleTimeout.Milliseconds() / 3})
	return true
}

func (c *conn) handle(f protocol.Frame) {
	switch f.Type {
	case protocol.TypePing:
		c.send(protocol.Frame{Type: protocol.TypePong})
	case protocol.TypeAuth:
		c.sendError(f.ID, protocol.Errorf(protocol.CodeBadRequest, "already authenticated"))
	case protocol.TypeSend:
		c.forwardSend(f)
	case protocol.TypeDeliverAck:
		c.forwardAck(f)
	case protocol.TypeSync:
		c.async(f, c.forwardSync)
	case protocol.TypeGroupCreate, protocol.TypeGroupAdd, protocol.TypeGroupRemove:
		c.async(f, c.forwardGroup)
	}
}

// async runs a request to the logic nodes without blocking the read loop,
// refusing when MaxInflight are already waiting.
func (c *conn) async(f protocol.Frame, fn func(protocol.Frame)) {
	select {
	case c.inflight <- struct{}{}:
	default:
		c.g.m.Fail(operation(f.Type), protocol.CodeOverloaded)
		c.sendError(f.ID, protocol.Errorf(protocol.CodeOverloaded, "over %d requests in flight on this connection", c.g.cfg.MaxInflight))
		return
	}
	c.g.wg.Add(1)
	go func() {
		defer func() { <-c.inflight; c.g.wg.Done() }()
		fn(f)
	}()
}

func (c *conn) request(subject string, trace string, req, reply any, timeout time.Duration) *protocol.Error {
	data, err := json.Marshal(req)
	if err != nil {
		return protocol.Errorf(protocol.CodeInternal, "encode request")
	}
	resp, perr := c.requestData(subject, trace, data, timeout)
	if perr != nil {
		return perr
	}
	if err := json.Unmarshal(resp, reply); err != nil {
		return protocol.Errorf(protocol.CodeInternal, "undecodable answer from logic")
	}
	return nil
}

// requestData sends an encoded request to the logic nodes and returns the answer.
func (c *conn) requestData(subject, trace string, data []byte, timeout time.Duration) ([]byte, *protocol.Error) {
	m := &nats.Msg{Subject: subject, Data: data}
	if trace != "" {
		th := bus.NewTraceHeader(trace)
		defer th.Release()
		m.Header = th.Header()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := c.g.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		c.g.log.Debug("request to logic failed", "subject", subject, "err", err)
		return nil, protocol.Errorf(protocol.CodeUnavailable, "no logic node answered in time; retry")
	}
	return resp.Data, nil
}

// operation is the operation label of a frame type.
func operation(typ string) string {
	switch typ {
	case protocol.TypeGroupCreate, protocol.TypeGroupAdd, protocol.TypeGroupRemove:
		return "group"
	}
	return typ
}

// fail answers a request with an error frame and counts it.
func (c *conn) fail(f protocol.Frame, perr *protocol.Error) {
	c.g.m.Fail(operation(f.Type), perr.Code)
	c.sendError(f.ID, perr)
}

func (c *conn) forwardSync(f protocol.Frame) {
	c.g.m.Request("sync")
	req := bus.SyncRequest{User: c.user, Device: c.device, After: f.After, Full: f.Full}
	var rep bus.SyncReply
	if perr := c.request(bus.SubjSync, "", req, &rep, 2*c.g.cfg.RequestTimeout); perr != nil {
		c.fail(f, perr)
		return
	}
	if rep.Code != "" {
		c.fail(f, protocol.Errorf(rep.Code, "%s", rep.Error))
		return
	}
	for _, m := range rep.Msgs {
		// Each message's hand-over by sync is a hop of that message's trace.
		sp := c.g.tr.Start(imtrace.Parse(m.Trace), imtrace.SpanGatewaySync, trace.SpanKindConsumer, imtrace.Message{
			ID: m.MsgID, Conv: m.Conv, Seq: m.Seq, User: m.From, Recipient: c.user, Probe: m.Probe})
		fr := protocol.Frame{Type: protocol.TypeDeliver, MsgID: m.MsgID, Conv: m.Conv, Seq: m.Seq, From: m.From,
			FromDevice: m.FromDevice, Group: m.Group, Body: m.Body, Probe: m.Probe, Trace: m.Trace, TS: m.TS, Sync: true}
		sp.Inject(imtrace.Field(&fr.Trace))
		ok := c.sendWait(fr)
		if !ok {
			sp.SetErrorCode("closed", "the connection closed before the message was queued")
		}
		sp.End()
		if !ok {
			return
		}
	}
	c.sendWait(protocol.Frame{Type: protocol.TypeSyncDone, ID: f.ID, Count: len(rep.Msgs), More: rep.More})
}

func (c *conn) forwardGroup(f protocol.Frame) {
	c.g.m.Request("group")
	req := bus.GroupRequest{Op: f.Type, User: c.user, Group: f.Group, Members: f.Members}
	var rep bus.GroupReply
	if perr := c.request(bus.SubjGroup, "", req, &rep, c.g.cfg.RequestTimeout); perr != nil {
		c.fail(f, perr)
		return
	}
	if rep.Code != "" {
		c.fail(f, protocol.Errorf(rep.Code, "%s", rep.Error))
		return
	}
	c.send(protocol.Frame{Type: protocol.TypeResult, ID: f.ID, Group: f.Group, Members: rep.Members})
}

func (c *conn) forwardAck(f protocol.Frame) {
	c.g.m.Request("deliver_ack")
	c.ackMu.Lock()
	to, ok := c.ackNode[f.MsgID]
	delete(c.ackNode, f.MsgID)
	c.ackMu.Unlock()
	if !ok {
		return // delivered by sync, or acked already: nobody waits for it
	}
	// The ack carries the device's im.client.ack context on to the logic
	// node, untouched: the gateway has no span of its own for it.
	a := bus.DeliverAck{MsgID: f.MsgID, User: c.user, Device: c.device, Trace: f.Trace}
	if to.batch {
		c.g.acks.add(to.node, a)
		return
	}
	_ = c.g.nc.Publish(bus.AckSubject(to.node), bus.AppendDeliverAck(nil, &a))
}

// deliver queues a pushed message; a client too slow to take it is closed,
// and gets the message again by sync when it reconnects.
func (c *conn) deliver(frame []byte, msgID string, to ackTo, kind string, start time.Time) bool {
	c.ackMu.Lock()
	if c.ackNode == nil {
		c.ackNode = map[string]ackTo{}
	}
	if _, ok := c.ackNode[msgID]; !ok {
		if len(c.ackOrder) >= maxPendingAcks {
			// The oldest is forgotten: its push times out and is retried, or left to sync.
			delete(c.ackNode, c.ackOrder[0])
			c.ackOrder = c.ackOrder[1:]
		}
		c.ackOrder = append(c.ackOrder, msgID)
	}
	c.ackNode[msgID] = to
	if len(c.ackOrder) > 2*len(c.ackNode)+64 { // compact ids already acked
		kept := c.ackOrder[:0]
		for _, id := range c.ackOrder {
			if _, ok := c.ackNode[id]; ok {
				kept = append(kept, id)
			}
		}
		c.ackOrder = kept
	}
	c.ackMu.Unlock()
	return c.queue(outFrame{data: frame, typ: protocol.TypeDeliver, kind: kind, start: start})
}

// queue queues a frame for the writer; a client too slow to take its frames
// is closed. It reports whether the frame was queued.
func (c *conn) queue(of outFrame) bool {
	select {
	case <-c.closed:
		return false
	default:
	}
	if !c.out.push(of, c.g.cfg.OutQueue) {
		c.closeSlow()
		return false
	}
	return true
}

func (c *conn) closeSlow() {
	c.close(websocket.StatusPolicyViolation, protocol.CodeSlowConsumer, protocol.Errorf(protocol.CodeSlowConsumer, "the client did not read its frames; closed"))
}

func (c *conn) send(f protocol.Frame) {
	c.queue(outFrame{data: protocol.AppendFrame(nil, &f), typ: f.Type})
}

// sendWait queues a frame, waiting for room; false when the connection closed.
func (c *conn) sendWait(f protocol.Frame) bool {
	of := outFrame{data: protocol.AppendFrame(nil, &f), typ: f.Type}
	var t *time.Timer
	for {
		select {
		case <-c.closed:
			return false
		default:
		}
		if c.out.push(of, c.g.cfg.OutQueue) {
			if t != nil {
				t.Stop()
				// Another sender may be waiting for the same room.
				c.out.written(0)
			}
			return true
		}
		if t == nil {
			t = time.NewTimer(writeTimeout)
		}
		select {
		case <-c.out.room:
		case <-c.closed:
			t.Stop()
			return false
		case <-t.C:
			c.closeSlow()
			return false
		}
	}
}

func (c *conn) sendError(id string, err *protocol.Error) {
	c.send(protocol.ErrorFrame(id, err))
}

// close ends the connection once: the writer sends errFrame (if any), then the
// close frame with code and reason.
func (c *conn) close(code websocket.StatusCode, reason string, perr *protocol.Error) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeWhy = code, reason
		if perr != nil {
			c.g.m.Fail("connection", perr.Code)
			ef := protocol.ErrorFrame("", perr)
			c.closeErr = protocol.AppendFrame(nil, &ef)
		}
		close(c.closed)
		// The writer sends the close frame and the read loop ends when the
		// handshake does; a client that never answers is dropped.
		time.AfterFunc(writeTimeout, func() { _ = c.ws.CloseNow() })
	})
}

func (c *conn) writeLoop() {
	var batch []outFrame
	for {
		select {
		case <-c.out.wake:
			batch = c.out.take(batch[:0])
			ok := c.writeBatch(batch)
			clear(batch)
			if cap(batch) > 64 {
				batch = nil
			}
			if !ok {
				c.close(websocket.StatusAbnormalClosure, "", nil)
				_ = c.ws.CloseNow()
				return
			}
		case <-c.closed:
			// Flush what is queued, bounded, then say why and close.
			batch = c.out.take(batch[:0])
			if !c.writeBatch(batch[:min(len(batch), 256)]) {
				_ = c.ws.CloseNow()
				return
			}
			if c.closeErr != nil {
				c.writeBatch([]outFrame{{data: c.closeErr, typ: protocol.TypeError}})
			}
			if c.closeCode == websocket.StatusAbnormalClosure {
				_ = c.ws.CloseNow()
				return
			}
			go func() { _ = c.ws.Close(c.closeCode, c.closeWhy) }()
			return
		}
	}
}

// writeBatch writes frames in order; false when the connection failed. The
// sweeper drops the connection when a write takes over writeTimeout: a
// context per frame would cost more than the write.
func (c *conn) writeBatch(frames []outFrame) bool {
	if len(frames) == 0 {
		return true
	}
	c.writing.Store(time.Now().UnixNano())
	defer c.writing.Store(0)
	for i, of := range frames {
		if c.ws.Write(context.Background(), websocket.MessageText, of.data) != nil {
			c.out.written(len(frames) - i)
			return false
		}
		c.g.m.Frame("out", of.typ)
		if of.kind != "" {
			c.g.m.Message(of.kind, immetrics.StageDelivered, 1)
			c.g.m.Stage(immetrics.LatDeliver, of.start)
		}
	}
	c.out.written(len(frames))
	return true
}

// hijackRecorder keeps the socket the WebSocket library hijacks, so that
// Stop can drop a connection whose close handshake is waiting for a peer that
// does not answer: the library's CloseNow waits for such a handshake (up to
// 5 s) instead of closing.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the response writer cannot be hijacked")
	}
	c, rw, err := hj.Hijack()
	h.conn = c
	return c, rw, err
}

// drop closes the connection's socket at once, handshake or not.
func (c *conn) drop() {
	if c.raw != nil {
		_ = c.raw.Close()
	}
	_ = c.ws.CloseNow()
}
