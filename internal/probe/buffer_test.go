package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

func drain(t *testing.T, q *Queue) [][]byte {
	t.Helper()
	var out [][]byte
	for {
		rec, pos, err := q.Next()
		if errors.Is(err, ErrEmpty) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
		q.Commit(pos)
	}
}

func record(i, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	copy(b, fmt.Sprintf("rec-%d-", i))
	return b
}

func TestQueueKeepsOrderAcrossSegmentsAndReopen(t *testing.T) {
	dir := t.TempDir()
	q, err := OpenQueue(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := 0; i < n; i++ {
		if err := q.Append(record(i, 100<<10)); err != nil { // 100 KiB: several segments
			t.Fatal(err)
		}
	}
	// Take 20, then "crash" without committing the 21st.
	for i := 0; i < 20; i++ {
		rec, pos, err := q.Next()
		if err != nil || !bytes.Equal(rec, record(i, 100<<10)) {
			t.Fatalf("record %d: %v", i, err)
		}
		q.Commit(pos)
	}
	if _, _, err := q.Next(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, err = OpenQueue(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if st := q.Stats(); st.Pending != n-20 {
		t.Errorf("pending after reopen %d, want %d", st.Pending, n-20)
	}
	got := drain(t, q)
	if len(got) != n-20 {
		t.Fatalf("got %d records after reopen, want %d", len(got), n-20)
	}
	for i, rec := range got {
		if !bytes.Equal(rec, record(i+20, 100<<10)) {
			t.Fatalf("record %d out of order", i+20)
		}
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) > 2 {
		t.Errorf("%d segment files left after everything was taken", len(segs))
	}
}

func TestQueueFullDropsOldestAndCounts(t *testing.T) {
	q, err := OpenQueue(t.TempDir(), 4*segmentSize)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	const n, size = 200, 64 << 10 // 12.5 MiB into 4 MiB
	for i := 0; i < n; i++ {
		if err := q.Append(record(i, size)); err != nil {
			t.Fatal(err)
		}
	}
	st := q.Stats()
	if st.Bytes > 4*segmentSize {
		t.Errorf("queue holds %d bytes, more than its bound", st.Bytes)
	}
	if got := int64(st.Pending) + st.Dropped[DropFull]; got != n {
		t.Errorf("pending %d + dropped %d = %d, want %d (every record either kept or counted)", st.Pending, st.Dropped[DropFull], got, n)
	}
	got := drain(t, q)
	if len(got) != st.Pending || !bytes.Equal(got[len(got)-1], record(n-1, size)) {
		t.Errorf("kept %d records, last %q; want the newest", len(got), got[len(got)-1][:12])
	}
	if err := q.Append(make([]byte, maxRecordSize+1)); !errors.Is(err, ErrRecordTooLarge) {
		t.Errorf("huge record: %v", err)
	}
}

func TestQueueCutsACorruptTail(t *testing.T) {
	dir := t.TempDir()
	q, err := OpenQueue(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		q.Append(record(i, 1000))
	}
	q.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	var last string
	for _, s := range segs {
		if st, _ := os.Stat(s); st.Size() > 0 {
			last = s
		}
	}
	data, _ := os.ReadFile(last)
	// A torn last record: the prober died while writing it.
	if err := os.WriteFile(last, data[:len(data)-300], 0o600); err != nil {
		t.Fatal(err)
	}
	q, err = OpenQueue(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	got := drain(t, q)
	if len(got) != 4 || q.Stats().Dropped[DropCorrupt] != 1 {
		t.Errorf("got %d records, %d corrupt; want 4 and 1", len(got), q.Stats().Dropped[DropCorrupt])
	}
	q.Append(record(9, 10))
	if got := drain(t, q); len(got) != 1 || !bytes.Equal(got[0], record(9, 10)) {
		t.Errorf("appending after the cut: %d records", len(got))
	}
}

// Results buffered while the center is unreachable are sent by the next
// run of the prober on the same buffer.
func TestBufferSurvivesAProberRestart(t *testing.T) {
	sink := startOTLPSink(t)
	sink.down.Store(true)
	buf := filepath.Join(t.TempDir(), "buffer")
	tg := Target{Name: "restart", Protocol: "double", Address: "double", Interval: config.Duration(100 * time.Millisecond),
		Timeout: config.Duration(100 * time.Millisecond), Accounts: []Account{{User: "r"}}}
	cfg := Config{Buffer: buf, Targets: []Target{tg}}
	cfg.Center.URL = sink.srv.URL
	cfg.Center.PushInterval = config.Duration(100 * time.Millisecond)
	p := startProber(t, cfg, Options{})
	imtest.Eventually(t, 10*time.Second, func() error {
		if n := p.pipe.qm.Stats().Pending; n < 5 {
			return fmt.Errorf("%d metric records buffered", n)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	p.Stop(ctx) // the center is down: the records stay on disk
	cancel()
	st, err := OpenQueue(filepath.Join(buf, queueMetrics), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	left := st.Stats().Pending
	st.Close()
	if left < 5 {
		t.Fatalf("%d records left on disk after the stop", left)
	}
	sink.down.Store(false)
	cfg.Targets = nil
	cfg.Center.PushInterval = config.Duration(time.Hour)
	p2 := startProber(t, cfg, Options{})
	imtest.Eventually(t, 20*time.Second, func() error {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		if sink.writes < left {
			return fmt.Errorf("%d of %d buffered writes arrived", sink.writes, left)
		}
		return nil
	})
	// The prober commits a record once the center has answered, a moment
	// after the sink counted it.
	imtest.Eventually(t, 10*time.Second, func() error {
		if n := p2.pipe.qm.Stats().Pending; n != 0 {
			return fmt.Errorf("%d records still pending", n)
		}
		return nil
	})
}

func FuzzQueueRecords(f *testing.F) {
	f.Add(encodeRecordHeader([]byte("hello")))
	f.Add(append(encodeRecordHeader([]byte("a")), encodeRecordHeader([]byte("bc"))...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Add(encodeCursor(cursor{seg: 3, off: 100, idx: 2}))
	f.Fuzz(func(t *testing.T, data []byte) {
		// decodeRecord never panics and only accepts what it would encode.
		if payload, n, err := decodeRecord(data); err == nil {
			if n > len(data) || !bytes.Equal(encodeRecordHeader(payload), data[:n]) {
				t.Fatalf("accepted a record that does not re-encode to itself")
			}
		}
		if c, err := decodeCursor(data); err == nil && !bytes.Equal(encodeCursor(c), data) {
			t.Fatalf("cursor round trip changed it")
		}
		// A segment file of arbitrary bytes opens, is cut at its first bad
		// record, and hands out only valid records.
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%016x.seg", 1)), data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, cursorFileName), data, 0o600)
		q, err := OpenQueue(dir, 64<<20)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		defer q.Close()
		for i := 0; i < 1000; i++ {
			rec, pos, err := q.Next()
			if err != nil {
				break
			}
			if len(rec) > maxRecordSize {
				t.Fatal("oversized record handed out")
			}
			q.Commit(pos)
		}
	})
}

func TestPushTimeIsAlwaysLaterThanTheLastPush(t *testing.T) {
	t0 := time.UnixMilli(1_764_000_000_000)
	for _, tc := range []struct {
		name      string
		last, now time.Time
		want      time.Time
	}{
		{"first push", time.Time{}, t0.Add(400 * time.Microsecond), t0},
		{"a second later", t0, t0.Add(time.Second), t0.Add(time.Second)},
		{"same millisecond", t0, t0.Add(300 * time.Microsecond), t0.Add(time.Millisecond)},
		{"clock stepped back", t0.Add(5 * time.Millisecond), t0, t0.Add(6 * time.Millisecond)},
	} {
		if got := pushTime(tc.last, tc.now); !got.Equal(tc.want) {
			t.Errorf("%s: pushTime(%v, %v) = %v, want %v", tc.name, tc.last.UnixMicro(), tc.now.UnixMicro(), got.UnixMicro(), tc.want.UnixMicro())
		}
	}
}
