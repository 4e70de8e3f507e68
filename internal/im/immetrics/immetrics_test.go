package immetrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestNilSetIsOff(t *testing.T) {
	var s *Set
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
