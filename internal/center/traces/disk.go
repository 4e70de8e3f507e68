package traces

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DiskOptions configure a DiskStore.
type DiskOptions struct {
	Dir string
	// Fsync syncs the write-ahead log before Append returns, so that an
	// appended span survives a power loss and not only a crash.
	Fsync         bool
	Retention     time.Duration // blocks whose spans all ended longer ago are deleted; 0: kept
	RetentionSize int64         // oldest blocks are deleted beyond this many bytes; 0: no bound
	HeadMaxSpans  int           // a head is written into a block at this many spans
	HeadMaxAge    time.Duration // or when it is this old
}

// DiskStore is imwatch's own trace store: a write-ahead log, an in-memory
// head per log segment, and immutable, compressed, mmapped blocks with
// small indexes (trace id, message id, user, operations).
type DiskStore struct {
	opts DiskOptions
	log  *slog.Logger

	appendMu sync.Mutex // serializes Append and the head swap
	wal      *wal

	mu      sync.RWMutex
	head    *head
	cutting []*head // full heads being written into blocks, oldest first
	blocks  []*block
	closed  bool
	cutErr  error // of the last block write that failed

	cutCond *sync.Cond // on mu: signalled when cutting shrinks
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}

	m diskMetrics
}

type diskMetrics struct {
	blocksWritten prometheus.Counter
	deleted       *prometheus.CounterVec
	errors        *prometheus.CounterVec
	cutDuration   prometheus.Histogram
}

// OpenDisk opens (or creates) a store in opts.Dir: it opens the blocks and
// replays what the write-ahead log holds beyond them.
func OpenDisk(opts DiskOptions, reg prometheus.Registerer, log *slog.Logger) (*DiskStore, error) {
	if opts.HeadMaxSpans <= 0 {
		opts.HeadMaxSpans = 500_000
	}
	if opts.HeadMaxAge <= 0 {
		opts.HeadMaxAge = 2 * time.Minute
	}
	walDir, blockDir := filepath.Join(opts.Dir, "wal"), filepath.Join(opts.Dir, "blocks")
	for _, d := range []string{walDir, blockDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create trace store dir: %w", err)
		}
	}
	s := &DiskStore{opts: opts, log: log, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	s.cutCond = sync.NewCond(&s.mu)
	start := time.Now()
	if err := s.openBlocks(blockDir); err != nil {
		return nil, err
	}
	maxSeg := -1
	for _, b := range s.blocks {
		maxSeg = max(maxSeg, int(b.meta.walSeg))
	}
	segs, err := walSegments(walDir)
	if err != nil {
		s.closeBlocks()
		return nil, fmt.Errorf("list wal: %w", err)
	}
	replayed := 0
	for _, seg := range segs {
		if seg <= maxSeg { // already in a block; the crash came before its removal
			_ = os.Remove(segName(walDir, seg))
			continue
		}
		h := newHead(seg, nil)
		if err := replaySegment(segName(walDir, seg), log, h.add); err != nil {
			s.closeBlocks()
			return nil, fmt.Errorf("replay wal segment %d: %w", seg, err)
		}
		maxSeg = seg
		if h.n == 0 {
			_ = os.Remove(segName(walDir, seg))
			continue
		}
		replayed += h.n
		s.cutting = append(s.cutting, h)
	}
	s.wal, err = openSegment(walDir, maxSeg+1, opts.Fsync)
	if err != nil {
		s.closeBlocks()
		return nil, err
	}
	s.head = newHead(maxSeg+1, nil)
	s.initMetrics(reg)
	log.Info("trace store open", "dir", opts.Dir, "blocks", len(s.blocks), "wal_spans_replayed", replayed,
		"retention", opts.Retention, "retention_size", opts.RetentionSize, "fsync", opts.Fsync, "took", time.Since(start).Round(time.Millisecond))
	go s.run()
	if len(s.cutting) > 0 {
		s.signal()
	}
	return s, nil
}

func (s *DiskStore) openBlocks(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list blocks: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			_ = os.Remove(filepath.Join(dir, name)) // a block never finished
			continue
		}
		if !strings.HasSuffix(name, ".blk") {
			continue
		}
		b, err := openBlock(filepath.Join(dir, name))
		if err != nil {
			if errors.Is(err, errBlock) {
				// Keep it for a look, out of the way, rather than refuse to start.
				s.log.Error("trace block unreadable; moved aside", "block", name, "err", err)
				_ = os.Rename(filepath.Join(dir, name), filepath.Join(dir, name+".bad"))
				continue
			}
			s.closeBlocks()
			return err
		}
		s.blocks = append(s.blocks, b)
	}
	sort.Slice(s.blocks, func(i, j int) bool { return s.blocks[i].meta.walSeg < s.blocks[j].meta.walSeg })
	return nil
}

func (s *DiskStore) closeBlocks() {
	for _, b := range s.blocks {
		_ = b.close()
	}
	s.blocks = nil
}

