package probe

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/traces"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
)

type failure struct {
	Reason  string `json:"reason"`
	TraceID string `json:"trace_id"`
	Target  string `json:"target"`
}

func probeFailures(base, target string) ([]failure, error) {
	resp, err := http.Get(base + "/api/probes/failures?target=" + target)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Failures []failure `json:"failures"`
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("failures: %s", resp.Status)
	}
	return r.Failures, json.NewDecoder(resp.Body).Decode(&r)
}

// A probe round whose message is lost between the recipient's gateway and
// its device (the proxy drops every probe deliver frame): the center lists
// the round among the failures with reason delivery_timeout and its trace
// id, and that trace holds the IM's hops up to the last one the message
// reached, the gateway's push (pushed again by the logic node, as nobody
// acknowledged it), and none after.
func TestLostProbeMessageTraceEndsAtLastHop(t *testing.T) {
	cen := centertest.Start(t, centertest.Config(t))
	endpoint := cen.URL() + "/v1/traces"
	c := imtest.StartCluster(t, "", 1, func(o *cluster.Options) {
		// Ratio 0: only the probe messages are traced, as they always are.
		o.Tracing = &imtrace.Config{Endpoint: endpoint, BatchTimeout: 200 * time.Millisecond}
	})
	proxy := startWSProxy(t, c.URLs()[0], func(toClient bool, f protocol.Frame) bool {
		return !(toClient && f.Type == protocol.TypeDeliver && f.Probe)
	})
	cfg := Config{Targets: []Target{imwatchTarget(t, "lossy", proxy.URL(), 500*time.Millisecond, 1500*time.Millisecond)}}
	cfg.Center.URL = cen.URL()
	cfg.Center.PushInterval = config.Duration(time.Second)
	startProber(t, cfg, Options{})

	var f failure
	imtest.Eventually(t, 60*time.Second, func() error {
		fs, err := probeFailures(cen.URL(), "lossy")
		if err != nil {
			return err
		}
		for _, x := range fs {
			if x.Reason == ReasonDeliveryTimeout && x.TraceID != "" {
				f = x
				return nil
			}
		}
		return fmt.Errorf("no delivery_timeout failure with a trace id yet: %+v", fs)
	})
	wantHops := []string{imtrace.SpanProbeRound, "im.probe.send", imtrace.SpanClientSend, imtrace.SpanGatewayReceive,
		imtrace.SpanLogicHandle, imtrace.SpanStoreAppend, imtrace.SpanGatewayPush}
	var tr traces.Trace
	imtest.Eventually(t, 30*time.Second, func() error {
		trs, err := centertest.Traces(cen.URL(), "/api/traces/"+f.TraceID)
		if err != nil || len(trs) != 1 {
			return fmt.Errorf("trace %s: %d traces, %v", f.TraceID, len(trs), err)
		}
		tr = trs[0]
		have := map[string]bool{}
		for _, s := range tr.Spans {
			have[s.Name] = true
		}
		for _, name := range wantHops {
			if !have[name] {
				return fmt.Errorf("no %s yet:\n%s", name, centertest.Waterfall(tr))
			}
		}
		return nil
	})
	t.Log(centertest.Waterfall(tr))
	var last traces.Span
	for _, s := range tr.Spans {
		switch s.Name {
		case imtrace.SpanClientReceive, imtrace.SpanClientAck, imtrace.SpanLogicAck:
			t.Errorf("%s in the trace of a message that never reached the device", s.Name)
		case imtrace.SpanProbeRound:
			if s.Status != "error" || s.Attributes["imwatch.probe.reason"] != ReasonDeliveryTimeout {
				t.Errorf("round: status %s, reason %v", s.Status, s.Attributes["imwatch.probe.reason"])
			}
		case "im.probe.send":
		default:
			if s.Start > last.Start {
				last = s
			}
		}
	}
	if last.Name != imtrace.SpanGatewayPush {
		t.Errorf("the trace's last IM hop is %s, want %s:\n%s", last.Name, imtrace.SpanGatewayPush, centertest.Waterfall(tr))
	}
	if tr.Root.MissingParents != 0 {
		t.Errorf("%d missing parents:\n%s", tr.Root.MissingParents, centertest.Waterfall(tr))
	}
}
