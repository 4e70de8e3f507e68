package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/gateway"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/nats-io/nats.go"
)

// wait is how long a test waits for something that should come at once;
// generous, for a loaded machine running the race detector.
const wait = 10 * time.Second

// rawConn is a WebSocket connection whose bytes the test controls. A
// goroutine reads every frame into frames until the connection ends.
type rawConn struct {
	t      testing.TB
	ws     *websocket.Conn
	frames chan protocol.Frame
	done   chan struct{}
	err    error // why reading ended; set before done is closed
}

// dialRaw connects to a gateway without authenticating.
func dialRaw(t testing.TB, url string) *rawConn {
	t.Helper()
	c := dialNoRead(t, url)
	go c.readLoop()
	return c
}

// dialNoRead connects but reads nothing: a client that does not read.
func dialNoRead(t testing.TB, url string) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	ws.SetReadLimit(protocol.MaxServerFrameBytes)
	c := &rawConn{t: t, ws: ws, frames: make(chan protocol.Frame, 100000), done: make(chan struct{})}
	t.Cleanup(func() { _ = ws.CloseNow() })
	return c
}

func (c *rawConn) readLoop() {
	defer close(c.done)
	for {
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			c.err = err
			return
		}
		if typ != websocket.MessageText {
			c.frames <- protocol.Frame{Type: "<binary>"}
			continue
		}
		f, err := protocol.DecodeServerFrame(data)
		if err != nil {
			f = protocol.Frame{Type: "<undecodable>", Message: string(data)}
		}
		c.frames <- f
	}
}

// dialAuthed connects and authenticates as user/device.
func dialAuthed(t testing.TB, url, user, device string) *rawConn {
	t.Helper()
	c := dialRaw(t, url)
	c.auth(user, device)
	return c
}

