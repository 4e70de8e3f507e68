package probe

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the probe results, labelled target, protocol, location: the
// names of issue 6, listed in docs/metrics.md.
type metrics struct {
	success    *prometheus.GaugeVec
	e2e        *prometheus.HistogramVec
	step       *prometheus.HistogramVec
	sent       *prometheus.CounterVec
	received   *prometheus.CounterVec
	lost       *prometheus.CounterVec
	duplicated *prometheus.CounterVec
	reordered  *prometheus.CounterVec
	late       *prometheus.CounterVec
	failures   *prometheus.CounterVec
	foreign    *prometheus.CounterVec
}

var targetLabels = []string{"target", "protocol", "location"}

// latencyBuckets reach from 1 ms to 20 s: a probe message through a
// healthy IM takes a few milliseconds; the timeout is seconds.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20}

func newMetrics(reg prometheus.Registerer) *metrics {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, targetLabels)
	}
	m := &metrics{
		success: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "probe_success",
			Help: "Share of the target's probe links whose last round succeeded (1 or 0 with one link).",
		}, targetLabels),
		e2e: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "probe_e2e_latency_seconds",
			Help:    "Send to delivery of probe messages received within the timeout, on the prober's clock.",
			Buckets: latencyBuckets,
		}, targetLabels),
		step: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "probe_step_duration_seconds",
			Help:    "Duration of a probe step: connect, login, send (send to the server's ack), receipt (send to the XMPP delivery receipt).",
			Buckets: latencyBuckets,
		}, append([]string{"step"}, targetLabels...)),
		sent:       counter("probe_messages_sent_total", "Probe messages handed to the server."),
		received:   counter("probe_messages_received_total", "Probe messages whose first copy arrived within the timeout."),
		lost:       counter("probe_messages_lost_total", "Probe messages with no copy within the timeout."),
		duplicated: counter("probe_messages_duplicated_total", "Further copies of probe messages already received (or already late)."),
		reordered:  counter("probe_messages_reordered_total", "Probe messages received within the timeout after a later message of the same link."),
		late:       counter("probe_messages_late_total", "Probe messages counted lost whose first copy arrived after the timeout."),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "probe_failures_total",
			Help: "Failed probe rounds by the step that failed: connect, auth, send, ack_timeout, delivery_timeout.",
		}, append(append([]string(nil), targetLabels...), "reason")),
		foreign: counter("probe_messages_foreign_total", "Messages received on probe connections that are not this prober's probe messages of this run."),
	}
	reg.MustRegister(m.success, m.e2e, m.step, m.sent, m.received, m.lost, m.duplicated, m.reordered, m.late, m.failures, m.foreign)
	return m
}

// forTarget resolves the children of one target once, so that a round
// does not hash labels.
func (m *metrics) forTarget(target, proto, location string) *targetMetrics {
	l := prometheus.Labels{"target": target, "protocol": proto, "location": location}
	tm := &targetMetrics{
		success:    m.success.With(l),
		e2e:        m.e2e.With(l),
		sent:       m.sent.With(l),
		received:   m.received.With(l),
		lost:       m.lost.With(l),
		duplicated: m.duplicated.With(l),
		reordered:  m.reordered.With(l),
		late:       m.late.With(l),
		foreign:    m.foreign.With(l),
		failures:   map[string]prometheus.Counter{},
		steps:      map[string]prometheus.Observer{},
	}
	for _, r := range Reasons {
		tm.failures[r] = m.failures.MustCurryWith(l).WithLabelValues(r)
	}
	for _, s := range []string{StepConnect, StepLogin, StepSend, StepReceipt} {
		tm.steps[s] = m.step.MustCurryWith(l).WithLabelValues(s)
	}
	return tm
}

// deleteTarget drops the series of a target that is no longer configured.
func (m *metrics) deleteTarget(target, proto, location string) {
	l := prometheus.Labels{"target": target, "protocol": proto, "location": location}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.success, m.e2e, m.step, m.sent, m.received, m.lost, m.duplicated, m.reordered, m.late, m.failures, m.foreign,
	} {
		v.DeletePartialMatch(l)
	}
}

// Steps of a round, the label step of probe_step_duration_seconds.
const (
	StepConnect = "connect"
	StepLogin   = "login"
	StepSend    = "send"
	StepReceipt = "receipt"
)

type targetMetrics struct {
	success                                                    prometheus.Gauge
	e2e                                                        prometheus.Observer
	sent, received, lost, duplicated, reordered, late, foreign prometheus.Counter
	failures                                                   map[string]prometheus.Counter
	steps                                                      map[string]prometheus.Observer
}
