package fault

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// NATSController is the center's side of the control plane on NATS: it
// publishes the faults in force on SubjectState and keeps the directory of
// instances from SubjectAgents.
type NATSController struct {
	nc  *nats.Conn
	sub *nats.Subscription
	log *slog.Logger

	mu  sync.Mutex
	dir map[string]seenInstance
	bad int
}

type seenInstance struct {
	Instance
	at time.Time
}

// NewNATSController listens for the agents on nc.
func NewNATSController(nc *nats.Conn, log *slog.Logger) (*NATSController, error) {
	if log == nil {
		log = slog.Default()
	}
	c := &NATSController{nc: nc, log: log, dir: map[string]seenInstance{}}
	sub, err := nc.Subscribe(SubjectAgents, c.onAgents)
	if err != nil {
		return nil, fmt.Errorf("faults: subscribe %s: %w", SubjectAgents, err)
	}
	c.sub = sub
	return c, nil
}

func (c *NATSController) onAgents(m *nats.Msg) {
	am, err := DecodeAgents(m.Data)
	if err != nil {
		c.mu.Lock()
		c.bad++
		c.mu.Unlock()
		c.log.Debug("fault agents message refused", "err", err)
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, in := range am.Instances {
		if _, ok := c.dir[in.Name]; !ok && len(c.dir) >= 4*MaxInstances {
			continue // bounded: an instance that never went away counts until instanceTTL
		}
		c.dir[in.Name] = seenInstance{Instance: in, at: now}
	}
}

// Publish implements Controller.
func (c *NATSController) Publish(active []Fault) error {
	data, err := json.Marshal(StateMsg{V: WireVersion, LeaseMS: Lease.Milliseconds(), Faults: active})
	if err != nil {
		return err
	}
	if err := c.nc.Publish(SubjectState, data); err != nil {
		return fmt.Errorf("faults: publish: %w", err)
	}
	return nil
}

// Instances implements Controller: those heard from within 3 s.
func (c *NATSController) Instances() []Instance {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Instance
	for name, s := range c.dir {
		if now.Sub(s.at) > instanceTTL {
			delete(c.dir, name)
			continue
		}
		out = append(out, s.Instance)
	}
	return out
}

// Close stops listening.
func (c *NATSController) Close() error { return c.sub.Unsubscribe() }

// Part is an IM part that a stop fault can stop and start again.
type Part interface {
	SetDown(ctx context.Context, down bool) error
}

// Agent is the IM side of the control plane, one per process: it hears the
// faults in force, hands each instance of the process its own (its
// Injector, its stop), ends them all when the center falls silent for a
// Lease, and announces the instances every AnnounceInterval.
type Agent struct {
	nc  *nats.Conn
	log *slog.Logger

	mu      sync.Mutex
	members []*member
	last    time.Time // last StateMsg
	held    bool      // faults are in force from the last StateMsg

	sub    *nats.Subscription
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type member struct {
	name, service string
	part          Part
	inj           *Injector
	applied       []string

	want chan bool // desired down state, latest wins
	down bool      // as the reconcile loop last made it
}

// NewAgent makes an agent on nc; Register the instances, then Start.
func NewAgent(nc *nats.Conn, log *slog.Logger) *Agent {
	if log == nil {
		log = slog.Default()
	}
	return &Agent{nc: nc, log: log.With("component", "fault-agent")}
}

// Register adds an instance of service (ServiceGateway or ServiceLogic)
// and returns the Injector its hops call. part, when not nil, lets stop
// faults stop and start it; reg, when not nil, gets its fault counters.
func (a *Agent) Register(name, service string, part Part, reg prometheus.Registerer) *Injector {
	m := &member{name: name, service: service, part: part, inj: newInjector(reg), want: make(chan bool, 1)}
	a.mu.Lock()
	a.members = append(a.members, m)
	a.mu.Unlock()
	return m.inj
}

// Start subscribes and announces.
func (a *Agent) Start() error {
	sub, err := a.nc.Subscribe(SubjectState, a.onState)
	if err != nil {
		return fmt.Errorf("fault agent: subscribe %s: %w", SubjectState, err)
	}
	a.sub = sub
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.mu.Lock()
	for _, m := range a.members {
		if m.part != nil {
			a.wg.Add(1)
			go a.reconcile(ctx, m)
		}
	}
	a.mu.Unlock()
	a.wg.Add(1)
	go a.loop(ctx)
	return nil
}

// Stop stops listening and ends the faults at the hops. A part that a stop
// fault holds down stays down: the process is stopping.
func (a *Agent) Stop() {
	if a.sub != nil {
		_ = a.sub.Unsubscribe()
	}
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	a.apply(nil)
}

func (a *Agent) onState(m *nats.Msg) {
	sm, err := DecodeState(m.Data)
	if err != nil {
		a.log.Warn("fault state refused", "err", err)
		return
	}
	a.mu.Lock()
	a.last = time.Now()
	a.mu.Unlock()
	a.apply(sm.Faults)
}

// apply hands every member its faults.
func (a *Agent) apply(faults []Fault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.held = len(faults) > 0
	for _, m := range a.members {
		var mine []Fault
		var ids []string
		down := false
		for _, f := range faults {
			if f.Instance != m.name || (f.Service() != "" && f.Service() != m.service) {
				continue
			}
			if f.Kind == KindStop {
				if m.part == nil {
					continue
				}
				down = true
			}
			mine = append(mine, f)
			ids = append(ids, f.ID)
		}
		if !slices.Equal(ids, m.applied) {
			a.log.Info("faults in force", "instance", m.name, "faults", ids)
		}
		m.applied = ids
		m.inj.set(mine)
		if m.part != nil {
			select { // replace a desired state not yet taken
			case <-m.want:
			default:
			}
			m.want <- down
		}
	}
}

// reconcile stops and starts m's part as its stop faults say, retrying a
// failed start every second.
func (a *Agent) reconcile(ctx context.Context, m *member) {
	defer a.wg.Done()
	want := false
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case want = <-m.want:
		case <-retry.C:
		case <-ctx.Done():
			return
		}
		if want == m.down {
			continue
		}
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := m.part.SetDown(sctx, want)
		cancel()
		if err != nil {
			a.log.Error("stop fault: could not change the part", "instance", m.name, "down", want, "err", err)
			retry.Reset(time.Second)
			continue
		}
		m.down = want
		a.log.Info("stop fault", "instance", m.name, "down", want)
	}
}

// loop announces the instances and ends the faults when the lease runs out.
func (a *Agent) loop(ctx context.Context) {
	defer a.wg.Done()
	t := time.NewTicker(AnnounceInterval)
	defer t.Stop()
	a.announce()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		expired := a.held && time.Since(a.last) > Lease
		a.mu.Unlock()
		if expired {
			a.log.Warn("no fault state from the center for the lease: ending every fault", "lease", Lease)
			a.apply(nil)
		}
		a.announce()
	}
}

func (a *Agent) announce() {
	a.mu.Lock()
	msg := AgentsMsg{V: WireVersion}
	for _, m := range a.members {
		kinds := []Kind{KindDrop, KindLatency}
		if m.service == ServiceGateway {
			kinds = append(kinds, KindBlackhole)
		}
		if m.part != nil {
			kinds = append(kinds, KindStop)
		}
		msg.Instances = append(msg.Instances, Instance{Name: m.name, Service: m.service, Kinds: kinds, Applied: slices.Clone(m.applied)})
	}
	a.mu.Unlock()
	data, err := json.Marshal(msg)
	if err == nil {
		err = a.nc.Publish(SubjectAgents, data)
	}
	if err != nil {
		a.log.Debug("announce", "err", err)
	}
}
