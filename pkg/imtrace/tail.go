package imtrace

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
)

const (
	tailShards   = 8  // power of two; a trace's spans share the shard its id picks
	promotedKept = 16 // promoted trace ids remembered per shard
)

// tailBuffer holds the ended spans of unsampled traces for a while, so that
// an error or a slow span can still export the trace's spans of this
// process. It is a ring per shard of the spans' pooled data: a new span
// pushes out the oldest, which goes back to the pool, counted as dropped
// when it ended less than TailWindow before.
type tailBuffer struct {
	t      *Tracer
	window time.Duration
	shards [tailShards]tailShard
}

type tailShard struct {
	mu       sync.Mutex
	ring     []*spanData
	keys     []uint64 // traceKey of each ring entry (0: none), which promote scans without touching the entries
	next     int
	promoted [promotedKept]uint64 // low halves of promoted trace ids; 0 = free
	pnext    int
	ended    uint64       // unsampled spans ended into this shard (Stats.Unsampled)
	lastProm atomic.Int64 // monotonic time of the last promotion; 0 = none. Written under mu
	_        [64]byte     // keep shards on separate cache lines
}

func (b *tailBuffer) init(t *Tracer, size int, window time.Duration) {
	b.t = t
	b.window = window
	per := (size + tailShards - 1) / tailShards
	for i := range b.shards {
		b.shards[i].ring = make([]*spanData, per)
		b.shards[i].keys = make([]uint64, per)
	}
}

func traceKey(id trace.TraceID) uint64 { return binary.BigEndian.Uint64(id[8:]) | 1 }

func (b *tailBuffer) shard(key uint64) *tailShard { return &b.shards[key>>1&(tailShards-1)] }

func (s *tailShard) isPromoted(key uint64, now int64, window int64) bool {
	if p := s.lastProm.Load(); p == 0 || now-p > window {
		return false // nothing promoted lately: a trace is remembered for the window
	}
	for _, p := range s.promoted {
		if p == key {
			return true
		}
	}
	return false
}

// isPromoted reports whether the trace was promoted in this process lately,
// as of now (a span's start time will do: the window is seconds long).
// Without a promotion in the shard within the window it takes no lock. A
// negative now reads the clock, if it comes to that.
func (b *tailBuffer) isPromoted(id trace.TraceID, now int64) bool {
	key := traceKey(id)
	s := b.shard(key)
	p := s.lastProm.Load()
	if p == 0 {
		return false
	}
	if now < 0 {
		now = monoNow()
	}
	if now-p > int64(b.window) {
		return false
	}
	s.mu.Lock()
	promoted := s.isPromoted(key, now, int64(b.window))
	s.mu.Unlock()
	return promoted
}

// put keeps an ended unsampled span, whose data it owns from then on. It
// reports true, keeping nothing, when the span's trace has been promoted:
// the caller exports the span instead.
func (b *tailBuffer) put(d *spanData) bool {
	key := traceKey(d.sc.TraceID())
	s := b.shard(key)
	s.mu.Lock()
	s.ended++
	if s.isPromoted(key, d.end, int64(b.window)) {
		s.mu.Unlock()
		return true
	}
	if len(s.ring) == 0 {
		s.mu.Unlock()
		b.t.stats.tailDropped.Add(1)
		dataPool.Put(d)
		return false
	}
	old := s.ring[s.next]
	// Worked out under the lock: once it is released d is the ring's, and
	// another put may push it out and the pool hand it to a new span.
	dropped := old != nil && d.end-old.end < int64(b.window)
	s.ring[s.next] = d
	s.keys[s.next] = key
	s.next++
	if s.next == len(s.ring) {
		s.next = 0
	}
	s.mu.Unlock()
	if dropped {
		b.t.stats.tailDropped.Add(1)
	}
	if old != nil {
		dataPool.Put(old)
	}
	return false
}

// promote marks the trace promoted, counts the span that promotes it and
// takes the trace's buffered spans that ended within the window before now
// out of the buffer; the caller owns them.
func (b *tailBuffer) promote(id trace.TraceID, now int64) []*spanData {
	key := traceKey(id)
	s := b.shard(key)
	var out []*spanData
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended++
	if !s.isPromoted(key, now, int64(b.window)) {
		s.promoted[s.pnext] = key
		s.pnext = (s.pnext + 1) % promotedKept
	}
	s.lastProm.Store(now)
	for i, k := range s.keys {
		if k != key {
			continue
		}
		if e := s.ring[i]; e.sc.TraceID() == id && now-e.end < int64(b.window) {
			out = append(out, e)
			s.ring[i], s.keys[i] = nil, 0
		}
	}
	return out
}

// ended is the number of unsampled spans that ended into the buffer: put
// and promote count them under the shard's lock, which they take anyway.
func (b *tailBuffer) ended() (n uint64) {
	for i := range b.shards {
		s := &b.shards[i]
		s.mu.Lock()
		n += s.ended
		s.mu.Unlock()
	}
	return n
}
