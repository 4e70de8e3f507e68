package gateway_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/gateway"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// TestBadFramesKeepTheConnection: after auth, a frame that is wrong gets an
// error frame, and the connection stays usable.
func TestBadFramesKeepTheConnection(t *testing.T) {
	_, url := startCluster(t, nil)
	tests := []struct {
		name   string
		frame  string
		binary bool
		code   string
		id     string // the id the error echoes
	}{
		{name: "malformed JSON", frame: `{"type":"ping"`, code: protocol.CodeBadFrame},
		{name: "not an object", frame: `[1,2]`, code: protocol.CodeBadFrame},
		{name: "null", frame: `null`, code: protocol.CodeBadFrame},
		{name: "empty", frame: ``, code: protocol.CodeBadFrame},
		{name: "trailing data", frame: `{"type":"ping"}}`, code: protocol.CodeBadFrame},
		{name: "no type", frame: `{"id":"x1"}`, code: protocol.CodeBadFrame, id: "x1"},
		{name: "field of the wrong type", frame: `{"type":"send","id":"c1","to":["bob"]}`, code: protocol.CodeBadFrame, id: "c1"},
		{name: "binary frame", frame: `{"type":"ping"}`, binary: true, code: protocol.CodeBadFrame},
		{name: "unknown type", frame: `{"type":"typing","id":"r1"}`, code: protocol.CodeUnknownType, id: "r1"},
		{name: "server frame type", frame: `{"type":"send_ack","id":"r2"}`, code: protocol.CodeUnknownType, id: "r2"},
		{name: "send without id", frame: `{"type":"send","to":"bob","body":"x"}`, code: protocol.CodeBadRequest},
		{name: "send without recipient", frame: `{"type":"send","id":"c2","body":"x"}`, code: protocol.CodeBadRequest, id: "c2"},
		{name: "send to user and group", frame: `{"type":"send","id":"c3","to":"bob","group":"g"}`, code: protocol.CodeBadRequest, id: "c3"},
		{name: "send to an invalid user", frame: `{"type":"send","id":"c4","to":"bob.smith"}`, code: protocol.CodeBadRequest, id: "c4"},
		{name: "send body over the limit", frame: `{"type":"send","id":"c5","to":"bob","body":"` + strings.Repeat("x", protocol.MaxBodyBytes+1) + `"}`, code: protocol.CodeBadRequest, id: "c5"},
		{name: "id with a space", frame: `{"type":"send","id":"c 6","to":"bob"}`, code: protocol.CodeBadRequest},
		{name: "id over 64 bytes", frame: `{"type":"send","id":"` + strings.Repeat("i", 65) + `","to":"bob"}`, code: protocol.CodeBadRequest},
		{name: "deliver_ack without msg_id", frame: `{"type":"deliver_ack","seq":1}`, code: protocol.CodeBadRequest},
		{name: "sync of a bad conversation", frame: `{"type":"sync","id":"s1","after":{"bob":1}}`, code: protocol.CodeBadRequest, id: "s1"},
		{name: "group_create without group", frame: `{"type":"group_create","id":"g1"}`, code: protocol.CodeBadRequest, id: "g1"},
		{name: "group_add without members", frame: `{"type":"group_add","id":"g2","group":"team"}`, code: protocol.CodeBadRequest, id: "g2"},
		{name: "group_remove of an invalid member", frame: `{"type":"group_remove","id":"g3","group":"team","members":["a b"]}`, code: protocol.CodeBadRequest, id: "g3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialAuthed(t, url, "alice", "phone")
			if tc.binary {
				rc.writeBinary([]byte(tc.frame))
			} else {
				rc.write(tc.frame)
			}
			rc.expectError(tc.code, tc.id)
			rc.ping()
		})
	}
}

func TestOversizedFrame(t *testing.T) {
	_, url := startCluster(t, nil)
	pad := func(frame string, size int) string { return frame + strings.Repeat(" ", size-len(frame)) }

	t.Run("exactly the limit is accepted", func(t *testing.T) {
		rc := dialAuthed(t, url, "alice", "phone")
		rc.write(pad(`{"type":"ping"}`, protocol.MaxFrameBytes))
		if f := rc.next(); f.Type != protocol.TypePong {
			t.Fatalf("got %+v, want pong", f)
		}
	})
	for _, tc := range []struct {
		name   string
		authed bool
		binary bool
	}{
		{name: "one byte over, after auth", authed: true},
		{name: "one byte over, before auth"},
		{name: "binary one byte over", authed: true, binary: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, url)
			if tc.authed {
				rc.auth("alice", "phone")
			}
			frame := pad(`{"type":"ping"}`, protocol.MaxFrameBytes+1)
			if tc.binary {
				rc.writeBinary([]byte(frame))
			} else {
				rc.write(frame)
			}
			rc.expectErrorThenClose(protocol.CodeFrameTooLarge, websocket.StatusMessageTooBig)
		})
	}
}

