// Package traces is the center's trace side: the OTLP receiver (HTTP at
// /v1/traces, gRPC on a port of its own), the embedded trace store, the query
// API, the metrics derived from spans (per-hop latency and the service
// graph) and the detection of broken traces.
package traces

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// TraceID is a W3C/OpenTelemetry trace id.
type TraceID [16]byte

// SpanID is a W3C/OpenTelemetry span id.
type SpanID [8]byte

func (t TraceID) String() string { return hex.EncodeToString(t[:]) }
func (s SpanID) String() string  { return hex.EncodeToString(s[:]) }

// IsZero reports whether s is the empty (all-zero) id.
func (s SpanID) IsZero() bool { return s == SpanID{} }

// ParseTraceID reads 32 hex digits.
func ParseTraceID(s string) (TraceID, error) {
	var t TraceID
	if len(s) != 32 {
		return t, fmt.Errorf("trace id %q: want 32 hex digits", s)
	}
	if _, err := hex.Decode(t[:], []byte(s)); err != nil {
		return t, fmt.Errorf("trace id %q: want 32 hex digits", s)
	}
	if t == (TraceID{}) {
		return t, fmt.Errorf("trace id %q: all zero", s)
	}
	return t, nil
}

// Attribute keys the store indexes (OpenTelemetry messaging conventions and ours).
const (
	AttrMessageID = "messaging.message.id"
	AttrUser      = "imwatch.user"
	AttrRecipient = "imwatch.recipient"
)

// Record is one stored span: the fields the store indexes and the OTLP span
// itself, protobuf-encoded, with the service and instance of its resource.
type Record struct {
	TraceID  TraceID
	SpanID   SpanID
	Parent   SpanID // zero for a root span
	Service  string
	Instance string
	Name     string
	Kind     tracepb.Span_SpanKind
	Start    int64 // unix nanoseconds
	End      int64
	Error    bool
	MsgID    string
	Users    []string
	// Span is the tracepb.Span, protobuf-encoded.
	Span []byte
}

// Duration is the span's duration.
func (r *Record) Duration() time.Duration { return time.Duration(r.End - r.Start) }

// Query selects traces: a trace matches when one of its spans has the
// service, operation, minimum duration and error state asked for (all of
// them on the same span), and, when asked, one of its spans carries the
// message id or the user. Start and End select the traces with a span in
// that time (its start to its end overlapping them).
type Query struct {
	Service     string
	Operation   string
	MsgID       string
	User        string
	MinDuration time.Duration
	Error       *bool
	Start, End  time.Time // zero: unbounded
	Limit       int
}

// TraceRef is a trace found by a search.
type TraceRef struct {
	ID    TraceID
	Start int64 // unix ns of its earliest span seen by the index
}

// Store is an embedded trace store. Append is durable when it returns; what
// it appended is visible to Trace and Search at once.
type Store interface {
	Append(recs []Record) error
	// Trace returns every span of a trace, in no particular order; none
	// when the trace is unknown.
	Trace(id TraceID) ([]Record, error)
	// Search returns the traces matching q, newest first, at most q.Limit.
	Search(q Query) ([]TraceRef, error)
	Close() error
}

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("trace store closed")

// matches reports whether one span satisfies the span-level part of q.
func (q *Query) spanMatches(service, name string, dur int64, isErr bool) bool {
	if q.Service != "" && service != q.Service {
		return false
	}
	if q.Operation != "" && name != q.Operation {
		return false
	}
	if q.MinDuration > 0 && dur < int64(q.MinDuration) {
		return false
	}
	if q.Error != nil && isErr != *q.Error {
		return false
	}
	return true
}

// spanLevel reports whether q has span-level conditions.
func (q *Query) spanLevel() bool {
	return q.Service != "" || q.Operation != "" || q.MinDuration > 0 || q.Error != nil
}

// overlaps reports whether [start, end] overlaps the query's time range.
func (q *Query) overlaps(start, end int64) bool {
	if !q.Start.IsZero() && end < q.Start.UnixNano() {
		return false
	}
	if !q.End.IsZero() && start > q.End.UnixNano() {
		return false
	}
	return true
}
