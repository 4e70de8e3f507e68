// Package notify sends the alerts of the center's rules to Alertmanagers
// (POST /api/v2/alerts) and to plain webhooks in Alertmanager's webhook JSON
// (version 4), through one bounded queue.
package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/notifier"

	"github.com/imwatch/imwatch/internal/center/config"
)

// MaxBatch is the most alerts sent in one request.
const MaxBatch = 256

// Receiver is the receiver name webhooks see.
const Receiver = "imwatch-center"

// Notifier queues alerts and sends them; it implements rules.Sender.
type Notifier struct {
	log    *slog.Logger
	client *http.Client
	cfg    atomic.Pointer[config.Alerting]

	mu      sync.Mutex
	queue   []*notifier.Alert
	more    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	webhook map[string]*webhookState // by webhook URL, then fingerprint

	sent    *prometheus.CounterVec
	errors  *prometheus.CounterVec
	dropped prometheus.Counter
	queued  prometheus.GaugeFunc
}

type webhookState struct {
	alerts map[model.Fingerprint]sentAlert
}

type sentAlert struct {
	firing bool
	at     time.Time
}

// New makes a notifier; Run starts it.
func New(cfg config.Alerting, reg prometheus.Registerer, log *slog.Logger) *Notifier {
	n := &Notifier{
		log:     log,
		client:  &http.Client{},
		more:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		webhook: map[string]*webhookState{},
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_notifications_sent_total",
			Help: "Alerts sent, by kind of receiver (alertmanager or webhook).",
		}, []string{"kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_notifications_errors_total",
			Help: "Requests to receivers that failed, by kind of receiver.",
		}, []string{"kind"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_notifications_dropped_total",
			Help: "Alerts dropped because the queue was full.",
		}),
	}
	n.queued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "imwatch_center_notifications_queue_length",
		Help: "Alerts waiting to be sent.",
	}, func() float64 { n.mu.Lock(); defer n.mu.Unlock(); return float64(len(n.queue)) })
	if reg != nil {
		reg.MustRegister(n.sent, n.errors, n.dropped, n.queued)
	}
	n.ApplyConfig(cfg)
	return n
}

// ApplyConfig changes the receivers and limits for later sends.
func (n *Notifier) ApplyConfig(cfg config.Alerting) {
	c := cfg
	n.cfg.Store(&c)
	n.mu.Lock()
	keep := map[string]bool{}
	for _, u := range cfg.Webhooks {
		keep[u] = true
	}
	for u := range n.webhook {
		if !keep[u] {
			delete(n.webhook, u)
		}
	}
	n.mu.Unlock()
}

// Send queues alerts; when the queue is full the oldest are dropped.
func (n *Notifier) Send(alerts ...*notifier.Alert) {
	capacity := n.cfg.Load().QueueCapacity
	n.mu.Lock()
	if len(alerts) > capacity {
		n.dropped.Add(float64(len(alerts) - capacity))
		alerts = alerts[len(alerts)-capacity:]
	}
	if over := len(n.queue) + len(alerts) - capacity; over > 0 {
		n.dropped.Add(float64(over))
		n.log.Warn("alert queue full, dropping the oldest alerts", "dropped", over)
		n.queue = n.queue[over:]
	}
	n.queue = append(n.queue, alerts...)
	n.mu.Unlock()
	select {
	case n.more <- struct{}{}:
	default:
	}
}

// Run sends queued alerts until Stop.
func (n *Notifier) Run() {
	defer close(n.done)
	for {
		select {
		case <-n.stop:
			n.drain(5 * time.Second)
			return
		case <-n.more:
		}
		for {
			batch := n.next()
			if len(batch) == 0 {
				break
			}
			n.sendAll(context.Background(), batch)
		}
	}
}

// Stop sends what is queued (for a few seconds at most) and stops.
func (n *Notifier) Stop() {
	close(n.stop)
	<-n.done
}

func (n *Notifier) drain(limit time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for ctx.Err() == nil {
		batch := n.next()
		if len(batch) == 0 {
			return
		}
		n.sendAll(ctx, batch)
	}
}

func (n *Notifier) next() []*notifier.Alert {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := min(len(n.queue), MaxBatch)
	batch := append([]*notifier.Alert(nil), n.queue[:k]...)
	n.queue = n.queue[k:]
	if len(n.queue) == 0 {
		n.queue = nil
	}
	return batch
}

