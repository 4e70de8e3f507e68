package immetrics

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/protocol"

	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestNilSetIsOff(t *testing.T) {
	var s *Set
	s.Pause(true) // nil-safe too
	s.Frame("in", "send")
	s.Request("send")
	s.Fail("send", "bad_request")
	s.Message(KindDirect, StageSent, 1)
	s.Stage(LatStore, time.Now())
	s.E2E(KindGroup, time.Millisecond)
	s.ConnDelta(1)
	s.SetPending(3)
	s.Redelivered(1)
	s.AckTimedOut(1)
	s.Synced(2)
}

func TestCountsGoToTheirLabels(t *testing.T) {
	s := New("gateway")
	s.Message(KindGroup, StageDelivered, 3)
	s.Message(KindGroup, StageDelivered, 0) // nothing
	s.Message("other", StageDelivered, 2)   // an unforeseen label still counts
	s.Frame("out", "deliver")
	s.Frame("in", "weird")
	s.Fail("send", "unavailable")
	s.Synced(4)
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"group delivered", testutil.ToFloat64(s.Messages.WithLabelValues(KindGroup, StageDelivered)), 3},
		{"direct delivered", testutil.ToFloat64(s.Messages.WithLabelValues(KindDirect, StageDelivered)), 0},
		{"other delivered", testutil.ToFloat64(s.Messages.WithLabelValues("other", StageDelivered)), 2},
		{"frames out deliver", testutil.ToFloat64(s.Frames.WithLabelValues("out", "deliver")), 1},
		{"frames in weird", testutil.ToFloat64(s.Frames.WithLabelValues("in", "weird")), 1},
		{"failures", testutil.ToFloat64(s.Failures.WithLabelValues("send", "unavailable")), 1},
		{"syncs", testutil.ToFloat64(s.Syncs), 1},
		{"sync messages", testutil.ToFloat64(s.SyncMessages), 4},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Every family carries the service label.
	mfs, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if len(mf.GetName()) < 11 || mf.GetName()[:11] != "imwatch_im_" {
			continue
		}
		for _, m := range mf.GetMetric() {
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == "service" && l.GetValue() == "gateway")
			}
			if !found {
				t.Fatalf("%s has no service label", mf.GetName())
			}
		}
	}
}

// Requests and failures get a series when first counted, not before (as a
// plain vec gives them): a part counts only some of the operations and
// reasons, and docs/metrics.md lists per part what it counts.
func TestRequestsAndFailuresAppearWhenCounted(t *testing.T) {
	s := New("logic")
	for _, name := range []string{"imwatch_im_requests_total", "imwatch_im_failures_total"} {
		if n, err := testutil.GatherAndCount(s.Registry, name); err != nil || n != 0 {
			t.Fatalf("%s: %d series before any count (%v), want 0", name, n, err)
		}
	}
	// From both cores at once, the first use included.
	const goroutines, each = 4, 1000
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				s.Request("send")
				s.Fail("send", protocol.CodeUnavailable)
			}
		})
	}
	wg.Wait()
	s.Request("custom")                     // not a known operation: still counted
	s.Fail("send", "some_reason")           // nor a known reason
	s.Fail("sync", protocol.CodeBadRequest) // known, a second cached child
	s.Fail("sync", protocol.CodeBadRequest)
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"requests send", testutil.ToFloat64(s.Requests.WithLabelValues("send")), goroutines * each},
		{"requests custom", testutil.ToFloat64(s.Requests.WithLabelValues("custom")), 1},
		{"failures send unavailable", testutil.ToFloat64(s.Failures.WithLabelValues("send", protocol.CodeUnavailable)), goroutines * each},
		{"failures send some_reason", testutil.ToFloat64(s.Failures.WithLabelValues("send", "some_reason")), 1},
		{"failures sync bad_request", testutil.ToFloat64(s.Failures.WithLabelValues("sync", protocol.CodeBadRequest)), 2},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	for _, c := range []struct {
		name string
		want int
	}{{"imwatch_im_requests_total", 2}, {"imwatch_im_failures_total", 3}} {
		if n, err := testutil.GatherAndCount(s.Registry, c.name); err != nil || n != c.want {
			t.Errorf("%s: %d series (%v), want %d", c.name, n, err, c.want)
		}
	}
}

func TestStageAt(t *testing.T) {
	s := New("logic")
	start := time.Now()
	s.StageAt(LatAck, start, start.Add(30*time.Millisecond))
	s.StageAt("other", start, start.Add(time.Second)) // an unforeseen stage still counts
	var off *Set
	off.StageAt(LatAck, start, start) // metrics off
	got, err := testutil.GatherAndFormat(s.Registry, expfmt.TypeTextPlain, "imwatch_im_stage_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		`imwatch_im_stage_duration_seconds_bucket{service="logic",stage="ack",le="0.025"} 0`,
		`imwatch_im_stage_duration_seconds_bucket{service="logic",stage="ack",le="0.05"} 1`,
		`imwatch_im_stage_duration_seconds_sum{service="logic",stage="ack"} 0.03`,
		`imwatch_im_stage_duration_seconds_sum{service="logic",stage="other"} 1`,
	} {
		if !strings.Contains(string(got), line+"\n") {
			t.Errorf("missing %s in\n%s", line, got)
		}
	}
}

