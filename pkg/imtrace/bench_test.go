package imtrace

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sys/unix"
)

// The span-cost benchmarks: start a hop span as the child of a remote
// parent, set the messaging attributes, end it, with a processor that does
// nothing expensive (it drops the span; for this package it also returns the
// record to its pool, as the exporter does after each batch). The SDK peer
// does the same through the SDK's tracer. bench/tracing runs them.

var benchMsg = Message{ID: "Xn3kq0Yp2dLm9TqW1vBc8e", ClientID: "c-123456", Conv: "d=alice=bob",
	Dest: "im.logic.send", User: "alice", Recipient: "bob", Seq: 4711, Recipients: 1}

var (
	benchSampled   = Parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	benchUnsampled = Parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
)

type discardProcessor struct{ recycle bool }

func (p discardProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (p discardProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if r, ok := s.(*record); ok && p.recycle {
		r.release()
	}
}
func (discardProcessor) Shutdown(context.Context) error   { return nil }
func (discardProcessor) ForceFlush(context.Context) error { return nil }

// readingProcessor reads what an exporter reads of a span, then drops it.
type readingProcessor struct{ discardProcessor }

var benchSink int

func (readingProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	benchSink += len(s.Attributes()) + len(s.Events()) + s.StartTime().Nanosecond() + s.EndTime().Nanosecond()
	if r, ok := s.(*record); ok {
		r.release()
	}
}

func benchTracer(b *testing.B) *Tracer {
	t, err := New(Config{Service: "bench", Instance: "1", Processor: discardProcessor{recycle: true}, Ratio: 1})
	if err != nil {
		b.Fatal(err)
	}
	t.recycle = true
	return t
}

// threadCPU reports the benchmark's CPU time per operation as cpu-ns/op:
// the thread's own CPU clock, which (unlike ns/op) does not count the time
// other processes hold the CPU, so it holds on a loaded machine.
func threadCPU(b *testing.B) func() {
	runtime.LockOSThread()
	var start unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &start); err != nil {
		b.Fatal(err)
	}
	return func() {
		var end unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &end)
		runtime.UnlockOSThread()
		b.ReportMetric(float64(end.Nano()-start.Nano())/float64(b.N), "cpu-ns/op")
	}
}

func BenchmarkSpan(b *testing.B) {
	// given is a time as the hop has it from its own time.Now(): the
	// "given" variants pass it to StartAt and EndAt and read no clock.
	given := time.Now()
	for _, c := range []struct {
		name   string
		parent trace.SpanContext
	}{{"sampled", benchSampled}, {"unsampled", benchUnsampled}} {
		b.Run("imtrace/"+c.name, func(b *testing.B) {
			t := benchTracer(b)
			b.ReportAllocs()
			defer threadCPU(b)()
			for b.Loop() {
				sp := t.Start(c.parent, SpanLogicHandle, trace.SpanKindServer, benchMsg)
				sp.End()
			}
		})
		b.Run("imtrace-given/"+c.name, func(b *testing.B) {
			t := benchTracer(b)
			b.ReportAllocs()
			defer threadCPU(b)()
			for b.Loop() {
				sp := t.StartAt(c.parent, SpanLogicHandle, trace.SpanKindServer, benchMsg, given)
				sp.EndAt(given)
			}
		})
		if c.name == "sampled" {
			// What the export side adds: the processor reads the span as
			// the exporter does (times, attributes, events), which builds
			// what End leaves to export time.
			b.Run("imtrace-exportside/sampled", func(b *testing.B) {
				t, err := New(Config{Service: "bench", Instance: "1", Processor: readingProcessor{}, Ratio: 1})
				if err != nil {
					b.Fatal(err)
				}
				t.recycle, t.ownPipeline = true, true // as with the package's exporter
				b.ReportAllocs()
				defer threadCPU(b)()
				for b.Loop() {
					sp := t.Start(c.parent, SpanLogicHandle, trace.SpanKindServer, benchMsg)
					sp.End()
				}
			})
		}
		if c.name == "unsampled" {
			// The tail part off (Config.TailBuffer < 0): head sampling only.
			b.Run("imtrace/unsampled-headonly", func(b *testing.B) {
				t := benchTracer(b)
				t.tailOn = false
				b.ReportAllocs()
				defer threadCPU(b)()
				for b.Loop() {
					sp := t.Start(c.parent, SpanLogicHandle, trace.SpanKindServer, benchMsg)
					sp.End()
				}
			})
		}
		b.Run("sdk/"+c.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(Sampler(1)), sdktrace.WithSpanProcessor(discardProcessor{}))
			tr := tp.Tracer(ScopeName)
			ctx := trace.ContextWithRemoteSpanContext(context.Background(), c.parent)
			b.ReportAllocs()
			defer threadCPU(b)()
			for b.Loop() {
				m := &benchMsg
				_, sp := tr.Start(ctx, SpanLogicHandle, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
					systemAttr, opProcess,
					KeyMessageID.String(m.ID), KeyClientMsgID.String(m.ClientID), KeyConversationID.String(m.Conv),
					KeyDestination.String(m.Dest), KeyUser.String(m.User), KeyRecipient.String(m.Recipient),
					KeySeq.Int64(int64(m.Seq)), KeyRecipientCount.Int(m.Recipients), KeyProbe.Bool(m.Probe)))
				sp.End()
			}
		})
		// The SDK with what the brief suggests for it: start options and
		// the attribute slice built once and reused (only possible when the
		// attributes do not change from span to span).
		b.Run("sdk-prebuilt/"+c.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(Sampler(1)), sdktrace.WithSpanProcessor(discardProcessor{}))
			tr := tp.Tracer(ScopeName)
			ctx := trace.ContextWithRemoteSpanContext(context.Background(), c.parent)
			m := &benchMsg
			attrs := []attribute.KeyValue{systemAttr, opProcess,
				KeyMessageID.String(m.ID), KeyClientMsgID.String(m.ClientID), KeyConversationID.String(m.Conv),
				KeyDestination.String(m.Dest), KeyUser.String(m.User), KeyRecipient.String(m.Recipient),
				KeySeq.Int64(int64(m.Seq)), KeyRecipientCount.Int(m.Recipients), KeyProbe.Bool(m.Probe)}
			opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...)}
			b.ReportAllocs()
			defer threadCPU(b)()
			for b.Loop() {
				_, sp := tr.Start(ctx, SpanLogicHandle, opts...)
				sp.End()
			}
		})
	}
}