func (s *DiskStore) initMetrics(reg prometheus.Registerer) {
	s.m = diskMetrics{
		blocksWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_traces_blocks_written_total", Help: "Trace store blocks written from the in-memory head.",
		}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_traces_blocks_deleted_total", Help: "Trace store blocks deleted, by reason (retention or retention_size).",
		}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_traces_store_errors_total", Help: "Failures of the trace store, by operation.",
		}, []string{"op"}),
		cutDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imwatch_center_traces_block_write_duration_seconds", Help: "Time to write a head into a block.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 10),
		}),
	}
	if reg == nil {
		return
	}
	reg.MustRegister(s.m.blocksWritten, s.m.deleted, s.m.errors, s.m.cutDuration,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imwatch_center_traces_store_bytes", Help: "Bytes of the trace store on disk: blocks and write-ahead log.",
		}, func() float64 { st := s.Stats(); return float64(st.BlockBytes + st.WALBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imwatch_center_traces_store_spans", Help: "Spans in the trace store (blocks and head).",
		}, func() float64 { st := s.Stats(); return float64(st.BlockSpans + st.HeadSpans) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imwatch_center_traces_store_head_spans", Help: "Spans in memory, not yet written into a block.",
		}, func() float64 { return float64(s.Stats().HeadSpans) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imwatch_center_traces_store_blocks", Help: "Blocks of the trace store.",
		}, func() float64 { return float64(s.Stats().Blocks) }),
	)
}

// SetRetention changes the retention; it applies at the next check.
func (s *DiskStore) SetRetention(retention time.Duration, size int64) {
	s.mu.Lock()
	s.opts.Retention, s.opts.RetentionSize = retention, size
	s.mu.Unlock()
	s.signal()
}

// Stats is what the store holds.
type Stats struct {
	Blocks     int
	BlockBytes int64
	BlockSpans int64
	HeadSpans  int64
	WALBytes   int64
}

// Stats reports what the store holds.
func (s *DiskStore) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var st Stats
	st.Blocks = len(s.blocks)
	for _, b := range s.blocks {
		st.BlockBytes += b.size
		st.BlockSpans += int64(b.meta.nSpans)
	}
	if s.head != nil {
		st.HeadSpans += int64(s.head.len())
	}
	for _, h := range s.cutting {
		st.HeadSpans += int64(h.len())
	}
	if segs, err := walSegments(filepath.Join(s.opts.Dir, "wal")); err == nil {
		for _, seg := range segs {
			if fi, err := os.Stat(segName(filepath.Join(s.opts.Dir, "wal"), seg)); err == nil {
				st.WALBytes += fi.Size()
			}
		}
	}
	return st
}

// Append writes recs to the write-ahead log (and fsyncs it, with Fsync)
// and adds them to the head. When the head is full it is handed to the
// block writer; Append waits while two full heads are already waiting.
func (s *DiskStore) Append(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.RLock()
	closed, h := s.closed, s.head
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if err := s.wal.write(recs); err != nil {
		s.m.errors.WithLabelValues("wal_write").Inc()
		return err
	}
	h.add(recs)
	if h.len() >= s.opts.HeadMaxSpans {
		return s.rotate(true)
	}
	return nil
}

// rotate starts a new WAL segment and head; appendMu is held. With wait,
// it waits while more than two full heads wait for the block writer.
func (s *DiskStore) rotate(wait bool) error {
	next, err := openSegment(s.wal.dir, s.wal.seg+1, s.opts.Fsync)
	if err != nil {
		s.m.errors.WithLabelValues("wal_rotate").Inc()
		return err
	}
	if s.opts.Fsync {
		_ = s.wal.f.Sync()
	}
	_ = s.wal.close()
	s.wal = next
	s.mu.Lock()
	s.cutting = append(s.cutting, s.head)
	s.head = newHead(next.seg, s.head)
	for wait && len(s.cutting) > 2 && !s.closed {
		s.cutCond.Wait()
	}
	s.mu.Unlock()
	s.signal()
	return nil
}

func (s *DiskStore) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run writes full heads into blocks, cuts a head that has grown old, and
// applies retention.
func (s *DiskStore) run() {
	defer close(s.done)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	lastRetention := time.Time{}
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-tick.C:
			// An Append waiting for this goroutine holds appendMu: skip then.
			if s.appendMu.TryLock() {
				s.mu.RLock()
				old := s.head.len() > 0 && time.Since(s.head.created) >= s.opts.HeadMaxAge && !s.closed
				s.mu.RUnlock()
				if old {
					if err := s.rotate(false); err != nil {
						s.log.Error("rotate trace wal", "err", err)
					}
				}
				s.appendMu.Unlock()
			}
		}
		s.writeBlocks()
		if time.Since(lastRetention) >= 10*time.Second {
			s.applyRetention(time.Now())
			lastRetention = time.Now()
		}
	}
}

