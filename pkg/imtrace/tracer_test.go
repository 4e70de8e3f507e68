package imtrace

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// newTestTracer is a tracer recording every kept span in memory. Slow is
// off unless the case sets it: a loaded machine must not promote spans.
func newTestTracer(t testing.TB, cfg Config) (*Tracer, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	if cfg.Service == "" {
		cfg.Service = "test"
	}
	if cfg.Slow == 0 {
		cfg.Slow = -1
	}
	cfg.Processor = rec
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, rec
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, a := range s.Attributes() {
		m[a.Key] = a.Value
	}
	return m
}

func TestHopSpanAttributes(t *testing.T) {
	full := Message{ID: "m1", ClientID: "c1", Conv: "d=alice=bob", Dest: "im.logic.send", User: "alice",
		Recipient: "bob", Seq: 7, Recipients: 3, Probe: true}
	cases := []struct {
		name string
		kind trace.SpanKind
		msg  Message
		want map[attribute.Key]any
		none []attribute.Key
	}{
		{"full server", trace.SpanKindServer, full, map[attribute.Key]any{
			KeyMessagingSystem: "imwatch", KeyOperationType: "process", KeyMessageID: "m1", KeyClientMsgID: "c1",
			KeyConversationID: "d=alice=bob", KeyDestination: "im.logic.send", KeyUser: "alice", KeyRecipient: "bob",
			KeySeq: int64(7), KeyRecipientCount: int64(3), KeyProbe: true}, nil},
		{"producer sends", trace.SpanKindProducer, Message{ID: "m2"}, map[attribute.Key]any{
			KeyOperationType: "send", KeyMessageID: "m2", KeyProbe: false},
			[]attribute.Key{KeySeq, KeyRecipientCount, KeyUser, KeyConversationID}},
		{"consumer processes", trace.SpanKindConsumer, Message{}, map[attribute.Key]any{KeyOperationType: "process"}, nil},
		{"client sends", trace.SpanKindClient, Message{}, map[attribute.Key]any{KeyOperationType: "send"}, nil},
		{"internal has no operation", trace.SpanKindInternal, Message{}, map[attribute.Key]any{KeyMessagingSystem: "imwatch"},
			[]attribute.Key{KeyOperationType}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, rec := newTestTracer(t, Config{Ratio: 1, Instance: "gw-1"})
			sp := tr.Start(trace.SpanContext{}, SpanLogicHandle, c.kind, c.msg)
			sp.End()
			sp.End() // a second End does nothing
			ended := rec.Ended()
			if len(ended) != 1 {
				t.Fatalf("%d spans ended, want 1", len(ended))
			}
			s := ended[0]
			if s.Name() != SpanLogicHandle || s.SpanKind() != c.kind || s.Status().Code != codes.Unset {
				t.Errorf("name %q kind %v status %v", s.Name(), s.SpanKind(), s.Status())
			}
			if !s.EndTime().After(s.StartTime()) && !s.EndTime().Equal(s.StartTime()) {
				t.Errorf("end %v before start %v", s.EndTime(), s.StartTime())
			}
			got := attrs(s)
			for k, v := range c.want {
				if g, ok := got[k]; !ok || g.AsInterface() != v {
					t.Errorf("%s = %v, want %v", k, g.AsInterface(), v)
				}
			}
			for _, k := range c.none {
				if _, ok := got[k]; ok {
					t.Errorf("%s set for an empty field", k)
				}
			}
			res := map[attribute.Key]string{}
			for _, a := range s.Resource().Attributes() {
				res[a.Key] = a.Value.Emit()
			}
			if res[semconv.ServiceNameKey] != "test" || res[semconv.ServiceInstanceIDKey] != "gw-1" {
				t.Errorf("resource %v", res)
			}
			if s.InstrumentationScope().Name != ScopeName {
				t.Errorf("scope %v", s.InstrumentationScope())
			}
		})
	}
}

func TestMessageLearnedOnTheWay(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 1})
	sp := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{User: "alice"})
	sp.SetStored("m9", "", 42)
	sp.End()
	got := attrs(rec.Ended()[0])
	if got[KeyMessageID].AsString() != "m9" || got[KeySeq].AsInt64() != 42 {
		t.Errorf("attributes %v", got)
	}
}

