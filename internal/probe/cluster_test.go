package probe

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// wsProxy stands between probe clients and a gateway and drops the frames
// keep says no to: a test-only fault at one hop (the network between the
// gateway and the user).
type wsProxy struct {
	srv      *httptest.Server
	upstream string
	keep     func(toClient bool, f protocol.Frame) bool

	mu    sync.Mutex
	conns map[*websocket.Conn]bool // the clients' sides, open now
}

func startWSProxy(t testing.TB, upstream string, keep func(toClient bool, f protocol.Frame) bool) *wsProxy {
	p := &wsProxy{upstream: upstream, keep: keep}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *wsProxy) URL() string { return "ws" + strings.TrimPrefix(p.srv.URL, "http") + "/ws" }

// cut drops every connection open through the proxy, as a network blip
// does; the clients reconnect.
func (p *wsProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.CloseNow()
	}
}

func (p *wsProxy) serve(w http.ResponseWriter, r *http.Request) {
	down, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up, _, err := websocket.Dial(ctx, p.upstream, nil)
	if err != nil {
		down.Close(websocket.StatusInternalError, "upstream")
		return
	}
	p.mu.Lock()
	if p.conns == nil {
		p.conns = map[*websocket.Conn]bool{}
	}
	p.conns[down] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, down)
		p.mu.Unlock()
	}()
	down.SetReadLimit(protocol.MaxServerFrameBytes)
	up.SetReadLimit(protocol.MaxServerFrameBytes)
	relay := func(from, to *websocket.Conn, toClient bool) {
		defer cancel()
		for {
			typ, data, err := from.Read(ctx)
			if err != nil {
				return
			}
			var f protocol.Frame
			if json.Unmarshal(data, &f) == nil && !p.keep(toClient, f) {
				continue
			}
			if err := to.Write(ctx, typ, data); err != nil {
				return
			}
		}
	}
	go relay(up, down, true)
	relay(down, up, false)
	up.CloseNow()
	down.CloseNow()
}

// Against our own cluster, with frames dropped at the hop between the
// gateway and the probe's receiving device: every copy of one message
// (lost), the first push of one (it comes back by sync after later ones:
// reordered), and the deliver-acks of one (the logic node pushes it
// again: duplicated).
func TestIMWatchLossReorderDuplicateThroughCluster(t *testing.T) {
	c := imtest.StartCluster(t, "", 1)
	var mu sync.Mutex
	seen := map[string]int{}     // target/seq -> deliver frames seen
	ackDrop := map[string]bool{} // msg ids whose acks are dropped
	probeOf := func(f protocol.Frame) (Message, bool) {
		m, err := ParseMessage(f.Body)
		return m, err == nil
	}
	proxy := startWSProxy(t, c.URLs()[0], func(toClient bool, f protocol.Frame) bool {
		mu.Lock()
		defer mu.Unlock()
		if !toClient {
			return !(f.Type == protocol.TypeDeliverAck && ackDrop[f.MsgID])
		}
		m, ok := probeOf(f)
		if f.Type != protocol.TypeDeliver || !ok {
			return true
		}
		key := m.Target + "/" + itoa(m.Seq)
		seen[key]++
		switch {
		case m.Target == "loss" && m.Seq == 5:
			return false
		case m.Target == "reorder" && m.Seq == 5:
			return seen[key] > 1
		case m.Target == "dup" && m.Seq == 5:
			ackDrop[f.MsgID] = true
		}
		return true
	})
	var targets []Target
	for _, name := range []string{"loss", "reorder", "dup"} {
		targets = append(targets, imwatchTarget(t, name, proxy.URL(), 300*time.Millisecond, 3*time.Second, "probe-"+name))
	}
	p := startProber(t, Config{Targets: targets}, Options{})
	for _, name := range []string{"loss", "reorder", "dup"} {
		imtest.Eventually(t, 60*time.Second, atLeast(t, p, "probe_messages_sent_total", map[string]string{"target": name}, 30))
	}
	imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_duplicated_total", map[string]string{"target": "dup"}, 1))
	imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_lost_total", map[string]string{"target": "loss"}, 1))
	check := func(target, metric string, min, max float64) {
		t.Helper()
		if v := metricValue(t, p, metric, map[string]string{"target": target}); v < min || v > max {
			t.Errorf("%s %s = %g, want %g..%g", target, metric, v, min, max)
		}
	}
	check("loss", "probe_messages_lost_total", 1, 1)
	check("loss", "probe_failures_total", 1, 1)
	check("reorder", "probe_messages_reordered_total", 1, 1)
	check("reorder", "probe_messages_lost_total", 0, 0)
	check("dup", "probe_messages_duplicated_total", 1, 10)
	check("dup", "probe_messages_lost_total", 0, 0)
	check("dup", "probe_messages_reordered_total", 0, 0)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
