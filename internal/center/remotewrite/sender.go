package remotewrite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/storage"
)

// Writers holds one queue per remote_write entry and hands every committed
// sample to each; it is the store's Sink.
type Writers struct {
	log *slog.Logger

	mu     sync.RWMutex
	queues map[string]*Queue

	m senderMetrics
}

type senderMetrics struct {
	samples *prometheus.CounterVec
	retries *prometheus.CounterVec
	queued  *prometheus.GaugeVec
}

// NewWriters makes an empty set of queues.
func NewWriters(reg prometheus.Registerer, log *slog.Logger) *Writers {
	w := &Writers{log: log, queues: map[string]*Queue{}, m: senderMetrics{
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_remote_write_out_samples_total",
			Help: "Samples written onward to remote-write destinations, by destination and result (sent, dropped_queue_full, refused, dropped_at_stop).",
		}, []string{"url", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_remote_write_out_retries_total",
			Help: "Requests to remote-write destinations that failed and were retried.",
		}, []string{"url"}),
		queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imwatch_center_remote_write_out_queue_length",
			Help: "Samples waiting to be written onward, by destination.",
		}, []string{"url"}),
	}}
	if reg != nil {
		reg.MustRegister(w.m.samples, w.m.retries, w.m.queued)
	}
	return w
}

// ApplyConfig starts queues for new destinations, stops (flushing within
// ctx) the ones no longer configured and restarts the changed ones.
func (w *Writers) ApplyConfig(ctx context.Context, cfgs []config.RemoteWrite) {
	want := map[string]config.RemoteWrite{}
	for _, c := range cfgs {
		want[c.URL] = c
	}
	w.mu.Lock()
	var stop []*Queue
	for u, q := range w.queues {
		if c, ok := want[u]; !ok || c != q.cfg {
			stop = append(stop, q)
			delete(w.queues, u)
		}
	}
	for u, c := range want {
		if _, ok := w.queues[u]; !ok {
			q := newQueue(c, w.m, w.log.With("url", u))
			w.queues[u] = q
			go q.run()
		}
	}
	w.mu.Unlock()
	for _, q := range stop {
		q.stop(ctx)
		if _, still := want[q.cfg.URL]; !still {
			w.m.queued.DeleteLabelValues(q.cfg.URL)
		}
	}
}

// Len is the number of destinations.
func (w *Writers) Len() int {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return len(w.queues)
}

// Enqueue implements storage.Sink.
func (w *Writers) Enqueue(samples []storage.Sample) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	for _, q := range w.queues {
		q.enqueue(samples)
	}
}

// Stop flushes every queue within ctx and stops them.
func (w *Writers) Stop(ctx context.Context) {
	w.mu.Lock()
	qs := w.queues
	w.queues = map[string]*Queue{}
	w.mu.Unlock()
	var wg sync.WaitGroup
	for _, q := range qs {
		wg.Add(1)
		go func() { defer wg.Done(); q.stop(ctx) }()
	}
	wg.Wait()
}

// Queue is a bounded in-memory queue of samples for one destination, sent
// in batches by one goroutine (so each series stays in order), retried with
// exponential backoff on network errors, 5xx and 429. When it is full the
// oldest samples are dropped and counted: the freshest data matters most.
type Queue struct {
	cfg    config.RemoteWrite
	log    *slog.Logger
	m      senderMetrics
	client *http.Client

	mu      sync.Mutex
	buf     []storage.Sample // ring
	head, n int
	first   time.Time // when the oldest queued sample arrived
	wake    chan struct{}
	quit    chan struct{}
	stopCtx context.Context
	done    chan struct{}

	// scratch, owned by run
	req  prompb.WriteRequest
	raw  []byte
	comp []byte
}