func (s *DiskStore) writeBlocks() {
	for {
		s.mu.RLock()
		if len(s.cutting) == 0 || s.closed {
			s.mu.RUnlock()
			return
		}
		h := s.cutting[0]
		s.mu.RUnlock()
		start := time.Now()
		path := filepath.Join(s.opts.Dir, "blocks", fmt.Sprintf("%08d.blk", h.seg))
		var b *block
		_, err := writeBlock(path, h)
		if err == nil {
			err = syncDir(filepath.Dir(path))
		}
		if err == nil {
			b, err = openBlock(path)
		}
		if err != nil {
			// The head stays in memory and in the WAL; try again later.
			s.m.errors.WithLabelValues("block_write").Inc()
			s.log.Error("write trace block", "block", path, "err", err)
			s.mu.Lock()
			s.cutErr = err
			s.cutCond.Broadcast()
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		s.blocks = append(s.blocks, b)
		s.cutting = s.cutting[1:]
		s.cutErr = nil
		s.cutCond.Broadcast()
		s.mu.Unlock()
		_ = os.Remove(segName(filepath.Join(s.opts.Dir, "wal"), h.seg))
		s.m.blocksWritten.Inc()
		s.m.cutDuration.Observe(time.Since(start).Seconds())
		s.log.Debug("trace block written", "block", path, "spans", b.meta.nSpans, "traces", b.meta.nTraces, "bytes", b.size, "took", time.Since(start))
	}
}

// applyRetention deletes the blocks whose spans all ended before the
// retention, then the oldest ones while the blocks take more than
// RetentionSize.
func (s *DiskStore) applyRetention(now time.Time) {
	s.mu.Lock()
	retention, size := s.opts.Retention, s.opts.RetentionSize
	var drop []*block
	var reasons []string
	keep := s.blocks[:0:0]
	var total int64
	for _, b := range s.blocks {
		total += b.size
	}
	for _, b := range s.blocks {
		switch {
		case retention > 0 && b.meta.maxT < now.Add(-retention).UnixNano():
			drop, reasons = append(drop, b), append(reasons, "retention")
			total -= b.size
		case size > 0 && total > size:
			drop, reasons = append(drop, b), append(reasons, "retention_size")
			total -= b.size
		default:
			keep = append(keep, b)
		}
	}
	s.blocks = keep
	s.mu.Unlock()
	for i, b := range drop { // no reader can reach them any more
		_ = b.close()
		if err := os.Remove(b.path); err != nil {
			s.log.Error("delete trace block", "block", b.path, "err", err)
		}
		s.m.deleted.WithLabelValues(reasons[i]).Inc()
		s.log.Info("trace block deleted", "block", filepath.Base(b.path), "reason", reasons[i], "spans", b.meta.nSpans)
	}
}

// Trace returns the spans of trace id from the head and every block.
func (s *DiskStore) Trace(id TraceID) ([]Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	var out []Record
	var errs []error
	for _, b := range s.blocks {
		var err error
		if out, err = b.trace(id, out); err != nil {
			errs = append(errs, err)
		}
	}
	for _, h := range s.cutting {
		out = h.trace(id, out)
	}
	out = s.head.trace(id, out)
	return dedupe(out), errors.Join(errs...)
}

// dedupe drops repeated spans (a sender's retry of a request it thought
// failed), keeping the first.
func dedupe(recs []Record) []Record {
	if len(recs) < 2 {
		return recs
	}
	seen := make(map[SpanID]struct{}, len(recs))
	out := recs[:0]
	for _, r := range recs {
		if _, ok := seen[r.SpanID]; ok {
			continue
		}
		seen[r.SpanID] = struct{}{}
		out = append(out, r)
	}
	return out
}

// Search finds traces in the head and the blocks, newest first.
func (s *DiskStore) Search(q Query) ([]TraceRef, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	top := newTop(max(q.Limit, 1))
	s.head.search(&q, top)
	for _, h := range s.cutting {
		h.search(&q, top)
	}
	for i := len(s.blocks) - 1; i >= 0; i-- {
		b := s.blocks[i]
		// A block whose spans all ended before the newest limit traces
		// found so far started cannot add one.
		if floor, full := top.floor(); full && b.meta.maxT < floor {
			continue
		}
		b.search(&q, top)
	}
	return top.result(), nil
}

// Flush writes the head into a block now and waits until every full head
// is in a block.
func (s *DiskStore) Flush() error {
	s.appendMu.Lock()
	s.mu.RLock()
	empty := s.head.len() == 0
	s.mu.RUnlock()
	var err error
	if !empty {
		err = s.rotate(false)
	}
	s.appendMu.Unlock()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cutErr = nil
	for len(s.cutting) > 0 && !s.closed && s.cutErr == nil {
		s.signal()
		s.cutCond.Wait()
	}
	return s.cutErr
}

// Close stops the block writer, syncs and closes the WAL and unmaps the
// blocks. What is in the head is in the WAL and comes back at the next open.
func (s *DiskStore) Close() error {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cutCond.Broadcast()
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	var errs []error
	if err := s.wal.f.Sync(); err != nil {
		errs = append(errs, fmt.Errorf("fsync trace wal: %w", err))
	}
	if err := s.wal.close(); err != nil {
		errs = append(errs, err)
	}
	s.mu.Lock()
	s.closeBlocks()
	s.mu.Unlock()
	return errors.Join(errs...)
}
