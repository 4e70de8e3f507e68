package traces

import (
	"cmp"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/model"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Query API limits.
const (
	DefaultLimit = 20
	MaxLimit     = 1000
	// MaxTraceSpans bounds the spans of one trace in an answer; a bigger
	// trace is cut to its earliest spans and marked truncated.
	MaxTraceSpans = 20_000
)

// API serves the trace query API.
type API struct {
	Store        Store
	Grace        time.Duration // before a missing parent counts as missing
	GapThreshold time.Duration
	Log          *slog.Logger
	analysis     atomic.Pointer[[2]time.Duration]
	Now          func() time.Time
	// WriteError writes an error the way the rest of the center's API does.
	WriteError func(w http.ResponseWriter, code int, errType, msg string)
}

// SetAnalysis changes the grace of missing parents and the gap threshold.
func (a *API) SetAnalysis(grace, gapThreshold time.Duration) {
	a.analysis.Store(&[2]time.Duration{grace, gapThreshold})
}

// Register adds the API's routes to mux, each wrapped by wrap (auth).
func (a *API) Register(mux *http.ServeMux, wrap func(http.Handler) http.Handler) {
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.analysis.Load() == nil {
		a.SetAnalysis(a.Grace, a.GapThreshold)
	}
	mux.Handle("GET /api/traces/{id}", wrap(http.HandlerFunc(a.getTrace)))
	mux.Handle("GET /api/traces", wrap(http.HandlerFunc(a.search)))
	mux.Handle("GET /api/probes/failures", wrap(http.HandlerFunc(a.probeFailures)))
}

// TraceList is the answer of the trace API.
type TraceList struct {
	Traces []TraceAnswer `json:"traces"`
}

// TraceAnswer is one trace of an answer.
type TraceAnswer struct {
	Trace
	Truncated bool `json:"truncated"`
}

func (a *API) fail(w http.ResponseWriter, code int, typ, format string, args ...any) {
	a.WriteError(w, code, typ, fmt.Sprintf(format, args...))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (a *API) getTrace(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.Query()) > 0 {
		a.fail(w, http.StatusBadRequest, "bad_data", "GET /api/traces/TRACEID takes no parameters")
		return
	}
	id, err := ParseTraceID(r.PathValue("id"))
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_data", "%v", err)
		return
	}
	t, ok, err := a.load(id, nil)
	if err != nil {
		a.Log.Error("read trace", "trace_id", id, "err", err)
		a.fail(w, http.StatusInternalServerError, "internal", "read trace %s: %v", id, err)
		return
	}
	if !ok {
		a.fail(w, http.StatusNotFound, "not_found", "trace %s not found", id)
		return
	}
	writeJSON(w, TraceList{Traces: []TraceAnswer{t}})
}

// load reads and assembles a trace; keep, when not nil, must hold for one
// of its spans (a search's message id or user: postings are by hash).
func (a *API) load(id TraceID, keep func(*Record) bool) (TraceAnswer, bool, error) {
	recs, err := a.Store.Trace(id)
	if err != nil && len(recs) == 0 {
		return TraceAnswer{}, false, err
	}
	if len(recs) == 0 {
		return TraceAnswer{}, false, nil
	}
	if keep != nil && !slices.ContainsFunc(recs, func(r Record) bool { return keep(&r) }) {
		return TraceAnswer{}, false, nil
	}
	var ans TraceAnswer
	if len(recs) > MaxTraceSpans {
		slices.SortFunc(recs, func(x, y Record) int { return cmp.Compare(x.Start, y.Start) })
		recs = recs[:MaxTraceSpans]
		ans.Truncated = true
	}
	p := a.analysis.Load()
	ans.Trace, err = Assemble(recs, p[0], p[1], a.Now())
	if err != nil {
		return TraceAnswer{}, false, err
	}
	return ans, true, nil
}

var searchParams = []string{"service", "operation", "msg_id", "user", "min_duration", "error", "start", "end", "limit"}

// ParseQuery reads the parameters of GET /api/traces.
func ParseQuery(v url.Values) (Query, error) {
	q := Query{Limit: DefaultLimit}
	for k, vals := range v {
		if !slices.Contains(searchParams, k) {
			return q, fmt.Errorf("unknown parameter %q (known: %s)", k, strings.Join(searchParams, ", "))
		}
		if len(vals) > 1 {
			return q, fmt.Errorf("parameter %q given %d times; give it once", k, len(vals))
		}
	}
	q.Service, q.Operation, q.MsgID, q.User = v.Get("service"), v.Get("operation"), v.Get("msg_id"), v.Get("user")
	if s := v.Get("min_duration"); s != "" {
		d, err := parseDuration(s)
		if err != nil || d < 0 {
			return q, fmt.Errorf("min_duration %q: want a duration such as 250ms, 1.5s or 2m", s)
		}
		q.MinDuration = d
	}
	if s := v.Get("error"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return q, fmt.Errorf("error %q: want true or false", s)
		}
		q.Error = &b
	}
	var err error
	if q.Start, err = parseTime("start", v.Get("start")); err != nil {
		return q, err
	}
	if q.End, err = parseTime("end", v.Get("end")); err != nil {
		return q, err
	}
	if !q.Start.IsZero() && !q.End.IsZero() && q.End.Before(q.Start) {
		return q, fmt.Errorf("end %s is before start %s", q.End.Format(time.RFC3339), q.Start.Format(time.RFC3339))
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			return q, fmt.Errorf("limit %q: want a whole number from 1 to %d", s, MaxLimit)
		}
		q.Limit = n
	}
	return q, nil
}

func parseDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	d, err := model.ParseDuration(s)
	return time.Duration(d), err
}

// parseTime reads RFC 3339 or Unix seconds, as Prometheus's API does.
func parseTime(name, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) && math.Abs(f) < 1e11 {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s %q: want RFC 3339 (2026-12-01T10:00:00Z) or Unix seconds", name, s)
	}
	return t, nil
}

func (a *API) search(w http.ResponseWriter, r *http.Request) {
	q, err := ParseQuery(r.URL.Query())
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_data", "%v", err)
		return
	}
	refs, err := a.Store.Search(q)
	if err != nil {
		a.fail(w, http.StatusInternalServerError, "internal", "search traces: %v", err)
		return
	}
	var keep func(*Record) bool
	if q.MsgID != "" || q.User != "" {
		keep = func(rec *Record) bool {
			return (q.MsgID == "" || rec.MsgID == q.MsgID) && (q.User == "" || slices.Contains(rec.Users, q.User))
		}
	}
	out := TraceList{Traces: []TraceAnswer{}}
	for _, ref := range refs {
		t, ok, err := a.load(ref.ID, keep)
		if err != nil {
			a.Log.Error("read trace", "trace_id", ref.ID, "err", err)
			continue
		}
		if ok {
			out.Traces = append(out.Traces, t)
		}
	}
	writeJSON(w, out)
}

// Probe round spans, written by `imwatch probe`.
const (
	ProbeService   = "imwatch-probe"
	ProbeOperation = "im.probe.round"
)

// ProbeFailure is one failed probe round.
type ProbeFailure struct {
	Time     string `json:"time"`
	Target   string `json:"target"`
	Protocol string `json:"protocol"`
	Location string `json:"location"`
	Reason   string `json:"reason"`
	Message  string `json:"message"`
	TraceID  string `json:"trace_id"`
}

func (a *API) probeFailures(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	for k, vals := range v {
		if k != "target" && k != "location" && k != "limit" {
			a.fail(w, http.StatusBadRequest, "bad_data", "unknown parameter %q (known: target, location, limit)", k)
			return
		}
		if len(vals) > 1 {
			a.fail(w, http.StatusBadRequest, "bad_data", "parameter %q given %d times; give it once", k, len(vals))
			return
		}
	}
	limit := 50
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			a.fail(w, http.StatusBadRequest, "bad_data", "limit %q: want a whole number from 1 to %d", s, MaxLimit)
			return
		}
		limit = n
	}
	target, location := v.Get("target"), v.Get("location")
	failures, err := a.ProbeFailures(target, location, limit)
	if err != nil {
		a.fail(w, http.StatusInternalServerError, "internal", "%v", err)
		return
	}
	writeJSON(w, struct {
		Failures []ProbeFailure `json:"failures"`
	}{failures})
}

// ProbeFailures lists failed probe rounds, newest first. Filters on target
// and location are applied to the newest failed rounds the store finds
// (at most ten times limit).
func (a *API) ProbeFailures(target, location string, limit int) ([]ProbeFailure, error) {
	yes := true
	n := limit
	if target != "" || location != "" {
		n = min(limit*10, 10*MaxLimit)
	}
	refs, err := a.Store.Search(Query{Service: ProbeService, Operation: ProbeOperation, Error: &yes, Limit: n})
	if err != nil {
		return nil, fmt.Errorf("search probe failures: %w", err)
	}
	type failure struct {
		ProbeFailure
		end int64
	}
	var out []failure
	for _, ref := range refs {
		recs, err := a.Store.Trace(ref.ID)
		if err != nil && len(recs) == 0 {
			return nil, fmt.Errorf("read trace %s: %w", ref.ID, err)
		}
		for i := range recs {
			rec := &recs[i]
			if rec.Service != ProbeService || rec.Name != ProbeOperation || !rec.Error {
				continue
			}
			var sp tracepb.Span
			if err := proto.Unmarshal(rec.Span, &sp); err != nil {
				continue
			}
			f := failure{end: rec.End, ProbeFailure: ProbeFailure{
				Time: formatTime(rec.End), TraceID: rec.TraceID.String(), Message: sp.GetStatus().GetMessage(), Location: rec.Instance,
			}}
			for _, kv := range sp.Attributes {
				s := anyString(kv.Value)
				switch kv.Key {
				case "imwatch.probe.target":
					f.Target = s
				case "imwatch.probe.protocol":
					f.Protocol = s
				case "imwatch.probe.location":
					f.Location = s
				case "imwatch.probe.reason":
					f.Reason = s
				}
			}
			if (target == "" || f.Target == target) && (location == "" || f.Location == location) {
				out = append(out, f)
			}
		}
	}
	slices.SortStableFunc(out, func(x, y failure) int { return cmp.Compare(y.end, x.end) })
	res := make([]ProbeFailure, 0, min(len(out), limit))
	for i := 0; i < len(out) && i < limit; i++ {
		res = append(res, out[i].ProbeFailure)
	}
	return res, nil
}
