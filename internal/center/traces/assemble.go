package traces

import (
	"cmp"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Trace is a trace as the query API answers it (documented field by
// field in docs/center.md).
type Trace struct {
	TraceID string `json:"trace_id"`
	Root    Root   `json:"root"`
	Spans   []Span `json:"spans"`
	Gaps    []Gap  `json:"gaps"`
	Broken  bool   `json:"broken"`
}

// Root summarizes a trace: its root span (or, when that is missing, its
// earliest top-level span) and the trace as a whole.
type Root struct {
	SpanID         string   `json:"span_id"`
	Name           string   `json:"name"`
	Service        string   `json:"service"`
	Instance       string   `json:"instance"`
	IsRoot         bool     `json:"is_root"`
	Start          string   `json:"start"`
	DurationMs     float64  `json:"duration_ms"`
	SpanCount      int      `json:"span_count"`
	ErrorCount     int      `json:"error_count"`
	MissingParents int      `json:"missing_parents"`
	Services       []string `json:"services"`
	Error          bool     `json:"error"`
}

// Span is one span of a trace.
type Span struct {
	TraceID       string         `json:"trace_id"`
	SpanID        string         `json:"span_id"`
	ParentSpanID  string         `json:"parent_span_id"`
	Name          string         `json:"name"`
	Service       string         `json:"service"`
	Instance      string         `json:"instance"`
	Kind          string         `json:"kind"`
	Start         string         `json:"start"`
	OffsetMs      float64        `json:"offset_ms"`
	DurationMs    float64        `json:"duration_ms"`
	Depth         int            `json:"depth"`
	Status        string         `json:"status"`
	StatusMessage string         `json:"status_message"`
	Attributes    map[string]any `json:"attributes"`
	Events        []Event        `json:"events"`
	Links         []Link         `json:"links"`
	MissingParent bool           `json:"missing_parent"`
}

// Event is a span event.
type Event struct {
	Name       string         `json:"name"`
	Time       string         `json:"time"`
	Attributes map[string]any `json:"attributes"`
}

// Link is a span link.
type Link struct {
	TraceID    string         `json:"trace_id"`
	SpanID     string         `json:"span_id"`
	Attributes map[string]any `json:"attributes"`
}

// Gap is time between hops of a trace that no span covers: after a span
// (and what it started) ended and before the next child of the same parent
// started. An uninstrumented hop that passed the context on shows as one.
type Gap struct {
	AfterSpanID  string  `json:"after_span_id"`
	BeforeSpanID string  `json:"before_span_id"`
	Start        string  `json:"start"`
	DurationMs   float64 `json:"duration_ms"`
}

// Analysis is the shape of a trace: its spans in waterfall order, each
// one's depth, the spans whose parent is missing, and the gaps.
type Analysis struct {
	Order   []int // indexes into the records, depth-first, children by start
	Depth   []int // by record index
	Missing []bool
	Gaps    []gapAt
}

type gapAt struct {
	after, before int // record indexes
	start, end    int64
}

// Analyze finds the structure of a trace. A span's parent counts as missing
// once the span ended more than grace before now; a gap is longer than
// threshold.
func Analyze(recs []Record, grace, threshold time.Duration, now time.Time) Analysis {
	n := len(recs)
	a := Analysis{Depth: make([]int, n), Missing: make([]bool, n)}
	byID := make(map[SpanID]int, n)
	for i := range recs {
		byID[recs[i].SpanID] = i
	}
	children := make(map[int][]int, n)
	var tops []int
	for i := range recs {
		r := &recs[i]
		p, ok := byID[r.Parent]
		switch {
		case r.Parent.IsZero():
			tops = append(tops, i)
		case !ok || p == i:
			tops = append(tops, i)
			if now.UnixNano()-r.End > int64(grace) {
				a.Missing[i] = true
			}
		default:
			children[p] = append(children[p], i)
		}
	}
	byStart := func(x, y int) int {
		if c := cmp.Compare(recs[x].Start, recs[y].Start); c != 0 {
			return c
		}
		return cmp.Compare(recs[x].End, recs[y].End)
	}
	slices.SortFunc(tops, byStart)
	for _, c := range children {
		slices.SortFunc(c, byStart)
	}
	visited := make([]bool, n)
	subEnd := make([]int64, n)  // latest end in the subtree
	subLast := make([]int, n)   // the span with that end
	var walk func(i, depth int) // depth is bounded by n: each span is visited once
	walk = func(i, depth int) {
		visited[i] = true
		a.Depth[i] = depth
		a.Order = append(a.Order, i)
		subEnd[i], subLast[i] = recs[i].End, i
		cursor, last := recs[i].End, i
		for _, c := range children[i] {
			if visited[c] {
				continue
			}
			walk(c, depth+1)
			if gap := recs[c].Start - cursor; gap > int64(threshold) {
				a.Gaps = append(a.Gaps, gapAt{after: last, before: c, start: cursor, end: recs[c].Start})
			}
			if subEnd[c] > cursor {
				cursor, last = subEnd[c], subLast[c]
			}
		}
		subEnd[i], subLast[i] = cursor, last
	}
	for _, t := range tops {
		walk(t, 0)
	}
	// Spans in a parent cycle are reachable from no top: list them as tops.
	var rest []int
	for i := range recs {
		if !visited[i] {
			rest = append(rest, i)
		}
	}
	slices.SortFunc(rest, byStart)
	for _, i := range rest {
		if !visited[i] {
			walk(i, 0)
		}
	}
	return a
}

// Broken counts what makes a trace broken.
func (a *Analysis) Broken() (missing, gaps int) {
	for _, m := range a.Missing {
		if m {
			missing++
		}
	}
	return missing, len(a.Gaps)
}

// Assemble makes the API's view of a trace from its records.
func Assemble(recs []Record, grace, threshold time.Duration, now time.Time) (Trace, error) {
	if len(recs) == 0 {
		return Trace{}, fmt.Errorf("empty trace")
	}
	a := Analyze(recs, grace, threshold, now)
	t := Trace{TraceID: recs[0].TraceID.String(), Spans: make([]Span, 0, len(recs)), Gaps: []Gap{}}
	start, end := recs[0].Start, recs[0].End
	for i := range recs {
		start, end = min(start, recs[i].Start), max(end, recs[i].End)
	}
	services := map[string]bool{}
	root := -1
	for _, i := range a.Order {
		r := &recs[i]
		var sp tracepb.Span
		if err := proto.Unmarshal(r.Span, &sp); err != nil {
			return Trace{}, fmt.Errorf("span %s: %w", r.SpanID, err)
		}
		js := spanJSON(&sp, r)
		js.Depth = a.Depth[i]
		js.MissingParent = a.Missing[i]
		js.OffsetMs = ms(r.Start - start)
		t.Spans = append(t.Spans, js)
		services[r.Service] = true
		if r.Error {
			t.Root.ErrorCount++
		}
		if a.Missing[i] {
			t.Root.MissingParents++
		}
		if r.Parent.IsZero() && (root < 0 || !recs[root].Parent.IsZero()) {
			root = i
		}
	}
	if root < 0 {
		root = a.Order[0]
	}
	rr := &recs[root]
	t.Root.SpanID, t.Root.Name, t.Root.Service, t.Root.Instance = rr.SpanID.String(), rr.Name, rr.Service, rr.Instance
	t.Root.IsRoot = rr.Parent.IsZero()
	t.Root.Start = formatTime(start)
	t.Root.DurationMs = ms(end - start)
	t.Root.SpanCount = len(recs)
	t.Root.Error = t.Root.ErrorCount > 0
	for s := range services {
		t.Root.Services = append(t.Root.Services, s)
	}
	slices.Sort(t.Root.Services)
	for _, g := range a.Gaps {
		t.Gaps = append(t.Gaps, Gap{
			AfterSpanID: recs[g.after].SpanID.String(), BeforeSpanID: recs[g.before].SpanID.String(),
			Start: formatTime(g.start), DurationMs: ms(g.end - g.start),
		})
	}
	t.Broken = t.Root.MissingParents > 0 || len(t.Gaps) > 0
	return t, nil
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func formatTime(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

func spanJSON(sp *tracepb.Span, r *Record) Span {
	js := Span{
		TraceID: hex.EncodeToString(sp.TraceId), SpanID: hex.EncodeToString(sp.SpanId), ParentSpanID: hex.EncodeToString(sp.ParentSpanId),
		Name: sp.Name, Service: r.Service, Instance: r.Instance, Kind: kindName(sp.Kind),
		Start: formatTime(int64(sp.StartTimeUnixNano)), DurationMs: ms(int64(sp.EndTimeUnixNano - sp.StartTimeUnixNano)),
		Status: statusName(sp.GetStatus().GetCode()), StatusMessage: sp.GetStatus().GetMessage(),
		Attributes: attrs(sp.Attributes), Events: make([]Event, 0, len(sp.Events)), Links: make([]Link, 0, len(sp.Links)),
	}
	for _, e := range sp.Events {
		js.Events = append(js.Events, Event{Name: e.Name, Time: formatTime(int64(e.TimeUnixNano)), Attributes: attrs(e.Attributes)})
	}
	for _, l := range sp.Links {
		js.Links = append(js.Links, Link{TraceID: hex.EncodeToString(l.TraceId), SpanID: hex.EncodeToString(l.SpanId), Attributes: attrs(l.Attributes)})
	}
	return js
}

func kindName(k tracepb.Span_SpanKind) string {
	switch k {
	case tracepb.Span_SPAN_KIND_INTERNAL:
		return "internal"
	case tracepb.Span_SPAN_KIND_SERVER:
		return "server"
	case tracepb.Span_SPAN_KIND_CLIENT:
		return "client"
	case tracepb.Span_SPAN_KIND_PRODUCER:
		return "producer"
	case tracepb.Span_SPAN_KIND_CONSUMER:
		return "consumer"
	}
	return "unspecified"
}

func statusName(c tracepb.Status_StatusCode) string {
	switch c {
	case tracepb.Status_STATUS_CODE_OK:
		return "ok"
	case tracepb.Status_STATUS_CODE_ERROR:
		return "error"
	}
	return "unset"
}

func attrs(kvs []*commonpb.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = anyValue(kv.Value, 0)
	}
	return m
}

// anyValue is an attribute value as JSON: strings, booleans, numbers,
// lists and maps as themselves, bytes as base64, NaN and infinities as
// strings (JSON has no such numbers).
func anyValue(v *commonpb.AnyValue, depth int) any {
	if depth > 32 {
		return nil
	}
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		if math.IsNaN(x.DoubleValue) || math.IsInf(x.DoubleValue, 0) {
			return fmt.Sprint(x.DoubleValue)
		}
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return base64.StdEncoding.EncodeToString(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		out := make([]any, 0, len(x.ArrayValue.GetValues()))
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, anyValue(e, depth+1))
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		out := make(map[string]any, len(x.KvlistValue.GetValues()))
		for _, kv := range x.KvlistValue.GetValues() {
			out[kv.Key] = anyValue(kv.Value, depth+1)
		}
		return out
	}
	return nil
}
