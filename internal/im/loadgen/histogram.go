package loadgen

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram records durations in microseconds in log-linear buckets, like an
// HDR histogram with two significant digits: values under 128µs are exact,
// larger ones fall into one of 64 buckets per power of two (at most 1.6%
// error). Memory is fixed (about 30 KiB) whatever the number of samples, and
// Record is safe for concurrent use without a lock.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64 // µs
	max    atomic.Uint64 // µs
}

const (
	subBits     = 6
	subCount    = 1 << subBits // buckets per power of two
	histBuckets = 2*subCount + (64-subBits-1)*subCount
)

func bucketOf(us uint64) int {
	if us < 2*subCount {
		return int(us)
	}
	shift := bits.Len64(us) - subBits - 1 // >= 1
	return 2*subCount + (shift-1)*subCount + int(us>>shift) - subCount
}

// bucketMid is the middle of bucket i's range, in microseconds.
func bucketMid(i int) float64 {
	if i < 2*subCount {
		return float64(i)
	}
	shift := (i-2*subCount)/subCount + 1
	lo := uint64((i-2*subCount)%subCount+subCount) << shift
	return float64(lo) + float64(uint64(1)<<shift)/2
}

// Record adds one duration; negative ones count as zero.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.counts[bucketOf(us)].Add(1)
	h.n.Add(1)
	h.sum.Add(us)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			break
		}
	}
}

// Count is the number of recorded durations.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Max is the largest recorded duration.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) * time.Microsecond }

// Mean is the mean of the recorded durations, 0 when there are none.
func (h *Histogram) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load()/n) * time.Microsecond
}

// Quantile is the duration at quantile q (0..1), 0 when nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			v := min(bucketMid(i), float64(h.max.Load()))
			return time.Duration(v * float64(time.Microsecond))
		}
	}
	return h.Max()
}
