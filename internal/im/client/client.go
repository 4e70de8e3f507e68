// Package client is the Go client of the reference IM: it connects to a
// gateway, authenticates, sends and receives messages, acknowledges them,
// syncs what it missed and reconnects, to another gateway if one is gone.
// It hands messages to the application exactly once per message and in
// sequence order per conversation. Tests, the load generator and the prober
// use it.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"
)

// Config configures a client.
type Config struct {
	URLs        []string               // gateways' ws:// URLs, tried in turn
	Token       func() (string, error) // returns a fresh auth token
	DialTimeout time.Duration          //
	GapTimeout  time.Duration          // a gap in a conversation older than this is synced
	Inbox       int                    // messages buffered for the application (default 4096)
	// Raw: the application takes deliveries through OnDeliver only, as
	// they arrive, and judges loss, duplicates and order itself (a
	// prober): Messages() stays empty, Dial syncs no history, and gaps
	// are not synced.
	Raw     bool
	Log     *slog.Logger                    //
	OnState func(connected bool, gw string) // optional: told of each connect and disconnect
	// OnDeliver, when set, is called with every deliver frame as it is
	// read, before de-duplication and ordering, so that a prober sees
	// redeliveries and the order of arrival. It must not block.
	OnDeliver func(Message)
	// Tracer makes the device's hop spans: im.client.send around each send
	// (the root of the message's trace, or a child of the traceparent
	// WithTrace gave), im.client.receive and im.client.ack for each message
	// received. nil switches tracing off: the frames then carry on the
	// context they came with (WithTrace's, the deliver's), unchanged.
	Tracer *imtrace.Tracer

	// dial replaces the TCP dial of the WebSocket handshake (tests).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Message is a message received by this device.
type Message struct {
	MsgID, Conv      string
	Seq              uint64
	From, FromDevice string
	Group, Body      string
	Probe            bool
	Trace            string
	TS               int64 // server store time, Unix ms
	Sync             bool  // came by sync rather than push
	Received         time.Time
}

// SendResult is the server's send-ack: the message is durably stored.
type SendResult struct {
	MsgID string
	Conv  string
	Seq   uint64
	TS    int64
	Dup   bool
}

// ErrClosed is returned by calls on a closed client.
var ErrClosed = errors.New("client is closed")

// Client is one device's connection to the IM.
type Client struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	sess    *session      // nil while disconnected
	ready   chan struct{} // closed when sess is set
	waiters map[string]chan protocol.Frame
	user    string
	device  string

	order     *orderer
	inbox     chan Message
	syncMu    sync.Mutex
	closed    chan struct{}
	closeOnce sync.Once
	done      chan struct{}

	httpc      *http.Client // the WebSocket handshakes'
	reconnects atomic.Int64
	dialTime   time.Duration // of the last connection: WebSocket dial
	authTime   time.Duration // and auth frame to auth_ok
}

// session is one connection to one gateway.
type session struct {
	ws      *websocket.Conn
	gateway string
	user    string        // who the gateway authenticated
	lost    chan struct{} // closed when the connection is gone
	hb      time.Duration
}

// Dial connects, authenticates and syncs everything the device missed.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.URLs) == 0 || cfg.Token == nil {
		return nil, errors.New("client: need at least one gateway URL and a token source")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.GapTimeout <= 0 {
		cfg.GapTimeout = time.Second
	}
	if cfg.Inbox <= 0 {
		cfg.Inbox = 4096
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Client{
		cfg:     cfg,
		log:     cfg.Log.With("component", "client"),
		ready:   make(chan struct{}),
		waiters: map[string]chan protocol.Frame{},
		inbox:   make(chan Message, inboxSize(cfg)),
		closed:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.httpc = handshakeClient(cfg)
	c.order = newOrderer(c.emit)
	first := make(chan error, 1)
	go c.run(first)
	select {
	case err := <-first:
		if err != nil {
			c.Close()
			return nil, err
		}
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
	// The initial sync ends with ctx too: a device that missed more
	// messages than its inbox holds waits in it for a reader, and the
	// application cannot read before Dial returns.
	if cfg.Raw {
		return c, nil
	}
	stop := context.AfterFunc(ctx, func() { c.closeOnce.Do(func() { close(c.closed) }) })
	err := c.Sync(ctx)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		full := cap(c.inbox) > 0 && len(c.inbox) == cap(c.inbox)
		c.Close()
		if full {
			return nil, fmt.Errorf("client: initial sync: the device missed more messages than its inbox holds (Config.Inbox %d), and they wait for a reader: raise Inbox, or read OnDeliver with Raw: %w", cap(c.inbox), err)
		}
		return nil, fmt.Errorf("client: initial sync: %w", err)
	}
	return c, nil
}

func inboxSize(cfg Config) int {
	if cfg.Raw {
		return 0
	}
	return cfg.Inbox
}

// Messages delivers received messages, in order per conversation, once each.
func (c *Client) Messages() <-chan Message { return c.inbox }

// User and Device are who this client authenticated as.
func (c *Client) User() string   { c.mu.Lock(); defer c.mu.Unlock(); return c.user }
func (c *Client) Device() string { c.mu.Lock(); defer c.mu.Unlock(); return c.device }

// Gateway is the id of the gateway the client is connected to, or "".
func (c *Client) Gateway() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return ""
	}
	return c.sess.gateway
}

