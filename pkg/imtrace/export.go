package imtrace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protowire"
)

// httpExporter sends spans over OTLP/HTTP (protobuf, gzip) like the SDK's
// otlptracehttp, but encodes the request itself, straight from the spans:
// the SDK's exporter converts each span into protobuf message structs
// (an allocation per span, attribute and value) and marshals those by
// reflection, which with gzip at its default level cost the IM a quarter of
// its throughput at 100% sampling. The bytes are the same protobuf
// (TestExporterMatchesSDK decodes both and compares); gzip runs at its
// fastest level.
type httpExporter struct {
	url     string
	client  *http.Client
	timeout time.Duration
	gzip    bool

	mu  sync.Mutex // one export at a time (the batch processor makes one anyway)
	buf []byte     // the request, reused
	rs  []byte     // one resource's scopes
	sc  []byte     // one scope's spans
	sp  []byte     // one span
	gz  *gzip.Writer
	zb  bytes.Buffer
}

func newHTTPExporter(url string, timeout time.Duration) *httpExporter {
	gz, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
	return &httpExporter{url: url, timeout: timeout, gz: gz, gzip: true, client: &http.Client{Timeout: timeout}}
}

// Retries of a refused or failed request: from retryInitial, doubling, to
// retryMax, until the export's deadline.
const (
	retryInitial = 100 * time.Millisecond
	retryMax     = 5 * time.Second
)

