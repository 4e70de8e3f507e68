package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpSink is a tiny OTLP/HTTP receiver (and a remote-write one that takes
// anything) standing in for the center, able to be down.
type otlpSink struct {
	srv     *httptest.Server
	down    atomic.Bool
	mu      sync.Mutex
	spans   []sinkSpan
	writes  int
	refused int
}

type sinkSpan struct {
	resource map[string]string
	span     *tracepb.Span
}

func startOTLPSink(t testing.TB) *otlpSink {
	s := &otlpSink{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			s.mu.Lock()
			s.refused++
			s.mu.Unlock()
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/api/v1/write":
			s.mu.Lock()
			s.writes++
			s.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		case "/v1/traces":
			if r.Header.Get("Content-Type") != "application/x-protobuf" {
				http.Error(w, "want protobuf", http.StatusUnsupportedMediaType)
				return
			}
			var req coltracepb.ExportTraceServiceRequest
			if err := proto.Unmarshal(body, &req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			s.mu.Lock()
			for _, rs := range req.GetResourceSpans() {
				res := attrs(rs.GetResource().GetAttributes())
				for _, ss := range rs.GetScopeSpans() {
					for _, sp := range ss.GetSpans() {
						s.spans = append(s.spans, sinkSpan{resource: res, span: sp})
					}
				}
			}
			s.mu.Unlock()
			w.WriteHeader(http.StatusOK)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		v := kv.GetValue()
		switch {
		case v.GetStringValue() != "":
			m[kv.GetKey()] = v.GetStringValue()
		case v.GetIntValue() != 0:
			m[kv.GetKey()] = fmt.Sprint(v.GetIntValue())
		default:
			m[kv.GetKey()] = fmt.Sprint(v.GetBoolValue())
		}
	}
	return m
}

// Every round is one trace with root im.probe.round, sent through the
// buffer: with the sink down for a while, every span arrives afterwards.
func TestRoundSpansReachTheCenterThroughTheBuffer(t *testing.T) {
	sink := startOTLPSink(t)
	sink.down.Store(true)
	var mu sync.Mutex
	traces := map[uint64]string{} // seq -> trace id the round reported
	carried := map[uint64]string{}
	theDouble.mu.Lock()
	theDouble.script = func(seq uint64) action {
		if seq%4 == 0 {
			return action{drop: true}
		}
		return action{}
	}
	theDouble.mu.Unlock()
	tg := Target{Name: "spans", Protocol: "double", Address: "double", Interval: config.Duration(100 * time.Millisecond),
		Timeout: config.Duration(100 * time.Millisecond), Accounts: []Account{{User: "s"}}}
	cfg := Config{Location: "lab-7", Targets: []Target{tg}}
	cfg.Center.URL = sink.srv.URL
	cfg.Center.PushInterval = config.Duration(200 * time.Millisecond)
	// The double saw the traceparent the message carried.
	doubleTrace = func(m Message) {
		mu.Lock()
		carried[m.Seq] = m.Trace
		mu.Unlock()
	}
	t.Cleanup(func() { doubleTrace = nil })
	p := startProber(t, cfg, Options{OnRound: func(r RoundResult) {
		mu.Lock()
		traces[r.Seq] = r.TraceID
		mu.Unlock()
	}})
	imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_sent_total", nil, 20))
	imtest.Eventually(t, 10*time.Second, func() error {
		if st := p.pipe.qt.Stats(); st.Pending == 0 {
			return errors.New("no spans waiting in the buffer")
		}
		return nil
	})
	sink.down.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.refused == 0 || sink.writes == 0 {
		t.Errorf("refused %d, remote writes %d", sink.refused, sink.writes)
	}
	roots := map[string]sinkSpan{}
	children := map[string]int{}
	for _, s := range sink.spans {
		id := fmt.Sprintf("%x", s.span.GetTraceId())
		if s.span.GetName() == "im.probe.round" {
			roots[id] = s
		} else {
			children[id]++
		}
	}
	failed := 0
	for seq, id := range traces {
		root, ok := roots[id]
		if !ok {
			t.Errorf("round %d: no root span for trace %s", seq, id)
			continue
		}
		if len(root.span.GetParentSpanId()) != 0 {
			t.Errorf("round %d: the root span has a parent", seq)
		}
		if root.resource["service.name"] != "imwatch-probe" || root.resource["service.instance.id"] != "lab-7" {
			t.Errorf("resource %v", root.resource)
		}
		a := attrs(root.span.GetAttributes())
		if a["imwatch.probe.target"] != "spans" || a["imwatch.probe.protocol"] != "double" || a["imwatch.probe.location"] != "lab-7" || a["imwatch.probe.seq"] != fmt.Sprint(seq) {
			t.Errorf("round %d: attributes %v", seq, a)
		}
		if seq%4 == 0 {
			failed++
			if root.span.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR || a["imwatch.probe.reason"] != ReasonDeliveryTimeout {
				t.Errorf("round %d (dropped): status %v reason %q", seq, root.span.GetStatus(), a["imwatch.probe.reason"])
			}
		} else if root.span.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_OK {
			t.Errorf("round %d: status %v", seq, root.span.GetStatus())
		}
		if children[id] == 0 {
			t.Errorf("round %d: no im.probe.send span", seq)
		}
		if tp := carried[seq]; !strings.HasPrefix(tp, "00-"+id+"-") || !strings.HasSuffix(tp, "-01") {
			t.Errorf("round %d: the message carried traceparent %q, not of trace %s (sampled)", seq, tp, id)
		}
	}
	if failed == 0 || len(traces) < 15 {
		t.Errorf("%d rounds, %d failed", len(traces), failed)
	}
}