// LastConnect is how long the last connection took to dial (WebSocket
// handshake) and to authenticate (auth frame to auth_ok).
func (c *Client) LastConnect() (dial, auth time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dialTime, c.authTime
}

// Reconnects counts the connections made after the first.
func (c *Client) Reconnects() int64 { return c.reconnects.Load() }

// Duplicates counts deliveries dropped because the message was already handed over.
func (c *Client) Duplicates() int64 { return c.order.dups.Load() }

// Close disconnects and stops reconnecting.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	<-c.done
	return nil
}

// SendOption changes one send.
type SendOption func(*protocol.Frame)

// WithID sets the client message id (default: a fresh unique id).
func WithID(id string) SendOption { return func(f *protocol.Frame) { f.ID = id } }

// WithProbe marks the message as a probe message.
func WithProbe() SendOption { return func(f *protocol.Frame) { f.Probe = true } }

// WithTrace sets the traceparent the message carries.
func WithTrace(tp string) SendOption { return func(f *protocol.Frame) { f.Trace = tp } }

// Send sends body to user to and waits for the send-ack. It resends across
// reconnects and transient errors until ctx ends; the server de-duplicates.
func (c *Client) Send(ctx context.Context, to, body string, opts ...SendOption) (SendResult, error) {
	return c.send(ctx, protocol.Frame{Type: protocol.TypeSend, To: to, Body: body}, opts)
}

// SendGroup sends body to a group and waits for the send-ack.
func (c *Client) SendGroup(ctx context.Context, group, body string, opts ...SendOption) (SendResult, error) {
	return c.send(ctx, protocol.Frame{Type: protocol.TypeSend, Group: group, Body: body}, opts)
}

func (c *Client) send(ctx context.Context, f protocol.Frame, opts []SendOption) (SendResult, error) {
	for _, o := range opts {
		o(&f)
	}
	if f.ID == "" {
		f.ID = nuid.Next()
	}
	// While the send awaits its ack, the message may come back to this
	// device by sync; the orderer must not hand it to the application.
	conv := protocol.GroupConv(f.Group)
	if f.To != "" {
		conv = protocol.DirectConv(c.User(), f.To)
	}
	c.order.sending(conv, 1)
	defer c.order.sending(conv, -1)
	// One span for the whole send, resends included: from here to the
	// send-ack, or the error the application gets.
	sp := c.cfg.Tracer.Start(imtrace.Parse(f.Trace), imtrace.SpanClientSend, trace.SpanKindClient, imtrace.Message{
		ClientID: f.ID, Conv: conv, User: c.User(), Recipient: f.To, Probe: f.Probe})
	sp.Inject(imtrace.Field(&f.Trace))
	r, err := c.sendRetrying(ctx, f)
	if err != nil {
		var perr *protocol.Error
		if errors.As(err, &perr) {
			sp.SetErrorCode(perr.Code, perr.Message)
		} else {
			sp.SetError(err)
		}
	}
	sp.SetStored(r.MsgID, "", r.Seq)
	sp.End()
	return r, err
}

func (c *Client) sendRetrying(ctx context.Context, f protocol.Frame) (SendResult, error) {
	backoff := 50 * time.Millisecond
	for {
		r, err := c.roundTrip(ctx, f)
		if err == nil {
			c.order.own(r.Conv, r.Seq)
			return SendResult{MsgID: r.MsgID, Conv: r.Conv, Seq: r.Seq, TS: r.TS, Dup: r.Dup}, nil
		}
		var perr *protocol.Error
		if errors.As(err, &perr) && !retryable(perr.Code) {
			return SendResult{}, err
		}
		if errors.Is(err, ErrClosed) || ctx.Err() != nil {
			return SendResult{}, err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return SendResult{}, ctx.Err()
		case <-c.closed:
			return SendResult{}, ErrClosed
		}
		backoff = min(backoff*2, time.Second)
	}
}

