package probe

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
)

// BenchmarkRound is the prober's own cost of one round (scheduling aside):
// the round, its two spans into the on-disk buffer, the metrics, against
// the in-memory server double, so that no IM client or server is in it.
func BenchmarkRound(b *testing.B) {
	theDouble.mu.Lock()
	theDouble.script = nil
	theDouble.mu.Unlock()
	tg := Target{Name: "bench", Protocol: "double", Address: "double", Interval: config.Duration(time.Hour),
		Timeout: config.Duration(time.Minute), Accounts: []Account{{User: "b"}}}
	cfg := Default()
	cfg.Location = "bench"
	cfg.Buffer = filepath.Join(b.TempDir(), "buffer")
	cfg.Targets = []Target{tg}
	p, err := New(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer p.Stop(context.Background())
	r := p.runners["bench"]
	l := r.links[0]
	if _, err := l.tx.get(context.Background()); err != nil {
		b.Fatal(err)
	}
	if _, err := l.rx.get(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		r.round(l)
	}
	p.pipe.tp.ForceFlush(context.Background()) // the spans' export is part of the cost
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.StopTimer()
	if got := metricValue(b, p, "probe_messages_received_total", nil); got < float64(b.N) {
		b.Fatalf("received %g of %d", got, b.N)
	}
}

// cpuTime is the CPU this process used, all threads.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
