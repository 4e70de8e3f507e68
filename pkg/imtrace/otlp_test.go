package imtrace

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/testproc"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is a small OTLP/HTTP traces endpoint for the tests: it
// decodes what the SDK's otlptracehttp exporter sends with the OTLP proto
// types. (The center's real receiver is tested with the instrumentation.)
type otlpReceiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	spans []gotSpan
	hold  chan struct{} // when set, requests wait until it is closed
}

type gotSpan struct {
	service, instance string
	span              *tracepb.Span
}

func newOTLPReceiver(t *testing.T, hold chan struct{}) *otlpReceiver {
	r := &otlpReceiver{hold: hold}
	r.srv = httptest.NewServer(http.HandlerFunc(r.handle))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *otlpReceiver) url() string { return r.srv.URL + "/v1/traces" }

func (r *otlpReceiver) handle(w http.ResponseWriter, req *http.Request) {
	if r.hold != nil {
		<-r.hold
	}
	if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want POST /v1/traces application/x-protobuf", http.StatusBadRequest)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ex coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(data, &ex); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	for _, rs := range ex.ResourceSpans {
		res := kvMap(rs.Resource.GetAttributes())
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				r.spans = append(r.spans, gotSpan{res["service.name"], res["service.instance.id"], s})
			}
		}
	}
	r.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *otlpReceiver) received() []gotSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]gotSpan(nil), r.spans...)
}

func kvMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		switch v := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = fmt.Sprint(v.IntValue)
		case *commonpb.AnyValue_BoolValue:
			m[kv.Key] = fmt.Sprint(v.BoolValue)
		}
	}
	return m
}

// sentSpan is what a test started, to compare with what arrived.
type sentSpan struct {
	sc, parent trace.SpanContext
	name       string
	msg        Message
	failed     bool
	link       trace.SpanContext
}

