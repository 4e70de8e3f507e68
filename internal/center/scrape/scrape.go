// Package scrape pulls /metrics from static targets into the center's store,
// the way Prometheus does for a static_configs job: every target gets `up`,
// `scrape_duration_seconds` and the other scrape_* series, target labels win
// over exposed ones (which become exported_*), series that disappear get
// staleness markers, and a scrape larger than the limits fails.
package scrape

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"

	"github.com/imwatch/imwatch/internal/center/config"
)

// DefaultJob is the job label of a target that does not set one.
const DefaultJob = "imwatch"

const acceptHeader = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"

// ErrSampleLimit is a scrape with more samples than scrape.sample_limit.
var ErrSampleLimit = errors.New("sample_limit exceeded")

// ErrBodySizeLimit is a scrape with a bigger body than scrape.body_size_limit.
var ErrBodySizeLimit = errors.New("body_size_limit exceeded")

// Manager runs one scrape loop per target.
type Manager struct {
	app    storage.AppendableV2
	log    *slog.Logger
	client *http.Client

	mu      sync.Mutex
	loops   map[string]*loop
	stopped bool

	scrapes *prometheus.CounterVec
	targets prometheus.Gauge
}

type settings struct {
	interval, timeout time.Duration
	sampleLimit       int
	bodyLimit         int64
}

// NewManager makes a manager appending to app; it scrapes nothing until ApplyConfig.
func NewManager(app storage.AppendableV2, reg prometheus.Registerer, log *slog.Logger) *Manager {
	m := &Manager{
		app:   app,
		log:   log,
		loops: map[string]*loop{},
		client: &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     5 * time.Minute,
		}},
		scrapes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_scrapes_total",
			Help: "Scrapes of targets, by result (success or the kind of failure).",
		}, []string{"result"}),
		targets: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imwatch_center_scrape_targets",
			Help: "Targets being scraped.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.scrapes, m.targets)
	}
	return m
}

// ApplyConfig scrapes exactly the targets of cfg and extra from now on:
// new ones start, removed ones stop (their series marked stale), and kept
// ones pick up a new interval or timeout at their next scrape.
func (m *Manager) ApplyConfig(cfg config.Scrape, extra []config.Target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	// Each apply gets its own settings: the loops hold a pointer to them.
	st := &settings{interval: cfg.Interval.D(), timeout: cfg.Timeout.D(), sampleLimit: cfg.SampleLimit, bodyLimit: int64(cfg.BodySizeLimit)}
	want := map[string]config.Target{}
	for _, t := range append(append([]config.Target(nil), cfg.Targets...), extra...) {
		want[targetKey(t)] = t
	}
	for k, l := range m.loops {
		if _, ok := want[k]; !ok {
			l.stop(true)
			delete(m.loops, k)
		} else {
			l.settings.Store(st)
		}
	}
	for k, t := range want {
		if _, ok := m.loops[k]; ok {
			continue
		}
		l := newLoop(m, t)
		l.settings.Store(st)
		m.loops[k] = l
		go l.run()
	}
	m.targets.Set(float64(len(m.loops)))
}

// Stop stops every loop; their series are marked stale.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.stopped = true
	loops := m.loops
	m.loops = map[string]*loop{}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Add(1)
		go func() { defer wg.Done(); l.stop(true) }()
	}
	wg.Wait()
}

// TargetStatus is the state of one target.
type TargetStatus struct {
	URL        string
	Labels     labels.Labels
	Health     string // "up", "down" or "unknown"
	LastError  string
	LastScrape time.Time
	Duration   time.Duration
}

// Targets reports every target, sorted by URL.
func (m *Manager) Targets() []TargetStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]TargetStatus, 0, len(m.loops))
	for _, l := range m.loops {
		out = append(out, l.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].URL < out[j].URL })
	return out
}

func targetKey(t config.Target) string {
	keys := make([]string, 0, len(t.Labels))
	for k := range t.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(t.URL)
	for _, k := range keys {
		b.WriteString("\xff" + k + "=" + t.Labels[k])
	}
	return b.String()
}

