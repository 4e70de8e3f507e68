// Package api is the center's Prometheus-compatible HTTP API: query,
// query_range, series, labels, label values, rules and alerts, with
// Prometheus's JSON and error shapes, so Grafana and promtool work unchanged.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/prometheus/prometheus/util/stats"
)

// RulesRetriever gives the rule groups and alerting rules being evaluated.
type RulesRetriever interface {
	RuleGroups() []*rules.Group
	AlertingRules() []*rules.AlertingRule
}

// Engine is the PromQL engine and its limits; it is swapped as a whole on reload.
type Engine struct {
	Engine        promql.QueryEngine
	LookbackDelta time.Duration
	// Slots bounds the queries running at once; a query waits for a slot.
	Slots chan struct{}
}

// API serves the Prometheus HTTP API.
type API struct {
	Queryable storage.Queryable
	Rules     RulesRetriever
	Parser    parser.Parser
	Log       *slog.Logger
	Now       func() time.Time

	engine atomic.Pointer[Engine]
}

// SetEngine sets the engine used by later queries.
func (a *API) SetEngine(e *Engine) { a.engine.Store(e) }

// Register adds the API's routes to mux, each wrapped by wrap (auth).
func (a *API) Register(mux *http.ServeMux, wrap func(http.Handler) http.Handler) {
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Parser == nil {
		a.Parser = parser.NewParser(parser.Options{})
	}
	route := func(path string, f apiFunc) {
		h := wrap(a.handler(f))
		mux.Handle("GET "+path, h)
		mux.Handle("POST "+path, h)
	}
	route("/api/v1/query", a.query)
	route("/api/v1/query_range", a.queryRange)
	route("/api/v1/series", a.series)
	route("/api/v1/labels", a.labelNames)
	mux.Handle("GET /api/v1/label/{name}/values", wrap(a.handler(a.labelValues))) // GET only, as in Prometheus
	mux.Handle("GET /api/v1/rules", wrap(a.handler(a.rules)))
	mux.Handle("GET /api/v1/alerts", wrap(a.handler(a.alerts)))
	// Grafana asks for these; the center keeps neither metadata nor exemplars.
	mux.Handle("GET /api/v1/metadata", wrap(a.handler(func(*http.Request) result { return result{data: map[string]any{}} })))
	route("/api/v1/query_exemplars", func(*http.Request) result { return result{data: []any{}} })
}

type errorType string

// The error types of Prometheus's API, and the status codes it answers with.
const (
	errorTimeout   errorType = "timeout"
	errorCanceled  errorType = "canceled"
	errorExec      errorType = "execution"
	errorBadData   errorType = "bad_data"
	errorInternal  errorType = "internal"
	errorCostLimit errorType = "cost_limit"
)

func (t errorType) code() int {
	switch t {
	case errorBadData:
		return http.StatusBadRequest
	case errorExec, errorCostLimit:
		return http.StatusUnprocessableEntity
	case errorCanceled:
		return 499
	case errorTimeout:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

type apiError struct {
	typ errorType
	err error
}

type result struct {
	data     any
	err      *apiError
	warnings annotations.Annotations
	query    string
	// raw, when set, is the encoded data (query results).
	raw []byte
	// finalizer runs after the answer is written.
	finalizer func()
}

type apiFunc func(r *http.Request) result

func invalidParam(err error, name string) result {
	return result{err: &apiError{errorBadData, fmt.Errorf("invalid parameter %q: %w", name, err)}}
}

func (a *API) handler(f apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			writeError(w, &apiError{errorBadData, fmt.Errorf("error parsing form values: %w", err)}, a.Log)
			return
		}
		res := f(r)
		if res.finalizer != nil {
			defer res.finalizer()
		}
		if res.err != nil {
			writeError(w, res.err, a.Log)
			return
		}
		a.respond(w, res)
	})
}

