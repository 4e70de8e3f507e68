package notify

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/notifier"

	"github.com/imwatch/imwatch/internal/center/config"
)

type recorder struct {
	mu   sync.Mutex
	msgs []WebhookMessage
	am   [][]map[string]any
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.URL.Path == "/api/v2/alerts" {
		var v []map[string]any
		_ = json.Unmarshal(b, &v)
		r.am = append(r.am, v)
		return
	}
	var m WebhookMessage
	_ = json.Unmarshal(b, &m)
	r.msgs = append(r.msgs, m)
}

func alert(name, inst string, start, end time.Time) *notifier.Alert {
	return &notifier.Alert{
		Labels:      labels.FromStrings("alertname", name, "instance", inst, "severity", "page"),
		Annotations: labels.FromStrings("summary", name+" on "+inst),
		StartsAt:    start, EndsAt: end, GeneratorURL: "http://center/graph",
	}
}

func TestWebhookGroupsAndDeduplicates(t *testing.T) {
	rec := &recorder{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	cfg := config.Default().Alerting
	cfg.Webhooks = []string{srv.URL + "/hook"}
	cfg.Alertmanagers = []string{srv.URL}
	cfg.WebhookRepeatInterval = config.Duration(time.Hour)
	cfg.ExternalURL = "http://center"
	n := New(cfg, nil, slog.New(slog.DiscardHandler))
	now := time.Now()
	firing := now.Add(time.Hour) // ValidUntil in the future: firing

	// Two alerts of one name, one of another: two webhook messages.
	n.sendAll(t.Context(), []*notifier.Alert{alert("A", "x", now, firing), alert("A", "y", now, firing), alert("B", "x", now, firing)})
	// The same again (a resend of the rules): nothing new for the webhook.
	n.sendAll(t.Context(), []*notifier.Alert{alert("A", "x", now, firing), alert("A", "y", now, firing), alert("B", "x", now, firing)})
	// A resolves.
	n.sendAll(t.Context(), []*notifier.Alert{alert("A", "x", now, now.Add(-time.Second)), alert("A", "y", now, firing)})
	// A resolved alert never heard of firing is not news.
	n.sendAll(t.Context(), []*notifier.Alert{alert("C", "x", now, now.Add(-time.Second))})

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.am) != 4 || len(rec.am[0]) != 3 {
		t.Errorf("alertmanager got %d posts", len(rec.am))
	}
	if len(rec.msgs) != 3 {
		t.Fatalf("webhook got %d messages, want 3: %+v", len(rec.msgs), rec.msgs)
	}
	a := rec.msgs[0]
	if a.Version != "4" || a.Status != "firing" || a.GroupKey != `{}:{alertname="A"}` || len(a.Alerts) != 2 ||
		a.CommonLabels["severity"] != "page" || a.CommonLabels["instance"] != "" || a.ExternalURL != "http://center" {
		t.Errorf("first message %+v", a)
	}
	if rec.msgs[1].GroupLabels["alertname"] != "B" {
		t.Errorf("second message %+v", rec.msgs[1])
	}
	r := rec.msgs[2]
	if r.Status != "resolved" || len(r.Alerts) != 1 || r.Alerts[0].Labels["instance"] != "x" || r.Alerts[0].EndsAt.IsZero() {
		t.Errorf("resolved message %+v", r)
	}
}

func TestQueueDropsOldest(t *testing.T) {
	cfg := config.Default().Alerting
	cfg.QueueCapacity = 3
	n := New(cfg, nil, slog.New(slog.DiscardHandler))
	now := time.Now()
	for _, inst := range []string{"1", "2", "3", "4", "5"} {
		n.Send(alert("A", inst, now, now))
	}
	batch := n.next()
	if len(batch) != 3 || batch[0].Labels.Get("instance") != "3" {
		t.Errorf("queue kept %v", batch)
	}
}

func TestAlertmanagerURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://am:9093":                  "http://am:9093/api/v2/alerts",
		"http://am:9093/":                 "http://am:9093/api/v2/alerts",
		"http://am:9093/am/api/v2/alerts": "http://am:9093/am/api/v2/alerts",
	} {
		if got := alertmanagerURL(in); got != want {
			t.Errorf("%s: %s", in, got)
		}
	}
}