// TargetLabels are the labels a target adds to everything scraped from it:
// its configured labels, job (default DefaultJob) and instance (default the
// URL's host:port).
func TargetLabels(t config.Target) labels.Labels {
	b := labels.NewBuilder(labels.EmptyLabels())
	for k, v := range t.Labels {
		b.Set(k, v)
	}
	if _, ok := t.Labels[model.JobLabel]; !ok {
		b.Set(model.JobLabel, DefaultJob)
	}
	if _, ok := t.Labels[model.InstanceLabel]; !ok {
		if u, err := url.Parse(t.URL); err == nil {
			b.Set(model.InstanceLabel, u.Host)
		}
	}
	return b.Labels()
}

type loop struct {
	m        *Manager
	url      string
	target   labels.Labels
	settings atomic.Pointer[settings]
	log      *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	// staleOnStop says whether stopping marks the series stale.
	staleOnStop atomic.Bool

	// Owned by run.
	cache   map[string]*cacheEntry
	symbols *labels.SymbolTable
	lb      *labels.Builder
	buf     []byte
	iter    uint64

	mu     sync.Mutex
	last   TargetStatus
	health string
}

type cacheEntry struct {
	ref      storage.SeriesRef
	lset     labels.Labels
	lastIter uint64
}

func newLoop(m *Manager, t config.Target) *loop {
	ctx, cancel := context.WithCancel(context.Background())
	l := &loop{
		m: m, url: t.URL, target: TargetLabels(t), ctx: ctx, cancel: cancel, done: make(chan struct{}),
		cache: map[string]*cacheEntry{}, symbols: labels.NewSymbolTable(), lb: labels.NewBuilder(labels.EmptyLabels()),
		health: "unknown",
	}
	l.log = m.log.With("target", t.URL)
	return l
}

func (l *loop) stop(stale bool) {
	l.staleOnStop.Store(stale)
	l.cancel()
	<-l.done
}

func (l *loop) status() TargetStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.last
	s.URL, s.Labels, s.Health = l.url, l.target, l.health
	return s
}

// offset spreads targets over the interval, always the same for a URL.
func (l *loop) offset(interval time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(l.url))
	now := time.Now().UnixNano()
	base := int64(h.Sum64() % uint64(interval))
	next := (base - now%int64(interval) + int64(interval)) % int64(interval)
	return time.Duration(next)
}

func (l *loop) run() {
	defer close(l.done)
	s := l.settings.Load()
	timer := time.NewTimer(l.offset(s.interval))
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-l.ctx.Done():
			if l.staleOnStop.Load() {
				l.markAllStale(time.Now(), true)
			}
			return
		case <-timer.C:
		}
		s = l.settings.Load()
		start := time.Now()
		l.scrapeOnce(start, s)
		last = start
		// Keep the cadence: the next scrape is one interval after this one started.
		next := last.Add(s.interval)
		timer.Reset(max(time.Until(next), 0))
	}
}

func (l *loop) scrapeOnce(start time.Time, s *settings) {
	ctx, cancel := context.WithTimeout(l.ctx, s.timeout)
	body, contentType, err := l.fetch(ctx, s)
	cancel()
	if l.ctx.Err() != nil {
		return // stopping: no report for a scrape cut short
	}
	ts := start.UnixMilli()
	l.iter++
	var scraped, added int
	if err == nil {
		scraped, added, err = l.appendBody(body, contentType, ts, s)
	}
	dur := time.Since(start)
	result := "success"
	if err != nil {
		result = failureKind(err)
		l.log.Debug("scrape failed", "err", err)
		l.markAllStale(start, false)
	}
	l.m.scrapes.WithLabelValues(result).Inc()
	l.report(ts, err == nil, dur, scraped, added)

	l.mu.Lock()
	l.last.LastScrape, l.last.Duration = start, dur
	l.last.LastError = ""
	l.health = "up"
	if err != nil {
		l.last.LastError, l.health = err.Error(), "down"
	}
	l.mu.Unlock()
}

