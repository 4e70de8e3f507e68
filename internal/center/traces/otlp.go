package traces

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Encoding is the wire encoding of an OTLP/HTTP body.
type Encoding int

// The two encodings of OTLP/HTTP.
const (
	Protobuf Encoding = iota
	JSON
)

// ErrBadRequest is wrapped by every error about the content of a request:
// it can never succeed, and the sender must not retry it.
var ErrBadRequest = errors.New("bad OTLP request")

func badf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// DecodeRequest decodes an ExportTraceServiceRequest. OTLP/JSON writes trace
// and span ids as hex, not as the base64 of protobuf's JSON mapping; the
// ids are turned into base64 before protojson reads the body.
func DecodeRequest(body []byte, enc Encoding) (*coltracepb.ExportTraceServiceRequest, error) {
	req := &coltracepb.ExportTraceServiceRequest{}
	if enc == Protobuf {
		if err := proto.Unmarshal(body, req); err != nil {
			return nil, badf("decode protobuf ExportTraceServiceRequest: %v", err)
		}
		return req, nil
	}
	fixed, err := hexIDsToBase64(body)
	if err != nil {
		return nil, err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(fixed, req); err != nil {
		return nil, badf("decode JSON ExportTraceServiceRequest: %v", err)
	}
	return req, nil
}

// hexIDsToBase64 rewrites the traceId, spanId and parentSpanId fields of
// spans and links from hex to base64.
func hexIDsToBase64(body []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, badf("JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, badf("JSON: data after the top-level object")
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, badf("JSON: want an object {\"resourceSpans\": [...]}")
	}
	for _, rs := range each(top, "resourceSpans", "resource_spans") {
		for _, ss := range each(rs.obj, "scopeSpans", "scope_spans") {
			for _, sp := range each(ss.obj, "spans") {
				path := fmt.Sprintf("resourceSpans[%d].scopeSpans[%d].spans[%d]", rs.i, ss.i, sp.i)
				if err := fixIDs(sp.obj, path, "traceId", "trace_id", 16); err != nil {
					return nil, err
				}
				if err := fixIDs(sp.obj, path, "spanId", "span_id", 8); err != nil {
					return nil, err
				}
				if err := fixIDs(sp.obj, path, "parentSpanId", "parent_span_id", 8); err != nil {
					return nil, err
				}
				for _, l := range each(sp.obj, "links") {
					lp := fmt.Sprintf("%s.links[%d]", path, l.i)
					if err := fixIDs(l.obj, lp, "traceId", "trace_id", 16); err != nil {
						return nil, err
					}
					if err := fixIDs(l.obj, lp, "spanId", "span_id", 8); err != nil {
						return nil, err
					}
				}
			}
		}
	}
	return json.Marshal(top)
}

type indexed struct {
	i   int
	obj map[string]any
}

// each returns the objects of the list under the first key present; a
// value of the wrong shape is left for protojson to report.
func each(m map[string]any, keys ...string) []indexed {
	for _, k := range keys {
		v, ok := m[k]
		if !ok {
			continue
		}
		list, _ := v.([]any)
		out := make([]indexed, 0, len(list))
		for i, e := range list {
			if o, ok := e.(map[string]any); ok {
				out = append(out, indexed{i, o})
			}
		}
		return out
	}
	return nil
}

func fixIDs(m map[string]any, path, camel, snake string, size int) error {
	for _, k := range []string{camel, snake} {
		v, ok := m[k]
		if !ok {
			continue
		}
		s, ok := v.(string)
		if !ok || s == "" {
			continue
		}
		if len(s) != 2*size {
			return badf("%s.%s: %q is not %d hex digits (OTLP/JSON writes ids as hex)", path, camel, s, 2*size)
		}
		b, err := hex.DecodeString(s)
		if err != nil {
			return badf("%s.%s: %q is not %d hex digits (OTLP/JSON writes ids as hex)", path, camel, s, 2*size)
		}
		m[k] = base64.StdEncoding.EncodeToString(b)
	}
	return nil
}

// Limits bound what one request may hold.
type Limits struct {
	MaxSpans    int   // spans in one request
	MaxSpanSize int   // bytes of one encoded span
	Retention   int64 // ns; spans that ended longer ago are dropped (0: none are)
	MaxFuture   int64 // ns; spans starting further ahead are dropped
}

// Converted is what a valid request holds: the records to store, and the
// spans dropped because they are outside the time the store keeps.
type Converted struct {
	Records []Record
	Dropped int
	Reason  string // of the first dropped span
}

// Convert checks every span of req and makes its records. Any invalid span
// (bad ids or times, no name, too big) makes the whole request invalid: an
// error wrapping ErrBadRequest that names the span, and no records. The
// records' encoded spans share one buffer of about sizeHint bytes.
func Convert(req *coltracepb.ExportTraceServiceRequest, lim Limits, now time.Time, sizeHint int) (Converted, error) {
	var out Converted
	n := 0
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	if lim.MaxSpans > 0 && n > lim.MaxSpans {
		return out, badf("%d spans in one request, more than the %d allowed (send smaller batches)", n, lim.MaxSpans)
	}
	out.Records = make([]Record, 0, n)
	type pos struct{ start, end int }
	spans := make([]pos, 0, n)
	buf := make([]byte, 0, sizeHint)
	mo := proto.MarshalOptions{}
	nowNs := now.UnixNano()
	for i, rs := range req.GetResourceSpans() {
		service, instance := "unknown_service", ""
		for _, kv := range rs.GetResource().GetAttributes() {
			switch kv.GetKey() {
			case "service.name":
				if s := kv.GetValue().GetStringValue(); s != "" {
					service = s
				}
			case "service.instance.id":
				instance = kv.GetValue().GetStringValue()
			}
		}
		for j, ss := range rs.GetScopeSpans() {
			for k, sp := range ss.GetSpans() {
				if err := checkSpan(sp, spanPath{i, j, k}); err != nil {
					return Converted{}, err
				}
				path := spanPath{i, j, k}
				start, end := int64(sp.StartTimeUnixNano), int64(sp.EndTimeUnixNano)
				if lim.Retention > 0 && end < nowNs-lim.Retention {
					out.Dropped++
					if out.Reason == "" {
						out.Reason = fmt.Sprintf("%s ended at %s, before the retention of the trace store", path, time.Unix(0, end).UTC().Format(time.RFC3339))
					}
					continue
				}
				if lim.MaxFuture > 0 && start > nowNs+lim.MaxFuture {
					out.Dropped++
					if out.Reason == "" {
						out.Reason = fmt.Sprintf("%s starts at %s, too far in the future (check the sender's clock)", path, time.Unix(0, start).UTC().Format(time.RFC3339))
					}
					continue
				}
				b0 := len(buf)
				var err error
				buf, err = mo.MarshalAppend(buf, sp)
				if err != nil {
					return Converted{}, fmt.Errorf("%s: encode: %w", path, err)
				}
				if lim.MaxSpanSize > 0 && len(buf)-b0 > lim.MaxSpanSize {
					return Converted{}, badf("%s: %d bytes, more than the %d allowed for one span", path, len(buf)-b0, lim.MaxSpanSize)
				}
				spans = append(spans, pos{b0, len(buf)})
				out.Records = append(out.Records, recordOf(sp, service, instance))
			}
		}
	}
	for i := range out.Records {
		out.Records[i].Span = buf[spans[i].start:spans[i].end:spans[i].end]
	}
	return out, nil
}

// recordOf makes the indexed fields of a record from a valid span.
func recordOf(sp *tracepb.Span, service, instance string) Record {
	r := Record{
		Service:  service,
		Instance: instance,
		Name:     sp.Name,
		Kind:     sp.Kind,
		Start:    int64(sp.StartTimeUnixNano),
		End:      int64(sp.EndTimeUnixNano),
		Error:    sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
	}
	copy(r.TraceID[:], sp.TraceId)
	copy(r.SpanID[:], sp.SpanId)
	copy(r.Parent[:], sp.ParentSpanId)
	for _, kv := range sp.Attributes {
		switch kv.Key {
		case AttrMessageID:
			if s := anyString(kv.Value); s != "" {
				r.MsgID = s
			}
		case AttrUser, AttrRecipient:
			if s := anyString(kv.Value); s != "" {
				r.Users = append(r.Users, s)
			}
		}
	}
	return r
}

// anyString is a string or integer attribute value as text (message ids
// may be sent as either).
func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	}
	return ""
}

