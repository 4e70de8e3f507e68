package fault

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Instance is an IM part that can take faults, as its agent reported it.
type Instance struct {
	Name    string   `json:"name"`    // gw-1, logic-1
	Service string   `json:"service"` // gateway or logic
	Kinds   []Kind   `json:"kinds"`   // the kinds it can apply (stop needs a part that can restart)
	Applied []string `json:"applied"` // ids of the faults it applies now
}

// Controller takes the faults to the IM parts and knows which parts there
// are. NATS is the one the IM uses (nats.go); tests use their own.
type Controller interface {
	// Publish hands the IM the whole set of faults in force now. The
	// registry calls it on every change and every HeartbeatInterval.
	Publish(active []Fault) error
	// Instances are the parts that reported in lately.
	Instances() []Instance
}

// Errors of the registry, matched with errors.Is (ErrInvalid too).
var (
	// ErrNotFound is an id the registry does not know.
	ErrNotFound = errors.New("no such fault")
	// ErrConflict is a fault of the same kind at the same place as an active one.
	ErrConflict = errors.New("fault conflicts with an active one")
	// ErrTooMany is a fault beyond the bound of active faults.
	ErrTooMany = errors.New("too many active faults")
)

// HeartbeatInterval is how often the registry publishes the faults in force
// even when nothing changed, so that a part that (re)starts or missed a
// message has them within a second, and every part's lease stays renewed.
const HeartbeatInterval = time.Second

// maxPast bounds the ended faults the registry remembers (for the UI's
// timeline and GET /api/faults).
const maxPast = 200

// Options configure a registry.
type Options struct {
	MaxActive int // default DefaultMaxActive
	Log       *slog.Logger
	Now       func() time.Time // default time.Now
}

// Registry is the center's record of faults: it validates, starts, ends
// (at clear or by themselves) and counts them, and publishes the active
// ones to the IM through its Controller.
type Registry struct {
	ctl  Controller
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	seq    int
	prefix string
	active []*Fault
	past   []Fault // oldest first, at most maxPast

	activeG  *prometheus.GaugeVec
	started  *prometheus.CounterVec
	ended    *prometheus.CounterVec
	refused  *prometheus.CounterVec
	pubFails prometheus.Counter

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// NewRegistry makes a registry that publishes through ctl and registers
// its metrics on reg (nil: none).
func NewRegistry(ctl Controller, reg prometheus.Registerer, opts Options) *Registry {
	if opts.MaxActive <= 0 {
		opts.MaxActive = DefaultMaxActive
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Registry{
		ctl: ctl, opts: opts, log: opts.Log,
		// ids stay unique across restarts of the center: an agent may still
		// hold a fault of the last run for its lease.
		prefix: strconv.FormatInt(opts.Now().Unix()%(36*36*36*36), 36),
		activeG: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imwatch_fault_active", Help: "Faults injected and in force now, by kind, hop and instance (1 while active).",
		}, []string{"kind", "hop", "instance"}),
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_faults_started_total", Help: "Faults injected, by kind.",
		}, []string{"kind"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_faults_ended_total", Help: "Faults ended, by kind and reason (cleared, expired).",
		}, []string{"kind", "reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_fault_requests_refused_total", Help: "Fault requests refused, by reason (invalid, unknown_instance, conflict, too_many).",
		}, []string{"reason"}),
		pubFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_fault_publish_errors_total", Help: "Failed publications of the faults in force to the IM.",
		}),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if reg != nil {
		reg.MustRegister(r.activeG, r.started, r.ended, r.refused, r.pubFails)
	}
	for _, k := range Kinds {
		r.started.WithLabelValues(string(k))
		r.ended.WithLabelValues(string(k), StateCleared)
		r.ended.WithLabelValues(string(k), StateExpired)
	}
	for _, reason := range []string{"invalid", "unknown_instance", "conflict", "too_many"} {
		r.refused.WithLabelValues(reason)
	}
	return r
}

// Start ends faults when their time is up and keeps publishing; Stop ends it.
func (r *Registry) Start() {
	go r.run()
}

// Stop clears every active fault (so that the IM does not keep them past
// the center's life: the agents' lease would end them anyway) and returns.
func (r *Registry) Stop() {
	r.once.Do(func() {
		close(r.stop)
		<-r.done
		r.mu.Lock()
		for _, f := range slices.Clone(r.active) {
			r.endLocked(f, StateCleared)
		}
		set := r.activeLocked()
		r.mu.Unlock()
		r.publish(set)
	})
}

func (r *Registry) run() {
	defer close(r.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := time.Time{}
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		now := r.opts.Now()
		r.mu.Lock()
		changed := false
		for _, f := range slices.Clone(r.active) {
			if !now.Before(f.Until) {
				r.endLocked(f, StateExpired)
				changed = true
			}
		}
		set := r.activeLocked()
		r.mu.Unlock()
		if changed || now.Sub(last) >= HeartbeatInterval {
			r.publish(set)
			last = now
		}
	}
}

func (r *Registry) publish(set []Fault) {
	if err := r.ctl.Publish(set); err != nil {
		r.pubFails.Inc()
		r.log.Warn("publish faults", "err", err)
	}
}