func failureKind(err error) string {
	switch {
	case errors.Is(err, ErrSampleLimit):
		return "sample_limit"
	case errors.Is(err, ErrBodySizeLimit):
		return "body_size_limit"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	var he *httpStatusError
	if errors.As(err, &he) {
		return "http_status"
	}
	var pe *parseError
	if errors.As(err, &pe) {
		return "parse"
	}
	return "connect"
}

type httpStatusError struct{ status string }

func (e *httpStatusError) Error() string { return "server returned HTTP status " + e.status }

type parseError struct{ err error }

func (e *parseError) Error() string { return "parse metrics: " + e.err.Error() }
func (e *parseError) Unwrap() error { return e.err }

func (l *loop) fetch(ctx context.Context, s *settings) ([]byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.url, nil)
	if err != nil {
		return nil, "", fmt.Errorf("scrape request: %w", err)
	}
	req.Header.Set("Accept", acceptHeader)
	req.Header.Set("User-Agent", "imwatch-center")
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat(s.timeout.Seconds(), 'f', -1, 64))
	resp, err := l.m.client.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, "", &httpStatusError{resp.Status}
	}
	l.buf = l.buf[:0]
	lr := io.LimitReader(resp.Body, s.bodyLimit+1)
	for {
		if len(l.buf) == cap(l.buf) {
			l.buf = append(l.buf, 0)[:len(l.buf)]
		}
		n, err := lr.Read(l.buf[len(l.buf):cap(l.buf)])
		l.buf = l.buf[:len(l.buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, "", fmt.Errorf("read scrape body: %w", err)
		}
	}
	if int64(len(l.buf)) > s.bodyLimit {
		return nil, "", fmt.Errorf("%w: body is larger than %d bytes", ErrBodySizeLimit, s.bodyLimit)
	}
	return l.buf, resp.Header.Get("Content-Type"), nil
}

// appendBody parses body and appends its samples in one transaction,
// marking series of the previous scrape that are gone as stale.
func (l *loop) appendBody(body []byte, contentType string, ts int64, s *settings) (scraped, added int, err error) {
	p, err := textparse.New(body, contentType, l.symbols, textparse.ParserOptions{FallbackContentType: "text/plain"})
	if p == nil {
		return 0, 0, &parseError{err}
	}
	app := l.m.app.AppenderV2(l.ctx)
	defer func() {
		if err != nil {
			_ = app.Rollback()
		}
	}()
	var lset labels.Labels
	refused := 0
	for {
		et, perr := p.Next()
		if errors.Is(perr, io.EOF) {
			break
		}
		if perr != nil {
			return scraped, added, &parseError{perr}
		}
		var (
			key    []byte
			tp     *int64
			v      float64
			h      *histogram.Histogram
			fh     *histogram.FloatHistogram
			isHist bool
		)
		switch et {
		case textparse.EntrySeries:
			key, tp, v = p.Series()
		case textparse.EntryHistogram:
			key, tp, h, fh = p.Histogram()
			isHist = true
		default:
			continue
		}
		scraped++
		if scraped > s.sampleLimit {
			return scraped, added, fmt.Errorf("%w: more than %d samples", ErrSampleLimit, s.sampleLimit)
		}
		t := ts
		if tp != nil {
			t = *tp
		}
		ce, ok := l.cache[string(key)]
		if !ok {
			p.Labels(&lset)
			ce = &cacheEntry{lset: l.withTargetLabels(lset)}
			if !ce.lset.Has(labels.MetricName) {
				refused++
				continue
			}
			l.cache[string(key)] = ce
		}
		if ce.lastIter == l.iter {
			continue // the same series twice in one scrape: keep the first
		}
		ce.lastIter = l.iter
		if !isHist {
			h, fh = nil, nil
		}
		ref, aerr := app.Append(ce.ref, ce.lset, 0, t, v, h, fh, storage.AOptions{})
		if aerr != nil {
			if isClientError(aerr) {
				refused++
				continue
			}
			return scraped, added, fmt.Errorf("append: %w", aerr)
		}
		if ce.ref == 0 {
			added++
		}
		ce.ref = ref
	}
	// Series of the last scrape that are gone now get a staleness marker.
	for k, ce := range l.cache {
		if ce.lastIter == l.iter {
			continue
		}
		if ce.lastIter == l.iter-1 {
			_, _ = app.Append(ce.ref, ce.lset, 0, ts, math.Float64frombits(value.StaleNaN), nil, nil, storage.AOptions{})
		}
		delete(l.cache, k)
	}
	if refused > 0 {
		l.log.Debug("scrape: samples refused", "count", refused)
	}
	if err := app.Commit(); err != nil {
		return scraped, added, fmt.Errorf("commit: %w", err)
	}
	return scraped, added, nil
}

