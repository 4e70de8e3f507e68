package remotewrite

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"

	"github.com/imwatch/imwatch/internal/center/config"
)

// Receiver is the remote-write 1.0 endpoint: it takes a snappy-compressed
// prompb.WriteRequest, stores its samples in one transaction and answers
// 204 once they are in the write-ahead log (and fsynced, with wal_fsync).
//
// Samples the store refuses (out of order, duplicate timestamp with another
// value, too old) and series with invalid labels are skipped and counted; the
// rest is stored and the answer is 400 saying how many were refused and why,
// so the sender does not retry what can never succeed.
type Receiver struct {
	app     storage.AppendableV2
	durable func() error
	log     *slog.Logger
	limits  atomic.Pointer[config.Receiver]
	cache   *refCache
	m       receiverMetrics
	slots   atomic.Pointer[chan struct{}]

	bufs sync.Pool // *buffers
}

type buffers struct {
	body, decoded []byte
	req           Request
	sb            labels.ScratchBuilder
}

type receiverMetrics struct {
	requests *prometheus.CounterVec
	samples  prometheus.Counter
	rejected *prometheus.CounterVec
	duration prometheus.Histogram
}

// NewReceiver makes a receiver appending to app; durable, when not nil, is
// called after each commit and before answering.
func NewReceiver(app storage.AppendableV2, durable func() error, limits config.Receiver, reg prometheus.Registerer, log *slog.Logger) *Receiver {
	r := &Receiver{app: app, durable: durable, log: log, cache: newRefCache(1 << 20)}
	r.SetLimits(limits)
	r.bufs.New = func() any { return &buffers{} }
	r.m = receiverMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_remote_write_requests_total",
			Help: "Remote-write requests received, by HTTP status code of the answer.",
		}, []string{"code"}),
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_remote_write_samples_total",
			Help: "Samples (floats and histograms) stored from remote-write requests.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_remote_write_samples_rejected_total",
			Help: "Samples of remote-write requests not stored, by reason.",
		}, []string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "imwatch_center_remote_write_request_duration_seconds",
			Help:    "Time to handle a remote-write request, from its first byte to the answer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}),
	}
	if reg != nil {
		reg.MustRegister(r.m.requests, r.m.samples, r.m.rejected, r.m.duration)
	}
	return r
}

// SetLimits changes the limits for later requests.
func (r *Receiver) SetLimits(l config.Receiver) {
	if old := r.limits.Load(); old == nil || old.MaxConcurrent != l.MaxConcurrent {
		slots := make(chan struct{}, max(l.MaxConcurrent, 1))
		r.slots.Store(&slots)
	}
	r.limits.Store(&l)
}

// httpError is an answer other than 204.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) *httpError {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	code, msg := http.StatusNoContent, ""
	if err := r.handle(req); err != nil {
		code, msg = err.code, err.msg
	}
	if code >= 500 {
		r.log.Error("remote write", "code", code, "err", msg)
	} else if code != http.StatusNoContent {
		r.log.Debug("remote write refused", "code", code, "err", msg, "remote", req.RemoteAddr)
	}
	r.m.requests.WithLabelValues(fmt.Sprint(code)).Inc()
	if code == http.StatusNoContent {
		w.WriteHeader(code)
	} else {
		if code == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodPost)
		}
		http.Error(w, msg, code)
	}
	r.m.duration.Observe(time.Since(start).Seconds())
}