func TestDeliverAckOfUnknownMessageIsIgnored(t *testing.T) {
	_, url := startCluster(t, nil)
	rc := dialAuthed(t, url, "alice", "phone")
	rc.write(`{"type":"deliver_ack","msg_id":"no-such-message","conv":"d=alice=bob","seq":9}`)
	rc.write(`{"type":"deliver_ack","msg_id":"no-such-message"}`) // twice
	rc.ping()                                                     // the pong is the first frame: no error came before it
	rc.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", To: "alice", Body: "still works"})
	if f := rc.next(); f.Type != protocol.TypeSendAck || f.ID != "c1" {
		t.Fatalf("got %+v, want send_ack c1", f)
	}
}

// TestFlood: a connection that floods gets rate_limited errors and is closed;
// another user's connection on the same gateway is not disturbed. The flooder
// floods again and again, on new connections, while alice and bob talk.
func TestFlood(t *testing.T) {
	const rate, burst = 200, 400
	const floodFor = 2 * time.Second
	const promptly = 2 * time.Second // the bound on one message's round trip
	c, url := startCluster(t, func(cfg *gateway.Config) { cfg.RateLimit, cfg.RateBurst = rate, burst })
	gw := c.Gateways[0]
	alice := dialAuthed(t, url, "alice", "phone")
	bob := dialAuthed(t, url, "bob", "phone")

	// Alice sends to bob below the rate limit until told to stop; every
	// message must be acknowledged and delivered, in order, promptly.
	stop := make(chan struct{})
	talkErr := make(chan error, 1)
	var talked atomic.Int64
	go func() {
		talkErr <- func() error {
			for i := 1; ; i++ {
				select {
				case <-stop:
					return nil
				default:
				}
				id := "m" + strconv.Itoa(i)
				start := time.Now()
				if err := alice.trySend(protocol.Frame{Type: protocol.TypeSend, ID: id, To: "bob", Body: id}); err != nil {
					return fmt.Errorf("alice send %s: %w", id, err)
				}
				ack, err := alice.tryNext(promptly)
				if err != nil {
					return fmt.Errorf("alice waiting for send_ack %s: %w", id, err)
				}
				if ack.Type != protocol.TypeSendAck || ack.ID != id || ack.Seq != uint64(i) {
					return fmt.Errorf("alice got %+v, want send_ack %s seq %d", ack, id, i)
				}
				d, err := bob.tryNext(promptly)
				if err != nil {
					return fmt.Errorf("bob waiting for %s: %w", id, err)
				}
				if d.Type != protocol.TypeDeliver || d.Body != id || d.Seq != uint64(i) {
					return fmt.Errorf("bob got %+v, want deliver of %s seq %d", d, id, i)
				}
				if err := bob.trySend(protocol.Frame{Type: protocol.TypeDeliverAck, MsgID: d.MsgID}); err != nil {
					return fmt.Errorf("bob ack: %w", err)
				}
				if took := time.Since(start); took > promptly {
					return fmt.Errorf("message %s took %s", id, took)
				}
				talked.Add(1)
				time.Sleep(5 * time.Millisecond) // alice stays far under the rate limit
			}
		}()
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}()

	begin := time.Now()
	floods := 0
	for time.Since(begin) < floodFor {
		floods++
		mallory := dialAuthed(t, url, "mallory", "phone")
		start := time.Now()
		sent := 0
		for mallory.writeErr(websocket.MessageText, []byte(`{"type":"ping"}`)) == nil {
			sent++
			if time.Since(start) > 30*time.Second {
				t.Fatalf("flooder not closed after %d frames in %s", sent, time.Since(start))
			}
		}
		frames := mallory.expectClosed(websocket.StatusPolicyViolation, protocol.CodeRateLimited, wait)
		elapsed := time.Since(start)
		pongs, limited := 0, 0
		for _, f := range frames {
			switch {
			case f.Type == protocol.TypePong:
				pongs++
			case f.Type == protocol.TypeError && f.Code == protocol.CodeRateLimited:
				limited++
			default:
				t.Fatalf("flooder got %+v", f)
			}
		}
		// Only what the limiter lets through is answered (auth took a token).
		// The close flushes a bounded part of the queue, so fewer may arrive.
		if max := burst - 1 + int(rate*elapsed.Seconds()) + 1; pongs > max || pongs < 1 {
			t.Fatalf("flood %d: %d pongs in %s, want 1 to %d", floods, pongs, elapsed, max)
		}
		// One rate_limited error per 100 dropped frames (of which the close
		// flushes a bounded part), and always the one saying why it closed.
		if limited < 1 {
			t.Fatalf("flood %d: no rate_limited error", floods)
		}
		if floods == 1 {
			t.Logf("flood: %d frames in %s, %d pongs, %d rate_limited errors", sent, elapsed, pongs, limited)
		}
	}
	during := talked.Load()
	close(stop)
	if err := <-talkErr; err != nil {
		t.Fatalf("alice and bob were disturbed: %v", err)
	}
	t.Logf("%d floods in %s; alice and bob exchanged %d messages meanwhile", floods, time.Since(begin), during)
	if during < 3 {
		t.Fatalf("alice and bob exchanged only %d messages during the floods", during)
	}
	imtest.Eventually(t, wait, hasConns(gw, 2))
	alice.ping()
	bob.ping()
}

