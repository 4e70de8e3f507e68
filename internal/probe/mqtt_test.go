package probe

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// syncBuffer is a log destination tests read while the prober writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func debugLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestMQTTAgainstMosquitto(t *testing.T) {
	const pw1, pw2 = "mqtt-pass-Q7x9!first", "mqtt-pass-Z3k5!second"
	for _, version := range []string{"5", "3.1.1"} {
		t.Run("v"+version, func(t *testing.T) {
			srv := startMosquitto(t, map[string]string{"probe1": pw1, "probe2": pw2})
			dir := t.TempDir()
			t.Setenv("PROBE_MQTT_PW2", pw2)
			tg := Target{Name: "mosquitto", Protocol: ProtoMQTT, Address: srv.addr, MQTTVersion: version,
				TopicPrefix: DefaultTopicPrefix, Interval: config.Duration(300 * time.Millisecond), Timeout: config.Duration(2 * time.Second),
				Accounts: []Account{
					{User: "probe1", PasswordFile: writeFile(t, dir, "pw1", pw1+"\n")},
					{User: "probe2", PasswordEnv: "PROBE_MQTT_PW2"},
				}}
			cfg := Config{Targets: []Target{tg}}
			if err := cfg.Resolve(dir, envLookup); err != nil {
				t.Fatal(err)
			}
			logs := &syncBuffer{}
			p := startProber(t, cfg, Options{Log: debugLogger(logs)})
			l := map[string]string{"target": "mosquitto", "protocol": "mqtt"}
			imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", l, 6))
			imtest.Eventually(t, 5*time.Second, atLeast(t, p, "probe_success", l, 1))
			if v := metricValue(t, p, "probe_e2e_latency_seconds", l); v < 6 {
				t.Errorf("e2e latency observed %g times", v)
			}

			// The broker goes away: the next round fails with reason connect
			// within interval + timeout (polled, generously for a loaded machine).
			srv.stop()
			stopped := time.Now()
			imtest.Eventually(t, 10*time.Second, atLeast(t, p, "probe_failures_total", map[string]string{"target": "mosquitto", "reason": ReasonConnect}, 1))
			if d := time.Since(stopped); d > 5*time.Second {
				t.Errorf("first failure %s after the broker stopped", d)
			}
			imtest.Eventually(t, 10*time.Second, func() error { // every link's last round failed
				if v := metricValue(t, p, "probe_success", l); v != 0 {
					return fmt.Errorf("probe_success = %g with the broker down", v)
				}
				return nil
			})
			// Back: the probes recover by themselves.
			srv.start()
			recv := metricValue(t, p, "probe_messages_received_total", l)
			imtest.Eventually(t, 20*time.Second, atLeast(t, p, "probe_messages_received_total", l, recv+4))
			imtest.Eventually(t, 10*time.Second, atLeast(t, p, "probe_success", l, 1))

			rec := httptest.NewRecorder()
			p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			noSecrets(t, "the metrics", rec.Body.String(), pw1, pw2)
			noSecrets(t, "the logs", logs.String(), pw1, pw2)
		})
	}
}

func envLookup(k string) (string, bool) { return lookupEnv(k) }