func BenchmarkMessage(b *testing.B) {
	s := New("logic")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s.Message(KindDirect, StageDelivered, 1)
		s.Stage(LatDeliver, time.Now())
	}
}

func TestTracingStats(t *testing.T) {
	s := New("logic")
	s.Tracing(nil) // tracing off: nothing added
	rec := tracetest.NewSpanRecorder()
	tr, err := imtrace.New(imtrace.Config{Service: "imwatch-logic", Processor: rec, Ratio: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	s.Tracing(tr)
	for i := 0; i < 3; i++ {
		sp := tr.Start(trace.SpanContext{}, imtrace.SpanLogicHandle, trace.SpanKindServer, imtrace.Message{})
		sp.End()
	}
	want := `
# HELP imwatch_trace_spans_total Hop spans by what became of them at start and end: sampled, unsampled (head decision), promoted (unsampled but kept: an error or a slow span in its trace), tail_dropped (unsampled, pushed out of the full tail buffer while it could still have been promoted), promotion_refused (an error or slow span that did not promote its trace: the tracer's promotions per second were spent).
# TYPE imwatch_trace_spans_total counter
imwatch_trace_spans_total{result="promoted",service="logic"} 0
imwatch_trace_spans_total{result="promotion_refused",service="logic"} 0
imwatch_trace_spans_total{result="sampled",service="logic"} 3
imwatch_trace_spans_total{result="tail_dropped",service="logic"} 0
imwatch_trace_spans_total{result="unsampled",service="logic"} 0
`
	if err := testutil.GatherAndCompare(s.Registry, strings.NewReader(want), "imwatch_trace_spans_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(s.Registry, "imwatch_trace_export_spans_total"); err != nil || n != 3 {
		t.Errorf("export series %d, %v", n, err)
	}
}

// BenchmarkMessagePath makes the metric-set calls one direct message costs
// the gateway and the logic node, from both cores at once as a loaded
// cluster does: the per-message cost of metrics on.
func BenchmarkMessagePath(b *testing.B) {
	g, l := New("gateway"), New("logic")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		// Latencies of a couple of milliseconds, as on a real link: the
		// histograms' bucket search depends on the value.
		start, i := time.Now().Add(-2*time.Millisecond), 0
		for pb.Next() {
			if i++; i%256 == 0 {
				start = time.Now().Add(-2 * time.Millisecond)
			}
			ackAt := start.Add(3 * time.Millisecond) // the logic's clock read for the ack batch
			// Gateway: the send and its ack, the push and its deliver-ack.
			g.Frame("in", "send")
			g.Request("send")
			g.Message(KindDirect, StageSent, 1)
			g.Stage(LatGatewayReceive, start)
			g.Frame("out", "send_ack")
			g.Frame("out", "deliver")
			g.Message(KindDirect, StageDelivered, 1)
			g.Stage(LatDeliver, start)
			g.Frame("in", "deliver_ack")
			g.Request("deliver_ack")
			// Logic: store, push, ack.
			l.Request("send")
			l.Message(KindDirect, StageStored, 1)
			l.Stage(LatStore, start)
			l.Message(KindDirect, StagePushed, 1)
			l.Stage(LatPush, start)
			l.SetPending(1)
			l.SetPending(0)
			l.Message(KindDirect, StageAcked, 1)
			l.StageAt(LatAck, start, ackAt)
			l.E2E(KindDirect, 3*time.Millisecond)
		}
	})
}

// TestPause: a paused set counts nothing on the message path, as a nil one;
// the connections gauge keeps counting; resumed, it counts again.
func TestPause(t *testing.T) {
	s := New("logic")
	all := func() {
		s.Frame("in", "send")
		s.Request("send")
		s.Fail("send", "bad_request")
		s.Message(KindDirect, StageSent, 1)
		s.Stage(LatStore, time.Now())
		s.StageAt(LatAck, time.Now(), time.Now())
		s.E2E(KindDirect, time.Millisecond)
		s.SetPending(3)
		s.Redelivered(1)
		s.AckTimedOut(1)
		s.Synced(2)
		s.ConnDelta(1)
	}
	s.Pause(true)
	all()
	if n := testutil.CollectAndCount(s.Requests) + testutil.CollectAndCount(s.Failures); n != 0 {
		t.Errorf("%d series counted while paused", n)
	}
	for name, v := range map[string]float64{
		"sent": testutil.ToFloat64(s.Messages.WithLabelValues(KindDirect, StageSent)), "redeliveries": testutil.ToFloat64(s.Redeliveries),
		"ack timeouts": testutil.ToFloat64(s.AckTimeouts), "syncs": testutil.ToFloat64(s.Syncs), "pending": testutil.ToFloat64(s.Pending),
	} {
		if v != 0 {
			t.Errorf("%s = %v while paused", name, v)
		}
	}
	if v := testutil.ToFloat64(s.Connections); v != 1 {
		t.Errorf("connections %v while paused, want 1", v)
	}
	s.Pause(false)
	all()
	if v := testutil.ToFloat64(s.Messages.WithLabelValues(KindDirect, StageSent)); v != 1 {
		t.Errorf("sent %v after resuming, want 1", v)
	}
	if v := testutil.ToFloat64(s.Connections); v != 2 {
		t.Errorf("connections %v, want 2", v)
	}
}