func (n *Notifier) sendAll(ctx context.Context, batch []*notifier.Alert) {
	cfg := n.cfg.Load()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout.D())
	defer cancel()
	var wg sync.WaitGroup
	if len(cfg.Alertmanagers) > 0 {
		body, err := json.Marshal(batch)
		if err != nil {
			n.log.Error("encode alerts", "err", err)
		} else {
			for _, am := range cfg.Alertmanagers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := n.post(ctx, alertmanagerURL(am), body); err != nil {
						n.errors.WithLabelValues("alertmanager").Inc()
						n.log.Warn("send alerts to alertmanager", "alertmanager", am, "count", len(batch), "err", err)
						return
					}
					n.sent.WithLabelValues("alertmanager").Add(float64(len(batch)))
				}()
			}
		}
	}
	for _, hook := range cfg.Webhooks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.sendWebhook(ctx, hook, cfg, batch)
		}()
	}
	wg.Wait()
}

func alertmanagerURL(base string) string {
	if strings.HasSuffix(base, "/api/v2/alerts") {
		return base
	}
	return strings.TrimSuffix(base, "/") + "/api/v2/alerts"
}

func (n *Notifier) post(ctx context.Context, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "imwatch-center")
	resp, err := n.client.Do(req)
	if err != nil {
		return fmt.Errorf("post: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// WebhookMessage is Alertmanager's webhook payload, version 4.
type WebhookMessage struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []WebhookAlert    `json:"alerts"`
}

// WebhookAlert is one alert of a WebhookMessage.
type WebhookAlert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// sendWebhook tells hook about alerts that started firing, resolved, or
// kept firing for longer than the repeat interval since it last heard,
// grouped by alertname like an Alertmanager route grouped by alertname.
func (n *Notifier) sendWebhook(ctx context.Context, hook string, cfg *config.Alerting, batch []*notifier.Alert) {
	now := time.Now()
	type pending struct {
		fp     model.Fingerprint
		firing bool
	}
	groups := map[string][]WebhookAlert{}
	var marks = map[string][]pending{}
	n.mu.Lock()
	st := n.webhook[hook]
	if st == nil {
		st = &webhookState{alerts: map[model.Fingerprint]sentAlert{}}
		n.webhook[hook] = st
	}
	for _, a := range batch {
		lm := a.Labels.Map()
		fp := model.LabelsToSignature(lm)
		firing := !a.ResolvedAt(now)
		prev, seen := st.alerts[model.Fingerprint(fp)]
		switch {
		case !seen && !firing:
			continue // resolved before we ever said it fired
		case seen && prev.firing == firing && (!firing || now.Sub(prev.at) < cfg.WebhookRepeatInterval.D()):
			continue // nothing new
		}
		wa := WebhookAlert{
			Status: "firing", Labels: lm, Annotations: a.Annotations.Map(),
			StartsAt: a.StartsAt, GeneratorURL: a.GeneratorURL,
			Fingerprint: fmt.Sprintf("%016x", fp),
		}
		if !firing {
			wa.Status, wa.EndsAt = "resolved", a.EndsAt
		}
		name := a.Labels.Get(labels.AlertName)
		groups[name] = append(groups[name], wa)
		marks[name] = append(marks[name], pending{model.Fingerprint(fp), firing})
	}
	n.mu.Unlock()

	names := make([]string, 0, len(groups))
	for k := range groups {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		msg := webhookMessage(name, groups[name], cfg.ExternalURL)
		body, err := json.Marshal(msg)
		if err != nil {
			n.log.Error("encode webhook", "err", err)
			continue
		}
		if err := n.post(ctx, hook, body); err != nil {
			n.errors.WithLabelValues("webhook").Inc()
			n.log.Warn("send alerts to webhook", "webhook", hook, "alertname", name, "err", err)
			continue // not marked as sent: the rules send it again
		}
		n.sent.WithLabelValues("webhook").Add(float64(len(groups[name])))
		n.mu.Lock()
		for _, p := range marks[name] {
			if p.firing {
				st.alerts[p.fp] = sentAlert{firing: true, at: now}
			} else {
				delete(st.alerts, p.fp)
			}
		}
		n.mu.Unlock()
	}
}

func webhookMessage(alertname string, alerts []WebhookAlert, externalURL string) WebhookMessage {
	status := "resolved"
	for _, a := range alerts {
		if a.Status == "firing" {
			status = "firing"
		}
	}
	common := func(get func(WebhookAlert) map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range get(alerts[0]) {
			same := true
			for _, a := range alerts[1:] {
				if a2, ok := get(a)[k]; !ok || a2 != v {
					same = false
					break
				}
			}
			if same {
				out[k] = v
			}
		}
		return out
	}
	return WebhookMessage{
		Version:           "4",
		GroupKey:          fmt.Sprintf("{}:{alertname=%q}", alertname),
		Status:            status,
		Receiver:          Receiver,
		GroupLabels:       map[string]string{labels.AlertName: alertname},
		CommonLabels:      common(func(a WebhookAlert) map[string]string { return a.Labels }),
		CommonAnnotations: common(func(a WebhookAlert) map[string]string { return a.Annotations }),
		ExternalURL:       externalURL,
		Alerts:            alerts,
	}
}
