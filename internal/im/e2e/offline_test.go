package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// send sends one message from d (to a user, or to a group when to is "g:NAME")
// and records its ack.
func send(t *testing.T, ctx context.Context, l *ledger, d *device, to, body string) client.SendResult {
	t.Helper()
	var r client.SendResult
	var err error
	if group, ok := strings.CutPrefix(to, "g:"); ok {
		r, err = d.c.SendGroup(ctx, group, body)
	} else {
		r, err = d.c.Send(ctx, to, body)
	}
	if err != nil {
		t.Fatalf("%s sends %q to %s: %v", d.name, body, to, err)
	}
	if err := l.add(d, r, body); err != nil {
		t.Fatal(err)
	}
	return r
}

// chat has each of the devices send n messages to (in turn, interleaved) and
// returns the last sequence acknowledged.
func chat(t *testing.T, ctx context.Context, l *ledger, to string, n int, prefix string, from ...*device) uint64 {
	t.Helper()
	var last uint64
	for i := 0; i < n; i++ {
		for _, d := range from {
			last = send(t, ctx, l, d, to, fmt.Sprintf("%s-%s-%d", prefix, d.user, i)).Seq
		}
	}
	return last
}

// TestOfflineRecipientSyncs sends while recipients' devices are offline
// (never connected, or one device of two) and checks that each gets every
// message of its conversations, in order, once, when it connects.
func TestOfflineRecipientSyncs(t *testing.T) {
	c := startIM(t, "gw-a", "gw-b")
	ctx := ctxT(t, 2*time.Minute)

	t.Run("one-to-one", func(t *testing.T) {
		l := newLedger()
		alice := dial(t, c.urls("gw-a"), "alice1", "phone")
		chat(t, ctx, l, "bob1", 30, "offline", alice)
		bob := dial(t, c.urls("gw-b"), "bob1", "phone")
		conv := protocol.DirectConv("alice1", "bob1")
		checkDelivered(t, l, 20*time.Second, expect{dev: bob, conv: conv})
		for _, m := range bob.received(conv) {
			if !m.Sync {
				t.Fatalf("message %q came by push, but it was sent while bob1 was offline", m.Body)
			}
		}
		// Online now: the next ones come by push, after the synced ones.
		chat(t, ctx, l, "bob1", 10, "online", alice)
		checkDelivered(t, l, 20*time.Second, expect{dev: bob, conv: conv})
	})

	t.Run("more missed than the inbox holds", func(t *testing.T) {
		l := newLedger()
		alice := dial(t, c.urls("gw-a"), "alice5", "phone")
		chat(t, ctx, l, "bob5", 20, "many", alice)
		// Dial cannot return before its sync, and nobody reads the inbox
		// before Dial returns: it gives up with ctx and says why.
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		start := time.Now()
		bc, err := client.Dial(dctx, client.Config{URLs: c.urls("gw-b"), Token: imtest.Token("bob5", "phone"), Inbox: 5, Log: imtest.Logger()})
		if err == nil {
			bc.Close()
			t.Fatal("Dial with a 5-message inbox and 20 missed messages succeeded")
		}
		if !strings.Contains(err.Error(), "inbox") || time.Since(start) > 10*time.Second {
			t.Fatalf("Dial returned after %s with %v; want an error naming the inbox, soon after the 2 s deadline", time.Since(start), err)
		}
		// With room for them, the device gets them all.
		bob := dial(t, c.urls("gw-b"), "bob5", "phone")
		checkDelivered(t, l, 20*time.Second, expect{dev: bob, conv: protocol.DirectConv("alice5", "bob5")})
	})

	t.Run("one of two devices offline", func(t *testing.T) {
		l := newLedger()
		alice := dial(t, c.urls("gw-a"), "alice2", "phone")
		bobPhone := dial(t, c.urls("gw-a"), "bob2", "phone")
		conv := protocol.DirectConv("alice2", "bob2")
		chat(t, ctx, l, "bob2", 15, "a", alice)
		chat(t, ctx, l, "alice2", 15, "b", bobPhone)
		checkDelivered(t, l, 20*time.Second, expect{dev: alice, conv: conv}, expect{dev: bobPhone, conv: conv})
		// The laptop gets both sides of the conversation, its own user's
		// messages from the phone included.
		bobLaptop := dial(t, c.urls("gw-b"), "bob2", "laptop")
		checkDelivered(t, l, 20*time.Second, expect{dev: bobLaptop, conv: conv})

		// The laptop goes offline again; the app on it starts afresh later
		// (no local store) and gets the whole conversation by sync.
		bobLaptop.c.Close()
		for i := 0; i < 10; i++ {
			send(t, ctx, l, alice, "bob2", fmt.Sprintf("a2-%d", i))
			send(t, ctx, l, bobPhone, "alice2", fmt.Sprintf("b2-%d", i))
		}
		again := dial(t, c.urls("gw-b"), "bob2", "laptop")
		checkDelivered(t, l, 20*time.Second,
			expect{dev: alice, conv: conv}, expect{dev: bobPhone, conv: conv}, expect{dev: again, conv: conv})
	})

	t.Run("group with members added and removed", func(t *testing.T) {
		l := newLedger()
		const g = "offline-team"
		alice := dial(t, c.urls("gw-a"), "alice3", "phone") // owner, online
		bob := dial(t, c.urls("gw-b"), "bob3", "phone")     // online
		erin := dial(t, c.urls("gw-a"), "erin3", "phone")   // online, removed after phase 2
		// carol3 (offline member), dave3 (offline, added after phase 1) and
		// frank3 (offline, removed after phase 2) connect at the end.
		if _, err := alice.c.CreateGroup(ctx, g, "bob3", "carol3", "erin3", "frank3"); err != nil {
			t.Fatalf("create group: %v", err)
		}
		chat(t, ctx, l, "g:"+g, 5, "p1", alice, bob)
		if _, err := alice.c.AddMembers(ctx, g, "dave3"); err != nil {
			t.Fatalf("add dave3: %v", err)
		}
		joined := chat(t, ctx, l, "g:"+g, 5, "p2", alice, bob) - 9
		members, err := alice.c.RemoveMembers(ctx, g, "erin3", "frank3")
		if err != nil {
			t.Fatalf("remove erin3 and frank3: %v", err)
		}
		t.Logf("members after removal: %v", members)
		left := joined + 9
		chat(t, ctx, l, "g:"+g, 5, "p3", alice, bob)

		carol := dial(t, c.urls("gw-b"), "carol3", "phone")
		dave := dial(t, c.urls("gw-a"), "dave3", "phone")
		frank := dial(t, c.urls("gw-b"), "frank3", "phone")
		conv := protocol.GroupConv(g)
		checkDelivered(t, l, 20*time.Second,
			expect{dev: alice, conv: conv},
			expect{dev: bob, conv: conv},
			expect{dev: carol, conv: conv},
			expect{dev: dave, conv: conv, joined: joined},
			expect{dev: erin, conv: conv, left: left},
			expect{dev: frank, conv: conv, left: left},
		)
	})
}