func (e *httpExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if len(spans) == 0 {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.buf = e.appendRequest(e.buf[:0], spans)
	body := e.buf
	if e.gzip {
		e.zb.Reset()
		e.gz.Reset(&e.zb)
		_, _ = e.gz.Write(e.buf)
		if err := e.gz.Close(); err != nil {
			return fmt.Errorf("otlp: gzip: %w", err)
		}
		body = e.zb.Bytes()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.timeout)
		defer cancel()
	}
	wait := retryInitial
	for {
		retry, after, err := e.post(ctx, body)
		if err == nil || !retry {
			return err
		}
		if after > 0 {
			wait = after
		}
		if dl, _ := ctx.Deadline(); time.Until(dl) < wait {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

// post sends one request; retry says whether it may be sent again (the
// receiver was unavailable or throttled, or the connection failed), after
// the receiver's Retry-After if it gave one.
func (e *httpExporter) post(ctx context.Context, body []byte) (retry bool, after time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(body))
	if err != nil {
		return false, 0, fmt.Errorf("otlp: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	if e.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	req.Header.Set("User-Agent", "imwatch-imtrace")
	resp, err := e.client.Do(req)
	if err != nil {
		return true, 0, fmt.Errorf("otlp: %w", err)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		return false, 0, nil
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusBadGateway,
		resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusGatewayTimeout:
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			after = time.Duration(s) * time.Second
		}
		return true, after, fmt.Errorf("otlp: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return false, 0, fmt.Errorf("otlp: %s: %s", resp.Status, bytes.TrimSpace(msg))
}

func (e *httpExporter) Shutdown(context.Context) error {
	e.client.CloseIdleConnections()
	return nil
}

// appendRequest appends the ExportTraceServiceRequest of spans: one
// ResourceSpans per resource, one ScopeSpans per scope in it, in the order
// they first appear.
func (e *httpExporter) appendRequest(b []byte, spans []sdktrace.ReadOnlySpan) []byte {
	type group struct {
		res   *resource.Resource
		scope instrumentation.Scope
	}
	var groups []group // few: one per tracer
	seen := func(g group) bool {
		for _, x := range groups {
			if x.res.Equal(g.res) && x.scope == g.scope {
				return true
			}
		}
		return false
	}
	for _, s := range spans {
		if g := (group{s.Resource(), s.InstrumentationScope()}); !seen(g) {
			groups = append(groups, g)
		}
	}
	done := make([]bool, len(groups))
	for i, g := range groups {
		if done[i] {
			continue
		}
		// ResourceSpans (field 1): resource, then every scope of it. The
		// buffers are the exporter's, reused from request to request: a
		// batch is hundreds of kilobytes.
		rs := appendMessage(e.rs[:0], 1, appendResource(nil, g.res))
		for j := i; j < len(groups); j++ {
			if done[j] || !groups[j].res.Equal(g.res) {
				continue
			}
			done[j] = true
			e.sc = e.appendScopeSpans(e.sc[:0], groups[j].res, groups[j].scope, spans)
			rs = appendMessage(rs, 2, e.sc)
		}
		if u := g.res.SchemaURL(); u != "" {
			rs = protowire.AppendTag(rs, 3, protowire.BytesType)
			rs = protowire.AppendString(rs, u)
		}
		b = appendMessage(b, 1, rs)
		e.rs = rs
	}
	return b
}

// appendScopeSpans appends the fields of the ScopeSpans of (res, scope).
func (e *httpExporter) appendScopeSpans(b []byte, res *resource.Resource, scope instrumentation.Scope, spans []sdktrace.ReadOnlySpan) []byte {
	if scope != (instrumentation.Scope{}) {
		var sb []byte
		sb = appendStr(sb, 1, scope.Name)
		sb = appendStr(sb, 2, scope.Version)
		for it := scope.Attributes.Iter(); it.Next(); {
			sb = appendKeyValue(sb, 3, it.Attribute())
		}
		b = appendMessage(b, 1, sb)
	}
	for _, s := range spans {
		if s.InstrumentationScope() != scope || !s.Resource().Equal(res) {
			continue
		}
		e.sp = appendSpan(e.sp[:0], s)
		b = appendMessage(b, 2, e.sp)
	}
	return appendStr(b, 3, scope.SchemaURL)
}

func appendResource(b []byte, r *resource.Resource) []byte {
	for it := r.Iter(); it.Next(); {
		b = appendKeyValue(b, 1, it.Attribute())
	}
	return b
}

// spanView is what appendSpan encodes of a span, with its attributes,
// events and links: what its ReadOnlySpan methods return. (Those three are
// passed apart, so that arrays on the caller's stack stay there.)
type spanView struct {
	sc, parent                                trace.SpanContext
	name                                      string
	kind                                      trace.SpanKind
	start, end                                time.Time
	status                                    sdktrace.Status
	droppedAttrs, droppedEvents, droppedLinks int
}

// appendSpan appends the fields of one Span message, as the SDK's
// exporter fills them. A hop span's record that nobody has read yet is
// encoded from its data directly, its attributes and event built on the
// stack: building them into the record first wrote a kilobyte per span into
// memory that the exporter then read back (TestDirectEncodingMatches).
func appendSpan(b []byte, s sdktrace.ReadOnlySpan) []byte {
	if r, ok := s.(*record); ok && !r.built.Load() && len(r.d.links) == 0 {
		d := &r.d
		var attrs [maxAttrs]attribute.KeyValue
		var ev [1]sdktrace.Event
		v := spanView{sc: d.sc, parent: d.parentContext(), name: d.name, kind: trace.SpanKind(d.kind),
			start: wallTime(d.start), end: wallTime(d.end), status: r.Status()}
		var events []sdktrace.Event
		if d.err != nil && d.err.hasExcept {
			var evAttr [2]attribute.KeyValue // escapes: only a span failed by SetError allocates here
			events = d.exceptionEvent(ev[:0], &evAttr, v.end)
		}
		return appendSpanView(b, &v, d.appendAttrs(attrs[:0]), events, nil)
	}
	v := spanView{sc: s.SpanContext(), parent: s.Parent(), name: s.Name(), kind: s.SpanKind(),
		start: s.StartTime(), end: s.EndTime(),
		status: s.Status(), droppedAttrs: s.DroppedAttributes(), droppedEvents: s.DroppedEvents(), droppedLinks: s.DroppedLinks()}
	return appendSpanView(b, &v, s.Attributes(), s.Events(), s.Links())
}

func appendSpanView(b []byte, s *spanView, attrs []attribute.KeyValue, events []sdktrace.Event, links []sdktrace.Link) []byte {
	sc, parent := s.sc, s.parent
	tid, sid := sc.TraceID(), sc.SpanID()
	b = appendBytes(b, 1, tid[:])
	b = appendBytes(b, 2, sid[:])
	if ts := sc.TraceState(); ts.Len() > 0 {
		b = appendStr(b, 3, ts.String())
	}
	if p := parent.SpanID(); p.IsValid() {
		b = appendBytes(b, 4, p[:])
	}
	b = appendStr(b, 5, s.name)
	if k := spanKind(s.kind); k != 0 {
		b = protowire.AppendTag(b, 6, protowire.VarintType)
		b = protowire.AppendVarint(b, k)
	}
	b = appendFixed64(b, 7, unixNano(s.start))
	b = appendFixed64(b, 8, unixNano(s.end))
	for _, kv := range attrs {
		b = appendKeyValue(b, 9, kv)
	}
	b = appendUint32(b, 10, s.droppedAttrs)
	for _, ev := range events {
		var eb []byte
		eb = appendFixed64(eb, 1, unixNano(ev.Time))
		eb = appendStr(eb, 2, ev.Name)
		for _, kv := range ev.Attributes {
			eb = appendKeyValue(eb, 3, kv)
		}
		eb = appendUint32(eb, 4, ev.DroppedAttributeCount)
		b = appendMessage(b, 11, eb)
	}
	b = appendUint32(b, 12, s.droppedEvents)
	for _, l := range links {
		var lb []byte
		ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		lb = appendBytes(lb, 1, ltid[:])
		lb = appendBytes(lb, 2, lsid[:])
		for _, kv := range l.Attributes {
			lb = appendKeyValue(lb, 4, kv)
		}
		lb = appendUint32(lb, 5, l.DroppedAttributeCount)
		lb = appendFixed32(lb, 6, spanFlags(l.SpanContext.TraceFlags(), l.SpanContext))
		b = appendMessage(b, 13, lb)
	}
	b = appendUint32(b, 14, s.droppedLinks)
	// Status (15) is always set, as the SDK's exporter does.
	st := s.status
	var sb []byte
	sb = appendStr(sb, 2, st.Description)
	if c := statusCode(st.Code); c != 0 {
		sb = protowire.AppendTag(sb, 3, protowire.VarintType)
		sb = protowire.AppendVarint(sb, c)
	}
	b = appendMessage(b, 15, sb)
	return appendFixed32(b, 16, spanFlags(sc.TraceFlags(), parent))
}

// The protobuf field numbers and enum values of the OTLP trace protocol
// (opentelemetry/proto/trace/v1/trace.proto).
const (
	flagHasIsRemote = 0x100 // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
	flagIsRemote    = 0x200 // SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
)

func spanFlags(tf trace.TraceFlags, parent trace.SpanContext) uint32 {
	f := uint32(tf) | flagHasIsRemote
	if parent.IsRemote() {
		f |= flagIsRemote
	}
	return f
}

func spanKind(k trace.SpanKind) uint64 {
	switch k {
	case trace.SpanKindInternal:
		return 1
	case trace.SpanKindServer:
		return 2
	case trace.SpanKindClient:
		return 3
	case trace.SpanKindProducer:
		return 4
	case trace.SpanKindConsumer:
		return 5
	}
	return 0
}

func statusCode(c codes.Code) uint64 {
	switch c {
	case codes.Ok:
		return 1
	case codes.Error:
		return 2
	}
	return 0
}

func unixNano(t time.Time) uint64 { return uint64(max(0, t.UnixNano())) }

func appendMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// appendStr, appendBytes, appendUint32 and appendFixed32 leave out a zero
// value, as proto3 does.
func appendStr(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendUint32(b []byte, num protowire.Number, n int) []byte {
	if n <= 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(min(int64(n), math.MaxUint32)))
}

func appendFixed32(b []byte, num protowire.Number, v uint32) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, v)
}

func appendFixed64(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, v)
}

// appendKeyValue appends a KeyValue message as field num. Scalar values,
// all the hop spans have, are written in place, their sizes computed
// first; lists and maps through a buffer of their own.
func appendKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) []byte {
	if b, ok := appendSmallKeyValue(b, num, kv); ok {
		return b
	}
	var nested []byte
	avSize, scalar := scalarSize(kv.Value)
	if !scalar {
		nested = appendAnyValue(nil, kv.Value)
		avSize = len(nested)
	}
	size := 1 + protowire.SizeBytes(avSize)
	if kv.Key != "" {
		size += 1 + protowire.SizeBytes(len(kv.Key))
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	b = appendStr(b, 1, string(kv.Key))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(avSize))
	if scalar {
		return appendAnyValue(b, kv.Value)
	}
	return append(b, nested...)
}

// appendSmallKeyValue is appendKeyValue's fast path, the same bytes written
// directly, for what the hop spans' attributes are: a string, int or bool
// value under a key, every length and size below 128 (one-byte varints), a
// field number below 16 (a one-byte tag). It reports false, writing
// nothing, for anything else (TestSmallKeyValue).
func appendSmallKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) ([]byte, bool) {
	k := len(kv.Key)
	if num >= 16 || k == 0 || k >= 128 {
		return b, false
	}
	tag := byte(num<<3 | 2) // field num, length-delimited
	switch kv.Value.Type() {
	case attribute.STRING:
		v := kv.Value.AsString()
		av := 2 + len(v) // AnyValue: string_value (1), length, bytes
		size := 2 + k + 2 + av
		if len(v) >= 128 || size >= 128 {
			return b, false
		}
		b = append(b, tag, byte(size), 0x0a, byte(k))
		b = append(b, kv.Key...)
		b = append(b, 0x12, byte(av), 0x0a, byte(len(v)))
		return append(b, v...), true
	case attribute.BOOL:
		size := 2 + k + 2 + 2
		if size >= 128 {
			return b, false
		}
		b = append(b, tag, byte(size), 0x0a, byte(k))
		b = append(b, kv.Key...)
		return append(b, 0x12, 2, 0x10, byte(protowire.EncodeBool(kv.Value.AsBool()))), true // bool_value (2)
	case attribute.INT64:
		u := uint64(kv.Value.AsInt64())
		av := 1 + protowire.SizeVarint(u) // int_value (3)
		size := 2 + k + 2 + av
		if size >= 128 {
			return b, false
		}
		b = append(b, tag, byte(size), 0x0a, byte(k))
		b = append(b, kv.Key...)
		b = append(b, 0x12, byte(av), 0x18)
		return protowire.AppendVarint(b, u), true
	}
	return b, false
}