func (r *Receiver) handle(req *http.Request) *httpError {
	if req.Method != http.MethodPost {
		return errorf(http.StatusMethodNotAllowed, "remote write wants POST, got %s", req.Method)
	}
	if ct := req.Header.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/x-protobuf" && mt != "application/octet-stream") {
			return errorf(http.StatusUnsupportedMediaType, "Content-Type %q: want application/x-protobuf (remote write 1.0)", ct)
		}
		if p := params["proto"]; p != "" && p != "prometheus.WriteRequest" {
			return errorf(http.StatusUnsupportedMediaType, "proto %q: only remote write 1.0 (prometheus.WriteRequest) is supported", p)
		}
	}
	if enc := req.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "snappy") {
		return errorf(http.StatusUnsupportedMediaType, "Content-Encoding %q: want snappy", enc)
	}
	lim := r.limits.Load()
	if req.ContentLength > int64(lim.MaxBodySize) {
		return errorf(http.StatusRequestEntityTooLarge, "body of %d bytes is larger than max_body_size %s", req.ContentLength, lim.MaxBodySize)
	}
	slots := *r.slots.Load()
	select {
	case slots <- struct{}{}:
		defer func() { <-slots }()
	case <-req.Context().Done():
		return errorf(http.StatusServiceUnavailable, "gave up waiting for a turn: %v", req.Context().Err())
	}
	bufs := r.bufs.Get().(*buffers)
	defer r.bufs.Put(bufs)

	body, err := readAll(req.Body, bufs.body[:0], int(lim.MaxBodySize))
	bufs.body = body[:0]
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return errorf(http.StatusRequestEntityTooLarge, "body is larger than max_body_size %s", lim.MaxBodySize)
		}
		return errorf(http.StatusBadRequest, "read body: %v", err)
	}
	n, err := snappy.DecodedLen(body)
	if err != nil {
		return errorf(http.StatusBadRequest, "snappy: %v (the body must be snappy block-compressed)", err)
	}
	if n > int(lim.MaxDecodedSize) {
		return errorf(http.StatusRequestEntityTooLarge, "decompressed body of %d bytes is larger than max_decoded_size %s", n, lim.MaxDecodedSize)
	}
	if cap(bufs.decoded) < n {
		bufs.decoded = make([]byte, n)
	}
	decoded, err := snappy.Decode(bufs.decoded[:n], body)
	if err != nil {
		return errorf(http.StatusBadRequest, "snappy: %v (the body must be snappy block-compressed)", err)
	}
	if err := bufs.req.Decode(decoded); err != nil {
		return errorf(http.StatusBadRequest, "decode prometheus.WriteRequest: %v", err)
	}
	if ns := bufs.req.NumSamples(); ns > lim.MaxSamplesPerWrite {
		return errorf(http.StatusRequestEntityTooLarge, "%d samples in one request, more than max_samples_per_write %d", ns, lim.MaxSamplesPerWrite)
	}
	return r.store(req, bufs)
}

func (r *Receiver) store(req *http.Request, bufs *buffers) *httpError {
	app := r.app.AppenderV2(req.Context())
	var rej rejections
	stored := 0
	for i := range bufs.req.Series {
		s := &bufs.req.Series[i]
		ref, ls, cached := r.cache.get(s.Key)
		if !cached {
			var reason string
			ls, reason = buildLabels(&bufs.sb, s.Labels)
			if reason != "" {
				rej.add(reason, len(s.Samples)+len(s.Histograms), ls, 0, errors.New(reason))
				continue
			}
		}
		newRef := ref
		for _, smp := range s.Samples {
			got, err := app.Append(newRef, ls, 0, smp.Timestamp, smp.Value, nil, nil, storage.AOptions{})
			if err != nil {
				if reason := clientError(err); reason != "" {
					rej.add(reason, 1, ls, smp.Timestamp, err)
					continue
				}
				_ = app.Rollback()
				return errorf(http.StatusInternalServerError, "store sample of %s: %v", ls, err)
			}
			newRef = got
			stored++
		}
		for _, hp := range s.Histograms {
			var h *histogram.Histogram
			var fh *histogram.FloatHistogram
			if hp.IsFloatHistogram() {
				fh = hp.ToFloatHistogram()
			} else {
				h = hp.ToIntHistogram()
			}
			got, err := app.Append(newRef, ls, 0, hp.Timestamp, 0, h, fh, storage.AOptions{})
			if err != nil {
				if reason := clientError(err); reason != "" {
					rej.add(reason, 1, ls, hp.Timestamp, err)
					continue
				}
				_ = app.Rollback()
				return errorf(http.StatusInternalServerError, "store histogram of %s: %v", ls, err)
			}
			newRef = got
			stored++
		}
		if newRef != 0 && (newRef != ref || !cached) {
			r.cache.put(s.Key, newRef, ls)
		}
	}
	if err := app.Commit(); err != nil {
		return errorf(http.StatusInternalServerError, "commit: %v", err)
	}
	if r.durable != nil {
		if err := r.durable(); err != nil {
			return errorf(http.StatusInternalServerError, "sync write-ahead log: %v", err)
		}
	}
	r.m.samples.Add(float64(stored))
	if rej.total == 0 {
		return nil
	}
	for reason, n := range rej.byReason {
		r.m.rejected.WithLabelValues(reason).Add(float64(n))
	}
	return errorf(http.StatusBadRequest, "stored %d samples, refused %d: %s", stored, rej.total, rej.String())
}

// rejections counts refused samples by reason and keeps the first example.
type rejections struct {
	total    int
	byReason map[string]int
	first    string
}

