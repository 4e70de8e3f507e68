// Package storage is the center's time-series store: Prometheus's tsdb with
// its write-ahead log in the data directory, retention by time and by size,
// and a tee that hands every committed sample to the remote-write queues.
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alecthomas/units"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	promconfig "github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/util/compression"

	"github.com/imwatch/imwatch/internal/center/config"
)

// Sample is one committed sample, as the remote-write queues need it.
type Sample struct {
	Labels labels.Labels
	T      int64
	V      float64
	H      *histogram.Histogram
	FH     *histogram.FloatHistogram
}

// Sink receives the samples of every successful commit. Enqueue must not
// block for long and must not keep the slice.
type Sink interface {
	Enqueue(samples []Sample)
}

// Store is an open tsdb.
type Store struct {
	*tsdb.DB
	dir   string
	log   *slog.Logger
	fsync bool
	sink  atomic.Pointer[sinkBox]
	sync  walSyncer
}

type sinkBox struct{ s Sink }

// Open opens (or creates) the tsdb at cfg.Path and replays its WAL.
func Open(cfg config.Storage, reg prometheus.Registerer, log *slog.Logger) (*Store, error) {
	if err := os.MkdirAll(cfg.Path, 0o755); err != nil {
		return nil, fmt.Errorf("create storage dir: %w", err)
	}
	opts := tsdb.DefaultOptions()
	opts.RetentionDuration = cfg.Retention.D().Milliseconds()
	opts.MaxBytes = int64(cfg.RetentionSize)
	opts.WALCompression = compression.Type(cfg.WALCompression)
	opts.OutOfOrderTimeWindow = cfg.OutOfOrderWindow.D().Milliseconds()
	// Like Prometheus: blocks grow up to a tenth of the retention, at most 31 days.
	maxBlock := int64(31 * 24 * time.Hour / time.Millisecond)
	if r := opts.RetentionDuration / 10; r > 0 && r < maxBlock {
		maxBlock = r
	}
	if maxBlock < opts.MinBlockDuration {
		maxBlock = opts.MinBlockDuration
	}
	opts.MaxBlockDuration = maxBlock
	start := time.Now()
	db, err := tsdb.Open(cfg.Path, log, reg, opts, nil)
	if err != nil {
		return nil, fmt.Errorf("open tsdb %s: %w", cfg.Path, err)
	}
	log.Info("tsdb open", "path", cfg.Path, "retention", cfg.Retention, "retention_size", cfg.RetentionSize,
		"wal_fsync", cfg.WALFsync, "took", time.Since(start).Round(time.Millisecond))
	s := &Store{DB: db, dir: cfg.Path, log: log, fsync: cfg.WALFsync}
	s.sync.dir = filepath.Join(cfg.Path, "wal")
	return s, nil
}

// Dir is the directory of the store.
func (s *Store) Dir() string { return s.dir }

// SetSink makes every later commit go to sink too (nil: to nowhere).
func (s *Store) SetSink(sink Sink) {
	if sink == nil {
		s.sink.Store(nil)
		return
	}
	s.sink.Store(&sinkBox{sink})
}

// ApplyRetention changes the retention of the open store.
func (s *Store) ApplyRetention(cfg config.Storage) error {
	c := &promconfig.Config{StorageConfig: promconfig.StorageConfig{TSDBConfig: &promconfig.TSDBConfig{
		OutOfOrderTimeWindow: cfg.OutOfOrderWindow.D().Milliseconds(),
		Retention: &promconfig.TSDBRetentionConfig{
			Time: model.Duration(cfg.Retention),
			Size: units.Base2Bytes(cfg.RetentionSize),
		},
	}}}
	if err := s.DB.ApplyConfig(c); err != nil {
		return fmt.Errorf("apply retention: %w", err)
	}
	return nil
}

// AppenderV2 returns an appender whose commits also reach the sink.
func (s *Store) AppenderV2(ctx context.Context) storage.AppenderV2 {
	app := s.DB.AppenderV2(ctx)
	if b := s.sink.Load(); b != nil {
		return &teeAppender{AppenderV2: app, sink: b.s}
	}
	return app
}

// Appender is the old appender interface, used by nothing of ours; it is
// here so that Store stays a storage.Storage, and it does not tee.
func (s *Store) Appender(ctx context.Context) storage.Appender { return s.DB.Appender(ctx) }

// Durable makes the samples committed so far survive a power loss when
// wal_fsync is on: it fsyncs the write-ahead log, sharing one fsync among
// the callers waiting at the same time. Without wal_fsync it returns at
// once: a commit has then already written the WAL to the kernel, which is
// enough to survive the process being killed.
func (s *Store) Durable() error {
	if !s.fsync {
		return nil
	}
	return s.sync.Sync()
}

// Close closes the tsdb, flushing the WAL.
func (s *Store) Close() error {
	if err := s.DB.Close(); err != nil {
		return fmt.Errorf("close tsdb: %w", err)
	}
	return nil
}

type teeAppender struct {
	storage.AppenderV2
	sink    Sink
	samples []Sample
}

func (a *teeAppender) Append(ref storage.SeriesRef, ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AOptions) (storage.SeriesRef, error) {
	ref, err := a.AppenderV2.Append(ref, ls, st, t, v, h, fh, opts)
	if err == nil || errors.Is(err, (*storage.AppendPartialError)(nil)) {
		a.samples = append(a.samples, Sample{Labels: ls, T: t, V: v, H: h, FH: fh})
	}
	return ref, err
}

func (a *teeAppender) Commit() error {
	if err := a.AppenderV2.Commit(); err != nil {
		return err
	}
	if len(a.samples) > 0 {
		a.sink.Enqueue(a.samples)
	}
	a.samples = nil
	return nil
}

func (a *teeAppender) Rollback() error {
	a.samples = nil
	return a.AppenderV2.Rollback()
}

// walSyncer fsyncs the newest WAL segments, one fsync for all callers that
// arrive while none is running (group commit).
type walSyncer struct {
	dir       string
	mu        sync.Mutex
	cond      *sync.Cond
	requested uint64
	done      uint64
	running   bool
	err       error
}

// Sync returns once an fsync that started after the call has finished.
func (w *walSyncer) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cond == nil {
		w.cond = sync.NewCond(&w.mu)
	}
	w.requested++
	ticket := w.requested
	for w.done < ticket {
		if w.running {
			w.cond.Wait()
			continue
		}
		w.running = true
		target := w.requested
		w.mu.Unlock()
		err := w.syncSegments()
		w.mu.Lock()
		w.running = false
		w.done, w.err = target, err
		w.cond.Broadcast()
	}
	return w.err
}

// syncSegments fsyncs the last two segment files (a commit may have
// spilled from the older into the newer one just before) and the directory,
// so that a segment created just before is found after a power loss.
func (w *walSyncer) syncSegments() error {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return fmt.Errorf("list wal: %w", err)
	}
	var segs []string
	for _, e := range entries {
		if n := e.Name(); len(n) == 8 && !e.IsDir() && isDigits(n) {
			segs = append(segs, n)
		}
	}
	sort.Strings(segs)
	if len(segs) > 2 {
		segs = segs[len(segs)-2:]
	}
	for _, n := range segs {
		f, err := os.OpenFile(filepath.Join(w.dir, n), os.O_RDWR, 0)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) { // removed by a checkpoint meanwhile
				continue
			}
			return fmt.Errorf("open wal segment: %w", err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("fsync wal segment %s: %w", n, err)
		}
	}
	d, err := os.Open(w.dir)
	if err != nil {
		return fmt.Errorf("open wal dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync wal dir: %w", err)
	}
	return nil
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
