package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"go.opentelemetry.io/otel/trace"
)

// ErrAuth is returned by Dial when a gateway refused the token.
var ErrAuth = errors.New("client: authentication refused")

// run keeps the client connected until Close, trying the gateways in turn.
func (c *Client) run(first chan<- error) {
	defer close(c.done)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-c.closed; cancel() }()
	go c.gapLoop(ctx)
	idx, failures := 0, 0
	connected := false
	for {
		url := c.cfg.URLs[idx%len(c.cfg.URLs)]
		s, err := c.connect(ctx, url)
		if err != nil {
			if ctx.Err() != nil {
				if !connected {
					first <- ErrClosed
				}
				return
			}
			failures++
			c.log.Debug("connect failed", "url", url, "err", err)
			if !connected && (errors.Is(err, ErrAuth) || failures >= 2*len(c.cfg.URLs)) {
				first <- err
				return
			}
			idx++
			backoff := time.Duration(min(failures, 10)) * 100 * time.Millisecond
			backoff += time.Duration(rand.Int64N(int64(100 * time.Millisecond)))
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		failures = 0
		c.mu.Lock()
		c.sess = s
		close(c.ready)
		c.mu.Unlock()
		if c.cfg.OnState != nil {
			c.cfg.OnState(true, s.gateway)
		}
		if connected {
			c.reconnects.Add(1)
			go func() {
				sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
				defer scancel()
				if err := c.Sync(sctx); err != nil {
					c.log.Debug("sync after reconnect failed", "err", err)
				}
			}()
		} else {
			connected = true
			first <- nil
		}
		c.serve(ctx, s)
		c.mu.Lock()
		c.sess = nil
		c.ready = make(chan struct{})
		c.mu.Unlock()
		close(s.lost)
		if c.cfg.OnState != nil {
			c.cfg.OnState(false, s.gateway)
		}
		if ctx.Err() != nil {
			_ = s.ws.Close(websocket.StatusNormalClosure, "client closed")
			return
		}
		_ = s.ws.CloseNow()
		idx++ // the gateway may be gone: try the next one first
	}
}

// handshakeClient is the HTTP client of a Client's WebSocket handshakes.
// Its transport keeps no idle connections: http.Transport finishes a TCP
// dial that the handshake's context cancelled and would pool the connection
// for a later request, open and silent, which holds a gateway's graceful
// stop until its grace runs out (a client stopped while dialling); a
// WebSocket connection is taken over from the transport anyway, so there is
// never one to reuse.
func handshakeClient(cfg Config) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableKeepAlives = true
	if cfg.dial != nil {
		t.DialContext = cfg.dial
	}
	return &http.Client{Transport: t, Timeout: cfg.DialTimeout}
}

// connect dials url and authenticates.
func (c *Client) connect(ctx context.Context, url string) (*session, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	token, err := c.cfg.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: token: %v", ErrAuth, err)
	}
	start := time.Now()
	ws, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: c.httpc})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	dialed := time.Now()
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	ws.SetReadLimit(protocol.MaxServerFrameBytes)
	if err := c.write(dctx, ws, protocol.Frame{Type: protocol.TypeAuth, Token: token}); err != nil {
		ws.CloseNow()
		return nil, fmt.Errorf("auth: %w", err)
	}
	_, data, err := ws.Read(dctx)
	if err != nil {
		ws.CloseNow()
		return nil, fmt.Errorf("auth: %w", err)
	}
	f, err := protocol.DecodeServerFrame(data)
	if err != nil {
		ws.CloseNow()
		return nil, fmt.Errorf("auth: %w", err)
	}
	if f.Type == protocol.TypeError {
		ws.CloseNow()
		if f.Code == protocol.CodeBadToken || f.Code == protocol.CodeTokenExpired {
			return nil, fmt.Errorf("%w: %s: %s", ErrAuth, f.Code, f.Message)
		}
		return nil, &protocol.Error{Code: f.Code, Message: f.Message}
	}
	if f.Type != protocol.TypeAuthOK {
		ws.CloseNow()
		return nil, fmt.Errorf("auth: unexpected %s frame", f.Type)
	}
	c.mu.Lock()
	c.user, c.device = f.User, f.Device
	c.dialTime, c.authTime = dialed.Sub(start), time.Since(dialed)
	c.mu.Unlock()
	c.order.setSelf(f.User, f.Device)
	hb := time.Duration(f.HeartbeatMS) * time.Millisecond
	if hb <= 0 {
		hb = 20 * time.Second
	}
	return &session{ws: ws, gateway: f.Gateway, user: f.User, lost: make(chan struct{}), hb: hb}, nil
}

