package probe

import (
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

func TestIMWatchRoundsSucceed(t *testing.T) {
	c := imtest.StartCluster(t, "", 1)
	for _, tc := range []struct {
		name     string
		accounts []string
		fresh    bool
	}{
		{"loopback", nil, false},
		{"ring", []string{"pa", "pb", "pc"}, false},
		{"fresh-login", []string{"pf"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := imwatchTarget(t, tc.name, c.URLs()[0], 200*time.Millisecond, 2*time.Second, tc.accounts...) // generous: a loaded machine
			tg.FreshLogin = tc.fresh
			p := startProber(t, Config{Targets: []Target{tg}}, Options{})
			l := map[string]string{"target": tc.name, "protocol": "imwatch", "location": "test"}
			imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", l, 10))
			imtest.Eventually(t, 5*time.Second, atLeast(t, p, "probe_success", l, 1))
			if v := metricValue(t, p, "probe_e2e_latency_seconds", l); v < 10 {
				t.Errorf("e2e latency observed %g times, want >= 10", v)
			}
			for _, step := range []string{StepConnect, StepLogin, StepSend} {
				if v := metricValue(t, p, "probe_step_duration_seconds", map[string]string{"target": tc.name, "step": step}); v < 1 {
					t.Errorf("step %s observed %g times", step, v)
				}
			}
			for _, m := range []string{"probe_messages_lost_total", "probe_messages_duplicated_total", "probe_messages_reordered_total", "probe_failures_total"} {
				if v := metricValue(t, p, m, l); v != 0 {
					t.Errorf("%s = %g, want 0", m, v)
				}
			}
		})
	}
}

// TestIMWatchReconnectsWithLongHistory: a probe account with more history
// than a client's inbox holds reconnects after its connections drop, and
// its rounds go on. (The prober once dialled a client that synced the
// account's history into a 64-message inbox nobody read before Dial
// returned: after a gateway restart the probe never connected again.)
func TestIMWatchReconnectsWithLongHistory(t *testing.T) {
	c := imtest.StartCluster(t, "", 1)
	proxy := startWSProxy(t, c.URLs()[0], func(bool, protocol.Frame) bool { return true })
	tg := imwatchTarget(t, "history", proxy.URL(), 100*time.Millisecond, time.Second)
	p := startProber(t, Config{Targets: []Target{tg}}, Options{})
	l := map[string]string{"target": "history", "protocol": "imwatch", "location": "test"}
	imtest.Eventually(t, 60*time.Second, atLeast(t, p, "probe_messages_received_total", l, 80))
	proxy.cut()
	before := metricValue(t, p, "probe_messages_received_total", l)
	imtest.Eventually(t, 30*time.Second, atLeast(t, p, "probe_messages_received_total", l, before+20))
	imtest.Eventually(t, 5*time.Second, atLeast(t, p, "probe_success", l, 1))
}