func retryable(code string) bool {
	switch code {
	case protocol.CodeUnavailable, protocol.CodeOverloaded, protocol.CodeInternal, protocol.CodeRateLimited:
		return true
	}
	return false
}

// errDisconnected means the connection dropped before the answer came.
var errDisconnected = errors.New("client: disconnected before the answer")

// errNoAnswer means no answer came within attemptTimeout.
var errNoAnswer = errors.New("client: no answer in time")

// attemptTimeout is how long one attempt waits for its answer: longer than
// the gateway's own timeout towards the logic nodes, so a slow store answers
// with an error frame first.
const attemptTimeout = 15 * time.Second

// roundTrip writes f once connected and waits for the frame answering its id.
func (c *Client) roundTrip(ctx context.Context, f protocol.Frame) (protocol.Frame, error) {
	s, err := c.conn(ctx)
	if err != nil {
		return protocol.Frame{}, err
	}
	ch := make(chan protocol.Frame, 1)
	c.mu.Lock()
	c.waiters[f.ID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, f.ID)
		c.mu.Unlock()
	}()
	if err := c.write(ctx, s.ws, f); err != nil {
		return protocol.Frame{}, errDisconnected
	}
	// A frame the gateway dropped (rate limit) is never answered: give up on
	// this attempt after a while; send resends it with the same id. No
	// timer when ctx ends sooner anyway (the load generator's sends).
	var expired <-chan time.Time
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > attemptTimeout {
		attempt := time.NewTimer(attemptTimeout)
		defer attempt.Stop()
		expired = attempt.C
	}
	select {
	case <-expired:
		return protocol.Frame{}, errNoAnswer
	case r := <-ch:
		if r.Type == protocol.TypeError {
			return r, &protocol.Error{Code: r.Code, Message: r.Message}
		}
		return r, nil
	case <-s.lost:
		return protocol.Frame{}, errDisconnected
	case <-ctx.Done():
		return protocol.Frame{}, ctx.Err()
	case <-c.closed:
		return protocol.Frame{}, ErrClosed
	}
}

// conn waits until connected.
func (c *Client) conn(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		s, ready := c.sess, c.ready
		c.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.closed:
			return nil, ErrClosed
		}
	}
}

func (c *Client) write(ctx context.Context, ws *websocket.Conn, f protocol.Frame) error {
	data := protocol.AppendFrame(make([]byte, 0, 128+len(f.Body)+len(f.Trace)), &f)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return ws.Write(wctx, websocket.MessageText, data)
}

// Request sends a frame with an id (assigned if empty) and waits for its answer:
// the frame whose id matches, an error frame returned as *protocol.Error.
func (c *Client) Request(ctx context.Context, f protocol.Frame) (protocol.Frame, error) {
	if f.ID == "" {
		f.ID = nuid.Next()
	}
	return c.roundTrip(ctx, f)
}

// CreateGroup creates a group with this user as owner and the given members.
func (c *Client) CreateGroup(ctx context.Context, group string, members ...string) ([]string, error) {
	r, err := c.Request(ctx, protocol.Frame{Type: protocol.TypeGroupCreate, Group: group, Members: members})
	return r.Members, err
}

// AddMembers adds members to a group this user owns.
func (c *Client) AddMembers(ctx context.Context, group string, members ...string) ([]string, error) {
	r, err := c.Request(ctx, protocol.Frame{Type: protocol.TypeGroupAdd, Group: group, Members: members})
	return r.Members, err
}

// RemoveMembers removes members from a group (the owner may remove anyone, others themselves).
func (c *Client) RemoveMembers(ctx context.Context, group string, members ...string) ([]string, error) {
	r, err := c.Request(ctx, protocol.Frame{Type: protocol.TypeGroupRemove, Group: group, Members: members})
	return r.Members, err
}

// Sync fetches everything this device missed in every conversation.
func (c *Client) Sync(ctx context.Context) error { return c.sync(ctx, true, nil) }

func (c *Client) sync(ctx context.Context, full bool, only []string) error {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	for round := 0; round < 1000; round++ {
		after := c.order.positions(only)
		c.order.beginSync(keys(after), full)
		r, err := c.Request(ctx, protocol.Frame{Type: protocol.TypeSync, After: after, Full: full})
		c.order.endSync()
		if err != nil {
			return err
		}
		if !r.More {
			return nil
		}
	}
	return errors.New("client: sync did not finish")
}

func keys(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func (c *Client) emit(m Message) {
	select {
	case c.inbox <- m:
	case <-c.closed:
	}
}
