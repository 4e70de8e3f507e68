package storage

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	"github.com/imwatch/imwatch/internal/center/config"
)

type collect struct {
	mu sync.Mutex
	n  int
}

func (c *collect) Enqueue(s []Sample) { c.mu.Lock(); c.n += len(s); c.mu.Unlock() }

func TestStoreTeeAndDurable(t *testing.T) {
	cfg := config.Default().Storage
	cfg.Path = filepath.Join(t.TempDir(), "tsdb")
	cfg.WALFsync = true
	s, err := Open(cfg, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sink := &collect{}
	s.SetSink(sink)
	now := time.Now().UnixMilli()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				app := s.AppenderV2(context.Background())
				ls := labels.FromStrings("__name__", "x", "w", string(rune('a'+w)))
				if _, err := app.Append(0, ls, 0, now+int64(i), float64(i), nil, nil, storage.AOptions{}); err != nil {
					t.Error(err)
				}
				if err := app.Commit(); err != nil {
					t.Error(err)
				}
				if err := s.Durable(); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if sink.n != 400 {
		t.Errorf("sink got %d samples, want 400", sink.n)
	}
	// A rolled-back appender hands nothing on.
	app := s.AppenderV2(context.Background())
	_, _ = app.Append(0, labels.FromStrings("__name__", "y"), 0, now, 1, nil, nil, storage.AOptions{})
	_ = app.Rollback()
	if sink.n != 400 {
		t.Errorf("rollback reached the sink")
	}
	if _, err := os.Stat(filepath.Join(cfg.Path, "wal")); err != nil {
		t.Errorf("no WAL: %v", err)
	}
	if err := s.ApplyRetention(config.Storage{Retention: config.Duration(time.Hour), RetentionSize: 1 << 30}); err != nil {
		t.Errorf("apply retention: %v", err)
	}
}
