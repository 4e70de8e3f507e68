package fault_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// part records what stop faults did to it.
type part struct {
	mu    sync.Mutex
	down  bool
	calls []bool
}

func (p *part) SetDown(_ context.Context, down bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	p.calls = append(p.calls, down)
	return nil
}

func (p *part) isDown() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.down }

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestControlOverNATS: a registry in one connection, an agent with two
// instances in another (as the center and an IM process), on a real
// nats-server: the agent announces itself, gets its faults, applies them,
// reports them applied, ends them at clear, and ends them by itself when
// the center falls silent.
func TestControlOverNATS(t *testing.T) {
	srv := imtest.StartNATSServer(t)
	centerConn := connect(t, srv.URL)
	ctl, err := fault.NewNATSController(centerConn, imtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	reg := fault.NewRegistry(ctl, nil, fault.Options{Log: imtest.Logger()})
	reg.Start()

	agent := fault.NewAgent(connect(t, srv.URL), imtest.Logger())
	gwPart := &part{}
	gw := agent.Register("gw-1", fault.ServiceGateway, gwPart, nil)
	lg := agent.Register("logic-1", fault.ServiceLogic, nil, nil)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer agent.Stop()

	imtest.Eventually(t, 10*time.Second, func() error {
		if n := len(reg.Instances()); n != 2 {
			return fmt.Errorf("%d instances known", n)
		}
		return nil
	})
	if _, err := reg.Add(fault.Spec{Kind: fault.KindStop, Instance: "logic-1"}); err == nil {
		t.Fatal("logic-1 has no part to stop, yet a stop fault was taken")
	}
	drop, err := reg.Add(fault.Spec{Kind: fault.KindDrop, Hop: fault.HopLogicHandle, Instance: "logic-1"})
	if err != nil {
		t.Fatal(err)
	}
	stop, err := reg.Add(fault.Spec{Kind: fault.KindStop, Instance: "gw-1"})
	if err != nil {
		t.Fatal(err)
	}
	imtest.Eventually(t, 10*time.Second, func() error {
		if !lg.At(fault.HopLogicHandle).Drop || !gwPart.isDown() {
			return fmt.Errorf("faults not applied: drop %v, gw-1 down %v", lg.At(fault.HopLogicHandle).Drop, gwPart.isDown())
		}
		for _, f := range reg.List(false) {
			if !f.Applied {
				return fmt.Errorf("%s not reported applied", f.ID)
			}
		}
		return nil
	})
	if gw.Active() {
		t.Fatal("gw-1's hops got a fault of logic-1")
	}

	if _, err := reg.Clear(stop.ID); err != nil {
		t.Fatal(err)
	}
	imtest.Eventually(t, 10*time.Second, func() error {
		if gwPart.isDown() {
			return fmt.Errorf("gw-1 still down after clear")
		}
		return nil
	})

	// The center goes away without clearing: the lease ends the drop.
	reg2Stop := time.Now()
	centerConn.Close() // as a killed center: Stop's clear never reaches the agent
	reg.Stop()
	imtest.Eventually(t, fault.Lease+10*time.Second, func() error {
		if lg.Active() {
			return fmt.Errorf("drop %s still in force %s after the center fell silent", drop.ID, time.Since(reg2Stop).Round(time.Second))
		}
		return nil
	})
	if d := time.Since(reg2Stop); d < fault.Lease-time.Second {
		t.Fatalf("faults ended after %s, before the lease", d)
	}
}