// TestExportOverOTLP sends hop spans through the SDK's otlptracehttp
// exporter and the batch processor (records recycled after each batch) and
// checks that every span arrives as it was made.
func TestExportOverOTLP(t *testing.T) {
	recv := newOTLPReceiver(t, nil)
	tr, err := New(Config{Service: "im-logic", Instance: "logic-1", Endpoint: recv.url(), Ratio: 1, Slow: -1,
		BatchSize: 64, BatchTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	var sent []sentSpan
	var prev trace.SpanContext
	for i := 0; i < n; i++ {
		m := Message{ID: fmt.Sprintf("m%d", i), Conv: "g=team", User: "alice", Seq: uint64(i + 1), Recipients: 3}
		var links []trace.Link
		if i%10 == 1 {
			links = []trace.Link{FanoutLink(prev, 3)}
		}
		sp := tr.StartLinked(prev, SpanGatewayPush, trace.SpanKindConsumer, m, links)
		s := sentSpan{sc: sp.SpanContext(), parent: prev, name: SpanGatewayPush, msg: m}
		if links != nil && prev.IsValid() {
			s.link = prev
		}
		if i%7 == 0 {
			sp.SetError(errors.New("push failed"))
			s.failed = true
		}
		sp.End()
		sent = append(sent, s)
		if i%5 == 0 {
			prev = trace.SpanContext{} // a new trace now and then
		} else {
			prev = sp.SpanContext()
		}
	}
	// A span of another instrumentation through the shared provider.
	_, other := tr.Provider().Tracer("other").Start(context.Background(), "other.work")
	other.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := map[string]gotSpan{}
	for _, g := range recv.received() {
		got[hex.EncodeToString(g.span.SpanId)] = g
	}
	if len(got) != n+1 {
		t.Fatalf("received %d spans, want %d", len(got), n+1)
	}
	for _, s := range sent {
		g, ok := got[s.sc.SpanID().String()]
		if !ok {
			t.Fatalf("span %s not received", s.sc.SpanID())
		}
		p := g.span
		a := kvMap(p.Attributes)
		switch {
		case g.service != "im-logic" || g.instance != "logic-1":
			t.Fatalf("resource %s/%s", g.service, g.instance)
		case hex.EncodeToString(p.TraceId) != s.sc.TraceID().String() || p.Name != s.name ||
			p.Kind != tracepb.Span_SPAN_KIND_CONSUMER:
			t.Fatalf("span %s: trace %x name %s kind %v", s.sc.SpanID(), p.TraceId, p.Name, p.Kind)
		case s.parent.IsValid() && hex.EncodeToString(p.ParentSpanId) != s.parent.SpanID().String(),
			!s.parent.IsValid() && len(p.ParentSpanId) != 0:
			t.Fatalf("span %s: parent %x, want %s", s.sc.SpanID(), p.ParentSpanId, s.parent.SpanID())
		case a["messaging.message.id"] != s.msg.ID || a["imwatch.seq"] != fmt.Sprint(s.msg.Seq) ||
			a["messaging.message.conversation_id"] != "g=team" || a["messaging.batch.message_count"] != "3" ||
			a["messaging.system"] != "imwatch" || a["imwatch.user"] != "alice":
			t.Fatalf("span %s: attributes %v, want message %+v", s.sc.SpanID(), a, s.msg)
		case p.EndTimeUnixNano < p.StartTimeUnixNano || p.StartTimeUnixNano == 0:
			t.Fatalf("span %s: times %d..%d", s.sc.SpanID(), p.StartTimeUnixNano, p.EndTimeUnixNano)
		}
		if s.failed {
			if p.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || p.Status.GetMessage() != "push failed" ||
				len(p.Events) != 1 || p.Events[0].Name != "exception" ||
				kvMap(p.Events[0].Attributes)["exception.message"] != "push failed" {
				t.Fatalf("span %s: status %v events %v", s.sc.SpanID(), p.Status, p.Events)
			}
		} else if p.Status.GetCode() == tracepb.Status_STATUS_CODE_ERROR || len(p.Events) != 0 {
			t.Fatalf("span %s: status %v events %v", s.sc.SpanID(), p.Status, p.Events)
		}
		if s.link.IsValid() {
			if len(p.Links) != 1 || hex.EncodeToString(p.Links[0].SpanId) != s.link.SpanID().String() ||
				kvMap(p.Links[0].Attributes)["messaging.batch.message_count"] != "3" {
				t.Fatalf("span %s: links %v", s.sc.SpanID(), p.Links)
			}
		} else if len(p.Links) != 0 {
			t.Fatalf("span %s: unexpected links %v", s.sc.SpanID(), p.Links)
		}
	}
	if st := tr.Stats(); st.Exported != n+1 || st.ExportDropped != 0 || st.ExportFailed != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestExportQueueBounded holds the receiver so that nothing leaves the
// queue: of 50 spans the queue's 4 are kept and 46 refused and counted;
// once the receiver answers, Shutdown flushes the 4.
func TestExportQueueBounded(t *testing.T) {
	hold := make(chan struct{})
	recv := newOTLPReceiver(t, hold)
	tr, err := New(Config{Service: "s", Endpoint: recv.url(), Ratio: 1, Slow: -1, QueueSize: 4, BatchSize: 2,
		BatchTimeout: 5 * time.Millisecond, ExportTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		sp := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{})
		sp.End()
	}
	if st := tr.Stats(); st.ExportDropped != 46 {
		t.Fatalf("stats %+v, want 46 dropped", st)
	}
	close(hold)
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := tr.Stats(); st.Exported != 4 || len(recv.received()) != 4 {
		t.Fatalf("stats %+v, received %d", st, len(recv.received()))
	}
}

// TestHopsOverNATS carries a message's context over a real nats-server:
// gateway -> relay (tracing off) -> logic, each hop a process of its own
// tracer, all exporting over OTLP/HTTP. The relay passes the header on
// unchanged, so the trace stays whole: the logic span's parent is the
// gateway span.
func TestHopsOverNATS(t *testing.T) {
	nsrv := testproc.StartNATSServer(t)
	recv := newOTLPReceiver(t, nil)
	mk := func(service string) *Tracer {
		tr, err := New(Config{Service: service, Instance: service + "-1", Endpoint: recv.url(), Ratio: 1, Slow: -1,
			BatchTimeout: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	gwTr, logicTr := mk("im-gateway"), mk("im-logic")
	var relayTr *Tracer // tracing switched off in this hop

	nc, err := nats.Connect(nsrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, err = nc.Subscribe("relay", func(m *nats.Msg) {
		sp := relayTr.Start(ParseHeader(m.Header), SpanLogicHandle, trace.SpanKindServer, Message{})
		out := &nats.Msg{Subject: "logic", Data: m.Data, Header: m.Header}
		sp.Inject(HeaderCarrier(out.Header))
		sp.End()
		resp, err := nc.RequestMsg(out, 10*time.Second)
		if err == nil {
			_ = m.Respond(resp.Data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = nc.Subscribe("logic", func(m *nats.Msg) {
		sp := logicTr.Start(ParseHeader(m.Header), SpanLogicHandle, trace.SpanKindServer, Message{ID: string(m.Data)})
		sp.End()
		_ = m.Respond([]byte("ok"))
	})
	if err != nil {
		t.Fatal(err)
	}

	ts, _ := trace.ParseTraceState("imw=x")
	client := Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").WithTraceState(ts)
	gw := gwTr.Start(client, SpanGatewayReceive, trace.SpanKindServer, Message{ClientID: "c1"})
	req := &nats.Msg{Subject: "relay", Data: []byte("m1"), Header: nats.Header{}}
	gw.Inject(HeaderCarrier(req.Header))
	if _, err := nc.RequestMsg(req, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	gw.End()
	for _, tr := range []*Tracer{gwTr, logicTr} {
		if err := tr.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	testproc.Eventually(t, 10*time.Second, func() error {
		if n := len(recv.received()); n != 2 {
			return fmt.Errorf("%d spans received, want 2", n)
		}
		return nil
	})
	by := map[string]*tracepb.Span{}
	for _, g := range recv.received() {
		by[g.service] = g.span
	}
	g, l := by["im-gateway"], by["im-logic"]
	if g == nil || l == nil {
		t.Fatalf("spans by service: %v", by)
	}
	if hex.EncodeToString(g.TraceId) != client.TraceID().String() || hex.EncodeToString(l.TraceId) != client.TraceID().String() {
		t.Errorf("not one trace: %x %x", g.TraceId, l.TraceId)
	}
	if !bytes.Equal(l.ParentSpanId, g.SpanId) || hex.EncodeToString(g.ParentSpanId) != client.SpanID().String() {
		t.Errorf("parentage: logic's parent %x, gateway span %x (parent %x)", l.ParentSpanId, g.SpanId, g.ParentSpanId)
	}
	if !strings.Contains(l.TraceState, "imw=x") || kvMap(l.Attributes)["messaging.message.id"] != "m1" {
		t.Errorf("tracestate %q attributes %v", l.TraceState, kvMap(l.Attributes))
	}
}

// TestConcurrentHops runs hops from several goroutines at ratio 0.5 with
// errors, through the exporter: run with -race, it checks the pooled records
// and the tail buffer; every span that arrives carries its own attributes,
// and every span the tracer kept arrives.
func TestConcurrentHops(t *testing.T) {
	recv := newOTLPReceiver(t, nil)
	tr, err := New(Config{Service: "s", Endpoint: recv.url(), Ratio: 0.5, Slow: -1, BatchTimeout: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const workers, per = 4, 300
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := 0; i < per; i++ {
				m := Message{ID: fmt.Sprintf("w%d-%d", w, i), Seq: uint64(w*per + i + 1)}
				sp := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, m)
				child := tr.Start(sp.SpanContext(), SpanStoreAppend, trace.SpanKindProducer, m)
				child.End()
				if i%9 == 0 {
					sp.SetErrorCode("unavailable", "x")
				}
				sp.End()
			}
		})
	}
	wg.Wait()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := tr.Stats()
	kept := st.Sampled + st.Promoted
	if st.Exported != kept || uint64(len(recv.received())) != kept || st.ExportDropped != 0 {
		t.Fatalf("stats %+v, received %d", st, len(recv.received()))
	}
	for _, g := range recv.received() {
		a := kvMap(g.span.Attributes)
		var w, i int
		if _, err := fmt.Sscanf(a["messaging.message.id"], "w%d-%d", &w, &i); err != nil || a["imwatch.seq"] != fmt.Sprint(w*per+i+1) {
			t.Fatalf("span %x: attributes of another span: %v", g.span.SpanId, a)
		}
	}
}
