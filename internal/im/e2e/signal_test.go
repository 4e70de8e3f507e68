package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// stopWithin is how fast a signalled process must be gone.
const stopWithin = 5 * time.Second

// TestSignalStopsCleanly sends SIGINT or SIGTERM to each long-running IM
// command and checks that it exits with code 0 within a few seconds.
func TestSignalStopsCleanly(t *testing.T) {
	c := startIM(t, "gw-a")
	cases := []struct {
		cmd   string
		sig   syscall.Signal
		early bool // signal during start-up, before the command says it is running
	}{
		{"logic", syscall.SIGINT, false},
		{"logic", syscall.SIGTERM, false},
		{"gateway", syscall.SIGINT, false},
		{"gateway", syscall.SIGTERM, false},
		{"up", syscall.SIGINT, false},
		{"up", syscall.SIGTERM, false},
		{"up", syscall.SIGINT, true},
	}
	for _, tc := range cases {
		name := tc.cmd + " " + tc.sig.String()
		if tc.early {
			name += " during start-up"
		}
		t.Run(name, func(t *testing.T) {
			var p *proc
			var check func(t *testing.T)
			switch tc.cmd {
			case "logic":
				node := "logic-sig-" + strconv.Itoa(int(tc.sig))
				p = startProc(t, node, "im", "logic", "--nats", c.nats.URL, "--node", node, "--metrics-listen", "127.0.0.1:0")
				p.waitLine("logic node "+node+" running", 30*time.Second)
				check = func(t *testing.T) { p.waitLog(`msg="logic node stopped"`, time.Second) }
			case "gateway":
				// A client is connected when the gateway stops: it is told
				// the gateway is going away and moves to the other one.
				id := "gw-sig-" + strconv.Itoa(int(tc.sig))
				listen := "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t))
				p = startProc(t, id, "im", "gateway", "--nats", c.nats.URL, "--listen", listen, "--id", id, "--secret", string(imtest.Secret))
				p.waitLine("listening on ws://"+listen+"/ws", 30*time.Second)
				d := dial(t, []string{wsURL(listen), wsURL(c.listen["gw-a"])}, "sig"+id, "phone")
				if gw := d.c.Gateway(); gw != id {
					t.Fatalf("client is on %q, want %q", gw, id)
				}
				check = func(t *testing.T) {
					p.waitLog(`msg="gateway stopped"`, time.Second)
					imtest.Eventually(t, 10*time.Second, func() error {
						if gw := d.c.Gateway(); gw != "gw-a" {
							return fmt.Errorf("client is on %q, want gw-a", gw)
						}
						return nil
					})
				}
			case "up":
				data := t.TempDir()
				if tc.early {
					p = startProc(t, "up", upArgs(t, data)...)
					p.waitLog("embedded nats started", 30*time.Second)
					check = func(t *testing.T) { p.waitLog("signal received", time.Second) }
					break
				}
				p = startUp(t, data, "--secret", string(imtest.Secret))
				check = func(t *testing.T) {
					p.waitLog(`msg="logic node stopped"`, time.Second)
					p.waitLog(`msg="gateway stopped" component=gateway gateway=gw-1`, time.Second)
					p.waitLog(`msg="gateway stopped" component=gateway gateway=gw-2`, time.Second)
					// The embedded NATS flushed its JetStream store into the data dir.
					if _, err := os.Stat(filepath.Join(data, "nats", "jetstream")); err != nil {
						t.Errorf("no JetStream store under the data dir: %v", err)
					}
				}
			}
			t0 := time.Now()
			p.signal(tc.sig)
			code := p.wait(3 * stopWithin)
			took := time.Since(t0)
			if code != 0 {
				t.Fatalf("%s exited with code %d after %s, want 0; log:\n%s", tc.cmd, code, tc.sig, p.logTail(20))
			}
			if took > stopWithin {
				t.Errorf("%s took %s to stop after %s, want under %s", tc.cmd, took.Round(time.Millisecond), tc.sig, stopWithin)
			}
			t.Logf("%s stopped %s after %s", tc.cmd, took.Round(time.Millisecond), tc.sig)
			check(t)
		})
	}
}

