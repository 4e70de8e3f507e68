package probe

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

func TestXMPPAgainstProsody(t *testing.T) {
	const pw1, pw2 = "xmpp-pass-K8d2!first", "xmpp-pass-W4m6!second"
	srv := startProsody(t, map[string]string{"probe1@localhost": pw1, "probe2@localhost": pw2})
	for _, tc := range []struct {
		name     string
		mechs    []string
		accounts []string
		password string // instead of the right one
	}{
		// Prosody 0.12 keeps SCRAM-SHA-1 hashes, so it offers no
		// SCRAM-SHA-256: the default list falls back to SCRAM-SHA-1.
		{"default-mechanisms-two-accounts", DefaultSASLMechanisms, []string{"probe1@localhost", "probe2@localhost"}, ""},
		{"scram-sha-1-loopback", []string{"SCRAM-SHA-1"}, []string{"probe1@localhost"}, ""},
		{"plain-loopback", []string{"PLAIN"}, []string{"probe2@localhost"}, ""},
		{"scram-sha-256-not-offered", []string{"SCRAM-SHA-256"}, []string{"probe1@localhost"}, ""},
		{"wrong-password", []string{"SCRAM-SHA-1"}, []string{"probe1@localhost"}, "not-the-password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pws := map[string]string{"probe1@localhost": pw1, "probe2@localhost": pw2}
			tg := Target{Name: tc.name, Protocol: ProtoXMPP, Address: srv.addr, SASLMechanisms: tc.mechs,
				Interval: config.Duration(300 * time.Millisecond), Timeout: config.Duration(2 * time.Second),
				TLS: TLS{CAFile: srv.ca}}
			for i, a := range tc.accounts {
				pw := pws[a]
				if tc.password != "" {
					pw = tc.password
				}
				tg.Accounts = append(tg.Accounts, Account{User: a, PasswordFile: writeFile(t, dir, "pw"+string(rune('0'+i)), pw)})
			}
			cfg := Config{Targets: []Target{tg}}
			if err := cfg.Resolve(dir, envLookup); err != nil {
				t.Fatal(err)
			}
			logs := &syncBuffer{}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("prober log:\n%s\nprosody log:\n%s", logs, srv.log())
				}
			})
			p := startProber(t, cfg, Options{Log: debugLogger(logs)})
			l := map[string]string{"target": tc.name, "protocol": "xmpp"}
			if tc.name == "scram-sha-256-not-offered" || tc.password != "" {
				imtest.Eventually(t, 10*time.Second, atLeast(t, p, "probe_failures_total", map[string]string{"target": tc.name, "reason": ReasonAuth}, 2))
				if v := metricValue(t, p, "probe_messages_sent_total", l); v != 0 {
					t.Errorf("sent %g messages without a login", v)
				}
				noSecrets(t, "the logs", logs.String(), pw1, pw2, tc.password)
				return
			}
			imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", l, 6))
			imtest.Eventually(t, 5*time.Second, atLeast(t, p, "probe_success", l, 1))
			imtest.Eventually(t, 5*time.Second, atLeast(t, p, "probe_step_duration_seconds", map[string]string{"target": tc.name, "step": StepReceipt}, 3))
			if v := metricValue(t, p, "probe_messages_lost_total", l); v != 0 {
				t.Errorf("lost %g", v)
			}
			rec := httptest.NewRecorder()
			p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			noSecrets(t, "the metrics", rec.Body.String(), pw1, pw2)
			noSecrets(t, "the logs", logs.String(), pw1, pw2)
		})
	}
}

// With the server stopped the next round fails with reason connect within
// interval + timeout; when it is back the probes recover by themselves.
func TestXMPPOutageAndRecovery(t *testing.T) {
	const pw = "xmpp-pass-R2t7!outage"
	srv := startProsody(t, map[string]string{"probe1@localhost": pw})
	dir := t.TempDir()
	tg := Target{Name: "prosody", Protocol: ProtoXMPP, Address: srv.addr, SASLMechanisms: DefaultSASLMechanisms,
		Interval: config.Duration(500 * time.Millisecond), Timeout: config.Duration(400 * time.Millisecond), TLS: TLS{CAFile: srv.ca},
		Accounts: []Account{{User: "probe1@localhost", PasswordFile: writeFile(t, dir, "pw", pw)}}}
	cfg := Config{Targets: []Target{tg}}
	if err := cfg.Resolve(dir, envLookup); err != nil {
		t.Fatal(err)
	}
	p := startProber(t, cfg, Options{})
	l := map[string]string{"target": "prosody"}
	imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", l, 3))
	srv.stop()
	stopped := time.Now()
	imtest.Eventually(t, 10*time.Second, atLeast(t, p, "probe_failures_total", map[string]string{"target": "prosody", "reason": ReasonConnect}, 1))
	// interval + timeout is 0.9s; allow for a loaded machine.
	if d := time.Since(stopped); d > 5*time.Second {
		t.Errorf("first failure %s after the server stopped", d)
	}
	srv.start()
	recv := metricValue(t, p, "probe_messages_received_total", l)
	imtest.Eventually(t, 30*time.Second, atLeast(t, p, "probe_messages_received_total", l, recv+3))
	imtest.Eventually(t, 10*time.Second, atLeast(t, p, "probe_success", l, 1))
}
