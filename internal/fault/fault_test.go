package fault

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSpecNormalize(t *testing.T) {
	type tc struct {
		name string
		spec Spec
		want Spec   // after defaults, when ok
		err  string // substring of the error; "" means valid
	}
	cases := []tc{
		{"drop defaults", Spec{Kind: KindDrop, Hop: HopGatewayReceive, Instance: "gw-1"},
			Spec{Kind: KindDrop, Hop: HopGatewayReceive, Instance: "gw-1", Percent: 100, Duration: Duration(DefaultDuration)}, ""},
		{"latency defaults", Spec{Kind: KindLatency, Hop: HopStoreAppend, Instance: "logic-1"},
			Spec{Kind: KindLatency, Hop: HopStoreAppend, Instance: "logic-1", Delay: Duration(DefaultDelay), Duration: Duration(DefaultDuration)}, ""},
		{"stop", Spec{Kind: KindStop, Instance: "logic-1", Duration: Duration(20 * time.Second)},
			Spec{Kind: KindStop, Instance: "logic-1", Duration: Duration(20 * time.Second)}, ""},
		{"no kind", Spec{Instance: "gw-1"}, Spec{}, "kind missing"},
		{"bad kind", Spec{Kind: "explode", Instance: "gw-1"}, Spec{}, `kind "explode"`},
		{"drop without hop", Spec{Kind: KindDrop, Instance: "gw-1"}, Spec{}, "needs a hop"},
		{"stop with hop", Spec{Kind: KindStop, Hop: HopGatewayPush, Instance: "gw-1"}, Spec{}, "takes no hop"},
		{"percent over 100", Spec{Kind: KindDrop, Hop: HopGatewayPush, Instance: "gw-1", Percent: 101}, Spec{}, "percent 101"},
		{"percent negative", Spec{Kind: KindDrop, Hop: HopGatewayPush, Instance: "gw-1", Percent: -1}, Spec{}, "percent -1"},
		{"percent NaN", Spec{Kind: KindDrop, Hop: HopGatewayPush, Instance: "gw-1", Percent: math.NaN()}, Spec{}, "percent NaN"},
		{"percent on latency", Spec{Kind: KindLatency, Hop: HopGatewayPush, Instance: "gw-1", Percent: 5}, Spec{}, "drop faults only"},
		{"delay on drop", Spec{Kind: KindDrop, Hop: HopGatewayPush, Instance: "gw-1", Delay: Duration(time.Second)}, Spec{}, "latency faults only"},
		{"delay too long", Spec{Kind: KindLatency, Hop: HopGatewayPush, Instance: "gw-1", Delay: Duration(time.Minute)}, Spec{}, "delay 1m0s"},
		{"duration too long", Spec{Kind: KindStop, Instance: "gw-1", Duration: Duration(2 * time.Hour)}, Spec{}, "duration 2h0m0s"},
		{"duration too short", Spec{Kind: KindStop, Instance: "gw-1", Duration: Duration(time.Millisecond)}, Spec{}, "duration 1ms"},
		{"no instance", Spec{Kind: KindStop}, Spec{}, `instance ""`},
		{"bad instance", Spec{Kind: KindStop, Instance: "gw 1"}, Spec{}, `instance "gw 1"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.spec
			err := s.Normalize()
			if c.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s != c.want {
					t.Fatalf("got %+v, want %+v", s, c.want)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("error %v, want ErrInvalid with %q", err, c.err)
			}
		})
	}
}

func TestSpecJSON(t *testing.T) {
	var s Spec
	if err := json.Unmarshal([]byte(`{"kind":"latency","hop":"gateway.push","instance":"gw-2","delay":"250ms","duration":"2m"}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.Hop != HopGatewayPush || s.Delay.D() != 250*time.Millisecond || s.Duration.D() != 2*time.Minute {
		t.Fatalf("decoded %+v", s)
	}
	out, _ := json.Marshal(s)
	if !strings.Contains(string(out), `"hop":"gateway.push"`) || !strings.Contains(string(out), `"delay":"250ms"`) {
		t.Fatalf("encoded %s", out)
	}
	for _, bad := range []string{`{"hop":"gateway.nowhere"}`, `{"delay":5}`, `{"duration":"forever"}`} {
		if err := json.Unmarshal([]byte(bad), &s); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// fakeCtl is a Controller for unit tests of the registry; the NATS one is
// tested against a real nats-server in nats_test.go.
type fakeCtl struct {
	mu    sync.Mutex
	insts []Instance
	sets  [][]Fault
}

func (f *fakeCtl) Publish(active []Fault) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, active)
	return nil
}

func (f *fakeCtl) Instances() []Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Instance(nil), f.insts...)
}