// scalarSize is the encoded size of a scalar value's AnyValue fields;
// false for lists and maps.
func scalarSize(v attribute.Value) (int, bool) {
	switch v.Type() {
	case attribute.BOOL:
		return 2, true
	case attribute.INT64:
		return 1 + protowire.SizeVarint(uint64(v.AsInt64())), true
	case attribute.FLOAT64:
		return 9, true
	case attribute.STRING:
		return 1 + protowire.SizeBytes(len(v.AsString())), true
	case attribute.EMPTY:
		return 0, true
	}
	return 0, false
}

// appendAnyValue appends the fields of the AnyValue of v, as the SDK's
// exporter converts attribute values.
func appendAnyValue(b []byte, v attribute.Value) []byte {
	switch v.Type() {
	case attribute.BOOL:
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(v.AsBool()))
	case attribute.INT64:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = protowire.AppendTag(b, 4, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(v.AsFloat64()))
	case attribute.STRING:
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		return protowire.AppendString(b, v.AsString())
	case attribute.BYTESLICE:
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		return protowire.AppendBytes(b, v.AsByteSlice())
	case attribute.BOOLSLICE:
		return appendArray(b, len(v.AsBoolSlice()), func(i int) attribute.Value { return attribute.BoolValue(v.AsBoolSlice()[i]) })
	case attribute.INT64SLICE:
		return appendArray(b, len(v.AsInt64Slice()), func(i int) attribute.Value { return attribute.Int64Value(v.AsInt64Slice()[i]) })
	case attribute.FLOAT64SLICE:
		return appendArray(b, len(v.AsFloat64Slice()), func(i int) attribute.Value { return attribute.Float64Value(v.AsFloat64Slice()[i]) })
	case attribute.STRINGSLICE:
		return appendArray(b, len(v.AsStringSlice()), func(i int) attribute.Value { return attribute.StringValue(v.AsStringSlice()[i]) })
	case attribute.SLICE:
		vs := v.AsSlice()
		return appendArray(b, len(vs), func(i int) attribute.Value { return vs[i] })
	case attribute.MAP:
		var m []byte
		for _, kv := range v.AsMap() {
			m = appendKeyValue(m, 1, kv)
		}
		return appendMessage(b, 6, m)
	case attribute.EMPTY:
		return b
	}
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendString(b, "INVALID")
}

// appendArray appends an ArrayValue of n values as AnyValue field 5.
func appendArray(b []byte, n int, at func(int) attribute.Value) []byte {
	var m []byte
	for i := 0; i < n; i++ {
		m = appendMessage(m, 1, appendAnyValue(nil, at(i)))
	}
	return appendMessage(b, 5, m)
}
