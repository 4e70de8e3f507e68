package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// faultCluster is a cluster with faults on and a registry, as the center
// of `imwatch up` holds it, on the cluster's own NATS.
func faultCluster(t *testing.T, gateways int) (*cluster.Cluster, *fault.Registry) {
	t.Helper()
	c := imtest.StartCluster(t, "", gateways, func(o *cluster.Options) { o.Faults = true; o.Metrics = true })
	names := []string{"logic-1"}
	for i := range gateways {
		names = append(names, fmt.Sprintf("gw-%d", i+1))
	}
	return c, imtest.FaultRegistry(t, c.NATSURL, names...)
}

func addFault(t *testing.T, reg *fault.Registry, s fault.Spec) fault.Fault {
	t.Helper()
	return imtest.AddFault(t, reg, s)
}

func dialable(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}

// TestStopFaultRestartsGateway: a stop fault takes gw-1 off its address
// (its clients go to gw-2), and clearing it brings gw-1 back on the same
// address, serving again.
func TestStopFaultRestartsGateway(t *testing.T) {
	c, reg := faultCluster(t, 2)
	addr := c.Gateways[0].Addr()
	bob := imtest.Dial(t, c.URLs()[1:], "bob", "phone")
	f := addFault(t, reg, fault.Spec{Kind: fault.KindStop, Instance: "gw-1", Duration: fault.Duration(time.Minute)})
	imtest.Eventually(t, 10*time.Second, func() error {
		if dialable(addr) == nil {
			return errors.New("gw-1 still listening")
		}
		return nil
	})
	if _, err := reg.Clear(f.ID); err != nil {
		t.Fatal(err)
	}
	imtest.Eventually(t, 15*time.Second, func() error { return dialable(addr) })
	alice := imtest.Dial(t, []string{"ws://" + addr + "/ws"}, "alice", "phone")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := alice.Send(ctx, "bob", "back"); err != nil {
		t.Fatalf("send through the restarted gw-1: %v", err)
	}
	if got := imtest.Bodies(imtest.Receive(t, bob, 1, 10*time.Second)); got[0] != "back" {
		t.Fatalf("bob got %v", got)
	}
}

