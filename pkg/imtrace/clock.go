package imtrace

import (
	"sync/atomic"
	"time"
)

// The hop spans read the clock once at start and once at end, as monotonic
// nanoseconds: time.Since on a time with a monotonic reading costs one clock
// read, time.Now two (wall and monotonic). A span's wall-clock times are
// derived when it is exported, from an anchor pair (wall, monotonic) at most
// a second old, so a step of the wall clock shows within a second.

var epoch = time.Now()

// monoNow is the monotonic clock in nanoseconds since the package started.
func monoNow() int64 { return int64(time.Since(epoch)) }

type clockAnchor struct {
	wall time.Time // without monotonic reading
	mono int64
}

var anchor atomic.Pointer[clockAnchor]

const anchorMaxAge = int64(time.Second)

// wallTime is the wall-clock time of the monotonic reading mono.
func wallTime(mono int64) time.Time {
	a := anchor.Load()
	if a == nil || mono-a.mono > anchorMaxAge {
		now := time.Now()
		a = &clockAnchor{wall: now.Round(0), mono: int64(now.Sub(epoch))}
		anchor.Store(a)
	}
	return a.wall.Add(time.Duration(mono - a.mono))
}

// monoAt is the monotonic reading of at, a time the hop read with
// time.Now(): no clock read of its own. A zero at reads the clock.
func monoAt(at time.Time) int64 {
	if at.IsZero() {
		return monoNow()
	}
	return int64(at.Sub(epoch))
}
