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

// maxWatched bounds the traces waiting to be checked and the traces
// remembered as checked.
const maxWatched = 500_000

// BrokenDetector checks each trace once no span of it has arrived for the
// grace period: spans whose parent never came and gaps between hops are
// counted. A trace that gets more spans later is checked again, and only
// what is new is counted.
type BrokenDetector struct {
	store    Store
	counter  BrokenCounter
	log      *slog.Logger
	analysis atomic.Pointer[[2]time.Duration] // grace, gap threshold

	mu      sync.Mutex
	due     map[TraceID]int64 // check at (unix ns)
	fifo    []dueAt
	checked map[TraceID][2]int
	order   []TraceID // of checked, oldest first

	dropped prometheus.Counter
	checks  prometheus.Counter

	stop chan struct{}
	done chan struct{}
}

type dueAt struct {
	id TraceID
	at int64
}

// NewBrokenDetector starts a detector reading traces from store.
func NewBrokenDetector(store Store, counter BrokenCounter, grace, gapThreshold time.Duration, reg prometheus.Registerer, log *slog.Logger) *BrokenDetector {
	d := &BrokenDetector{
		store: store, counter: counter, log: log,
		due: map[TraceID]int64{}, checked: map[TraceID][2]int{},
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_traces_unchecked_total", Help: "Traces not checked for missing parents and gaps because too many were waiting.",
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
	at := now.Add(d.analysis.Load()[0]).UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	var last TraceID
	for i := range recs {
		id := recs[i].TraceID
		if i > 0 && id == last {
			continue
		}
		last = id
		if _, ok := d.due[id]; !ok && len(d.due) >= maxWatched {
			d.dropped.Inc()
			continue
		}
		d.due[id] = at
		d.fifo = append(d.fifo, dueAt{id, at})
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
	d.mu.Lock()
	var ids []TraceID
	i := 0
	for ; i < len(d.fifo) && d.fifo[i].at <= now.UnixNano(); i++ {
		e := d.fifo[i]
		if d.due[e.id] == e.at { // else a later span moved it
			ids = append(ids, e.id)
			delete(d.due, e.id)
		}
	}
	d.fifo = append(d.fifo[:0], d.fifo[i:]...)
	d.mu.Unlock()
	p := d.analysis.Load()
	for _, id := range ids {
		recs, err := d.store.Trace(id)
		if err != nil && len(recs) == 0 {
			d.log.Debug("check trace", "trace_id", id, "err", err)
			continue
		}
		a := Analyze(recs, p[0], p[1], now)
		missing, gaps := a.Broken()
		d.checks.Inc()
		d.mu.Lock()
		prev, seen := d.checked[id]
		if !seen {
			if len(d.order) >= maxWatched {
				delete(d.checked, d.order[0])
				d.order = d.order[1:]
			}
			d.order = append(d.order, id)
		}
		d.checked[id] = [2]int{max(missing, prev[0]), max(gaps, prev[1])}
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