func (a *API) respond(w http.ResponseWriter, res result) {
	warns, infos := res.warnings.AsStrings(res.query, 10, 10)
	b := make([]byte, 0, 256+len(res.raw))
	b = append(b, `{"status":"success","data":`...)
	if res.raw != nil {
		b = append(b, res.raw...)
	} else {
		d, err := json.Marshal(res.data)
		if err != nil {
			writeError(w, &apiError{errorInternal, fmt.Errorf("encode response: %w", err)}, a.Log)
			return
		}
		b = append(b, d...)
	}
	b = appendStrings(b, "warnings", warns)
	b = appendStrings(b, "infos", infos)
	b = append(b, '}')
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(b); err != nil {
		a.Log.Debug("write response", "err", err)
	}
}

func appendStrings(b []byte, key string, ss []string) []byte {
	if len(ss) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":[`...)
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

// WriteError answers with Prometheus's error JSON; other packages of the
// center use it for the errors of routes next to the API (auth).
func WriteError(w http.ResponseWriter, code int, errType, msg string) {
	b, _ := json.Marshal(struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
	}{"error", errType, msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, e *apiError, log *slog.Logger) {
	if e.typ == errorInternal && log != nil {
		log.Error("api", "err", e.err)
	}
	WriteError(w, e.typ.code(), string(e.typ), e.err.Error())
}

// acquire waits for a query slot.
func (a *API) acquire(ctx context.Context, e *Engine) (func(), *apiError) {
	if e.Slots == nil {
		return func() {}, nil
	}
	select {
	case e.Slots <- struct{}{}:
		return func() { <-e.Slots }, nil
	case <-ctx.Done():
		return nil, &apiError{errorTimeout, fmt.Errorf("query timed out waiting for a free query slot: %w", ctx.Err())}
	}
}

func (a *API) query(r *http.Request) (res result) {
	limit, err := parseLimit(r.FormValue("limit"))
	if err != nil {
		return invalidParam(err, "limit")
	}
	ts, err := parseTimeParam(r, "time", a.Now())
	if err != nil {
		return invalidParam(err, "time")
	}
	ctx, cancel, apiErr := queryContext(r)
	if apiErr != nil {
		return result{err: apiErr}
	}
	defer cancel()
	opts, err := a.queryOpts(r)
	if err != nil {
		return result{err: &apiError{errorBadData, err}}
	}
	e := a.engine.Load()
	release, apiErr := a.acquire(ctx, e)
	if apiErr != nil {
		return result{err: apiErr}
	}
	defer release()
	qs := r.FormValue("query")
	qry, err := e.Engine.NewInstantQuery(ctx, a.Queryable, opts, qs, ts)
	if err != nil {
		return result{err: constructionError(err)}
	}
	defer qry.Close()
	return a.exec(ctx, r, qry, qs, limit)
}

func (a *API) queryRange(r *http.Request) result {
	limit, err := parseLimit(r.FormValue("limit"))
	if err != nil {
		return invalidParam(err, "limit")
	}
	start, err := parseTime(r.FormValue("start"))
	if err != nil {
		return invalidParam(err, "start")
	}
	end, err := parseTime(r.FormValue("end"))
	if err != nil {
		return invalidParam(err, "end")
	}
	if end.Before(start) {
		return invalidParam(errors.New("end timestamp must not be before start time"), "end")
	}
	step, err := parseDuration(r.FormValue("step"))
	if err != nil {
		return invalidParam(err, "step")
	}
	if step <= 0 {
		return invalidParam(errors.New("zero or negative query resolution step widths are not accepted. Try a positive integer"), "step")
	}
	if end.Sub(start)/step > 11000 {
		return result{err: &apiError{errorBadData, errors.New("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)")}}
	}
	ctx, cancel, apiErr := queryContext(r)
	if apiErr != nil {
		return result{err: apiErr}
	}
	defer cancel()
	opts, err := a.queryOpts(r)
	if err != nil {
		return result{err: &apiError{errorBadData, err}}
	}
	e := a.engine.Load()
	release, apiErr := a.acquire(ctx, e)
	if apiErr != nil {
		return result{err: apiErr}
	}
	defer release()
	qs := r.FormValue("query")
	qry, err := e.Engine.NewRangeQuery(ctx, a.Queryable, opts, qs, start, end, step)
	if err != nil {
		return result{err: constructionError(err)}
	}
	defer qry.Close()
	return a.exec(ctx, r, qry, qs, limit)
}

// exec runs qry and encodes its result while the query still holds its
// memory (it is closed by the caller afterwards).
func (a *API) exec(ctx context.Context, r *http.Request, qry promql.Query, qs string, limit int) result {
	res := qry.Exec(ctx)
	if res.Err != nil {
		return result{err: execError(res.Err), warnings: res.Warnings, query: qs}
	}
	warnings := res.Warnings
	if limit > 0 {
		switch v := res.Value.(type) {
		case promql.Matrix:
			if len(v) > limit {
				res.Value = v[:limit]
				warnings = warnings.Add(errors.New("results truncated due to limit"))
			}
		case promql.Vector:
			if len(v) > limit {
				res.Value = v[:limit]
				warnings = warnings.Add(errors.New("results truncated due to limit"))
			}
		}
	}
	b := make([]byte, 0, 1024)
	b = append(b, `{"resultType":`...)
	b = appendString(b, string(res.Value.Type()))
	b = append(b, `,"result":`...)
	b = appendValue(b, res.Value)
	if r.FormValue("stats") != "" {
		if st, err := json.Marshal(stats.NewQueryStats(qry.Stats())); err == nil {
			b = append(b, `,"stats":`...)
			b = append(b, st...)
		}
	}
	b = append(b, '}')
	return result{raw: b, warnings: warnings, query: qs}
}

func (a *API) queryOpts(r *http.Request) (promql.QueryOpts, error) {
	var lookback time.Duration
	if s := r.FormValue("lookback_delta"); s != "" {
		d, err := parseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("error parsing lookback delta duration: %w", err)
		}
		lookback = d
	}
	return promql.NewPrometheusQueryOpts(r.FormValue("stats") == "all", lookback, nil), nil
}

// queryContext applies the request's timeout parameter.
func queryContext(r *http.Request) (context.Context, context.CancelFunc, *apiError) {
	ctx := r.Context()
	v := r.FormValue("timeout")
	if v == "" {
		return ctx, func() {}, nil
	}
	d, err := parseDuration(v)
	if err != nil {
		return nil, nil, &apiError{errorBadData, fmt.Errorf("invalid parameter %q: %w", "timeout", err)}
	}
	if d <= 0 {
		return nil, nil, &apiError{errorBadData, fmt.Errorf("invalid parameter %q: timeout must be positive, got %s", "timeout", d)}
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	return ctx, cancel, nil
}

func constructionError(err error) *apiError {
	var eqt promql.ErrQueryTimeout
	var eqc promql.ErrQueryCanceled
	if errors.As(err, &eqt) || errors.As(err, &eqc) {
		return execError(err)
	}
	return &apiError{errorBadData, fmt.Errorf("invalid parameter %q: %w", "query", err)}
}

func execError(err error) *apiError {
	var eqc promql.ErrQueryCanceled
	var eqt promql.ErrQueryTimeout
	var es promql.ErrStorage
	var etms promql.ErrTooManySeries
	var etmss promql.ErrTooManySamplesRead
	switch {
	case errors.As(err, &eqc):
		return &apiError{errorCanceled, err}
	case errors.As(err, &eqt):
		return &apiError{errorTimeout, err}
	case errors.As(err, &etms), errors.As(err, &etmss):
		return &apiError{errorCostLimit, err}
	case errors.As(err, &es):
		return &apiError{errorInternal, err}
	case errors.Is(err, context.Canceled):
		return &apiError{errorCanceled, err}
	case errors.Is(err, context.DeadlineExceeded):
		return &apiError{errorTimeout, err}
	}
	return &apiError{errorExec, err}
}

var (
	// minTime and maxTime are the defaults of optional time ranges, as in Prometheus.
	minTime          = time.Unix(math.MinInt64/1000+62135596801, 0).UTC()
	maxTime          = time.Unix(math.MaxInt64/1000-62135596801, 999999999).UTC()
	minTimeFormatted = minTime.Format(time.RFC3339Nano)
	maxTimeFormatted = maxTime.Format(time.RFC3339Nano)
)

func (a *API) labelNames(r *http.Request) result {
	limit, err := parseLimit(r.FormValue("limit"))
	if err != nil {
		return invalidParam(err, "limit")
	}
	start, end, res, ok := timeRange(r)
	if !ok {
		return res
	}
	matcherSets, err := a.matchers(r.Form["match[]"])
	if err != nil {
		return result{err: &apiError{errorBadData, err}}
	}
	q, err := a.Queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return result{err: execError(err)}
	}
	defer q.Close()
	hints := &storage.LabelHints{Limit: hintLimit(limit)}
	var names []string
	var warnings annotations.Annotations
	if len(matcherSets) > 1 {
		set := map[string]struct{}{}
		for _, ms := range matcherSets {
			vals, w, err := q.LabelNames(r.Context(), hints, ms...)
			if err != nil {
				return result{err: execError(err), warnings: warnings}
			}
			warnings.Merge(w)
			for _, v := range vals {
				set[v] = struct{}{}
			}
		}
		names = make([]string, 0, len(set))
		for k := range set {
			names = append(names, k)
		}
		slices.Sort(names)
	} else {
		var ms []*labels.Matcher
		if len(matcherSets) == 1 {
			ms = matcherSets[0]
		}
		names, warnings, err = q.LabelNames(r.Context(), hints, ms...)
		if err != nil {
			return result{err: &apiError{errorExec, err}, warnings: warnings}
		}
	}
	if names == nil {
		names = []string{}
	}
	if limit > 0 && len(names) > limit {
		names = names[:limit]
		warnings = warnings.Add(errors.New("results truncated due to limit"))
	}
	return result{data: names, warnings: warnings}
}

func (a *API) labelValues(r *http.Request) result {
	name := r.PathValue("name")
	if strings.HasPrefix(name, "U__") {
		name = model.UnescapeName(name, model.ValueEncodingEscaping)
	}
	if !model.UTF8Validation.IsValidLabelName(name) {
		return result{err: &apiError{errorBadData, fmt.Errorf("invalid label name: %q", name)}}
	}
	limit, err := parseLimit(r.FormValue("limit"))
	if err != nil {
		return invalidParam(err, "limit")
	}
	start, end, res, ok := timeRange(r)
	if !ok {
		return res
	}
	matcherSets, err := a.matchers(r.Form["match[]"])
	if err != nil {
		return result{err: &apiError{errorBadData, err}}
	}
	q, err := a.Queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return result{err: &apiError{errorExec, err}}
	}
	defer q.Close()
	hints := &storage.LabelHints{Limit: hintLimit(limit)}
	var vals []string
	var warnings annotations.Annotations
	if len(matcherSets) > 1 {
		set := map[string]struct{}{}
		for _, ms := range matcherSets {
			vs, w, err := q.LabelValues(r.Context(), name, hints, ms...)
			if err != nil {
				return result{err: &apiError{errorExec, err}, warnings: warnings}
			}
			warnings.Merge(w)
			for _, v := range vs {
				set[v] = struct{}{}
			}
		}
		vals = make([]string, 0, len(set))
		for k := range set {
			vals = append(vals, k)
		}
	} else {
		var ms []*labels.Matcher
		if len(matcherSets) == 1 {
			ms = matcherSets[0]
		}
		vals, warnings, err = q.LabelValues(r.Context(), name, hints, ms...)
		if err != nil {
			return result{err: &apiError{errorExec, err}, warnings: warnings}
		}
		if vals == nil {
			vals = []string{}
		}
	}
	slices.Sort(vals)
	if limit > 0 && len(vals) > limit {
		vals = vals[:limit]
		warnings = warnings.Add(errors.New("results truncated due to limit"))
	}
	return result{data: vals, warnings: warnings}
}

