package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// TestCrashLosesNothingAcked kills a part of the IM with SIGKILL while users
// keep sending, restarts it, and checks that every device of every recipient
// got exactly the acknowledged messages, in sequence order, once each.
func TestCrashLosesNothingAcked(t *testing.T) {
	cases := []struct {
		name  string
		crash func(t *testing.T, c *imCluster, round int, devs []*device, loops []*sendLoop)
	}{
		{"logic SIGKILL", func(t *testing.T, c *imCluster, _ int, _ []*device, loops []*sendLoop) {
			c.logic.kill()
			waitStuck(t, 10*time.Second, 300*time.Millisecond, loops...)
			c.startLogic()
		}},
		{"gateway SIGKILL", func(t *testing.T, c *imCluster, round int, devs []*device, _ []*sendLoop) {
			id := c.order[round%len(c.order)]
			c.gateways[id].kill()
			// Its clients move to the other gateway.
			imtest.Eventually(t, 20*time.Second, func() error {
				for _, d := range devs {
					if gw := d.c.Gateway(); gw == "" || gw == id {
						return fmt.Errorf("%s is on %q", d.name, gw)
					}
				}
				return nil
			})
			c.startGateway(id)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := startIM(t, "gw-a", "gw-b")
			alice := dial(t, c.urls("gw-a"), "alice", "phone")
			bobPhone := dial(t, c.urls("gw-a"), "bob", "phone")
			bobLaptop := dial(t, c.urls("gw-b"), "bob", "laptop")
			carol := dial(t, c.urls("gw-b"), "carol", "phone")
			dave := dial(t, c.urls("gw-a"), "dave", "phone")
			devs := []*device{alice, bobPhone, bobLaptop, carol, dave}
			ctx := ctxT(t, 2*time.Minute)
			if _, err := carol.c.CreateGroup(ctx, "team", "alice", "bob", "dave"); err != nil {
				t.Fatalf("create group: %v", err)
			}

			l := newLedger()
			stop := make(chan struct{})
			loops := []*sendLoop{
				startSending(ctx, l, alice, "bob", "", "alice", 20*time.Millisecond, stop),
				startSending(ctx, l, bobPhone, "alice", "", "bob", 20*time.Millisecond, stop),
				startSending(ctx, l, carol, "", "team", "carol", 20*time.Millisecond, stop),
			}
			waitAcked(t, 20*time.Second, 20, loops...)
			for round := 0; round < 2; round++ {
				tc.crash(t, c, round, devs, loops)
				// Senders went on through the outage; they must get going again.
				waitAcked(t, 30*time.Second, 20, loops...)
			}
			stopSending(t, stop, loops...)

			direct, team := protocol.DirectConv("alice", "bob"), protocol.GroupConv("team")
			checkDelivered(t, l, 40*time.Second,
				expect{dev: alice, conv: direct}, expect{dev: bobPhone, conv: direct}, expect{dev: bobLaptop, conv: direct},
				expect{dev: alice, conv: team}, expect{dev: bobPhone, conv: team}, expect{dev: bobLaptop, conv: team}, expect{dev: dave, conv: team},
			)
			for _, d := range devs {
				t.Logf("%s: %d reconnects, %d duplicate deliveries dropped", d.name, d.c.Reconnects(), d.c.Duplicates())
			}
		})
	}
}