// spanPath names a span of a request in errors; it is formatted only then.
type spanPath struct{ rs, ss, sp int }

func (p spanPath) String() string {
	return fmt.Sprintf("resource_spans[%d].scope_spans[%d].spans[%d]", p.rs, p.ss, p.sp)
}

func checkSpan(sp *tracepb.Span, path spanPath) error {
	if msg := badID(sp.TraceId, 16, false); msg != "" {
		return badf("%s.trace_id %s", path, msg)
	}
	if msg := badID(sp.SpanId, 8, false); msg != "" {
		return badf("%s.span_id %s", path, msg)
	}
	if msg := badID(sp.ParentSpanId, 8, true); msg != "" {
		return badf("%s.parent_span_id %s", path, msg)
	}
	if sp.Name == "" {
		return badf("%s: the span has no name", path)
	}
	if sp.StartTimeUnixNano == 0 {
		return badf("%s: start_time_unix_nano is 0", path)
	}
	if sp.EndTimeUnixNano == 0 {
		return badf("%s: end_time_unix_nano is 0 (export a span once it has ended)", path)
	}
	if sp.EndTimeUnixNano < sp.StartTimeUnixNano {
		return badf("%s: ends (%d) before it starts (%d)", path, sp.EndTimeUnixNano, sp.StartTimeUnixNano)
	}
	if sp.StartTimeUnixNano > 1<<63-1 || sp.EndTimeUnixNano > 1<<63-1 {
		return badf("%s: time beyond the year 2262", path)
	}
	if sp.Kind < 0 || sp.Kind > tracepb.Span_SPAN_KIND_CONSUMER {
		return badf("%s: unknown span kind %d", path, sp.Kind)
	}
	for i, l := range sp.Links {
		if msg := badID(l.TraceId, 16, false); msg != "" {
			return badf("%s.links[%d].trace_id %s", path, i, msg)
		}
		if msg := badID(l.SpanId, 8, false); msg != "" {
			return badf("%s.links[%d].span_id %s", path, i, msg)
		}
	}
	for i, e := range sp.Events {
		if e.TimeUnixNano == 0 {
			return badf("%s.events[%d]: time_unix_nano is 0", path, i)
		}
	}
	return nil
}

// badID says what is wrong with an id, or "".
func badID(id []byte, size int, optional bool) string {
	if len(id) == 0 && optional {
		return ""
	}
	if len(id) != size {
		return fmt.Sprintf("is %d bytes, want %d", len(id), size)
	}
	for _, b := range id {
		if b != 0 {
			return ""
		}
	}
	if optional {
		return "is all zero; leave it empty for a root span"
	}
	return "is all zero, which is not a valid id"
}

// MediaType is the encoding of a Content-Type, or an error for one OTLP
// does not have.
func MediaType(ct string) (Encoding, error) {
	mt, _, _ := strings.Cut(ct, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "application/x-protobuf", "application/protobuf":
		return Protobuf, nil
	case "application/json":
		return JSON, nil
	}
	return 0, fmt.Errorf("Content-Type %q: want application/x-protobuf or application/json (OTLP/HTTP)", ct)
}

// MaxFuture is how far ahead of the center's clock a span may start; a
// span further ahead (a sender's clock far off) is dropped.
const MaxFuture = time.Hour