// hops is a message's path through three processes, each with its own
// tracer: the context travels as a frame field and as NATS headers.
func runHops(t *testing.T, trs [3]*Tracer, m Message) (root trace.SpanContext, sampled [3]bool) {
	t.Helper()
	send := trs[0].Start(trace.SpanContext{}, SpanClientSend, trace.SpanKindProducer, m)
	f := frame{}
	send.Inject(Field(&f.Trace))
	gw := trs[1].Start(Parse(f.Trace), SpanGatewayReceive, trace.SpanKindServer, m)
	h := map[string][]string{}
	gw.Inject(HeaderCarrier(h))
	lg := trs[2].Start(ParseHeader(h), SpanLogicHandle, trace.SpanKindServer, m)
	sampled = [3]bool{send.Sampled(), gw.Sampled(), lg.Sampled()}
	lg.End()
	gw.End()
	send.End()
	return send.SpanContext(), sampled
}

func TestSamplingKeepsTracesWhole(t *testing.T) {
	const n = 10000
	for _, ratio := range []float64{0, 0.01, 0.1, 0.5, 1} {
		t.Run(fmt.Sprint(ratio), func(t *testing.T) {
			var trs [3]*Tracer
			var recs [3]*tracetest.SpanRecorder
			for i := range trs {
				trs[i], recs[i] = newTestTracer(t, Config{Ratio: ratio, TailBuffer: 8})
			}
			sdkSampler := Sampler(ratio)
			kept := map[trace.TraceID]bool{}
			for i := 0; i < n; i++ {
				root, s := runHops(t, trs, Message{})
				if s[0] != s[1] || s[1] != s[2] {
					t.Fatalf("trace %s: hops decided %v", root.TraceID(), s)
				}
				// The SDK's ParentBased(TraceIDRatioBased) decides the same for the root.
				res := sdkSampler.ShouldSample(sdktrace.SamplingParameters{ParentContext: context.Background(), TraceID: root.TraceID()})
				if (res.Decision == sdktrace.RecordAndSample) != s[0] {
					t.Fatalf("trace %s: package says %v, SDK sampler %v", root.TraceID(), s[0], res.Decision)
				}
				kept[root.TraceID()] = s[0]
			}
			sampledN := 0
			for _, k := range kept {
				if k {
					sampledN++
				}
			}
			// Binomial bounds: the mean within 5 standard deviations.
			sd := math.Sqrt(n * ratio * (1 - ratio))
			if lo, hi := n*ratio-5*sd-0.5, n*ratio+5*sd+0.5; float64(sampledN) < lo || float64(sampledN) > hi {
				t.Errorf("%d of %d traces sampled at ratio %v, want within [%.0f, %.0f]", sampledN, n, ratio, lo, hi)
			}
			// Each process exported exactly the spans of the sampled traces.
			for i, rec := range recs {
				got := 0
				for _, s := range rec.Ended() {
					if !kept[s.SpanContext().TraceID()] {
						t.Fatalf("process %d exported a span of unsampled trace %s", i, s.SpanContext().TraceID())
					}
					got++
				}
				if got != sampledN {
					t.Errorf("process %d exported %d spans, want %d", i, got, sampledN)
				}
			}
		})
	}
}

func TestProbeAlwaysSampled(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0})
	unsampledParent := Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
	cases := []struct {
		name   string
		parent trace.SpanContext
		probe  bool
		want   bool
	}{
		{"probe root", trace.SpanContext{}, true, true},
		{"probe under unsampled parent", unsampledParent, true, true},
		{"plain root", trace.SpanContext{}, false, false},
		{"plain under unsampled parent", unsampledParent, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(rec.Ended())
			sp := tr.Start(c.parent, SpanProbeRound, trace.SpanKindInternal, Message{Probe: c.probe})
			if sp.Sampled() != c.want || sp.SpanContext().IsSampled() != c.want {
				t.Fatalf("sampled %v, want %v", sp.Sampled(), c.want)
			}
			if c.want && !strings.HasSuffix(sp.Traceparent(), "-01") {
				t.Errorf("traceparent %q does not say sampled", sp.Traceparent())
			}
			sp.End()
			if exported := len(rec.Ended()) > before; exported != c.want {
				t.Errorf("exported %v, want %v", exported, c.want)
			}
			// The SDK sampler for Provider's spans agrees.
			res := Sampler(0).ShouldSample(sdktrace.SamplingParameters{
				ParentContext: trace.ContextWithRemoteSpanContext(context.Background(), c.parent),
				TraceID:       sp.SpanContext().TraceID(), Attributes: []attribute.KeyValue{KeyProbe.Bool(c.probe)}})
			if (res.Decision == sdktrace.RecordAndSample) != c.want {
				t.Errorf("SDK sampler decided %v", res.Decision)
			}
		})
	}
}

