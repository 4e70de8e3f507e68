package imtrace

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// frame stands for any IM struct with a traceparent string field.
type frame struct{ Trace string }

func TestContextRoundTrip(t *testing.T) {
	ts, err := trace.ParseTraceState("imw=1,other=x")
	if err != nil {
		t.Fatal(err)
	}
	type carrierCase struct {
		name      string
		carrier   func() propagation.TextMapCarrier
		read      func(c propagation.TextMapCarrier) trace.SpanContext // the package's fast path
		keepState bool
	}
	cases := []carrierCase{
		{"frame field", func() propagation.TextMapCarrier { return Field(new(frame).tracePtr()) },
			func(c propagation.TextMapCarrier) trace.SpanContext { return Parse(string(*c.(*TraceField))) }, false},
		{"two fields", func() propagation.TextMapCarrier { return Fields{new(string), new(string)} },
			func(c propagation.TextMapCarrier) trace.SpanContext {
				f := c.(Fields)
				return ParseWithState(*f.Traceparent, *f.Tracestate)
			}, true},
		{"nats header", func() propagation.TextMapCarrier { return HeaderCarrier(nats.Header{}) },
			func(c propagation.TextMapCarrier) trace.SpanContext {
				return ParseHeader(nats.Header(c.(HeaderCarrier)))
			}, true},
	}
	for _, sampled := range []bool{true, false} {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				tr, _ := newTestTracer(t, Config{Ratio: 0})
				parent := Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").WithTraceState(ts)
				if sampled {
					parent = parent.WithTraceFlags(trace.FlagsSampled)
				}
				sp := tr.Start(parent, SpanGatewayReceive, trace.SpanKindServer, Message{})
				defer sp.End()
				want := sp.SpanContext()

				// The package's own Inject, read by its fast path and by the SDK's propagator.
				carrier := c.carrier()
				sp.Inject(carrier)
				for _, got := range []trace.SpanContext{c.read(carrier), Extract(carrier)} {
					checkSameContext(t, got, want, c.keepState)
				}
				// The SDK's propagator writing, the package reading.
				carrier = c.carrier()
				InjectContext(sp.Context(context.Background()), carrier)
				checkSameContext(t, c.read(carrier), want, c.keepState)
			})
		}
	}
}

func (f *frame) tracePtr() *string { return &f.Trace }

func checkSameContext(t *testing.T, got, want trace.SpanContext, keepState bool) {
	t.Helper()
	if got.TraceID() != want.TraceID() || got.SpanID() != want.SpanID() || got.TraceFlags() != want.TraceFlags() {
		t.Fatalf("context %s/%s/%s, want %s/%s/%s", got.TraceID(), got.SpanID(), got.TraceFlags(),
			want.TraceID(), want.SpanID(), want.TraceFlags())
	}
	if !got.IsRemote() {
		t.Errorf("extracted context is not remote")
	}
	if keepState && got.TraceState().String() != want.TraceState().String() {
		t.Errorf("tracestate %q, want %q", got.TraceState().String(), want.TraceState().String())
	}
}

func TestHeaderCarrierCase(t *testing.T) {
	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	for _, key := range []string{"traceparent", "Traceparent", "TRACEPARENT"} {
		sc := ParseHeader(nats.Header{key: []string{tp}})
		if Format(sc) != tp {
			t.Errorf("header %q: got %q", key, Format(sc))
		}
	}
	if ParseHeader(nil).IsValid() {
		t.Error("nil header gave a valid context")
	}
}

// badTraceparents are forged or malformed: each must be ignored.
var badTraceparents = []string{
	"",
	"garbage",
	"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",          // no flags
	"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", // version 00 has four fields
	"00-00000000000000000000000000000000-b7ad6b7169203331-01",       // zero trace id
	"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",       // zero span id
	"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",       // upper case
	"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",       // version ff
	"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-04",       // reserved flag in version 00
	"00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",         // short trace id
	"00-0af7651916cd43dd8448eb211c80319cxx-b7ad6b7169203331-01",     // long trace id
	"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",       // not hex
	"0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",        // short version
	"00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",       // wrong separator
	"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\x00",   // trailing NUL
	strings.Repeat("00-", 1000),                                     // long junk
	"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0\u00e9",  // non-ASCII
	"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01extra",  // later version, bad flags field
}

func TestMalformedTraceparentStartsNewTrace(t *testing.T) {
	tr, rec := newTestTracer(t, Config{Ratio: 1})
	for _, tp := range badTraceparents {
		t.Run(tp, func(t *testing.T) {
			f := frame{Trace: tp}
			if sc := Parse(f.Trace); sc.IsValid() {
				t.Fatalf("Parse accepted %q: %v", tp, sc)
			}
			if sc := Extract(Field(&f.Trace)); sc.IsValid() {
				t.Fatalf("the SDK's propagator accepted %q", tp)
			}
			sp := tr.Start(Parse(f.Trace), SpanGatewayReceive, trace.SpanKindServer, Message{})
			sp.End()
			got := rec.Ended()[len(rec.Ended())-1]
			if got.Parent().IsValid() {
				t.Errorf("span has parent %v from %q", got.Parent(), tp)
			}
			if !got.SpanContext().IsValid() || strings.Contains(tp, got.SpanContext().TraceID().String()) {
				t.Errorf("span did not start a new trace: %v", got.SpanContext())
			}
		})
	}
}

func TestLaterVersionAccepted(t *testing.T) {
	// W3C: a parser of version 00 accepts a later version's first four fields.
	sc := Parse("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-whatever")
	if !sc.IsValid() || !sc.IsSampled() || sc.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("later version not accepted: %v", sc)
	}
	if got := Format(sc); got != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Errorf("Format = %q", got)
	}
}

func TestFieldCarrierDropsTracestate(t *testing.T) {
	var s string
	c := Field(&s)
	c.Set(HeaderTracestate, "a=b")
	if s != "" || c.Get(HeaderTracestate) != "" || len(c.Keys()) != 0 {
		t.Fatalf("tracestate stored in a traceparent field: %q", s)
	}
	c.Set(HeaderTraceparent, "x")
	if s != "x" || len(c.Keys()) != 1 {
		t.Fatalf("traceparent not stored: %q", s)
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	if n := testing.AllocsPerRun(100, func() { _ = Parse(tp) }); n != 0 {
		t.Errorf("Parse allocates %v times", n)
	}
}