// TestGatewayStopWithLateAuth stops a gateway while a client has its
// WebSocket open but authenticates only once the gateway is stopping, as a
// client failing over from another gateway does. The gateway must still stop
// within a few seconds: close that connection or refuse the auth, not let it
// in after it closed the others and then wait for it.
func TestGatewayStopWithLateAuth(t *testing.T) {
	n := imtest.StartNATSServer(t)
	listen := "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t))
	p := startProc(t, "gw-late", "im", "gateway", "--nats", n.URL, "--listen", listen, "--id", "gw-late", "--secret", string(imtest.Secret))
	p.waitLine("listening on ws://"+listen+"/ws", 30*time.Second)
	ctx := ctxT(t, 30*time.Second)
	ws, _, err := websocket.Dial(ctx, wsURL(listen), nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.CloseNow()
	// Read like a client does, which also answers the gateway's close frame.
	go func() {
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				return
			}
		}
	}()
	tok, err := imtest.Token("late", "phone")()
	if err != nil {
		t.Fatal(err)
	}
	auth, _ := json.Marshal(protocol.Frame{Type: protocol.TypeAuth, Token: tok})

	t0 := time.Now()
	p.signal(syscall.SIGTERM)
	p.waitLog("msg=stopping", 5*time.Second)
	if err := ws.Write(ctx, websocket.MessageText, auth); err != nil {
		t.Logf("auth not written (the gateway closed first): %v", err)
	}
	code := p.wait(3 * stopWithin)
	if took := time.Since(t0); took > stopWithin {
		t.Errorf("gateway took %s to stop after SIGTERM with a client authenticating meanwhile, want under %s", took.Round(time.Millisecond), stopWithin)
	}
	if code != 0 {
		t.Errorf("gateway exited with code %d, want 0", code)
	}
}

// checkArrived waits until d holds n messages of conv.
func checkArrived(t *testing.T, d *device, conv string, n int) {
	t.Helper()
	imtest.Eventually(t, 10*time.Second, func() error {
		if got := len(d.received(conv)); got < n {
			return fmt.Errorf("%s has %d of %d messages of %s", d.name, got, n, conv)
		}
		return nil
	})
}

// startUp runs `imwatch up` with its data in data, every listener on a free
// loopback port, and waits until it says it is up.
func startUp(t *testing.T, data string, extra ...string) *proc {
	t.Helper()
	p := startProc(t, "up", upArgs(t, data, extra...)...)
	p.waitLine("imwatch is up.", 30*time.Second)
	p.waitLine("Stop with Ctrl-C.", 5*time.Second)
	return p
}

func upArgs(t *testing.T, data string, extra ...string) []string {
	return append([]string{"up", "--data", data,
		"--gateway-listen", freePortPair(t),
		"--nats-listen", "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t)),
		"--listen", "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t)),
		"--logic-metrics-listen", "127.0.0.1:0",
		"--agent-listen", "127.0.0.1:0",
	}, extra...)
}

// freePortPair is a loopback address whose port and the next one are free:
// `imwatch up` puts its second gateway on port+1.
func freePortPair(t *testing.T) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		port := imtest.FreePort(t)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
		if err != nil {
			continue
		}
		l.Close()
		return "127.0.0.1:" + strconv.Itoa(port)
	}
	t.Fatal("no two consecutive free ports")
	return ""
}