func spanNames(spans []sdktrace.ReadOnlySpan, tid trace.TraceID) []string {
	var n []string
	for _, s := range spans {
		if s.SpanContext().TraceID() == tid {
			n = append(n, s.Name())
		}
	}
	return n
}

func TestErrorPromotesTrace(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0})
	// An unrelated unsampled trace: must stay unexported.
	other := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{})
	other.End()

	remote := Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
	handle := tr.Start(remote, SpanLogicHandle, trace.SpanKindServer, Message{ID: "m1"})
	store := tr.Start(handle.SpanContext(), SpanStoreAppend, trace.SpanKindProducer, Message{ID: "m1"})
	store.End() // fine: buffered
	if len(rec.Ended()) != 0 {
		t.Fatalf("an unsampled span was exported: %v", spanNames(rec.Ended(), handle.SpanContext().TraceID()))
	}
	if strings.HasSuffix(handle.Traceparent(), "-01") {
		t.Fatal("unsampled span says sampled before any error")
	}
	handle.SetError(errors.New("store unavailable"))
	handle.End()
	tid := handle.SpanContext().TraceID()
	if got := spanNames(rec.Ended(), tid); strings.Join(got, ",") != SpanStoreAppend+","+SpanLogicHandle {
		t.Fatalf("exported %v, want store append then logic handle", got)
	}
	// A later span of the promoted trace in this process is kept, and the
	// context it passes on says sampled so that the next hops keep theirs.
	// (The ack's parent comes from another process, unsampled.)
	ack := tr.Start(remote, SpanLogicAck, trace.SpanKindConsumer, Message{})
	if !strings.HasSuffix(ack.Traceparent(), "-01") {
		t.Errorf("traceparent of a span of a promoted trace: %q", ack.Traceparent())
	}
	ack.End()
	if got := spanNames(rec.Ended(), tid); len(got) != 3 {
		t.Errorf("exported %v, want the ack too", got)
	}
	if got := spanNames(rec.Ended(), other.SpanContext().TraceID()); len(got) != 0 {
		t.Errorf("unrelated trace exported: %v", got)
	}
	for _, s := range rec.Ended() {
		if !s.SpanContext().IsSampled() {
			t.Errorf("%s exported without the sampled flag", s.Name())
		}
		if s.Parent().SpanID() == (trace.SpanID{}) {
			t.Errorf("%s lost its parent", s.Name())
		}
	}
	failed := rec.Ended()[1]
	if failed.Status().Code != codes.Error || failed.Status().Description != "store unavailable" {
		t.Errorf("status %v", failed.Status())
	}
	if ev := failed.Events(); len(ev) != 1 || ev[0].Name != semconv.ExceptionEventName {
		t.Fatalf("events %v", ev)
	}
	ev := map[attribute.Key]string{}
	for _, a := range failed.Events()[0].Attributes {
		ev[a.Key] = a.Value.Emit()
	}
	if ev[semconv.ExceptionTypeKey] != "*errors.errorString" || ev[semconv.ExceptionMessageKey] != "store unavailable" {
		t.Errorf("exception event %v", ev)
	}
	if attrs(failed)[KeyKept].AsString() != KeptErr {
		t.Errorf("imwatch.kept = %v", attrs(failed)[KeyKept])
	}
	if st := tr.Stats(); st.Promoted != 3 || st.Unsampled != 4 || st.Sampled != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestEveryAttributeAtOnce: every Message field, an error code and the
