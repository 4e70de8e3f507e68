package imtrace

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TraceField is a carrier over one string field that holds a traceparent, such
// as protocol.Frame.Trace or bus.StoredMessage.Trace: Field(&f.Trace). Such a
// field has no room for a tracestate, so Set drops it (use Fields when the
// struct has a second field for it). A *TraceField is pointer-shaped, so
// passing it as a propagation.TextMapCarrier does not allocate.
type TraceField string

// Field returns the carrier over the traceparent field p.
func Field(p *string) *TraceField { return (*TraceField)(p) }

// Get returns the traceparent for "traceparent" and "" for every other key.
func (f *TraceField) Get(key string) string {
	if key == HeaderTraceparent {
		return string(*f)
	}
	return ""
}

// Set stores a traceparent; other keys are dropped.
func (f *TraceField) Set(key, value string) {
	if key == HeaderTraceparent {
		*f = TraceField(value)
	}
}

// Keys lists the key the field holds.
func (f *TraceField) Keys() []string {
	if *f == "" {
		return nil
	}
	return []string{HeaderTraceparent}
}

// Fields is a carrier over two string fields, one for the traceparent and one
// for the tracestate; either pointer may be nil.
type Fields struct{ Traceparent, Tracestate *string }

// Get returns the traceparent or tracestate field.
func (f Fields) Get(key string) string {
	if p := f.field(key); p != nil {
		return *p
	}
	return ""
}

// Set stores the traceparent or tracestate; other keys are dropped.
func (f Fields) Set(key, value string) {
	if p := f.field(key); p != nil {
		*p = value
	}
}

// Keys lists the keys of the fields that are set.
func (f Fields) Keys() []string {
	var k []string
	for _, key := range [...]string{HeaderTraceparent, HeaderTracestate} {
		if f.Get(key) != "" {
			k = append(k, key)
		}
	}
	return k
}

func (f Fields) field(key string) *string {
	switch key {
	case HeaderTraceparent:
		return f.Traceparent
	case HeaderTracestate:
		return f.Tracestate
	}
	return nil
}

// HeaderCarrier is a carrier over NATS message headers: HeaderCarrier(m.Header).
// The header map must not be nil for Set (make one with nats.Header{}).
// nats.Header is a map, so the conversion does not allocate.
type HeaderCarrier nats.Header

