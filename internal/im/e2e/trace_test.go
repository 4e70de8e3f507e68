package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/traces"
	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/pkg/imtrace"
)

// traceCenter is a real center in the test process, receiving the spans of
// the IM processes over OTLP/HTTP.
func traceCenter(t *testing.T, gapThreshold time.Duration) (base, endpoint string) {
	t.Helper()
	cfg := centertest.Config(t)
	if gapThreshold > 0 {
		cfg.Traces.GapThreshold = config.Duration(gapThreshold)
	}
	cen := centertest.Start(t, cfg)
	return cen.URL(), cen.URL() + "/v1/traces"
}

// tracingArgs make every part trace every message to endpoint, except the
// parts in off, which run with --tracing=false.
func tracingArgs(endpoint string, off ...string) func(string) []string {
	return func(part string) []string {
		for _, o := range off {
			if o == part {
				return []string{"--tracing=false"}
			}
		}
		return []string{"--tracing-endpoint", endpoint, "--tracing-ratio", "1"}
	}
}

// clientTracer traces the test's own clients, as the users' devices.
func clientTracer(t *testing.T, endpoint string) *imtrace.Tracer {
	t.Helper()
	tr, err := imtrace.New(imtrace.Config{Service: cluster.ServiceClient, Instance: "e2e", Endpoint: endpoint,
		Ratio: 1, BatchTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr
}

func dialTraced(t *testing.T, urls []string, user string, tr *imtrace.Tracer) *client.Client {
	t.Helper()
	c, err := client.Dial(ctxT(t, 15*time.Second), client.Config{URLs: urls, Token: imtest.Token(user, "phone"), Log: imtest.Logger(), Tracer: tr})
	if err != nil {
		t.Fatalf("dial %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receive waits for the message msgID on c.
func receive(t *testing.T, c *client.Client, msgID string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-c.Messages():
			if m.MsgID == msgID {
				return
			}
		case <-deadline:
			t.Fatalf("%s did not receive %s", c.User(), msgID)
		}
	}
}

// messageTrace polls the center until the message's trace holds at least
// want[name] spans of each name, and returns it; the message must have
// exactly one trace.
func messageTrace(t *testing.T, base, msgID string, want map[string]int) traces.Trace {
	t.Helper()
	var got traces.Trace
	imtest.Eventually(t, 60*time.Second, func() error {
		trs, err := centertest.Traces(base, "/api/traces?msg_id="+msgID)
		if err != nil {
			return err
		}
		if len(trs) != 1 {
			return fmt.Errorf("%d traces of message %s, want 1", len(trs), msgID)
		}
		got = trs[0]
		n := map[string]int{}
		for _, s := range got.Spans {
			n[s.Name]++
		}
		for name, k := range want {
			if n[name] < k {
				return fmt.Errorf("%d spans %s, want %d:\n%s", n[name], name, k, centertest.Waterfall(got))
			}
		}
		return nil
	})
	return got
}

// spans of a trace by name.
func spansNamed(tr traces.Trace, name string) []traces.Span {
	var out []traces.Span
	for _, s := range tr.Spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// hop is one expected span: its name, service and instance, and its parent.
type hop struct {
	name, service, instance string
	parent                  string // name of the parent span; "" for the root
}

// checkHops checks that tr has exactly one span per hop, with that parent.
func checkHops(t *testing.T, tr traces.Trace, hops []hop) map[string]traces.Span {
	t.Helper()
	byName := map[string]traces.Span{}
	for _, h := range hops {
		ss := spansNamed(tr, h.name)
		if len(ss) != 1 {
			t.Fatalf("%d spans %s, want 1:\n%s", len(ss), h.name, centertest.Waterfall(tr))
		}
		byName[h.name] = ss[0]
	}
	for _, h := range hops {
		s := byName[h.name]
		if s.Service != h.service || (h.instance != "" && s.Instance != h.instance) {
			t.Errorf("%s is of %s/%s, want %s/%s", h.name, s.Service, s.Instance, h.service, h.instance)
		}
		wantParent := ""
		if h.parent != "" {
			wantParent = byName[h.parent].SpanID
		}
		if s.ParentSpanID != wantParent {
			t.Errorf("%s: parent %q, want %s (%q)\n%s", h.name, s.ParentSpanID, h.parent, wantParent, centertest.Waterfall(tr))
		}
		if s.MissingParent || s.Status == "error" {
			t.Errorf("%s: missing parent %v, status %s %s", h.name, s.MissingParent, s.Status, s.StatusMessage)
		}
	}
	return byName
}

// TestMessageTraceAcrossProcesses: a message through a cluster of separate
// processes (logic node, two gateways) yields one trace with every hop, the
// right parents across the processes, and the recipient's ACK closing it;
// a group message's pushes, one per gateway, link to the append that
// fanned them out.
func TestMessageTraceAcrossProcesses(t *testing.T) {
	base, endpoint := traceCenter(t, 0)
	c := startIMWith(t, tracingArgs(endpoint), "gw-1", "gw-2")
	tr := clientTracer(t, endpoint)
	alice := dialTraced(t, c.urls("gw-1"), "alice", tr)
	bob := dialTraced(t, c.urls("gw-2"), "bob", tr)
	carol := dialTraced(t, c.urls("gw-1"), "carol", tr)

	res, err := alice.Send(ctxT(t, 30*time.Second), "bob", "hello bob")
	if err != nil {
		t.Fatal(err)
	}
	receive(t, bob, res.MsgID)
	names := map[string]int{}
	hops := []hop{
		{imtrace.SpanClientSend, cluster.ServiceClient, "e2e", ""},
		{imtrace.SpanGatewayReceive, cluster.ServiceGateway, "gw-1", imtrace.SpanClientSend},
		{imtrace.SpanLogicHandle, cluster.ServiceLogic, "logic-1", imtrace.SpanGatewayReceive},
		{imtrace.SpanStoreAppend, cluster.ServiceLogic, "logic-1", imtrace.SpanLogicHandle},
		{imtrace.SpanGatewayPush, cluster.ServiceGateway, "gw-2", imtrace.SpanStoreAppend},
		{imtrace.SpanClientReceive, cluster.ServiceClient, "e2e", imtrace.SpanGatewayPush},
		{imtrace.SpanClientAck, cluster.ServiceClient, "e2e", imtrace.SpanClientReceive},
		{imtrace.SpanLogicAck, cluster.ServiceLogic, "logic-1", imtrace.SpanClientAck},
	}
	for _, h := range hops {
		names[h.name] = 1
	}
	got := messageTrace(t, base, res.MsgID, names)
	t.Log(centertest.Waterfall(got))
	spans := checkHops(t, got, hops)
	if len(got.Spans) != len(hops) {
		t.Errorf("%d spans, want %d:\n%s", len(got.Spans), len(hops), centertest.Waterfall(got))
	}
	if !got.Root.IsRoot || got.Root.Name != imtrace.SpanClientSend {
		t.Errorf("root %+v, want im.client.send", got.Root)
	}
	for name, attrs := range map[string]map[string]any{
		imtrace.SpanClientSend:  {"messaging.message.id": res.MsgID, "imwatch.user": "alice", "imwatch.recipient": "bob", "imwatch.seq": float64(res.Seq)},
		imtrace.SpanGatewayPush: {"messaging.message.id": res.MsgID, "imwatch.attempt": float64(1), "messaging.batch.message_count": float64(1)},
		imtrace.SpanLogicAck:    {"messaging.message.id": res.MsgID, "imwatch.recipient": "bob", "messaging.message.conversation_id": res.Conv},
	} {
		for k, v := range attrs {
			if g := spans[name].Attributes[k]; g != v {
				t.Errorf("%s %s = %v (%T), want %v", name, k, g, g, v)
			}
		}
	}
	// `imwatch trace MSGID` prints the message's whole waterfall.
	cmd := startProc(t, "trace", "trace", res.MsgID, "--center", base)
	if code := cmd.wait(30 * time.Second); code != 0 {
		t.Fatalf("imwatch trace: exit %d\n%s", code, cmd.logTail(10))
	}
	out := cmd.stdout()
	t.Log(out)
	for _, h := range hops {
		if !regexp.MustCompile(`(?m)^ +[0-9.]+ +[0-9.]+ +` + regexp.QuoteMeta(h.name) + ` +` + h.service + ` `).MatchString(out) {
			t.Errorf("imwatch trace shows no line for %s of %s", h.name, h.service)
		}
	}
	if strings.Contains(out, "MISSING PARENT") || !strings.Contains(out, "8 spans") {
		t.Errorf("imwatch trace: not one whole trace of 8 spans:\n%s", out)
	}
	// The untraced stretches between hops of a healthy message, against the
	// center's default gap threshold: they are what the threshold is tuned to.
	for _, g := range got.Gaps {
		t.Logf("gap of %.3f ms before %s", g.DurationMs, spanName(got, g.BeforeSpanID))
	}

	if _, err := alice.CreateGroup(ctxT(t, 10*time.Second), "team", "bob", "carol"); err != nil {
		t.Fatal(err)
	}
	res, err = alice.SendGroup(ctxT(t, 30*time.Second), "team", "hello team")
	if err != nil {
		t.Fatal(err)
	}
	receive(t, bob, res.MsgID)
	receive(t, carol, res.MsgID)
	got = messageTrace(t, base, res.MsgID, map[string]int{imtrace.SpanGatewayPush: 2, imtrace.SpanClientReceive: 2,
		imtrace.SpanClientAck: 2, imtrace.SpanLogicAck: 2})
	store := spansNamed(got, imtrace.SpanStoreAppend)
	if len(store) != 1 {
		t.Fatalf("%d store appends:\n%s", len(store), centertest.Waterfall(got))
	}
	gateways := map[string]bool{}
	for _, p := range spansNamed(got, imtrace.SpanGatewayPush) {
		gateways[p.Instance] = true
		if p.ParentSpanID != store[0].SpanID {
			t.Errorf("push on %s: parent %s, want the append %s", p.Instance, p.ParentSpanID, store[0].SpanID)
		}
		if len(p.Links) != 1 || p.Links[0].SpanID != store[0].SpanID || p.Links[0].TraceID != got.TraceID ||
			p.Links[0].Attributes["messaging.batch.message_count"] != float64(1) {
			t.Errorf("push on %s: links %+v, want one to the append %s with its share of the fan-out", p.Instance, p.Links, store[0].SpanID)
		}
	}
	if !gateways["gw-1"] || !gateways["gw-2"] {
		t.Errorf("pushes on %v, want gw-1 and gw-2", gateways)
	}
	recipients := map[string]bool{}
	for _, a := range spansNamed(got, imtrace.SpanLogicAck) {
		recipients[fmt.Sprint(a.Attributes["imwatch.recipient"])] = true
	}
	if !recipients["bob"] || !recipients["carol"] {
		t.Errorf("ACKs from %v, want bob and carol", recipients)
	}
}

func spanName(tr traces.Trace, id string) string {
	for _, s := range tr.Spans {
		if s.SpanID == id {
			return s.Name + "/" + s.Instance
		}
	}
	return id
}

// TestUntracedHopKeepsTraceWhole: with tracing off in the recipient's
// gateway (--tracing=false), the gateway passes the context on unchanged:
// the message is still one trace, the device's receive hangs off the
// append, and the API marks the untraced stretch as a gap. The center runs
// with a gap threshold of 100 µs here: the untraced hop (NATS to the
// gateway, its queue, the WebSocket) is fast on an idle machine, faster
// than the default threshold, which is set for a loaded one.
//
// The untraced gateway holds each push 100 ms (a latency fault): a gap is
// time after the parent span's end, and the parent here, the logic node's
// im.store.append, ends when JetStream's acknowledgement is back, which on a
// loaded machine can come after an idle gateway's push has already reached
// the device (docs/tracing.md); an untraced hop that takes no time beyond
// its parent's end shows no gap in time, and the test would depend on the
// machine's load.
func TestUntracedHopKeepsTraceWhole(t *testing.T) {
	base, endpoint := traceCenter(t, 100*time.Microsecond)
	args := func(part string) []string {
		a := tracingArgs(endpoint, "gw-2")(part)
		if part == "gw-2" {
			a = append(a, "--faults")
		}
		return a
	}
	c := startIMWith(t, args, "gw-1", "gw-2")
	holdPushes(t, c.nats.URL, "gw-2", 100*time.Millisecond)
	tr := clientTracer(t, endpoint)
	alice := dialTraced(t, c.urls("gw-1"), "alice", tr)
	bob := dialTraced(t, c.urls("gw-2"), "bob", tr)
	res, err := alice.Send(ctxT(t, 30*time.Second), "bob", "through an untraced gateway")
	if err != nil {
		t.Fatal(err)
	}
	receive(t, bob, res.MsgID)
	hops := []hop{
		{imtrace.SpanClientSend, cluster.ServiceClient, "e2e", ""},
		{imtrace.SpanGatewayReceive, cluster.ServiceGateway, "gw-1", imtrace.SpanClientSend},
		{imtrace.SpanLogicHandle, cluster.ServiceLogic, "logic-1", imtrace.SpanGatewayReceive},
		{imtrace.SpanStoreAppend, cluster.ServiceLogic, "logic-1", imtrace.SpanLogicHandle},
		{imtrace.SpanClientReceive, cluster.ServiceClient, "e2e", imtrace.SpanStoreAppend},
		{imtrace.SpanClientAck, cluster.ServiceClient, "e2e", imtrace.SpanClientReceive},
		{imtrace.SpanLogicAck, cluster.ServiceLogic, "logic-1", imtrace.SpanClientAck},
	}
	want := map[string]int{}
	for _, h := range hops {
		want[h.name] = 1
	}
	got := messageTrace(t, base, res.MsgID, want)
	t.Log(centertest.Waterfall(got))
	spans := checkHops(t, got, hops)
	if n := len(spansNamed(got, imtrace.SpanGatewayPush)); n != 0 {
		t.Errorf("%d push spans from a gateway with tracing off", n)
	}
	if got.Root.MissingParents != 0 {
		t.Errorf("%d missing parents: the untraced hop broke the chain:\n%s", got.Root.MissingParents, centertest.Waterfall(got))
	}
	var marked bool
	for _, g := range got.Gaps {
		if g.BeforeSpanID == spans[imtrace.SpanClientReceive].SpanID && g.AfterSpanID == spans[imtrace.SpanStoreAppend].SpanID {
			marked = true
		}
	}
	if !marked || !got.Broken {
		t.Errorf("the untraced hop is not marked as a gap before im.client.receive:\n%s", centertest.Waterfall(got))
	}
	if strings.Contains(centertest.Waterfall(got), "MISSING") {
		t.Error("a span points at a parent the center does not have")
	}
}

// holdPushes makes the gateway gw hold each push for delay, with a latency
// fault sent as the center sends it, over the cluster's NATS, and waits
// until the gateway applies it.
func holdPushes(t *testing.T, natsURL, gw string, delay time.Duration) {
	t.Helper()
	reg := imtest.FaultRegistry(t, natsURL, gw)
	imtest.AddFault(t, reg, fault.Spec{Kind: fault.KindLatency, Hop: fault.HopGatewayPush, Instance: gw,
		Delay: fault.Duration(delay), Duration: fault.Duration(5 * time.Minute)})
}
