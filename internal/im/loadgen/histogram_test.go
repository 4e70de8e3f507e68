package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramQuantilesWithinTwoPercent(t *testing.T) {
	var h Histogram
	var samples []time.Duration
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100000; i++ {
		d := time.Duration(rng.ExpFloat64()*5e6) + 50*time.Microsecond // mean 5ms
		samples = append(samples, d)
		h.Record(d)
	}
	slices.Sort(samples)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := samples[int(q*float64(len(samples)))-1]
		got := h.Quantile(q)
		if diff := float64(got-want) / float64(want); diff > 0.02 || diff < -0.02 {
			t.Errorf("p%g = %s, want %s within 2%%", q*100, got, want)
		}
	}
	if h.Count() != 100000 || h.Max() != samples[len(samples)-1].Truncate(time.Microsecond) {
		t.Errorf("count %d max %s, want 100000 and %s", h.Count(), h.Max(), samples[len(samples)-1])
	}
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for _, us := range []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 1 << 20, 1 << 40, 1<<63 + 5} {
		b := bucketOf(us)
		if b < prev || b >= histBuckets {
			t.Fatalf("bucket of %d is %d (previous %d, %d buckets)", us, b, prev, histBuckets)
		}
		if mid := bucketMid(b); us > 0 && (mid < float64(us)*0.98 || mid > float64(us)*1.02+1) {
			t.Errorf("bucket %d of %dµs has middle %g", b, us, mid)
		}
		prev = b
	}
	var h Histogram
	if h.Quantile(0.99) != 0 || h.Mean() != 0 {
		t.Error("empty histogram should give 0")
	}
	h.Record(-time.Second)
	if h.Quantile(0.5) != 0 {
		t.Errorf("negative duration recorded as %s, want 0", h.Quantile(0.5))
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			d += 7919 * time.Nanosecond
			h.Record(d % (50 * time.Millisecond))
		}
	})
}