// Get returns the first value of key. NATS headers are case-sensitive; the
// IM writes the lower-case W3C names (bus.HeaderTrace). A header written
// under another case ("Traceparent") is found too, by a case-insensitive scan
// that runs only when the exact name is absent.
func (h HeaderCarrier) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range h {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set replaces key's values with value, under the exact (lower-case) W3C
// name, which is what bus.HeaderTrace uses.
func (h HeaderCarrier) Set(key, value string) { h[key] = []string{value} }

// Keys lists the header names.
func (h HeaderCarrier) Keys() []string {
	k := make([]string, 0, len(h))
	for key := range h {
		k = append(k, key)
	}
	return k
}

// Propagator is the W3C trace context propagator the package uses; give it to
// otel.SetTextMapPropagator to make other OpenTelemetry code agree.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// Extract reads the W3C trace context from any carrier through the SDK's
// propagator. A missing, malformed or forged traceparent gives an invalid
// SpanContext: Start then begins a new trace. It allocates; hop code on the
// message path uses Parse or ParseHeader.
func Extract(c propagation.TextMapCarrier) trace.SpanContext {
	return trace.SpanContextFromContext(Propagator.Extract(context.Background(), c))
}

// InjectContext writes the span context in ctx into any carrier through the
// SDK's propagator; for spans of the package use Span.Inject.
func InjectContext(ctx context.Context, c propagation.TextMapCarrier) { Propagator.Inject(ctx, c) }

// Parse reads a traceparent without allocating; it accepts exactly what the
// SDK's propagation.TraceContext accepts (the fuzz test checks that) and
// returns an invalid SpanContext for anything else.
func Parse(traceparent string) trace.SpanContext {
	var scc trace.SpanContextConfig
	if !parseTraceparent(traceparent, &scc) {
		return trace.SpanContext{}
	}
	scc.Remote = true
	return trace.NewSpanContext(scc)
}

// ParseWithState is Parse plus a tracestate; a malformed tracestate is dropped
// without affecting the traceparent, as the W3C specification requires.
func ParseWithState(traceparent, tracestate string) trace.SpanContext {
	sc := Parse(traceparent)
	if sc.IsValid() && tracestate != "" {
		if ts, err := trace.ParseTraceState(tracestate); err == nil {
			sc = sc.WithTraceState(ts)
		}
	}
	return sc
}

// ParseHeader reads the trace context of a NATS message's headers.
func ParseHeader(h nats.Header) trace.SpanContext {
	if h == nil {
		return trace.SpanContext{}
	}
	hc := HeaderCarrier(h)
	return ParseWithState(hc.Get(HeaderTraceparent), hc.Get(HeaderTracestate))
}

const maxTraceVersion = 254

// parseTraceparent follows propagation.TraceContext.extract: version (two
// lower-case hex digits, not ff), trace id, span id and flags separated by
// '-'; version 00 has exactly these four fields and only the sampled and
// random flags; later versions may append fields after another '-'.
func parseTraceparent(h string, scc *trace.SpanContextConfig) bool {
	if h == "" {
		return false
	}
	if len(h) == 55 && h[2] == '-' && h[35] == '-' && h[52] == '-' {
		return parseFixed(h, scc) // every hop's: version 00, one table lookup per digit
	}
	return parseGeneral(h, scc)
}

// parseGeneral parses any traceparent: the version, then dash-separated
// hex parts; a version 00 one has nothing after its flags.
func parseGeneral(h string, scc *trace.SpanContextConfig) bool {
	var ver, flags [1]byte
	if !hexPart(ver[:], &h, 2) || ver[0] > maxTraceVersion {
		return false
	}
	if !hexPart(scc.TraceID[:], &h, 32) || !hexPart(scc.SpanID[:], &h, 16) || !hexPart(flags[:], &h, 2) {
		return false
	}
	if ver[0] == 0 && (h != "" || flags[0] > 3) {
		return false
	}
	scc.TraceFlags = trace.TraceFlags(flags[0]) & (trace.FlagsSampled | trace.FlagsRandom)
	return scc.TraceID.IsValid() && scc.SpanID.IsValid()
}

// parseFixed parses a traceparent of version 00's length and layout (the
// dashes checked by the caller), as parseTraceparent's general path would.
func parseFixed(h string, scc *trace.SpanContextConfig) bool {
	_ = h[54]
	ver, bad := unhex2(h[0], h[1]) // a digit that is not lower-case hex sets bad's high bit
	for i := range scc.TraceID {
		v, b := unhex2(h[3+2*i], h[4+2*i])
		scc.TraceID[i], bad = v, bad|b
	}
	for i := range scc.SpanID {
		v, b := unhex2(h[36+2*i], h[37+2*i])
		scc.SpanID[i], bad = v, bad|b
	}
	flags, b := unhex2(h[53], h[54])
	if (bad|b)&0x80 != 0 || ver > maxTraceVersion || (ver == 0 && flags > 3) {
		return false
	}
	scc.TraceFlags = trace.TraceFlags(flags) & (trace.FlagsSampled | trace.FlagsRandom)
	return scc.TraceID.IsValid() && scc.SpanID.IsValid()
}

// unhex2 is the byte of two hex digits, and their table entries or'ed
// together (high bit set: not both lower-case hex).
func unhex2(hi, lo byte) (v, bad byte) {
	h, l := unhexTable[hi], unhexTable[lo]
	return h<<4 | l&0x0f, h | l
}

// unhexTable maps a lower-case hex digit to its value and every other byte
// to 0x80.
var unhexTable = func() (t [256]byte) {
	for i := range t {
		v, ok := unhex(byte(i))
		if !ok {
			v = 0x80
		}
		t[i] = v
	}
	return t
}()

func hexPart(dst []byte, h *string, n int) bool {
	part, rest, _ := strings.Cut(*h, "-")
	*h = rest
	if len(part) != n {
		return false
	}
	for i := 0; i < n; i += 2 {
		hi, ok1 := unhex(part[i])
		lo, ok2 := unhex(part[i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i/2] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

const hexDigits = "0123456789abcdef"

// Format returns the version 00 traceparent of sc, or "" if sc is invalid.
func Format(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	tid, sid := sc.TraceID(), sc.SpanID()
	i := 3
	for _, c := range tid {
		b[i], b[i+1] = hexDigits[c>>4], hexDigits[c&0xf]
		i += 2
	}
	b[i] = '-'
	i++
	for _, c := range sid {
		b[i], b[i+1] = hexDigits[c>>4], hexDigits[c&0xf]
		i += 2
	}
	b[i] = '-'
	f := byte(sc.TraceFlags() & (trace.FlagsSampled | trace.FlagsRandom))
	b[i+1], b[i+2] = hexDigits[f>>4], hexDigits[f&0xf]
	return string(b[:])
}
