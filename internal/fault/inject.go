package fault

import (
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Injector applies the faults of one instance at its hops. The IM parts
// call it at each hop; with no fault in force a call is one atomic load. A
// nil *Injector injects nothing, so a part built without faults needs no
// check of its own.
type Injector struct {
	rules    atomic.Pointer[hopRules]
	deferred atomic.Int64 // messages held by Defer now

	dropped *prometheus.CounterVec // kind, hop
	delayed *prometheus.CounterVec // kind, hop
	refused prometheus.Counter
}

// maxDeferred bounds the messages Defer holds at once; more are dropped
// and counted.
const maxDeferred = 10000

type hopRules struct {
	hops [numHops]rule
}

type rule struct {
	id       string // of the fault, for Decision.Fault
	kind     Kind   // drop, latency or blackhole (the one that drops when both)
	percent  float64
	delay    time.Duration
	dropC    prometheus.Counter
	delayedC prometheus.Counter
}

// Decision is what a hop does with one message.
type Decision struct {
	Drop  bool          // do not pass the message on
	Delay time.Duration // hold it this long first
	Fault string        // id of the fault that decided, "" for none
}

func newInjector(reg prometheus.Registerer) *Injector {
	in := &Injector{
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_fault_messages_dropped_total", Help: "Messages this instance dropped because a fault told it to, by kind and hop.",
		}, []string{"kind", "hop"}),
		delayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_fault_messages_delayed_total", Help: "Messages this instance held back because a latency fault told it to, by hop.",
		}, []string{"kind", "hop"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_fault_deferred_overflow_total", Help: "Messages dropped because a latency fault already held the most messages at once (10000).",
		}),
	}
	if reg != nil {
		reg.MustRegister(in.dropped, in.delayed, in.refused)
	}
	return in
}

// At decides the fate of one message at hop h.
func (in *Injector) At(h Hop) Decision {
	if in == nil {
		return Decision{}
	}
	r := in.rules.Load()
	if r == nil || h >= numHops {
		return Decision{}
	}
	ru := &r.hops[h]
	if ru.id == "" {
		return Decision{}
	}
	if ru.percent > 0 && (ru.percent >= 100 || rand.Float64()*100 < ru.percent) {
		ru.dropC.Inc()
		return Decision{Drop: true, Fault: ru.id}
	}
	if ru.delay > 0 {
		ru.delayedC.Inc()
		return Decision{Delay: ru.delay, Fault: ru.id}
	}
	return Decision{}
}

// Hold applies the faults at hop h in line: it sleeps for a latency fault
// and returns the decision, whose Drop says whether to drop the message.
// For hops that handle one message at a time on their own goroutine.
func (in *Injector) Hold(h Hop) Decision {
	d := in.At(h)
	if d.Delay > 0 {
		time.Sleep(d.Delay)
	}
	return d
}

// Later calls pass after delay without blocking the caller, for a latency
// fault at a hop on a shared goroutine (a bus subscription), where sleeping
// would delay every other message. It holds at most 10,000 messages at
// once: past that it returns false, counted, and the caller drops the
// message.
func (in *Injector) Later(delay time.Duration, pass func()) bool {
	if in.deferred.Add(1) > maxDeferred {
		in.deferred.Add(-1)
		in.refused.Inc()
		return false
	}
	time.AfterFunc(delay, func() {
		in.deferred.Add(-1)
		pass()
	})
	return true
}

// ErrorType is the error.type of the span of a hop whose message a fault
// dropped, so that the trace of the message ends, failed, at that hop.
const ErrorType = "fault_injected"

// DropMessage is the status message of that span.
func (d Decision) DropMessage(h Hop) string {
	return "dropped at " + h.String() + " by fault " + d.Fault
}

// Active reports whether any fault is in force at this instance.
func (in *Injector) Active() bool { return in != nil && in.rules.Load() != nil }

// set installs the faults of this instance (stop faults are the agent's).
func (in *Injector) set(faults []Fault) {
	var r hopRules
	any := false
	for _, f := range faults {
		h := f.Hop
		if f.Kind == KindBlackhole {
			h = HopGatewayPush
		}
		if h == HopNone || h >= numHops {
			continue
		}
		ru := &r.hops[h]
		switch f.Kind {
		case KindDrop, KindBlackhole:
			p := f.Percent
			if f.Kind == KindBlackhole {
				p = 100
			}
			if p > ru.percent {
				ru.percent, ru.kind = p, f.Kind
				ru.dropC = in.dropped.WithLabelValues(string(f.Kind), h.String())
			}
		case KindLatency:
			ru.delay = f.Delay.D()
			ru.delayedC = in.delayed.WithLabelValues(string(f.Kind), h.String())
		default:
			continue
		}
		if ru.id == "" || f.Kind != KindLatency {
			ru.id = f.ID
		}
		any = true
	}
	if !any {
		in.rules.Store(nil)
		return
	}
	in.rules.Store(&r)
}
