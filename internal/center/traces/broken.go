package traces

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BrokenCounter counts broken traces (imwatch_traces_broken_total).
type BrokenCounter interface {
	CountBroken(missing, gaps int)
}

// Bounds of the broken-trace detector: the spans held for traces waiting
// to be checked, and the traces remembered as checked.
const (
	maxWatchedSpans = 2_000_000
	maxChecked      = 500_000
)

// BrokenDetector checks each trace once no span of it has arrived for the
// grace period: spans whose parent never came and gaps between hops are
// counted. It keeps what the check needs of the spans it sees (ids and
// times), so a check reads nothing back; a trace that gets more spans after
// its check is checked again, from the store, and only what is new is
// counted.
type BrokenDetector struct {
	store    Store
	counter  BrokenCounter
	log      *slog.Logger
	analysis atomic.Pointer[[2]time.Duration] // grace, gap threshold

	mu      sync.Mutex
	pending map[TraceID]*pendingTrace
	spans   int // held in pending
	fifo    []dueAt
	checked map[TraceID][2]int
	order   []TraceID // of checked, oldest first

	dropped prometheus.Counter
	checks  prometheus.Counter

	stop chan struct{}
	done chan struct{}
}

type pendingTrace struct {
	at    int64 // check at (unix ns)
	spans []Record
}

type dueAt struct {
	id TraceID
	at int64
}

// NewBrokenDetector starts a detector; store is read for re-checks.
func NewBrokenDetector(store Store, counter BrokenCounter, grace, gapThreshold time.Duration, reg prometheus.Registerer, log *slog.Logger) *BrokenDetector {
	d := &BrokenDetector{
		store: store, counter: counter, log: log,
		pending: map[TraceID]*pendingTrace{}, checked: map[TraceID][2]int{},
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_traces_unchecked_total", Help: "Spans not checked for missing parents and gaps because too many were waiting.",
		}),
		checks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_traces_checked_total", Help: "Trace checks for missing parents and gaps.",
		}),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	d.SetAnalysis(grace, gapThreshold)
	if reg != nil {
		reg.MustRegister(d.dropped, d.checks)
	}
	go d.run()
	return d
}

// SetAnalysis changes the grace of missing parents and the gap threshold.
func (d *BrokenDetector) SetAnalysis(grace, gapThreshold time.Duration) {
	d.analysis.Store(&[2]time.Duration{grace, gapThreshold})
}

// Observe implements Observer.
func (d *BrokenDetector) Observe(recs []Record, now time.Time) {
	// Checks run once a second: round up to it, so that a trace is queued
	// once a second at most however many batches its spans come in.
	at := now.Add(d.analysis.Load()[0]).Add(time.Second - 1).Truncate(time.Second).UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range recs {
		r := &recs[i]
		if d.spans >= maxWatchedSpans {
			d.dropped.Inc()
			continue
		}
		p := d.pending[r.TraceID]
		if p == nil {
			p = &pendingTrace{}
			d.pending[r.TraceID] = p
		}
		if p.at != at {
			p.at = at
			d.fifo = append(d.fifo, dueAt{r.TraceID, at})
		}
		p.spans = append(p.spans, Record{TraceID: r.TraceID, SpanID: r.SpanID, Parent: r.Parent, Start: r.Start, End: r.End})
		d.spans++
	}
}

func (d *BrokenDetector) run() {
	defer close(d.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case now := <-t.C:
			d.checkDue(now)
		}
	}
}

// checkDue checks the traces due by now.
func (d *BrokenDetector) checkDue(now time.Time) {
	type due struct {
		id      TraceID
		spans   []Record
		recheck bool
	}
	var list []due
	d.mu.Lock()
	i := 0
	for ; i < len(d.fifo) && d.fifo[i].at <= now.UnixNano(); i++ {
		e := d.fifo[i]
		p := d.pending[e.id]
		if p == nil || p.at != e.at { // a later span moved it
			continue
		}
		delete(d.pending, e.id)
		d.spans -= len(p.spans)
		_, seen := d.checked[e.id]
		list = append(list, due{e.id, p.spans, seen})
	}
	d.fifo = append(d.fifo[:0], d.fifo[i:]...)
	d.mu.Unlock()
	p := d.analysis.Load()
	for _, t := range list {
		spans := t.spans
		if t.recheck { // its earlier spans are no longer held
			recs, err := d.store.Trace(t.id)
			if err != nil && len(recs) == 0 {
				d.log.Debug("check trace", "trace_id", t.id, "err", err)
				continue
			}
			spans = recs
		}
		a := Analyze(dedupe(spans), p[0], p[1], now)
		missing, gaps := a.Broken()
		d.checks.Inc()
		d.mu.Lock()
		prev, seen := d.checked[t.id]
		if !seen {
			if len(d.order) >= maxChecked {
				delete(d.checked, d.order[0])
				d.order = d.order[1:]
			}
			d.order = append(d.order, t.id)
		}
		d.checked[t.id] = [2]int{max(missing, prev[0]), max(gaps, prev[1])}
		d.mu.Unlock()
		if nm, ng := max(missing-prev[0], 0), max(gaps-prev[1], 0); nm > 0 || ng > 0 {
			d.counter.CountBroken(nm, ng)
		}
	}
}

// Stop stops checking.
func (d *BrokenDetector) Stop() {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	<-d.done
}
