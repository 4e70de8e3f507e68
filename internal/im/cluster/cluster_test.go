package cluster_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

func TestOneToOneMultiDevice(t *testing.T) {
	c := imtest.StartCluster(t, "", 2)
	urls := c.URLs()
	alice := imtest.Dial(t, urls[:1], "alice", "phone")
	bobPhone := imtest.Dial(t, urls[:1], "bob", "phone")
	bobLaptop := imtest.Dial(t, urls[1:], "bob", "laptop")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := imtest.Seq("m", 50)
	for _, b := range want {
		r, err := alice.Send(ctx, "bob", b)
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		if r.Seq == 0 || r.MsgID == "" {
			t.Fatalf("send-ack without seq or msg id: %+v", r)
		}
	}
	got := imtest.Bodies(imtest.Receive(t, bobPhone, 50, 10*time.Second))
	if !slices.Equal(got, want) {
		t.Fatalf("phone got %v, want %v", got, want)
	}
	got = imtest.Bodies(imtest.Receive(t, bobLaptop, 50, 10*time.Second))
	if !slices.Equal(got, want) {
		t.Fatalf("laptop got %v, want %v", got, want)
	}
	imtest.ExpectNone(t, bobPhone, 200*time.Millisecond)
}

func TestExternalNATSServer(t *testing.T) {
	nats := imtest.StartNATSServer(t)
	c := imtest.StartCluster(t, nats.URL, 1)
	alice := imtest.Dial(t, c.URLs(), "alice", "phone")
	bob := imtest.Dial(t, c.URLs(), "bob", "phone")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := imtest.Seq("x", 20)
	for _, b := range want {
		if _, err := alice.Send(ctx, "bob", b); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	if got := imtest.Bodies(imtest.Receive(t, bob, 20, 10*time.Second)); !slices.Equal(got, want) {
		t.Fatalf("bob got %v, want %v", got, want)
	}
}