// tail's imwatch.kept on one span: the record's attribute array holds them.
func TestEveryAttributeAtOnce(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0})
	sp := tr.Start(trace.SpanContext{}, SpanGatewayPush, trace.SpanKindConsumer, Message{ID: "m", ClientID: "c",
		Conv: "g=t", Dest: "gw-1", User: "u", Recipient: "r", Seq: 1, Recipients: 2, Attempt: 3}) // unsampled: kept by the tail
	sp.SetErrorCode("offline", "no target connected")
	sp.End()
	got := attrs(rec.Ended()[0])
	for _, k := range []attribute.Key{KeyMessagingSystem, KeyOperationType, KeyMessageID, KeyClientMsgID, KeyConversationID,
		KeyDestination, KeyUser, KeyRecipient, KeySeq, KeyRecipientCount, KeyAttempt, KeyProbe, KeyErrorType, KeyKept} {
		if _, ok := got[k]; !ok {
			t.Errorf("%s missing", k)
		}
	}
	if got[KeyAttempt].AsInt64() != 3 {
		t.Errorf("attempt %v", got[KeyAttempt])
	}
}

func TestErrorCode(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0})
	sp := tr.Start(trace.SpanContext{}, SpanGatewayReceive, trace.SpanKindServer, Message{})
	sp.SetErrorCode("unavailable", "no logic node answered")
	sp.End()
	s := rec.Ended()[0]
	if s.Status().Code != codes.Error || attrs(s)[KeyErrorType].AsString() != "unavailable" || len(s.Events()) != 0 {
		t.Errorf("status %v attrs %v events %v", s.Status(), attrs(s), s.Events())
	}
}

// TestErrorAndCode: SetError and SetErrorCode on one span add to each
// other: the exception event and error.type are both exported, the later
// message is the status.
func TestErrorAndCode(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 1})
	sp := tr.Start(trace.SpanContext{}, SpanGatewayReceive, trace.SpanKindServer, Message{})
	sp.SetError(errors.New("write: broken pipe"))
	sp.SetErrorCode("unavailable", "no logic node answered")
	sp.End()
	s := rec.Ended()[0]
	if s.Status().Description != "no logic node answered" || attrs(s)[KeyErrorType].AsString() != "unavailable" || len(s.Events()) != 1 {
		t.Errorf("status %v attrs %v events %v", s.Status(), attrs(s), s.Events())
	}
}

func TestSlowPromotesTrace(t *testing.T) {
	cases := []struct {
		name   string
		window time.Duration
		want   int // spans exported
	}{
		{"within window", time.Hour, 2},
		{"child already expired", time.Nanosecond, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, rec := newTestTracer(t, Config{Ratio: 0, Slow: 20 * time.Millisecond, TailWindow: c.window})
			parent := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{})
			child := tr.Start(parent.SpanContext(), SpanStoreAppend, trace.SpanKindProducer, Message{})
			child.End()
			imtestWaitAtLeast(20 * time.Millisecond)
			parent.End()
			got := rec.Ended()
			if len(got) != c.want {
				t.Fatalf("exported %d spans, want %d", len(got), c.want)
			}
			if last := got[len(got)-1]; last.Name() != SpanLogicHandle || attrs(last)[KeyKept].AsString() != KeptSlow {
				t.Errorf("last %s kept=%v", last.Name(), attrs(last)[KeyKept])
			}
		})
	}
}

// imtestWaitAtLeast waits until d has passed: the span under test must be
// slow, which only the passing of time can make it.
func imtestWaitAtLeast(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
		time.Sleep(d - time.Since(start))
	}
}

func TestTailBufferBoundedAndCounted(t *testing.T) {
	const n = 100
	tr, rec := newTestTracer(t, Config{Ratio: 0, TailBuffer: 2 * tailShards})
	parent := Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
	for i := 0; i < n; i++ {
		sp := tr.Start(parent, SpanGatewayPush, trace.SpanKindConsumer, Message{})
		sp.End()
	}
	// All share one trace, so one shard of two slots: the other 98 were pushed out.
	if st := tr.Stats(); st.TailDropped != n-2 || st.Unsampled != n {
		t.Fatalf("stats %+v, want %d dropped", st, n-2)
	}
	// A failure now promotes what is left: the two newest.
	sp := tr.Start(parent, SpanGatewayPush, trace.SpanKindConsumer, Message{})
	sp.SetErrorCode("slow_consumer", "closed")
	sp.End()
	if got := len(rec.Ended()); got != 3 {
		t.Errorf("exported %d spans, want 3", got)
	}
}