func (a *API) series(r *http.Request) result {
	if len(r.Form["match[]"]) == 0 {
		return result{err: &apiError{errorBadData, errors.New("no match[] parameter provided")}}
	}
	limit, err := parseLimit(r.FormValue("limit"))
	if err != nil {
		return invalidParam(err, "limit")
	}
	start, end, res, ok := timeRange(r)
	if !ok {
		return res
	}
	matcherSets, err := a.matchers(r.Form["match[]"])
	if err != nil {
		return invalidParam(err, "match[]")
	}
	q, err := a.Queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return result{err: execError(err)}
	}
	defer q.Close()
	hints := &storage.SelectHints{Start: timestamp.FromTime(start), End: timestamp.FromTime(end), Func: "series", Limit: hintLimit(limit)}
	ctx := r.Context()
	var set storage.SeriesSet
	if len(matcherSets) > 1 {
		var sets []storage.SeriesSet
		for _, ms := range matcherSets {
			sets = append(sets, q.Select(ctx, true, hints, ms...))
		}
		set = storage.NewMergeSeriesSet(sets, 0, storage.ChainedSeriesMerge)
	} else {
		set = q.Select(ctx, true, hints, matcherSets[0]...) // sorted, as Prometheus 2 answers
	}
	b := []byte{'['}
	n := 0
	var warnings annotations.Annotations
	for set.Next() {
		if n%128 == 127 {
			if err := ctx.Err(); err != nil {
				return result{err: execError(err)}
			}
		}
		if limit > 0 && n == limit {
			warnings = warnings.Add(errors.New("results truncated due to limit"))
			break
		}
		if n > 0 {
			b = append(b, ',')
		}
		b = appendLabels(b, set.At().Labels())
		n++
	}
	warnings.Merge(set.Warnings())
	if err := set.Err(); err != nil {
		return result{err: execError(err), warnings: warnings}
	}
	return result{raw: append(b, ']'), warnings: warnings}
}