// serve reads frames until the connection ends, sending heartbeats meanwhile.
func (c *Client) serve(ctx context.Context, s *session) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(s.hb)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				if err := c.write(sctx, s.ws, protocol.Frame{Type: protocol.TypePing}); err != nil {
					return
				}
			}
		}
	}()
	// Reads pass no cancellable context, which costs a registration per
	// frame; the end of sctx closes the socket instead, as a cancelled read does.
	stop := context.AfterFunc(sctx, func() { _ = s.ws.CloseNow() })
	defer stop()
	for {
		_, data, err := s.ws.Read(context.Background())
		read := time.Now() // before the ack is written: the prober times deliveries with it
		if err != nil {
			c.log.Debug("connection lost", "gateway", s.gateway, "err", err)
			return
		}
		f, err := protocol.DecodeServerFrame(data)
		if err != nil {
			c.log.Debug("undecodable frame from gateway", "err", err)
			continue
		}
		switch f.Type {
		case protocol.TypePong:
		case protocol.TypeDeliver:
			c.received(sctx, s, &f, read)
		default:
			if f.ID == "" {
				if f.Type == protocol.TypeError {
					c.log.Debug("error from gateway", "code", f.Code, "message", f.Message)
				}
				continue
			}
			c.mu.Lock()
			ch := c.waiters[f.ID]
			c.mu.Unlock()
			if ch != nil {
				select {
				case ch <- f:
				default:
				}
			}
		}
	}
}

// received takes a deliver frame: acknowledges a pushed one and hands it to
// the orderer. Its spans: im.client.receive below the push (or sync) that
// brought it, and im.client.ack below that, whose context the deliver_ack
// carries back to the logic node, which closes the trace.
func (c *Client) received(ctx context.Context, s *session, f *protocol.Frame, read time.Time) {
	tr := c.cfg.Tracer
	rx := tr.StartAt(imtrace.Parse(f.Trace), imtrace.SpanClientReceive, trace.SpanKindConsumer, imtrace.Message{
		ID: f.MsgID, Conv: f.Conv, Seq: f.Seq, User: f.From, Recipient: s.user, Probe: f.Probe}, read)
	if !f.Sync {
		a := protocol.Frame{Type: protocol.TypeDeliverAck, MsgID: f.MsgID, Conv: f.Conv, Seq: f.Seq, Trace: f.Trace}
		ack := tr.Start(rx.SpanContext(), imtrace.SpanClientAck, trace.SpanKindProducer, imtrace.Message{
			ID: f.MsgID, Conv: f.Conv, Seq: f.Seq, Recipient: s.user, Probe: f.Probe})
		ack.Inject(imtrace.Field(&a.Trace))
		ack.SetError(c.write(ctx, s.ws, a))
		ack.End()
	}
	m := Message{MsgID: f.MsgID, Conv: f.Conv, Seq: f.Seq, From: f.From, FromDevice: f.FromDevice,
		Group: f.Group, Body: f.Body, Probe: f.Probe, Trace: f.Trace, TS: f.TS, Sync: f.Sync, Received: read}
	if c.cfg.OnDeliver != nil {
		c.cfg.OnDeliver(m)
	}
	if !c.cfg.Raw {
		c.order.add(m)
	}
	rx.End()
}

// gapLoop syncs conversations whose gap in sequence has lasted GapTimeout.
// It ticks only while a gap is open: an idle client costs no wake-ups.
func (c *Client) gapLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.order.gapOpened:
		}
		t := time.NewTicker(c.cfg.GapTimeout / 2)
		for c.order.hasGaps() {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			convs := c.order.gaps(c.cfg.GapTimeout)
			if len(convs) == 0 {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := c.sync(sctx, false, convs); err != nil {
				c.log.Debug("gap sync failed", "err", err)
			}
			cancel()
		}
		t.Stop()
	}
}