// TestStopFaultExpiresLogic: a stop fault of the only logic node makes
// sends fail until it ends by itself, then they work again; its metrics
// endpoint is down with it.
func TestStopFaultExpiresLogic(t *testing.T) {
	c, reg := faultCluster(t, 1)
	metrics := c.LogicMetrics[0].Addr()
	alice := imtest.Dial(t, c.URLs(), "alice", "phone")
	addFault(t, reg, fault.Spec{Kind: fault.KindStop, Instance: "logic-1", Duration: fault.Duration(4 * time.Second)})
	imtest.Eventually(t, 10*time.Second, func() error {
		if dialable(metrics) == nil {
			return errors.New("logic-1's /metrics still up while it is stopped")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := alice.Send(ctx, "bob", "lost", client.WithID("while-down"))
	cancel()
	if err == nil {
		t.Fatal("a send succeeded with the only logic node stopped")
	}
	imtest.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := alice.Send(ctx, "bob", "after")
		return err
	})
	if err := dialable(metrics); err != nil {
		t.Fatalf("logic-1's /metrics not back: %v", err)
	}
}

// TestHopFaults: each hop's fault does what docs/faults.md says to a real
// message through a real cluster, and the message goes through again once
// the fault is cleared.
func TestHopFaults(t *testing.T) {
	c, reg := faultCluster(t, 2)
	urls := c.URLs()
	alice := imtest.Dial(t, urls[:1], "alice", "phone") // on gw-1
	bob := imtest.Dial(t, urls[1:], "bob", "phone")     // on gw-2
	type tc struct {
		name string
		spec fault.Spec
		// acked: the send gets its send-ack within a second; delivered:
		// bob gets it within a second; slower: the round takes at least this.
		acked, delivered bool
		slower           time.Duration
	}
	for i, x := range []tc{
		{"drop at gw-1's receive", fault.Spec{Kind: fault.KindDrop, Hop: fault.HopGatewayReceive, Instance: "gw-1"}, false, false, 0},
		{"drop at logic-1's handle", fault.Spec{Kind: fault.KindDrop, Hop: fault.HopLogicHandle, Instance: "logic-1"}, false, false, 0},
		{"drop at logic-1's store append", fault.Spec{Kind: fault.KindDrop, Hop: fault.HopStoreAppend, Instance: "logic-1"}, false, false, 0},
		{"drop at gw-2's push", fault.Spec{Kind: fault.KindDrop, Hop: fault.HopGatewayPush, Instance: "gw-2"}, true, false, 0},
		{"blackhole gw-2", fault.Spec{Kind: fault.KindBlackhole, Instance: "gw-2"}, true, false, 0},
		{"drop at gw-1's push: not on the way", fault.Spec{Kind: fault.KindDrop, Hop: fault.HopGatewayPush, Instance: "gw-1"}, true, true, 0},
		{"latency at gw-1's receive", fault.Spec{Kind: fault.KindLatency, Hop: fault.HopGatewayReceive, Instance: "gw-1", Delay: fault.Duration(300 * time.Millisecond)}, true, true, 300 * time.Millisecond},
		{"latency at logic-1's store append", fault.Spec{Kind: fault.KindLatency, Hop: fault.HopStoreAppend, Instance: "logic-1", Delay: fault.Duration(300 * time.Millisecond)}, true, true, 300 * time.Millisecond},
		{"latency at gw-2's push", fault.Spec{Kind: fault.KindLatency, Hop: fault.HopGatewayPush, Instance: "gw-2", Delay: fault.Duration(300 * time.Millisecond)}, true, true, 300 * time.Millisecond},
	} {
		t.Run(x.name, func(t *testing.T) {
			f := addFault(t, reg, x.spec)
			body := fmt.Sprintf("m%d", i)
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := alice.Send(ctx, "bob", body, client.WithID("id-"+body))
			cancel()
			if acked := err == nil; acked != x.acked {
				t.Fatalf("acked %v (%v), want %v", acked, err, x.acked)
			}
			got := receiveWithin(bob, time.Second)
			if delivered := len(got) > 0; delivered != x.delivered {
				t.Fatalf("delivered %v, want %v", delivered, x.delivered)
			}
			if took := time.Since(start); x.delivered && took < x.slower {
				t.Fatalf("took %s, want at least %s", took, x.slower)
			}
			if _, err := reg.Clear(f.ID); err != nil {
				t.Fatal(err)
			}
			// Cleared: the same message (the client resends it under its id,
			// the logic de-duplicates) reaches bob, once.
			imtest.Eventually(t, 10*time.Second, func() error {
				for _, in := range reg.Instances() {
					if slices.Contains(in.Applied, f.ID) {
						return fmt.Errorf("%s still applies %s", in.Name, f.ID)
					}
				}
				return nil
			})
			if !x.delivered {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				if _, err := alice.Send(ctx, "bob", body, client.WithID("id-"+body)); err != nil {
					t.Fatalf("after clear: %v", err)
				}
				imtest.Eventually(t, 15*time.Second, func() error {
					got = append(got, receiveWithin(bob, 100*time.Millisecond)...)
					if len(got) == 0 {
						return errors.New("bob got nothing after the clear")
					}
					return nil
				})
			}
			if len(got) != 1 || got[0].Body != body {
				t.Fatalf("bob got %v, want %s once", imtest.Bodies(got), body)
			}
		})
	}
}

func receiveWithin(c *client.Client, d time.Duration) []client.Message {
	var out []client.Message
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case m := <-c.Messages():
			out = append(out, m)
		case <-timer.C:
			return out
		}
	}
}