// Add validates spec and starts the fault. Its errors match ErrInvalid
// (a bad spec or an unknown instance), ErrConflict or ErrTooMany.
func (r *Registry) Add(spec Spec) (Fault, error) {
	if err := spec.Normalize(); err != nil {
		r.refused.WithLabelValues("invalid").Inc()
		return Fault{}, err
	}
	if err := r.checkInstance(spec); err != nil {
		r.refused.WithLabelValues("unknown_instance").Inc()
		return Fault{}, err
	}
	r.mu.Lock()
	for _, a := range r.active {
		if a.Instance == spec.Instance && (a.Kind == spec.Kind && a.Hop == spec.Hop || a.Kind == KindStop || spec.Kind == KindStop) {
			r.mu.Unlock()
			r.refused.WithLabelValues("conflict").Inc()
			return Fault{}, fmt.Errorf("%w: %s %s is active at %s (clear it first)", ErrConflict, a.ID, a.What(), a.Where())
		}
	}
	if len(r.active) >= r.opts.MaxActive {
		r.mu.Unlock()
		r.refused.WithLabelValues("too_many").Inc()
		return Fault{}, fmt.Errorf("%w: %d are active, the most at once (clear one first)", ErrTooMany, len(r.active))
	}
	r.seq++
	now := r.opts.Now()
	f := &Fault{ID: fmt.Sprintf("f%s-%d", r.prefix, r.seq), Spec: spec, State: StateActive, Start: now, Until: now.Add(spec.Duration.D())}
	r.active = append(r.active, f)
	r.activeG.WithLabelValues(string(f.Kind), f.Hop.String(), f.Instance).Set(1)
	r.started.WithLabelValues(string(f.Kind)).Inc()
	set := r.activeLocked()
	out := *f
	r.mu.Unlock()
	r.log.Info("fault injected", "id", f.ID, "kind", f.Kind, "where", f.Where(), "what", f.What(), "until", f.Until.Format(time.RFC3339))
	r.publish(set)
	return out, nil
}

// checkInstance wants the instance among those reporting in, of the
// service the fault needs, able to apply the kind.
func (r *Registry) checkInstance(spec Spec) error {
	insts := r.ctl.Instances()
	if len(insts) == 0 {
		return invalid("instance %q: no IM part has reported in to take faults (is the IM running, with faults on?)", spec.Instance)
	}
	var names []string
	for _, in := range insts {
		names = append(names, in.Name+" ("+in.Service+")")
		if in.Name != spec.Instance {
			continue
		}
		if svc := spec.Service(); svc != "" && svc != in.Service {
			return invalid("instance %s is a %s; a %s fault needs a %s", in.Name, in.Service, spec.What()+at(spec.Hop), svc)
		}
		if !slices.Contains(in.Kinds, spec.Kind) {
			return invalid("instance %s cannot take %s faults (it takes %s)", in.Name, spec.Kind, joinKinds(in.Kinds))
		}
		return nil
	}
	sort.Strings(names)
	return invalid("instance %q is not known; instances now: %s", spec.Instance, strings.Join(names, ", "))
}

func at(h Hop) string {
	if h == HopNone {
		return ""
	}
	return " at " + h.String()
}

func joinKinds(ks []Kind) string {
	var s []string
	for _, k := range ks {
		s = append(s, string(k))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// Clear ends the active fault id. An id of a fault that ended already
// returns that fault and no error; an unknown one ErrNotFound.
func (r *Registry) Clear(id string) (Fault, error) {
	r.mu.Lock()
	for _, f := range r.active {
		if f.ID == id {
			r.endLocked(f, StateCleared)
			out := *f
			set := r.activeLocked()
			r.mu.Unlock()
			r.log.Info("fault cleared", "id", id, "kind", f.Kind, "where", f.Where())
			r.publish(set)
			return out, nil
		}
	}
	defer r.mu.Unlock()
	for i := len(r.past) - 1; i >= 0; i-- {
		if r.past[i].ID == id {
			return r.past[i], nil
		}
	}
	return Fault{}, fmt.Errorf("%w: %q", ErrNotFound, id)
}

// endLocked moves f from active to past.
func (r *Registry) endLocked(f *Fault, state string) {
	f.State = state
	f.End = r.opts.Now()
	r.active = slices.DeleteFunc(r.active, func(a *Fault) bool { return a == f })
	r.activeG.DeleteLabelValues(string(f.Kind), f.Hop.String(), f.Instance)
	r.ended.WithLabelValues(string(f.Kind), state).Inc()
	r.past = append(r.past, *f)
	if len(r.past) > maxPast {
		r.past = slices.Delete(r.past, 0, len(r.past)-maxPast)
	}
	if state == StateExpired {
		r.log.Info("fault expired", "id", f.ID, "kind", f.Kind, "where", f.Where())
	}
}

func (r *Registry) activeLocked() []Fault {
	out := make([]Fault, 0, len(r.active))
	for _, f := range r.active {
		out = append(out, *f)
	}
	return out
}

// Get returns the fault id, active or among the recent ended ones.
func (r *Registry) Get(id string) (Fault, bool) {
	for _, f := range r.List(true) {
		if f.ID == id {
			return f, true
		}
	}
	return Fault{}, false
}

// List returns the active faults, oldest first, then (with past) the ended
// ones the registry remembers, newest first. Applied comes from the
// instances' reports.
func (r *Registry) List(past bool) []Fault {
	applied := map[string]bool{}
	for _, in := range r.ctl.Instances() {
		for _, id := range in.Applied {
			applied[in.Name+"/"+id] = true
		}
	}
	r.mu.Lock()
	out := r.activeLocked()
	if past {
		for i := len(r.past) - 1; i >= 0; i-- {
			out = append(out, r.past[i])
		}
	}
	r.mu.Unlock()
	for i := range out {
		out[i].Applied = out[i].Active() && applied[out[i].Instance+"/"+out[i].ID]
	}
	return out
}

// Instances are the parts that can take faults now.
func (r *Registry) Instances() []Instance {
	insts := r.ctl.Instances()
	sort.Slice(insts, func(i, j int) bool { return insts[i].Name < insts[j].Name })
	return insts
}