func TestFanoutLinks(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 1})
	fan := tr.Start(trace.SpanContext{}, SpanStoreAppend, trace.SpanKindProducer, Message{Recipients: 3})
	link := FanoutLink(fan.SpanContext(), 3)
	for _, gw := range []string{"gw-1", "gw-2"} {
		push := tr.StartLinked(fan.SpanContext(), SpanGatewayPush, trace.SpanKindConsumer, Message{Dest: gw}, []trace.Link{link})
		push.End()
	}
	fan.End()
	for _, s := range rec.Ended()[:2] {
		if s.SpanContext().TraceID() != fan.SpanContext().TraceID() {
			t.Errorf("push in another trace")
		}
		l := s.Links()
		if len(l) != 1 || l[0].SpanContext.SpanID() != fan.SpanContext().SpanID() ||
			len(l[0].Attributes) != 1 || l[0].Attributes[0] != KeyRecipientCount.Int(3) {
			t.Errorf("links %+v", l)
		}
	}
}

func TestDisabledPassesContextOn(t *testing.T) {
	off, err := New(Config{Disabled: true})
	if err != nil || off != nil {
		t.Fatalf("New(disabled) = %v, %v", off, err)
	}
	for _, in := range []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "not a traceparent", ""} {
		f := frame{Trace: in}
		parent := Parse(f.Trace)
		sp := off.Start(parent, SpanGatewayReceive, trace.SpanKindServer, Message{})
		out := frame{Trace: f.Trace} // the hop copies the field on, as the IM does
		sp.Inject(Field(&out.Trace))
		sp.SetError(errors.New("x"))
		sp.End()
		if out.Trace != in || !sp.SpanContext().Equal(parent) || sp.Sampled() {
			t.Errorf("disabled hop changed %q to %q", in, out.Trace)
		}
	}
	if off.Stats() != (Stats{}) || off.Shutdown(context.Background()) != nil || off.ForceFlush(context.Background()) != nil {
		t.Error("nil tracer methods")
	}
	var zero Span
	zero.End()
	_, s := off.Provider().Tracer("x").Start(context.Background(), "y")
	if s.IsRecording() {
		t.Error("provider of a disabled tracer records")
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want string // in the error; "" = valid
	}{
		{"ok", Config{Service: "s", Endpoint: "http://127.0.0.1:7070/v1/traces", Ratio: 0.5}, ""},
		{"disabled needs nothing", Config{Disabled: true}, ""},
		{"no service", Config{Endpoint: "http://127.0.0.1:1/v1/traces"}, "service"},
		{"ratio over 1", Config{Service: "s", Endpoint: "http://127.0.0.1:1/v1/traces", Ratio: 1.5}, "ratio"},
		{"ratio NaN", Config{Service: "s", Endpoint: "http://127.0.0.1:1/v1/traces", Ratio: math.NaN()}, "ratio"},
		{"no endpoint", Config{Service: "s"}, "endpoint"},
		{"bad endpoint", Config{Service: "s", Endpoint: "127.0.0.1:7070"}, "endpoint"},
		{"both", Config{Service: "s", Endpoint: "http://x/v1/traces", Processor: discardProcessor{}}, "both"},
		{"negative queue", Config{Service: "s", Endpoint: "http://x/v1/traces", QueueSize: -1}, "queue_size"},
		{"no compression", Config{Service: "s", Endpoint: "http://x/v1/traces", Compression: "none"}, ""},
		{"bad compression", Config{Service: "s", Endpoint: "http://x/v1/traces", Compression: "zstd"}, "compression"},
		{"auto compression", Config{Service: "s", Endpoint: "http://x/v1/traces", Compression: "auto"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.Validate()
			if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Validate() = %v, want %q", err, c.want)
			}
			if _, nerr := New(c.cfg); (nerr == nil) != (c.want == "") {
				t.Errorf("New() = %v", nerr)
			}
		})
	}
}

// TestUnsampledSpanDoesNotAllocate: once the tail ring is full (its first
// TailBuffer spans' data is allocated as they arrive, and kept), an
// unsampled span reuses the data of the one it pushes out.
func TestUnsampledSpanDoesNotAllocate(t *testing.T) {
	if raceOn {
		t.Skip("sync.Pool drops items under the race detector; the allocation count is checked without -race")
	}
	tr, _ := newTestTracer(t, Config{Ratio: 0, TailBuffer: 256})
	span := func() {
		sp := tr.Start(benchUnsampled, SpanLogicHandle, trace.SpanKindServer, benchMsg)
		sp.End()
	}
	for range 1024 { // fill the ring
		span()
	}
	// Counted in total, not per run as testing.AllocsPerRun does (rounding
	// down): a few may come from the pool losing its items at a GC.
	if n := totalAllocs(10000, span); n > 10 {
		t.Errorf("10,000 unsampled spans allocated %d times", n)
	}
}