func (f *fakeCtl) last() []Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sets) == 0 {
		return nil
	}
	return f.sets[len(f.sets)-1]
}

var upInstances = []Instance{
	{Name: "gw-1", Service: ServiceGateway, Kinds: []Kind{KindDrop, KindLatency, KindBlackhole, KindStop}},
	{Name: "gw-2", Service: ServiceGateway, Kinds: []Kind{KindDrop, KindLatency, KindBlackhole}},
	{Name: "logic-1", Service: ServiceLogic, Kinds: []Kind{KindDrop, KindLatency, KindStop}},
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestRegistry(t *testing.T) {
	ctl := &fakeCtl{insts: upInstances}
	clk := &clock{t: time.Unix(1764000000, 0)}
	reg := prometheus.NewPedanticRegistry()
	r := NewRegistry(ctl, reg, Options{MaxActive: 3, Now: clk.now})

	type add struct {
		spec Spec
		err  error  // nil: accepted
		msg  string // substring of the error
	}
	steps := []add{
		{Spec{Kind: KindDrop, Hop: HopGatewayReceive, Instance: "gw-1", Percent: 50}, nil, ""},
		{Spec{Kind: KindDrop, Hop: HopGatewayReceive, Instance: "gw-1"}, ErrConflict, "is active at gateway.receive of gw-1"},
		{Spec{Kind: KindDrop, Hop: HopGatewayReceive, Instance: "gw-3"}, ErrInvalid, "instances now: gw-1 (gateway), gw-2 (gateway), logic-1 (logic)"},
		{Spec{Kind: KindDrop, Hop: HopStoreAppend, Instance: "gw-1"}, ErrInvalid, "gw-1 is a gateway"},
		{Spec{Kind: KindBlackhole, Instance: "logic-1"}, ErrInvalid, "logic-1 is a logic"},
		{Spec{Kind: KindStop, Instance: "gw-2"}, ErrInvalid, "cannot take stop faults"},
		{Spec{Kind: KindStop, Instance: "gw-1"}, ErrConflict, "clear it first"},
		{Spec{Kind: KindLatency, Hop: HopGatewayReceive, Instance: "gw-1", Duration: Duration(10 * time.Second)}, nil, ""},
		{Spec{Kind: KindBlackhole, Instance: "gw-2"}, nil, ""},
		{Spec{Kind: KindStop, Instance: "logic-1"}, ErrTooMany, "3 are active"},
	}
	var ids []string
	for i, s := range steps {
		f, err := r.Add(s.spec)
		if s.err == nil {
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			ids = append(ids, f.ID)
			if got := ctl.last(); len(got) != len(ids) || got[len(got)-1].ID != f.ID {
				t.Fatalf("step %d: published %+v", i, got)
			}
			continue
		}
		if !errors.Is(err, s.err) || !strings.Contains(err.Error(), s.msg) {
			t.Fatalf("step %d: error %v, want %v with %q", i, err, s.err, s.msg)
		}
	}
	if v := testutil.ToFloat64(r.activeG.WithLabelValues("drop", "gateway.receive", "gw-1")); v != 1 {
		t.Fatalf("imwatch_fault_active = %g", v)
	}
	if v := testutil.ToFloat64(r.refused.WithLabelValues("conflict")); v != 2 {
		t.Fatalf("refused conflict = %g", v)
	}

	// Clear the first; clear it again (no error, same fault); unknown id.
	f, err := r.Clear(ids[0])
	if err != nil || f.State != StateCleared || f.End.IsZero() {
		t.Fatalf("clear: %+v %v", f, err)
	}
	if f2, err := r.Clear(ids[0]); err != nil || f2.State != StateCleared {
		t.Fatalf("clear again: %+v %v", f2, err)
	}
	if _, err := r.Clear("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("clear unknown: %v", err)
	}
	if n := testutil.CollectAndCount(r.activeG); n != 2 {
		t.Fatalf("%d active series after clear, want 2", n)
	}

	// The 10 s latency expires by itself once its time is up.
	r.Start()
	defer r.Stop()
	clk.add(11 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for len(ctl.last()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("latency fault did not expire: %+v", ctl.last())
		}
		time.Sleep(10 * time.Millisecond)
	}
	list := r.List(true)
	if len(list) != 3 || list[0].Kind != KindBlackhole || list[1].State != StateExpired || list[2].State != StateCleared {
		t.Fatalf("list %+v", list)
	}
	if v := testutil.ToFloat64(r.ended.WithLabelValues("latency", "expired")); v != 1 {
		t.Fatalf("ended expired = %g", v)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Fatal(probs, err)
	}
}

func TestRegistryStopClearsAll(t *testing.T) {
	ctl := &fakeCtl{insts: upInstances}
	r := NewRegistry(ctl, nil, Options{})
	r.Start()
	if _, err := r.Add(Spec{Kind: KindBlackhole, Instance: "gw-1"}); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	if got := ctl.last(); len(got) != 0 {
		t.Fatalf("after Stop, published %+v", got)
	}
}

func TestRegistryWithoutInstances(t *testing.T) {
	r := NewRegistry(&fakeCtl{}, nil, Options{})
	_, err := r.Add(Spec{Kind: KindStop, Instance: "gw-1"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no IM part has reported in") {
		t.Fatalf("error %v", err)
	}
}

func TestInjector(t *testing.T) {
	var nilInj *Injector
	if d := nilInj.At(HopGatewayPush); d != (Decision{}) || nilInj.Hold(HopGatewayPush) != (Decision{}) {
		t.Fatal("a nil injector must inject nothing")
	}
	in := newInjector(nil)
	if d := in.At(HopGatewayReceive); d != (Decision{}) {
		t.Fatalf("no fault: %+v", d)
	}
	in.set([]Fault{
		{ID: "a", Spec: Spec{Kind: KindDrop, Hop: HopGatewayReceive, Percent: 100}},
		{ID: "b", Spec: Spec{Kind: KindLatency, Hop: HopGatewayReceive, Delay: Duration(time.Second)}},
		{ID: "c", Spec: Spec{Kind: KindLatency, Hop: HopLogicHandle, Delay: Duration(20 * time.Millisecond)}},
		{ID: "d", Spec: Spec{Kind: KindBlackhole}},
		{ID: "e", Spec: Spec{Kind: KindStop}},
	})
	if d := in.At(HopGatewayReceive); !d.Drop || d.Fault != "a" {
		t.Fatalf("drop 100%% + latency: %+v", d)
	}
	if d := in.At(HopGatewayPush); !d.Drop || d.Fault != "d" {
		t.Fatalf("blackhole: %+v", d)
	}
	start := time.Now()
	if d := in.Hold(HopLogicHandle); d.Drop || d.Fault != "c" || time.Since(start) < 20*time.Millisecond {
		t.Fatal("latency: Hold must sleep the delay and pass the message")
	}
	if d := in.At(HopStoreAppend); d != (Decision{}) {
		t.Fatalf("hop without a fault: %+v", d)
	}
	if v := testutil.ToFloat64(in.dropped.WithLabelValues("blackhole", "gateway.push")); v != 1 {
		t.Fatalf("dropped{blackhole} = %g", v)
	}

	// Later: the message passes after the delay, on another goroutine;
	// past the bound it is refused and counted.
	passed := make(chan time.Duration, 1)
	start = time.Now()
	if !in.Later(30*time.Millisecond, func() { passed <- time.Since(start) }) {
		t.Fatal("Later did not take the message")
	}
	if d := <-passed; d < 30*time.Millisecond {
		t.Fatalf("passed after %s", d)
	}
	in.deferred.Store(maxDeferred)
	if in.Later(time.Millisecond, func() { t.Error("passed over the bound") }) || testutil.ToFloat64(in.refused) != 1 {
		t.Fatalf("over the bound: refused = %g", testutil.ToFloat64(in.refused))
	}
	in.deferred.Store(0)
	if m := (Decision{Drop: true, Fault: "f-1"}).DropMessage(HopStoreAppend); m != "dropped at store.append by fault f-1" {
		t.Fatalf("DropMessage: %q", m)
	}

	// A share: about half of 4000 dropped.
	in.set([]Fault{{ID: "h", Spec: Spec{Kind: KindDrop, Hop: HopGatewayPush, Percent: 50}}})
	n := 0
	for range 4000 {
		if in.At(HopGatewayPush).Drop {
			n++
		}
	}
	if n < 1800 || n > 2200 {
		t.Fatalf("50%% drop dropped %d of 4000", n)
	}
	in.set(nil)
	if in.Active() {
		t.Fatal("still active after the faults ended")
	}
}

func BenchmarkInjectorNoFault(b *testing.B) {
	in := newInjector(nil)
	b.ReportAllocs()
	for b.Loop() {
		if in.At(HopGatewayReceive).Drop {
			b.Fatal("dropped")
		}
	}
}
