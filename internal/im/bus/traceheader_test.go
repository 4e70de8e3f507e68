package bus_test

import (
	"testing"

	"github.com/imwatch/imwatch/internal/im/bus"
)

func TestTraceHeader(t *testing.T) {
	const a = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	const b = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00"
	th := bus.NewTraceHeader(a)
	if h := th.Header(); len(h) != 1 || h.Get(bus.HeaderTrace) != a || len(h.Values(bus.HeaderTrace)) != 1 {
		t.Fatalf("header %v; want only %s: %s", h, bus.HeaderTrace, a)
	}
	th.Release()
	// Reused or new, a header carries only what it was made with.
	for range 100 {
		th := bus.NewTraceHeader(b)
		if h := th.Header(); len(h) != 1 || h.Get(bus.HeaderTrace) != b || len(h.Values(bus.HeaderTrace)) != 1 {
			t.Fatalf("header %v; want only %s: %s", h, bus.HeaderTrace, b)
		}
		th.Release()
	}
	// One changed by its user is not handed out again changed.
	th = bus.NewTraceHeader(a)
	th.Header().Set("Nats-Msg-Id", "x")
	th.Header().Add(bus.HeaderTrace, b)
	th.Release()
	th = bus.NewTraceHeader(a)
	th.Header().Set(bus.HeaderTrace, "replaced") // a new slice: the reused one would keep this
	th.Release()
	for range 100 {
		th := bus.NewTraceHeader(b)
		if h := th.Header(); len(h) != 1 || len(h.Values(bus.HeaderTrace)) != 1 || h.Get(bus.HeaderTrace) != b {
			t.Fatalf("header %v after a changed one was released; want only %s", h, bus.HeaderTrace)
		}
		th.Release()
	}
}