// totalAllocs is the number of heap allocations of runs calls of f, on one P.
func totalAllocs(runs int, f func()) uint64 {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	f()
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&b)
	return b.Mallocs - a.Mallocs
}

func TestTailOff(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0, TailBuffer: -1, Slow: time.Nanosecond})
	sp := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{})
	sp.SetErrorCode("unavailable", "x")
	sp.End()
	probe := tr.Start(trace.SpanContext{}, SpanProbeRound, trace.SpanKindInternal, Message{Probe: true})
	probe.End()
	if got := rec.Ended(); len(got) != 1 || got[0].Name() != SpanProbeRound || got[0].EndTime().Before(got[0].StartTime()) {
		t.Fatalf("with the tail off, exported %v", got)
	}
	// An unsampled span that records nothing passes its parent's context
	// on, as an untraced hop does; a new trace still gets ids of its own.
	child := tr.Start(benchUnsampled, SpanLogicHandle, trace.SpanKindServer, benchMsg)
	if !child.SpanContext().Equal(benchUnsampled) || child.Traceparent() != Format(benchUnsampled) {
		t.Errorf("head-only unsampled span passes on %v, want its parent's %v", child.SpanContext(), benchUnsampled)
	}
	child.End()
	if !sp.SpanContext().IsValid() {
		t.Errorf("a new unsampled trace has no valid context: %v", sp.SpanContext())
	}
	if n := testing.AllocsPerRun(1000, func() {
		sp := tr.Start(benchUnsampled, SpanLogicHandle, trace.SpanKindServer, benchMsg)
		sp.End()
	}); n != 0 {
		t.Errorf("an unsampled span allocates %v times", n)
	}
}

// TestGivenTimes: a span given its times by the hop (StartAt, EndAt) is
// exported with exactly those times, decides slowness by them, and an end
// before the start is taken as the start.
func TestGivenTimes(t *testing.T) {
	t0 := time.Now()
	cases := []struct {
		name     string
		parent   trace.SpanContext
		end      time.Time
		wantEnd  time.Time
		wantKept string
	}{
		{"sampled", benchSampled, t0.Add(3 * time.Millisecond), t0.Add(3 * time.Millisecond), ""},
		{"unsampled and slow by its given times", benchUnsampled, t0.Add(time.Second), t0.Add(time.Second), KeptSlow},
		{"end before start", benchSampled, t0.Add(-time.Second), t0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, rec := newTestTracer(t, Config{Ratio: 0, Slow: 500 * time.Millisecond})
			sp := tr.StartAt(c.parent, SpanGatewayPush, trace.SpanKindConsumer, Message{ID: "m1"}, t0)
			sp.EndAt(c.end)
			got := rec.Ended()
			if len(got) != 1 {
				t.Fatalf("exported %d spans, want 1", len(got))
			}
			s := got[0]
			if d := s.StartTime().Sub(t0); d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("start %v, want %v", s.StartTime(), t0)
			}
			if d := s.EndTime().Sub(c.wantEnd); d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("end %v, want %v", s.EndTime(), c.wantEnd)
			}
			if k := attrs(s)[KeyKept].AsString(); k != c.wantKept {
				t.Errorf("imwatch.kept %q, want %q", k, c.wantKept)
			}
		})
	}
	// Given times, a sampled linked span also keeps its links.
	tr, rec := newTestTracer(t, Config{Ratio: 1})
	sp := tr.StartLinkedAt(trace.SpanContext{}, SpanGatewayPush, trace.SpanKindConsumer, Message{}, []trace.Link{FanoutLink(benchSampled, 3)}, t0)
	sp.EndAt(t0)
	if got := rec.Ended(); len(got) != 1 || len(got[0].Links()) != 1 || !got[0].EndTime().Equal(got[0].StartTime()) {
		t.Fatalf("linked span given its times: %v", got)
	}
}

