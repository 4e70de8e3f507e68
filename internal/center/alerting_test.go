package center_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/notify"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

const alertRules = `groups:
- name: im
  interval: 1s
  rules:
  - record: instance:imwatch_test_level:max
    expr: max by (instance) (imwatch_test_level)
  - alert: IMTestLevelHigh
    expr: instance:imwatch_test_level:max > 5
    for: 2s
    labels: {severity: page, team: im}
    annotations:
      summary: "level on {{ $labels.instance }} is {{ $value }}"
      runbook: "https://example.org/runbook"
`

// webhookSink records what a webhook receives.
type webhookSink struct {
	mu   sync.Mutex
	msgs []notify.WebhookMessage
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var m notify.WebhookMessage
	b, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
}

func (s *webhookSink) find(status string) (notify.WebhookMessage, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if m.Status == status {
			return m, true
		}
	}
	return notify.WebhookMessage{}, false
}

// amAlert is an alert as Alertmanager's API v2 lists it.
type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	Status      struct {
		State string `json:"state"`
	} `json:"status"`
	GeneratorURL string `json:"generatorURL"`
}

func amAlerts(amURL string) ([]amAlert, error) {
	resp, err := http.Get(amURL + "/api/v2/alerts")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out []amAlert
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// TestAlertsReachAlertmanagerAndWebhook: a rule that fires reaches a real
// Alertmanager and a webhook with its labels and annotations, and both hear
// that it resolved once its condition clears.
func TestAlertsReachAlertmanagerAndWebhook(t *testing.T) {
	am := centertest.StartAlertmanager(t, "route: {receiver: blackhole}\nreceivers: [{name: blackhole}]\n")
	sink := &webhookSink{}
	hook := httptest.NewServer(sink)
	defer hook.Close()

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "rules.yml"), alertRules)
	cfg := centertest.Config(t)
	cfg.RuleFiles = []string{filepath.Join(dir, "rules.yml")}
	cfg.Alerting.Alertmanagers = []string{am.URL}
	cfg.Alerting.Webhooks = []string{hook.URL + "/hook"}
	c := centertest.Start(t, cfg)

	// Push the level every 200ms until told otherwise.
	var level atomic.Int64
	level.Store(9)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pushErr atomic.Value
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			body := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
				series("imwatch_test_level", time.Now(), float64(level.Load()), "instance", "gw-1"),
			}})
			if code, msg := centertest.PostWrite(t, c.URL(), body); code != 204 {
				pushErr.Store(fmt.Sprintf("%d %s", code, msg))
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	imtest.Eventually(t, 30*time.Second, func() error {
		alerts, err := amAlerts(am.URL)
		if err != nil {
			return err
		}
		if len(alerts) != 1 {
			return fmt.Errorf("alertmanager has %d alerts (push: %v)", len(alerts), pushErr.Load())
		}
		a := alerts[0]
		want := map[string]string{"alertname": "IMTestLevelHigh", "instance": "gw-1", "severity": "page", "team": "im"}
		for k, v := range want {
			if a.Labels[k] != v {
				return fmt.Errorf("label %s = %q, want %q (%v)", k, a.Labels[k], v, a.Labels)
			}
		}
		if a.Annotations["summary"] != "level on gw-1 is 9" || a.Annotations["runbook"] != "https://example.org/runbook" {
			return fmt.Errorf("annotations %v", a.Annotations)
		}
		if a.Status.State != "active" || a.GeneratorURL == "" {
			return fmt.Errorf("state %q generator %q", a.Status.State, a.GeneratorURL)
		}
		return nil
	})
	imtest.Eventually(t, 10*time.Second, func() error {
		m, ok := sink.find("firing")
		if !ok {
			return fmt.Errorf("no firing webhook yet")
		}
		if m.Version != "4" || m.Receiver != notify.Receiver || len(m.Alerts) != 1 || m.GroupLabels["alertname"] != "IMTestLevelHigh" {
			return fmt.Errorf("webhook message %+v", m)
		}
		a := m.Alerts[0]
		if a.Status != "firing" || a.Labels["severity"] != "page" || a.Labels["instance"] != "gw-1" ||
			a.Annotations["summary"] != "level on gw-1 is 9" || a.Fingerprint == "" || a.StartsAt.IsZero() || !a.EndsAt.IsZero() {
			return fmt.Errorf("webhook alert %+v", a)
		}
		if m.CommonLabels["alertname"] != "IMTestLevelHigh" || m.ExternalURL != c.URL() {
			return fmt.Errorf("webhook message %+v", m)
		}
		return nil
	})
	// The API shows it too.
	got, err := centertest.Query(c.URL(), `ALERTS{alertname="IMTestLevelHigh",alertstate="firing"}`, time.Time{})
	if err != nil || len(got) != 1 {
		t.Errorf("ALERTS: %v %v", got, err)
	}
	_, r := centertest.API(t, c.URL(), "/api/v1/alerts", nil)
	var ad struct {
		Alerts []struct {
			State  string            `json:"state"`
			Labels map[string]string `json:"labels"`
		} `json:"alerts"`
	}
	if err := json.Unmarshal(r.Data, &ad); err != nil || len(ad.Alerts) != 1 || ad.Alerts[0].State != "firing" {
		t.Errorf("/api/v1/alerts: %s %v", r.Data, err)
	}

	// The condition clears: resolved everywhere.
	level.Store(1)
	imtest.Eventually(t, 30*time.Second, func() error {
		alerts, err := amAlerts(am.URL)
		if err != nil {
			return err
		}
		if len(alerts) != 0 {
			return fmt.Errorf("alertmanager still has %+v", alerts)
		}
		return nil
	})
	imtest.Eventually(t, 10*time.Second, func() error {
		m, ok := sink.find("resolved")
		if !ok {
			return fmt.Errorf("no resolved webhook yet")
		}
		a := m.Alerts[0]
		if a.Status != "resolved" || a.EndsAt.IsZero() || a.Labels["alertname"] != "IMTestLevelHigh" {
			return fmt.Errorf("resolved alert %+v", a)
		}
		return nil
	})
	// The webhook heard about it once each way, not on every resend.
	sink.mu.Lock()
	n := len(sink.msgs)
	sink.mu.Unlock()
	if n != 2 {
		t.Errorf("webhook got %d messages, want 2 (firing, resolved)", n)
	}
}

func TestAlertingConfigValidates(t *testing.T) {
	cfg := config.Default()
	cfg.Alerting.Webhooks = []string{"not a url"}
	if err := cfg.Validate(); err == nil {
		t.Error("bad webhook URL accepted")
	}
}