func timeRange(r *http.Request) (start, end time.Time, res result, ok bool) {
	start, err := parseTimeParam(r, "start", minTime)
	if err != nil {
		return start, end, invalidParam(err, "start"), false
	}
	end, err = parseTimeParam(r, "end", maxTime)
	if err != nil {
		return start, end, invalidParam(err, "end"), false
	}
	return start, end, result{}, true
}

func (a *API) matchers(in []string) ([][]*labels.Matcher, error) {
	sets, err := a.Parser.ParseMetricSelectors(in)
	if err != nil {
		return nil, err
	}
outer:
	for _, ms := range sets {
		for _, m := range ms {
			if m != nil && !m.Matches("") {
				continue outer
			}
		}
		return nil, errors.New("match[] must contain at least one non-empty matcher")
	}
	return sets, nil
}

func parseTimeParam(r *http.Request, name string, def time.Time) (time.Time, error) {
	v := r.FormValue(name)
	if v == "" {
		return def, nil
	}
	t, err := parseTime(v)
	if err != nil {
		return time.Time{}, fmt.Errorf("Invalid time value for '%s': %w", name, err) // Prometheus 2's wording
	}
	return t, nil
}

func parseTime(s string) (time.Time, error) {
	if t, err := strconv.ParseFloat(s, 64); err == nil {
		s, ns := math.Modf(t)
		ns = math.Round(ns*1000) / 1000
		return time.Unix(int64(s), int64(ns*float64(time.Second))).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	switch s {
	case minTimeFormatted:
		return minTime, nil
	case maxTimeFormatted:
		return maxTime, nil
	}
	return time.Time{}, fmt.Errorf("cannot parse %q to a valid timestamp", s)
}

func parseDuration(s string) (time.Duration, error) {
	if d, err := strconv.ParseFloat(s, 64); err == nil {
		ts := d * float64(time.Second)
		if math.IsNaN(ts) || ts >= float64(math.MaxInt64) || ts < float64(math.MinInt64) {
			return 0, fmt.Errorf("cannot parse %q to a valid duration. It overflows int64", s)
		}
		return time.Duration(ts), nil
	}
	if d, err := model.ParseDuration(s); err == nil {
		return time.Duration(d), nil
	}
	return 0, fmt.Errorf("cannot parse %q to a valid duration", s)
}

func parseLimit(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, errors.New("limit must be non-negative")
	}
	return n, nil
}

func hintLimit(limit int) int {
	if limit > 0 && limit < math.MaxInt {
		return limit + 1
	}
	return limit
}

// Engine returns the engine in use.
func (a *API) Engine() *Engine { return a.engine.Load() }