// TestSampledSpanAllocations: a sampled span into the pooled records of the
// package's exporter allocates nothing on the hop's side, and the export
// side's reading (which builds the attributes) nothing either; the goal
// allows two.
func TestSampledSpanAllocations(t *testing.T) {
	for _, c := range []struct {
		name string
		p    sdktrace.SpanProcessor
	}{{"hop side", discardProcessor{recycle: true}}, {"with the export side", readingProcessor{}}} {
		t.Run(c.name, func(t *testing.T) {
			tr, err := New(Config{Service: "test", Processor: c.p, Ratio: 1})
			if err != nil {
				t.Fatal(err)
			}
			tr.recycle = true
			if raceOn {
				t.Skip("sync.Pool drops items under the race detector; the allocation count is checked without -race")
			}
			if n := testing.AllocsPerRun(1000, func() {
				sp := tr.Start(benchSampled, SpanLogicHandle, trace.SpanKindServer, benchMsg)
				sp.End()
			}); n > 0 {
				t.Errorf("a sampled span allocates %v times", n)
			}
		})
	}
}

// TestPromotionsBounded: past MaxPromotions traces in a second, a failed
// unsampled span stays unsampled and is counted; the next second has a new
// budget.
func TestPromotionsBounded(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0, MaxPromotions: 3})
	at := time.Now()
	fail := func(end time.Time) {
		sp := tr.StartAt(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{}, end)
		sp.SetErrorCode("unavailable", "no logic node answered")
		sp.EndAt(end)
	}
	for range 10 {
		fail(at)
	}
	if n, st := len(rec.Ended()), tr.Stats(); n != 3 || st.Promoted != 3 || st.PromotionsRefused != 7 {
		t.Fatalf("in one second: %d exported, stats %+v; want 3 promoted and 7 refused", n, st)
	}
	fail(at.Add(time.Second))
	if n := len(rec.Ended()); n != 4 {
		t.Fatalf("the next second: %d exported, want 4", n)
	}
	unbounded, rec2 := newTestTracer(t, Config{Ratio: 0, MaxPromotions: -1})
	for range 10 {
		sp := unbounded.StartAt(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{}, at)
		sp.SetErrorCode("unavailable", "x")
		sp.EndAt(at)
	}
	if n := len(rec2.Ended()); n != 10 {
		t.Fatalf("MaxPromotions -1: %d exported, want 10", n)
	}
}

// TestReusedSpanDataStartsClean: an unsampled span's data is pooled and
// reused; a span that reuses a failed, promoted one's must not inherit its
// error, exception or imwatch.kept.
func TestReusedSpanDataStartsClean(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0, MaxPromotions: -1})
	for i := range 50 {
		bad := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{ID: "bad"})
		bad.SetError(errors.New("boom"))
		bad.End() // promoted and exported: its data goes back to the pool
		fine := tr.Start(trace.SpanContext{}, SpanStoreAppend, trace.SpanKindProducer, Message{ID: "fine"})
		fine.End() // buffered
		sib := tr.Start(fine.SpanContext(), SpanLogicAck, trace.SpanKindConsumer, Message{ID: "sib"})
		sib.SetErrorCode("timeout", "no ack")
		sib.End() // promotes fine's trace
		got := rec.Ended()
		var found bool
		for _, s := range got {
			if s.SpanContext().SpanID() != fine.SpanContext().SpanID() {
				continue
			}
			found = true
			if s.Status().Code != codes.Unset || len(s.Events()) != 0 || attrs(s)[KeyKept].AsString() != "" ||
				attrs(s)[KeyErrorType].AsString() != "" || attrs(s)[KeyMessageID].AsString() != "fine" {
				t.Fatalf("round %d: the buffered span came out as %v, events %v, attributes %v", i, s.Status(), s.Events(), s.Attributes())
			}
		}
		if !found {
			t.Fatalf("round %d: the buffered span of the promoted trace was not exported", i)
		}
	}
}