func TestRateLimitBelowFlood(t *testing.T) {
	// A burst over the limit, but not a flood: frames beyond the burst are
	// dropped with one rate_limited error, and the connection stays.
	const burst = 10
	_, url := startCluster(t, func(cfg *gateway.Config) { cfg.RateLimit, cfg.RateBurst = 0.5, burst })
	rc := dialAuthed(t, url, "alice", "phone") // auth took one token
	for i := 0; i < 2*burst; i++ {
		rc.write(`{"type":"ping"}`)
	}
	pongs := 0
	for i := 0; i < burst; i++ { // burst-1 pongs and one error, in some order
		f := rc.next()
		switch {
		case f.Type == protocol.TypePong:
			pongs++
		case f.Type == protocol.TypeError && f.Code == protocol.CodeRateLimited && f.ID == "":
		default:
			t.Fatalf("got %+v", f)
		}
	}
	if pongs != burst-1 {
		t.Fatalf("%d pongs, want %d", pongs, burst-1)
	}
	// A token comes back every two seconds: a ping gets through again.
	deadline := time.Now().Add(5 * time.Second)
	for {
		rc.write(`{"type":"ping"}`)
		f, err := rc.tryNext(250 * time.Millisecond)
		if err == nil {
			if f.Type != protocol.TypePong {
				t.Fatalf("got %+v, want pong", f)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no ping got through after the burst")
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	const idle = time.Second
	c, url := startCluster(t, func(cfg *gateway.Config) { cfg.IdleTimeout = idle })
	gw := c.Gateways[0]
	silent := dialRaw(t, url)
	ok := silent.auth("alice", "phone")
	if ok.HeartbeatMS != idle.Milliseconds()/3 {
		t.Fatalf("heartbeat_ms %d, want %d", ok.HeartbeatMS, idle.Milliseconds()/3)
	}
	lastSent := time.Now()
	pinger := dialAuthed(t, url, "bob", "phone")

	// Bob pings at heartbeat_ms until well after alice is closed.
	ctx, cancel := context.WithCancel(context.Background())
	pings := make(chan error, 1)
	go func() {
		t := time.NewTicker(time.Duration(ok.HeartbeatMS) * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				pings <- nil
				return
			case <-t.C:
				if err := pinger.writeErr(websocket.MessageText, []byte(`{"type":"ping"}`)); err != nil {
					pings <- err
					return
				}
			}
		}
	}()

	silent.expectErrorThenClose(protocol.CodeIdleTimeout, websocket.StatusPolicyViolation)
	if d := time.Since(lastSent); d < idle {
		t.Fatalf("closed %s after the last frame, before the idle timeout of %s", d, idle)
	}
	imtest.Eventually(t, wait, hasConns(gw, 1))
	time.Sleep(2 * idle) // bob keeps pinging: he must outlive two more idle timeouts
	cancel()
	if err := <-pings; err != nil {
		t.Fatalf("pinging connection broke: %v", err)
	}
	select {
	case <-pinger.done:
		t.Fatalf("pinging connection was closed: %v", pinger.err)
	default:
	}
	pinger.ping()
	pongs := 0
	for len(pinger.frames) > 0 {
		if f := <-pinger.frames; f.Type != protocol.TypePong {
			t.Fatalf("pinger got %+v", f)
		}
		pongs++
	}
	if pongs < 3 {
		t.Fatalf("pinger got %d pongs", pongs)
	}
}
