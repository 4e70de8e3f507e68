package chatsim_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/chatsim"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

func TestValidate(t *testing.T) {
	ok := chatsim.Config{URLs: []string{"ws://x/ws"}, Users: 2, Rate: 1}
	for _, c := range []struct {
		mut  func(*chatsim.Config)
		want string
	}{
		{func(c *chatsim.Config) { c.Users = 1 }, "--users 1"},
		{func(c *chatsim.Config) { c.Users = chatsim.MaxUsers + 1 }, "--users"},
		{func(c *chatsim.Config) { c.Rate = -1 }, "--rate -1"},
		{func(c *chatsim.Config) { c.URLs = nil }, "no gateway"},
		{func(c *chatsim.Config) { c.GroupShare = 2 }, "group share"},
	} {
		cfg := ok
		c.mut(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestChats: simulated users on two gateways of a real cluster send at the
// rate, one-to-one and to their groups, and receive each other's messages.
func TestChats(t *testing.T) {
	c := imtest.StartCluster(t, "", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sim, err := chatsim.Start(ctx, chatsim.Config{URLs: c.URLs(), Secret: imtest.Secret, Users: 7, Rate: 40, GroupSize: 3, Log: imtest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Stop()
	imtest.Eventually(t, 20*time.Second, func() error {
		s := sim.Stats()
		if s.Sent < 40 || s.Received < 40 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	if s := sim.Stats(); s.Failed != 0 || s.Skipped != 0 {
		t.Errorf("failed or skipped sends on a healthy cluster: %+v", s)
	}
	// Starting again on the same cluster finds the groups there already.
	again, err := chatsim.Start(ctx, chatsim.Config{URLs: c.URLs(), Secret: imtest.Secret, Users: 7, Rate: 0, GroupSize: 3, Log: imtest.Logger()})
	if err != nil {
		t.Fatalf("second start: %v", err)
	}
	again.Stop()
}