// TestUpSmoke runs `imwatch up` as a user would: it makes its own secret,
// tokens come from `imwatch im token`, one user on each gateway, and they chat.
func TestUpSmoke(t *testing.T) {
	data := t.TempDir()
	up := startUp(t, data)
	urls := regexp.MustCompile(`gateway \d: (ws://\S+)`).FindAllStringSubmatch(up.stdout(), -1)
	if len(urls) != 2 {
		t.Fatalf("want two gateway URLs in the output of imwatch up, got:\n%s", up.stdout())
	}
	gw1, gw2 := urls[0][1], urls[1][1]
	token := func(user, dev string) func() (string, error) {
		p := startProc(t, "token-"+user, "im", "token", "--data", data, "--user", user, "--device", dev)
		if code := p.wait(10 * time.Second); code != 0 {
			t.Fatalf("imwatch im token exited with %d: %s", code, p.logTail(5))
		}
		tok := strings.TrimSpace(p.stdout())
		return func() (string, error) { return tok, nil }
	}
	alice := dialToken(t, []string{gw1, gw2}, "alice", "phone", token("alice", "phone"))
	bob := dialToken(t, []string{gw2, gw1}, "bob", "phone", token("bob", "phone"))
	if a, b := alice.c.Gateway(), bob.c.Gateway(); a == b || a == "" || b == "" {
		t.Fatalf("alice is on %q and bob on %q: want one on each gateway", a, b)
	}

	ctx := ctxT(t, time.Minute)
	l := newLedger()
	conv := protocol.DirectConv("alice", "bob")
	for i := 0; i < 10; i++ {
		send(t, ctx, l, alice, "bob", fmt.Sprintf("hello-%d", i))
	}
	checkDelivered(t, l, 15*time.Second, expect{dev: bob, conv: conv})

	// A two-way chat: each answers what it received. A device's own
	// message takes its place in the conversation at once, so the answer is
	// not held up waiting to sync it (the client's gap timeout is a second).
	const rounds = 10
	t0 := time.Now()
	for i := 0; i < rounds; i++ {
		send(t, ctx, l, bob, "alice", fmt.Sprintf("ping-%d", i))
		checkArrived(t, alice, conv, i+1)
		send(t, ctx, l, alice, "bob", fmt.Sprintf("pong-%d", i))
		checkArrived(t, bob, conv, 10+i+1)
	}
	if took := time.Since(t0); took > rounds*time.Second/4 {
		t.Errorf("%d rounds of a two-way chat took %s, want well under a second a round", rounds, took.Round(time.Millisecond))
	}
	checkDelivered(t, l, 15*time.Second, expect{dev: alice, conv: conv}, expect{dev: bob, conv: conv})

	// Ctrl-C with users connected: the gateway stopped first sends its
	// clients away, they reconnect to the other one, which is stopping too.
	for i := 0; i < 8; i++ {
		dialToken(t, []string{gw2, gw1}, "idle", strconv.Itoa(i), token("idle", strconv.Itoa(i)))
	}
	t0 = time.Now()
	up.signal(syscall.SIGTERM)
	if code := up.wait(3 * stopWithin); code != 0 {
		t.Fatalf("imwatch up exited with %d after SIGTERM", code)
	}
	if took := time.Since(t0); took > stopWithin {
		t.Errorf("imwatch up took %s to stop with clients connected, want under %s", took.Round(time.Millisecond), stopWithin)
	}
}

// TestGatewayStopWithSilentClient stops a gateway while a client holds a
// WebSocket open and never reads, so it never answers the close frame (one
// gone without closing its socket), and another has connected but not sent
// its upgrade request yet (one still dialling). The gateway gives both a
// second and then drops them: it must not wait out its write timeout (10 s)
// or the HTTP server's 5 s for new connections.
func TestGatewayStopWithSilentClient(t *testing.T) {
	n := imtest.StartNATSServer(t)
	listen := "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t))
	p := startProc(t, "gw-silent", "im", "gateway", "--nats", n.URL, "--listen", listen, "--id", "gw-silent", "--secret", string(imtest.Secret))
	p.waitLine("listening on ws://"+listen+"/ws", 30*time.Second)
	ctx := ctxT(t, 30*time.Second)
	ws, _, err := websocket.Dial(ctx, wsURL(listen), nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.CloseNow()
	// And one still dialling: connected, its HTTP request not sent yet.
	tcp, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatalf("dial tcp: %v", err)
	}
	defer tcp.Close()
	t0 := time.Now()
	p.signal(syscall.SIGTERM)
	code := p.wait(3 * stopWithin)
	if took := time.Since(t0); took > 4*time.Second {
		t.Errorf("gateway took %s to stop after SIGTERM with a client that never answers the close frame, want about 2 s (the two stop graces)", took.Round(time.Millisecond))
	}
	if code != 0 {
		t.Errorf("gateway exited with code %d, want 0", code)
	}
}