func newQueue(cfg config.RemoteWrite, m senderMetrics, log *slog.Logger) *Queue {
	return &Queue{
		cfg: cfg, log: log, m: m,
		client: &http.Client{},
		buf:    make([]storage.Sample, cfg.QueueCapacity),
		wake:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
}

func (q *Queue) enqueue(samples []storage.Sample) {
	q.mu.Lock()
	c := len(q.buf)
	if len(samples) > c {
		q.m.samples.WithLabelValues(q.cfg.URL, "dropped_queue_full").Add(float64(len(samples) - c))
		samples = samples[len(samples)-c:]
	}
	if over := q.n + len(samples) - c; over > 0 {
		q.head = (q.head + over) % c
		q.n -= over
		q.m.samples.WithLabelValues(q.cfg.URL, "dropped_queue_full").Add(float64(over))
	}
	wasEmpty := q.n == 0
	if wasEmpty {
		q.first = time.Now()
	}
	for _, s := range samples {
		q.buf[(q.head+q.n)%c] = s
		q.n++
	}
	// Wake the sender when a batch is full, or to start the batch deadline.
	wake := wasEmpty || q.n >= q.cfg.MaxSamplesPerSend
	q.m.queued.WithLabelValues(q.cfg.URL).Set(float64(q.n))
	q.mu.Unlock()
	if wake {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// take removes up to max samples from the front of the queue.
func (q *Queue) take(out []storage.Sample, maxN int) []storage.Sample {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := min(q.n, maxN)
	c := len(q.buf)
	for i := 0; i < k; i++ {
		j := (q.head + i) % c
		out = append(out, q.buf[j])
		q.buf[j] = storage.Sample{}
	}
	q.head = (q.head + k) % c
	q.n -= k
	if q.n > 0 {
		q.first = time.Now()
	}
	q.m.queued.WithLabelValues(q.cfg.URL).Set(float64(q.n))
	return out
}

// ready says whether a batch should go now, or how long to wait.
func (q *Queue) ready() (bool, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n >= q.cfg.MaxSamplesPerSend {
		return true, 0
	}
	if q.n == 0 {
		return false, time.Hour
	}
	wait := q.cfg.BatchSendDeadline.D() - time.Since(q.first)
	return wait <= 0, wait
}

func (q *Queue) run() {
	defer close(q.done)
	batch := make([]storage.Sample, 0, q.cfg.MaxSamplesPerSend)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		ok, wait := q.ready()
		if !ok {
			timer.Reset(wait)
			select {
			case <-q.wake:
			case <-timer.C:
			case <-q.quit:
				q.flush(batch[:0])
				return
			}
			continue
		}
		batch = q.take(batch[:0], q.cfg.MaxSamplesPerSend)
		if !q.sendWithRetry(context.Background(), batch, q.quit) {
			// Stopping while retrying: the batch goes back into the flush.
			q.flushWith(batch)
			return
		}
	}
}

// flush sends what is queued until the stop context ends.
func (q *Queue) flush(batch []storage.Sample) {
	for {
		batch = q.take(batch[:0], q.cfg.MaxSamplesPerSend)
		if len(batch) == 0 {
			return
		}
		if !q.flushWith(batch) {
			return
		}
	}
}

func (q *Queue) flushWith(batch []storage.Sample) bool {
	ctx := q.stopCtx
	if ctx.Err() == nil && q.sendWithRetry(ctx, batch, ctx.Done()) {
		return true
	}
	q.mu.Lock()
	lost := len(batch) + q.n
	q.n = 0
	q.mu.Unlock()
	q.m.samples.WithLabelValues(q.cfg.URL, "dropped_at_stop").Add(float64(lost))
	q.log.Warn("remote write stopped with samples not sent", "samples", lost)
	return false
}

func (q *Queue) stop(ctx context.Context) {
	q.stopCtx = ctx
	close(q.quit)
	<-q.done
}

// sendWithRetry sends batch until it is accepted or refused for good; it
// returns false when abort closes first.
func (q *Queue) sendWithRetry(ctx context.Context, batch []storage.Sample, abort <-chan struct{}) bool {
	if len(batch) == 0 {
		return true
	}
	body, err := q.encode(batch)
	if err != nil {
		q.log.Error("encode remote write batch", "err", err)
		q.m.samples.WithLabelValues(q.cfg.URL, "refused").Add(float64(len(batch)))
		return true
	}
	backoff := q.cfg.MinBackoff.D()
	for {
		err := q.send(ctx, body)
		if err == nil {
			q.m.samples.WithLabelValues(q.cfg.URL, "sent").Add(float64(len(batch)))
			return true
		}
		var perm *permanentError
		if errors.As(err, &perm) {
			q.log.Warn("remote write refused a batch; dropping it", "samples", len(batch), "err", err)
			q.m.samples.WithLabelValues(q.cfg.URL, "refused").Add(float64(len(batch)))
			return true
		}
		q.m.retries.WithLabelValues(q.cfg.URL).Inc()
		q.log.Debug("remote write failed, retrying", "backoff", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-abort:
			t.Stop()
			return false
		}
		backoff = min(backoff*2, q.cfg.MaxBackoff.D())
	}
}

func (q *Queue) encode(batch []storage.Sample) ([]byte, error) {
	ts := q.req.Timeseries[:0]
	for _, s := range batch {
		var t prompb.TimeSeries
		if len(ts) < cap(ts) {
			t = ts[:len(ts)+1][len(ts)]
			t.Labels, t.Samples, t.Histograms = t.Labels[:0], t.Samples[:0], t.Histograms[:0]
		}
		t.Labels = prompb.FromLabels(s.Labels, t.Labels)
		switch {
		case s.H != nil:
			t.Histograms = append(t.Histograms, prompb.FromIntHistogram(s.T, s.H))
		case s.FH != nil:
			t.Histograms = append(t.Histograms, prompb.FromFloatHistogram(s.T, s.FH))
		default:
			t.Samples = append(t.Samples, prompb.Sample{Value: s.V, Timestamp: s.T})
		}
		ts = append(ts, t)
	}
	q.req.Timeseries = ts
	size := q.req.Size()
	if cap(q.raw) < size {
		q.raw = make([]byte, size)
	}
	n, err := q.req.MarshalToSizedBuffer(q.raw[:size])
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	q.comp = snappy.Encode(q.comp[:cap(q.comp)], q.raw[size-n:size])
	return q.comp, nil
}

type permanentError struct{ error }

func (q *Queue) send(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.Timeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, q.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return &permanentError{fmt.Errorf("request: %w", err)}
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("User-Agent", "imwatch-center")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	if q.cfg.BearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+q.cfg.BearerToken)
	}
	resp, err := q.client.Do(req)
	if err != nil {
		return fmt.Errorf("post: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode/100 == 5:
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
	default:
		return &permanentError{fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))}
	}
}
