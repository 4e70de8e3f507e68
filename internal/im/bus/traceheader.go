package bus

import (
	"sync"

	"github.com/nats-io/nats.go"
)

// TraceHeader is a NATS header holding one traceparent (HeaderTrace),
// reused from publish to publish: nats.Conn.PublishMsg and RequestMsg encode
// a message's header before they return, so its map is free again then. A
// new map per traced bus message was about 400 bytes (a send and a push:
// 0.8 KB of the 4.6 KB tracing adds to a message, docs/benchmarks.md). Not
// for JetStream's asynchronous publish, which keeps the message for retries.
type TraceHeader struct {
	h nats.Header
	v [1]string
}

var traceHeaders = sync.Pool{New: func() any {
	t := new(TraceHeader)
	t.h = nats.Header{HeaderTrace: t.v[:]}
	return t
}}

// NewTraceHeader is a header carrying traceparent tp; give it back with
// Release once the message is published.
func NewTraceHeader(tp string) *TraceHeader {
	t := traceHeaders.Get().(*TraceHeader)
	t.v[0] = tp
	return t
}

// Header is the header to set as nats.Msg.Header. Do not change it.
func (t *TraceHeader) Header() nats.Header { return t.h }

// Release gives the header back; the message must not be published again.
func (t *TraceHeader) Release() {
	t.v[0] = ""
	if v := t.h[HeaderTrace]; len(t.h) != 1 || len(v) != 1 || &v[0] != &t.v[0] {
		return // changed after all: not reused
	}
	traceHeaders.Put(t)
}
