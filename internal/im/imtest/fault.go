package imtest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/nats-io/nats.go"
)

// FaultRegistry is a fault registry on the NATS at natsURL, as the center
// holds it, once the instances named have reported to it.
func FaultRegistry(t testing.TB, natsURL string, instances ...string) *fault.Registry {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctl, err := fault.NewNATSController(nc, Logger())
	if err != nil {
		t.Fatal(err)
	}
	reg := fault.NewRegistry(ctl, nil, fault.Options{Log: Logger()})
	reg.Start()
	t.Cleanup(reg.Stop)
	Eventually(t, 15*time.Second, func() error {
		var have []string
		for _, in := range reg.Instances() {
			have = append(have, in.Name)
		}
		for _, name := range instances {
			if !slices.Contains(have, name) {
				return fmt.Errorf("instance %s has not reported (have %v)", name, have)
			}
		}
		return nil
	})
	return reg
}

// AddFault adds the fault s to reg and waits until its instance applies it.
func AddFault(t testing.TB, reg *fault.Registry, s fault.Spec) fault.Fault {
	t.Helper()
	f, err := reg.Add(s)
	if err != nil {
		t.Fatal(err)
	}
	Eventually(t, 15*time.Second, func() error {
		for _, g := range reg.List(false) {
			if g.ID == f.ID && g.Applied {
				return nil
			}
		}
		return fmt.Errorf("fault %s not applied by %s", f.ID, s.Instance)
	})
	return f
}