func token(t testing.TB, user, device string) string {
	t.Helper()
	tok, err := protocol.NewToken(imtest.Secret, user, device, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// auth authenticates and returns the auth_ok frame.
func (c *rawConn) auth(user, device string) protocol.Frame {
	c.t.Helper()
	c.send(protocol.Frame{Type: protocol.TypeAuth, Token: token(c.t, user, device)})
	f := c.next()
	if f.Type != protocol.TypeAuthOK || f.User != user || f.Device != device {
		c.t.Fatalf("auth as %s/%s: got %+v", user, device, f)
	}
	return f
}

func (c *rawConn) writeErr(typ websocket.MessageType, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return c.ws.Write(ctx, typ, data)
}

// write sends data as one text frame.
func (c *rawConn) write(data string) {
	c.t.Helper()
	if err := c.writeErr(websocket.MessageText, []byte(data)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) writeBinary(data []byte) {
	c.t.Helper()
	if err := c.writeErr(websocket.MessageBinary, data); err != nil {
		c.t.Fatalf("write binary: %v", err)
	}
}

func (c *rawConn) send(f protocol.Frame) {
	c.t.Helper()
	data, err := json.Marshal(f)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(string(data))
}

// next returns the next frame, failing if none comes within wait.
func (c *rawConn) next() protocol.Frame {
	c.t.Helper()
	return c.nextWithin(wait)
}

func (c *rawConn) nextWithin(d time.Duration) protocol.Frame {
	c.t.Helper()
	f, err := c.tryNext(d)
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// tryNext is nextWithin for goroutines other than the test's.
func (c *rawConn) tryNext(d time.Duration) (protocol.Frame, error) {
	select {
	case f := <-c.frames:
		return f, nil
	default:
	}
	select {
	case f := <-c.frames:
		return f, nil
	case <-c.done:
		select {
		case f := <-c.frames:
			return f, nil
		default:
		}
		return protocol.Frame{}, fmt.Errorf("connection ended while waiting for a frame: %w", c.err)
	case <-time.After(d):
		return protocol.Frame{}, fmt.Errorf("no frame within %s", d)
	}
}

// trySend is send for goroutines other than the test's.
func (c *rawConn) trySend(f protocol.Frame) error {
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return c.writeErr(websocket.MessageText, data)
}

// expectError takes the next frame and checks it is an error with code and id.
func (c *rawConn) expectError(code, id string) protocol.Frame {
	c.t.Helper()
	f := c.next()
	if f.Type != protocol.TypeError || f.Code != code || f.ID != id {
		c.t.Fatalf("got %+v, want an error frame with code %q and id %q", f, code, id)
	}
	if f.Message == "" {
		c.t.Fatalf("error frame %s has no message", code)
	}
	return f
}

// ping checks the connection is usable: a ping is answered by a pong, and
// nothing comes before it.
func (c *rawConn) ping() {
	c.t.Helper()
	c.write(`{"type":"ping"}`)
	if f := c.next(); f.Type != protocol.TypePong {
		c.t.Fatalf("ping answered by %+v, want pong", f)
	}
}

// expectClosed waits for the connection to end with a close frame of code
// and reason, and returns the frames that came before it.
func (c *rawConn) expectClosed(code websocket.StatusCode, reason string, within time.Duration) []protocol.Frame {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(within):
		c.t.Fatalf("connection not closed within %s", within)
	}
	var ce websocket.CloseError
	if !errors.As(c.err, &ce) {
		c.t.Fatalf("connection ended with %v, want a close frame %d %q", c.err, code, reason)
	}
	if ce.Code != code || ce.Reason != reason {
		c.t.Fatalf("closed with %d %q, want %d %q", ce.Code, ce.Reason, code, reason)
	}
	var out []protocol.Frame
	for {
		select {
		case f := <-c.frames:
			out = append(out, f)
		default:
			return out
		}
	}
}

// expectErrorThenClose checks that the connection's remaining frames are one
// error frame with code, and that it is then closed with status and the code
// as reason.
func (c *rawConn) expectErrorThenClose(code string, status websocket.StatusCode) {
	c.t.Helper()
	frames := c.expectClosed(status, code, wait)
	if len(frames) != 1 || frames[0].Type != protocol.TypeError || frames[0].Code != code || frames[0].Message == "" {
		c.t.Fatalf("frames before the close: %+v, want one error frame with code %s", frames, code)
	}
}

// startCluster starts a cluster with one gateway, tuned.
func startCluster(t *testing.T, tuneGW func(*gateway.Config), tune ...func(*cluster.Options)) (*cluster.Cluster, string) {
	t.Helper()
	c := imtest.StartCluster(t, "", 1, append([]func(*cluster.Options){func(o *cluster.Options) { o.TuneGateway = tuneGW }}, tune...)...)
	return c, c.URLs()[0]
}

// bareGateway is a gateway on an embedded NATS with no logic node: the test
// plays the logic node on the bus.
type bareGateway struct {
	gw  *gateway.Gateway
	nc  *nats.Conn // the test's own connection to the bus
	url string     // ws:// URL of /ws

	stopped bool
}

func startBareGateway(t *testing.T, tune func(*gateway.Config)) *bareGateway {
	t.Helper()
	emb, err := bus.StartEmbedded("127.0.0.1:0", t.TempDir(), imtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Shutdown)
	connect := func(name string) *nats.Conn {
		nc, err := bus.Connect(emb.URL(), name, imtest.Logger())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	cfg := gateway.DefaultConfig("gw-bare", "127.0.0.1:0", imtest.Secret)
	cfg.Log = imtest.Logger()
	if tune != nil {
		tune(&cfg)
	}
	gw, err := gateway.New(cfg, connect("gw-bare"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := gw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	b := &bareGateway{gw: gw, nc: connect("test"), url: "ws://" + gw.Addr() + "/ws"}
	t.Cleanup(func() {
		if !b.stopped {
			b.stop(t)
		}
	})
	return b
}

func (b *bareGateway) stop(t *testing.T) {
	t.Helper()
	b.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.gw.Stop(ctx); err != nil {
		t.Errorf("stop gateway: %v", err)
	}
}

// busRequests subscribes to subject and hands over each request.
func (b *bareGateway) busRequests(t *testing.T, subject string) chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 1000)
	sub, err := b.nc.ChanSubscribe(subject, ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func nextMsg(t *testing.T, ch chan *nats.Msg) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(wait):
		t.Fatal("no message on the bus")
	}
	return nil
}

func reply(t *testing.T, m *nats.Msg, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Respond(data); err != nil {
		t.Fatal(err)
	}
}

// hasConns is a condition for imtest.Eventually: the gateway holds want
// authenticated connections.
func hasConns(g interface{ Conns() int }, want int) func() error {
	return func() error {
		if n := g.Conns(); n != want {
			return fmt.Errorf("%d connections, want %d", n, want)
		}
		return nil
	}
}