// TestConcurrentTail: hops on many goroutines end unsampled spans, some
// failed, into one tail buffer; under -race this checks the pooled data's
// hand-over, and every span is counted once.
func TestConcurrentTail(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 0, MaxPromotions: -1, TailBuffer: 64})
	const workers, per = 4, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				root := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{ID: "m"})
				child := tr.Start(root.SpanContext(), SpanStoreAppend, trace.SpanKindProducer, Message{ID: "m"})
				child.End()
				if (i+w)%50 == 0 {
					root.SetError(errors.New("boom"))
				}
				root.End()
			}
		}()
	}
	wg.Wait()
	st := tr.Stats()
	if st.Unsampled != 2*workers*per {
		t.Errorf("unsampled %d, want %d", st.Unsampled, 2*workers*per)
	}
	failed := workers * per / 50
	if st.Promoted < uint64(failed) || st.Promoted > uint64(2*failed) || len(rec.Ended()) != int(st.Promoted) {
		t.Errorf("promoted %d, exported %d; want %d to %d", st.Promoted, len(rec.Ended()), failed, 2*failed)
	}
}

func TestCompressionAuto(t *testing.T) {
	for _, c := range []struct {
		setting, endpoint string
		gzip              bool
	}{
		{"", "http://127.0.0.1:7070/v1/traces", false},
		{"auto", "http://127.9.9.9:7070/v1/traces", false},
		{"auto", "http://[::1]:7070/v1/traces", false},
		{"auto", "http://localhost:7070/v1/traces", false},
		{"auto", "http://LOCALHOST./v1/traces", false},
		{"auto", "http://[::ffff:127.0.0.1]:7070/v1/traces", false},
		{"auto", "http://center.example:7070/v1/traces", true},
		{"auto", "https://10.1.2.3/v1/traces", true},
		{"gzip", "http://127.0.0.1:7070/v1/traces", true},
		{"none", "http://center.example/v1/traces", false},
	} {
		if got := gzipTo(c.setting, c.endpoint); got != c.gzip {
			t.Errorf("gzipTo(%q, %q) = %v, want %v", c.setting, c.endpoint, got, c.gzip)
		}
	}
}

// TestTailHandOverUnderRace: with one ring slot per shard every put pushes
// the previous span out to the pool at once, so a put that still read its
// own span after unlocking would race with the span's next owner (-race
// finds it; make test runs this package under -race). The drops are counted
// exactly: every put but the first of each shard pushes one out within the
// window.
func TestTailHandOverUnderRace(t *testing.T) {
	tr, _ := newTestTracer(t, Config{Ratio: 0, TailBuffer: tailShards})
	const workers, per = 8, 20000
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				sp := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, Message{ID: "m"})
				sp.End()
			}
		}()
	}
	wg.Wait()
	st := tr.Stats()
	if st.Unsampled != workers*per {
		t.Errorf("unsampled %d, want %d", st.Unsampled, workers*per)
	}
	if st.TailDropped < workers*per-tailShards || st.TailDropped > workers*per {
		t.Errorf("tail dropped %d, want %d to %d", st.TailDropped, workers*per-tailShards, workers*per)
	}
}

// TestPause: a paused tracer's spans record nothing, pass their parent's
// context on and leave carriers as they were, even probes and failures; a
// span started before the pause ends as usual, and spans record again once
// the pause ends.
func TestPause(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 1, Slow: time.Nanosecond})
	before := tr.Start(benchSampled, SpanLogicHandle, trace.SpanKindServer, benchMsg)
	tr.Pause(true)
	for _, m := range []Message{benchMsg, {Probe: true}} {
		sp := tr.Start(benchSampled, SpanLogicHandle, trace.SpanKindServer, m)
		if !sp.SpanContext().Equal(benchSampled) {
			t.Errorf("paused span's context %v, want its parent's %v", sp.SpanContext(), benchSampled)
		}
		carrier := "unchanged"
		sp.Inject(Field(&carrier))
		if carrier != "unchanged" {
			t.Errorf("paused span injected %q", carrier)
		}
		sp.SetErrorCode("unavailable", "x")
		sp.End()
	}
	before.End()
	if got := rec.Ended(); len(got) != 1 || got[0].SpanContext().Equal(benchSampled) {
		t.Fatalf("while paused, exported %d spans, want only the one started before", len(got))
	}
	tr.Pause(false)
	sp := tr.Start(benchSampled, SpanLogicHandle, trace.SpanKindServer, benchMsg)
	sp.End()
	if got := rec.Ended(); len(got) != 2 {
		t.Fatalf("after the pause, %d spans exported, want 2", len(got))
	}
	var nilTracer *Tracer
	nilTracer.Pause(true) // does nothing, and does not panic
}
