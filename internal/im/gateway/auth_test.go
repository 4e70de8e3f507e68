package gateway_test

import (
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/gateway"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

func TestAuthRefused(t *testing.T) {
	c, url := startCluster(t, nil)
	gw := c.Gateways[0]
	expired, err := protocol.SignToken(imtest.Secret, protocol.Claims{User: "alice", Device: "phone", Expiry: time.Now().Add(-time.Second).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	otherSecret, err := protocol.NewToken([]byte("another-cluster-secret-0123456789"), "alice", "phone", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Alice's claims under the signature of Bob's token.
	alicePayload, _, _ := strings.Cut(token(t, "alice", "phone"), ".")
	_, bobSig, _ := strings.Cut(token(t, "bob", "phone"), ".")
	forged := alicePayload + "." + bobSig

	tests := []struct {
		name   string
		first  string // the first frame, text
		binary bool
		code   string
	}{
		{name: "first frame ping", first: `{"type":"ping"}`, code: protocol.CodeUnauthenticated},
		{name: "first frame a valid send", first: `{"type":"send","id":"c1","to":"bob","body":"hi"}`, code: protocol.CodeUnauthenticated},
		{name: "first frame an invalid send", first: `{"type":"send"}`, code: protocol.CodeUnauthenticated},
		{name: "first frame sync", first: `{"type":"sync","id":"s1","full":true}`, code: protocol.CodeUnauthenticated},
		{name: "first frame of an unknown type", first: `{"type":"hello"}`, code: protocol.CodeUnauthenticated},
		{name: "first frame not JSON", first: `hello`, code: protocol.CodeUnauthenticated},
		{name: "first frame binary", first: `{"type":"auth"}`, binary: true, code: protocol.CodeUnauthenticated},
		{name: "auth without token", first: `{"type":"auth"}`, code: protocol.CodeBadToken},
		{name: "auth with a malformed token", first: `{"type":"auth","token":"not-a-token"}`, code: protocol.CodeBadToken},
		{name: "auth with a forged token", first: `{"type":"auth","token":"` + forged + `"}`, code: protocol.CodeBadToken},
		{name: "auth with another cluster's token", first: `{"type":"auth","token":"` + otherSecret + `"}`, code: protocol.CodeBadToken},
		{name: "auth with a token over 1024 bytes", first: `{"type":"auth","token":"` + strings.Repeat("A", 1025) + `"}`, code: protocol.CodeBadToken},
		{name: "auth with an expired token", first: `{"type":"auth","token":"` + expired + `"}`, code: protocol.CodeTokenExpired},
		{name: "auth with a token that is not a string", first: `{"type":"auth","token":5}`, code: protocol.CodeBadFrame},
		{name: "auth with an invalid id", first: `{"type":"auth","id":"a b","token":"` + token(t, "alice", "phone") + `"}`, code: protocol.CodeBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, url)
			if tc.binary {
				rc.writeBinary([]byte(tc.first))
			} else {
				rc.write(tc.first)
			}
			rc.expectErrorThenClose(tc.code, websocket.StatusPolicyViolation)
			imtest.Eventually(t, wait, hasConns(gw, 0))
		})
	}
}

func TestAuthOK(t *testing.T) {
	c, url := startCluster(t, func(cfg *gateway.Config) { cfg.IdleTimeout = 30 * time.Second })
	rc := dialRaw(t, url)
	rc.write(`{"type":"auth","token":"` + token(t, "alice", "phone") + `"}`)
	ok := rc.next()
	want := protocol.Frame{Type: protocol.TypeAuthOK, User: "alice", Device: "phone", Gateway: c.Gateways[0].ID(), HeartbeatMS: 10000}
	if ok.Type != want.Type || ok.User != want.User || ok.Device != want.Device || ok.Gateway != want.Gateway || ok.HeartbeatMS != want.HeartbeatMS {
		t.Fatalf("got %+v, want %+v", ok, want)
	}
	if c.Gateways[0].ID() != "gw-1" {
		t.Fatalf("gateway id %q", c.Gateways[0].ID())
	}
	imtest.Eventually(t, wait, hasConns(c.Gateways[0], 1))
	// A second auth is refused; the connection stays.
	rc.write(`{"type":"auth","id":"a2","token":"` + token(t, "bob", "phone") + `"}`)
	rc.expectError(protocol.CodeBadRequest, "a2")
	rc.ping()
}

func TestAuthTimeout(t *testing.T) {
	const authTimeout = 300 * time.Millisecond
	_, url := startCluster(t, func(cfg *gateway.Config) { cfg.AuthTimeout = authTimeout })
	start := time.Now()
	silent := dialRaw(t, url)
	authed := dialAuthed(t, url, "alice", "phone")
	silent.expectErrorThenClose(protocol.CodeAuthTimeout, websocket.StatusPolicyViolation)
	if d := time.Since(start); d < authTimeout {
		t.Fatalf("closed after %s, before the auth timeout of %s", d, authTimeout)
	}
	// The timeout is for auth only: an authenticated connection stays.
	authed.ping()
}

func TestConnectionLimit(t *testing.T) {
	c, url := startCluster(t, func(cfg *gateway.Config) { cfg.MaxConns = 1 })
	gw := c.Gateways[0]
	alice := dialAuthed(t, url, "alice", "phone")

	bob := dialRaw(t, url)
	bob.write(`{"type":"auth","token":"` + token(t, "bob", "phone") + `"}`)
	bob.expectErrorThenClose(protocol.CodeOverloaded, websocket.StatusTryAgainLater)

	// The same device connecting again replaces its connection: the count
	// does not grow, so the limit does not refuse it.
	alice2 := dialAuthed(t, url, "alice", "phone")
	alice.expectErrorThenClose(protocol.CodeReplaced, websocket.StatusPolicyViolation)
	alice2.ping()
	imtest.Eventually(t, wait, hasConns(gw, 1))
}

func TestReplaced(t *testing.T) {
	c, url := startCluster(t, nil)
	gw := c.Gateways[0]
	old := dialAuthed(t, url, "alice", "phone")
	laptop := dialAuthed(t, url, "alice", "laptop")
	bob := dialAuthed(t, url, "bob", "phone")
	imtest.Eventually(t, wait, hasConns(gw, 3))

	cur := dialAuthed(t, url, "alice", "phone")
	old.expectErrorThenClose(protocol.CodeReplaced, websocket.StatusPolicyViolation)
	imtest.Eventually(t, wait, hasConns(gw, 3))
	cur.ping()
	laptop.ping()

	// Messages to alice reach the new connection and the other device.
	bob.send(protocol.Frame{Type: protocol.TypeSend, ID: "b1", To: "alice", Body: "hi"})
	if f := bob.next(); f.Type != protocol.TypeSendAck || f.ID != "b1" {
		t.Fatalf("bob got %+v, want send_ack b1", f)
	}
	for _, rc := range []*rawConn{cur, laptop} {
		if f := rc.next(); f.Type != protocol.TypeDeliver || f.Body != "hi" || f.From != "bob" {
			t.Fatalf("got %+v, want the deliver of hi", f)
		}
	}
}

// TestClientCloses: a close the client begins is echoed with the client's own
// status, and the connection is unregistered.
func TestClientCloses(t *testing.T) {
	c, url := startCluster(t, nil)
	gw := c.Gateways[0]
	rc := dialNoRead(t, url)
	rc.write(`{"type":"auth","token":"` + token(t, "alice", "phone") + `"}`)
	imtest.Eventually(t, wait, hasConns(gw, 1))
	// Close returns nil only when the peer answers with the same status.
	if err := rc.ws.Close(4000, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	imtest.Eventually(t, wait, hasConns(gw, 0))
}