func (r *rejections) add(reason string, n int, ls labels.Labels, t int64, err error) {
	if n == 0 {
		n = 1 // a series without samples still counts as refused
	}
	if r.byReason == nil {
		r.byReason = map[string]int{}
	}
	r.total += n
	r.byReason[reason] += n
	if r.first == "" {
		r.first = fmt.Sprintf("%s at t=%d: %v", ls, t, err)
	}
}

func (r *rejections) String() string {
	parts := make([]string, 0, len(r.byReason))
	for _, reason := range []string{"out_of_order", "out_of_bounds", "duplicate_timestamp", "too_old", "invalid_histogram", "invalid_labels", "no_metric_name", "duplicate_label"} {
		if n := r.byReason[reason]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", reason, n))
		}
	}
	return strings.Join(parts, ", ") + " (first: " + r.first + ")"
}

// clientError names what is wrong with a sample the store refused, or ""
// when the failure is the store's own.
func clientError(err error) string {
	switch {
	case errors.Is(err, storage.ErrOutOfOrderSample):
		return "out_of_order"
	case errors.Is(err, storage.ErrOutOfBounds):
		return "out_of_bounds"
	case errors.Is(err, storage.ErrDuplicateSampleForTimestamp):
		return "duplicate_timestamp"
	case errors.Is(err, storage.ErrTooOldSample):
		return "too_old"
	case errors.Is(err, tsdb.ErrInvalidSample):
		return "invalid_labels"
	case isHistogramError(err):
		return "invalid_histogram"
	}
	return ""
}

func isHistogramError(err error) bool {
	var he histogram.Error
	return errors.As(err, &he)
}

// buildLabels makes the label set of a series, sorted, without empty
// values, or says why it is invalid.
func buildLabels(sb *labels.ScratchBuilder, in []Label) (labels.Labels, string) {
	sb.Reset()
	hasName := false
	for _, l := range in {
		if len(l.Value) == 0 {
			continue
		}
		name := yolo(l.Name)
		if !model.UTF8Validation.IsValidLabelName(name) || !model.LabelValue(yolo(l.Value)).IsValid() {
			ls := sb.Labels()
			return ls, "invalid_labels"
		}
		if name == labels.MetricName {
			hasName = true
		}
		sb.Add(name, yolo(l.Value))
	}
	sb.Sort()
	ls := sb.Labels()
	if !hasName {
		return ls, "no_metric_name"
	}
	if _, dup := ls.HasDuplicateLabelNames(); dup {
		return ls, "duplicate_label"
	}
	return ls, ""
}

// yolo views b as a string without copying; the string must not outlive b
// (ScratchBuilder.Labels copies what it keeps).
func yolo(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

var errTooLarge = errors.New("body too large")

// readAll reads r into buf, failing with errTooLarge past limit bytes.
func readAll(r io.Reader, buf []byte, limit int) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				return buf, errTooLarge
			}
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			return buf, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// refCache remembers the tsdb series reference and labels of a series by
// the bytes of its labels on the wire, so that a series seen before is
// appended without building or hashing its labels. A stale reference (the
// series was dropped from the head) is harmless: tsdb then looks the series
// up by its labels, and the new reference replaces the old one.
type refCache struct {
	shards   [64]refShard
	perShard int
}

type refShard struct {
	mu sync.RWMutex
	m  map[string]refEntry
}

type refEntry struct {
	ref storage.SeriesRef
	ls  labels.Labels
}

func newRefCache(maxEntries int) *refCache {
	c := &refCache{perShard: max(maxEntries/64, 1)}
	for i := range c.shards {
		c.shards[i].m = map[string]refEntry{}
	}
	return c
}

func (c *refCache) shard(key []byte) *refShard {
	return &c.shards[xxhash.Sum64(key)%uint64(len(c.shards))]
}

func (c *refCache) get(key []byte) (storage.SeriesRef, labels.Labels, bool) {
	if len(key) == 0 {
		return 0, labels.EmptyLabels(), false
	}
	s := c.shard(key)
	s.mu.RLock()
	e, ok := s.m[string(key)]
	s.mu.RUnlock()
	return e.ref, e.ls, ok
}

func (c *refCache) put(key []byte, ref storage.SeriesRef, ls labels.Labels) {
	if len(key) == 0 {
		return
	}
	s := c.shard(key)
	s.mu.Lock()
	if len(s.m) >= c.perShard {
		clear(s.m) // crude, but bounded; hot series come back at once
	}
	s.m[string(key)] = refEntry{ref: ref, ls: ls}
	s.mu.Unlock()
}