func isClientError(err error) bool {
	return errors.Is(err, storage.ErrOutOfOrderSample) || errors.Is(err, storage.ErrOutOfBounds) ||
		errors.Is(err, storage.ErrDuplicateSampleForTimestamp) || errors.Is(err, storage.ErrTooOldSample)
}

// withTargetLabels adds the target labels; an exposed label of the same name
// is kept as exported_<name>, as Prometheus does without honor_labels.
func (l *loop) withTargetLabels(exposed labels.Labels) labels.Labels {
	l.lb.Reset(exposed)
	var conflicts []labels.Label
	l.target.Range(func(t labels.Label) {
		if v := exposed.Get(t.Name); v != "" {
			conflicts = append(conflicts, labels.Label{Name: t.Name, Value: v})
		}
		l.lb.Set(t.Name, t.Value)
	})
	for _, c := range conflicts {
		name := c.Name
		for {
			name = model.ExportedLabelPrefix + name
			if l.lb.Get(name) == "" {
				l.lb.Set(name, c.Value)
				break
			}
		}
	}
	return l.lb.Labels()
}

// markAllStale writes staleness markers for every series of the last
// scrape, after a failed scrape or, with report, for the scrape_* series
// too when the target goes away.
func (l *loop) markAllStale(at time.Time, report bool) {
	ts := at.UnixMilli()
	app := l.m.app.AppenderV2(context.Background())
	stale := math.Float64frombits(value.StaleNaN)
	for k, ce := range l.cache {
		if ce.ref != 0 {
			_, _ = app.Append(ce.ref, ce.lset, 0, ts, stale, nil, nil, storage.AOptions{})
		}
		delete(l.cache, k)
	}
	if report && l.iter > 0 {
		for _, name := range reportNames {
			_, _ = app.Append(0, l.reportLabels(name), 0, ts, stale, nil, nil, storage.AOptions{})
		}
	}
	if err := app.Commit(); err != nil {
		l.log.Warn("write staleness markers", "err", err)
	}
}

var reportNames = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling", "scrape_series_added"}

func (l *loop) reportLabels(name string) labels.Labels {
	b := labels.NewBuilder(l.target)
	b.Set(labels.MetricName, name)
	return b.Labels()
}

// report appends up, scrape_duration_seconds and the sample counts.
func (l *loop) report(ts int64, ok bool, dur time.Duration, scraped, added int) {
	up := 0.0
	if ok {
		up = 1
	}
	vals := []float64{up, dur.Seconds(), float64(scraped), float64(scraped), float64(added)}
	app := l.m.app.AppenderV2(context.Background())
	for i, name := range reportNames {
		if _, err := app.Append(0, l.reportLabels(name), 0, ts, vals[i], nil, nil, storage.AOptions{}); err != nil {
			l.log.Debug("append scrape report", "series", name, "err", err)
		}
	}
	if err := app.Commit(); err != nil {
		l.log.Warn("commit scrape report", "err", err)
	}
}
