package imtrace

import (
	"testing"

	"go.opentelemetry.io/otel/trace"
)

// FuzzParse checks the traceparent extraction path: Parse must agree with
// the SDK's propagation.TraceContext on every input (accept the same, read
// the same ids and flags), never panic, and a span started from whatever it
// returns must be a valid span of the parent's trace or of a new one.
func FuzzParse(f *testing.F) {
	f.Add("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	f.Add("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-x")
	f.Add("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01")
	f.Add("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	f.Add("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09")
	for _, s := range badTraceparents {
		f.Add(s)
	}
	tr, err := New(Config{Service: "fuzz", Processor: discardProcessor{}, Ratio: 0.5, Slow: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Parse(s)
		want := Extract(Field(&s))
		if got.IsValid() != want.IsValid() || got.TraceID() != want.TraceID() || got.SpanID() != want.SpanID() ||
			got.TraceFlags() != want.TraceFlags() {
			t.Fatalf("Parse(%q) = %v, the SDK read %v", s, got, want)
		}
		if got.IsValid() && s[:2] == "00" && len(s) == 55 && Format(got) != s {
			t.Fatalf("Format(Parse(%q)) = %q", s, Format(got))
		}
		// The fixed-layout fast path reads what the general one does.
		if len(s) == 55 && s[2] == '-' && s[35] == '-' && s[52] == '-' {
			var fa, ga trace.SpanContextConfig
			fok, gok := parseFixed(s, &fa), parseGeneral(s, &ga)
			if fok != gok || (fok && (fa.TraceID != ga.TraceID || fa.SpanID != ga.SpanID || fa.TraceFlags != ga.TraceFlags)) {
				t.Fatalf("%q: fast path %v %+v, general %v %+v", s, fok, fa, gok, ga)
			}
		}
		sp := tr.Start(got, SpanLogicHandle, trace.SpanKindServer, Message{})
		sc := sp.SpanContext()
		sp.End()
		if !sc.IsValid() || (got.IsValid() && sc.TraceID() != got.TraceID()) {
			t.Fatalf("span from %q has context %v", s, sc)
		}
	})
}