// BenchmarkClock is the peer that shows what the clock costs on the machine:
// a hop span reads the monotonic clock twice.
func BenchmarkClock(b *testing.B) {
	var sink int64
	defer threadCPU(b)()
	for b.Loop() {
		sink += monoNow() - monoNow()
	}
	_ = sink
}

func TestSpanSize(t *testing.T) {
	t.Logf("Span %d bytes, spanData %d bytes, record %d bytes", unsafe.Sizeof(Span{}), unsafe.Sizeof(spanData{}), unsafe.Sizeof(record{}))
}

// BenchmarkParse: the traceparent every hop reads, by Parse (the fixed
// layout's fast path) and by the general path it replaced for that layout.
func BenchmarkParse(b *testing.B) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			benchSC = Parse(tp)
		}
	})
	b.Run("general", func(b *testing.B) {
		var scc trace.SpanContextConfig
		for b.Loop() {
			parseGeneral(tp, &scc)
		}
		benchSC = trace.NewSpanContext(scc)
	})
}

var benchSC trace.SpanContext

// BenchmarkFloor: what the span's unavoidable steps cost on the machine, one
// at a time, for docs/benchmarks.md's account of the unsampled span: a
// locked add (a counter), a mutex lock and unlock (the tail shard's), a
// span id's random number, a read of the monotonic clock.
func BenchmarkFloor(b *testing.B) {
	var n atomic.Uint64
	var mu sync.Mutex
	var sink uint64
	b.Run("atomic-add", func(b *testing.B) {
		for b.Loop() {
			n.Add(1)
		}
	})
	b.Run("mutex", func(b *testing.B) {
		for b.Loop() {
			mu.Lock()
			sink++
			mu.Unlock()
		}
	})
	b.Run("rand", func(b *testing.B) {
		for b.Loop() {
			sink += rand.Uint64()
		}
	})
	b.Run("clock", func(b *testing.B) {
		for b.Loop() {
			sink += uint64(monoNow())
		}
	})
	_ = sink
}

// BenchmarkEncode: one hop span's OTLP encoding as the exporter does it,
// straight from the record's data ("direct", the path since the records
// are encoded so) and by building the record's attributes first and reading
// them through its ReadOnlySpan methods ("build-read", the path before).
func BenchmarkEncode(b *testing.B) {
	var recs []*record
	capture := captureAll{}
	t, err := New(Config{Service: "bench", Instance: "1", Processor: &capture, Ratio: 1})
	if err != nil {
		b.Fatal(err)
	}
	for range 512 {
		sp := t.Start(benchSampled, SpanLogicHandle, trace.SpanKindServer, benchMsg)
		sp.End()
	}
	for _, s := range capture.spans {
		recs = append(recs, s.(*record))
	}
	buf := make([]byte, 0, 4096)
	b.Run("direct", func(b *testing.B) {
		defer threadCPU(b)()
		i := 0
		for b.Loop() {
			buf = appendSpan(buf[:0], recs[i%len(recs)])
			i++
		}
	})
	b.Run("build-read", func(b *testing.B) {
		defer threadCPU(b)()
		i := 0
		for b.Loop() {
			r := recs[i%len(recs)]
			r.built.Store(false)
			r.ready()
			buf = appendSpan(buf[:0], r)
			i++
		}
	})
}

// captureAll keeps every ended span.
type captureAll struct {
	discardProcessor
	spans []sdktrace.ReadOnlySpan
}

func (c *captureAll) OnEnd(s sdktrace.ReadOnlySpan) { c.spans = append(c.spans, s) }
