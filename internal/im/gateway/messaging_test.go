package gateway_test

import (
	"slices"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/logic"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestSendAckDeliverSync walks the documented happy path frame by frame.
func TestSendAckDeliverSync(t *testing.T) {
	_, url := startCluster(t, nil)
	alice := dialAuthed(t, url, "alice", "phone")
	aliceLaptop := dialAuthed(t, url, "alice", "laptop")
	bob := dialAuthed(t, url, "bob", "phone")

	before := time.Now().UnixMilli()
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", To: "bob", Body: "hello", Probe: true, Trace: traceparent})
	ack := alice.next()
	if ack.Type != protocol.TypeSendAck || ack.ID != "c1" || ack.MsgID == "" || ack.Conv != "d=alice=bob" || ack.Seq != 1 || ack.Dup {
		t.Fatalf("send_ack %+v", ack)
	}
	if ack.TS < before || ack.TS > time.Now().UnixMilli() {
		t.Fatalf("send_ack ts %d, not between %d and now", ack.TS, before)
	}
	want := protocol.Frame{Type: protocol.TypeDeliver, MsgID: ack.MsgID, Conv: "d=alice=bob", Seq: 1, From: "alice",
		FromDevice: "phone", Body: "hello", Probe: true, Trace: traceparent, TS: ack.TS}
	// Bob gets it, and so does alice's other device; the sending device does not.
	for name, rc := range map[string]*rawConn{"bob": bob, "alice's laptop": aliceLaptop} {
		if got := rc.next(); !equalFrames(got, want) {
			t.Fatalf("%s got %+v, want %+v", name, got, want)
		}
		rc.send(protocol.Frame{Type: protocol.TypeDeliverAck, MsgID: ack.MsgID, Conv: ack.Conv, Seq: ack.Seq})
	}

	// The same id again is a duplicate: the first message's ack, nothing stored or pushed.
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", To: "bob", Body: "hello again"})
	dup := alice.next()
	if dup.Type != protocol.TypeSendAck || dup.ID != "c1" || !dup.Dup || dup.MsgID != ack.MsgID || dup.Seq != 1 || dup.TS != ack.TS || dup.Conv != ack.Conv {
		t.Fatalf("duplicate send_ack %+v, want the first one's %+v with dup", dup, ack)
	}
	// Ids are per sender: bob may use c1 too.
	bob.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", To: "alice", Body: "hi alice"})
	if f := bob.next(); f.Type != protocol.TypeSendAck || f.Dup || f.Seq != 2 || f.MsgID == ack.MsgID {
		t.Fatalf("bob's send_ack %+v, want seq 2, not a duplicate", f)
	}
	for _, rc := range []*rawConn{alice, aliceLaptop} {
		f := rc.next()
		if f.Type != protocol.TypeDeliver || f.Body != "hi alice" || f.Seq != 2 || f.From != "bob" {
			t.Fatalf("got %+v, want bob's message seq 2", f)
		}
		rc.send(protocol.Frame{Type: protocol.TypeDeliverAck, MsgID: f.MsgID})
	}
	// Bob's first device did not get his own message, nor alice's duplicate.
	bob.ping()

	// A new device syncs everything; then only what is after a position.
	tablet := dialAuthed(t, url, "bob", "tablet")
	tablet.send(protocol.Frame{Type: protocol.TypeSync, ID: "s1", Full: true})
	for seq := uint64(1); seq <= 2; seq++ {
		f := tablet.next()
		if f.Type != protocol.TypeDeliver || !f.Sync || f.Conv != "d=alice=bob" || f.Seq != seq || f.MsgID == "" {
			t.Fatalf("sync: got %+v, want deliver seq %d with sync", f, seq)
		}
	}
	if f := tablet.next(); f.Type != protocol.TypeSyncDone || f.ID != "s1" || f.Count != 2 || f.More {
		t.Fatalf("got %+v, want sync_done s1 count 2", f)
	}
	tablet.send(protocol.Frame{Type: protocol.TypeSync, ID: "s2", After: map[string]uint64{"d=alice=bob": 1}})
	if f := tablet.next(); f.Type != protocol.TypeDeliver || f.Seq != 2 || f.Body != "hi alice" || !f.Sync {
		t.Fatalf("got %+v, want seq 2 by sync", f)
	}
	if f := tablet.next(); f.Type != protocol.TypeSyncDone || f.ID != "s2" || f.Count != 1 {
		t.Fatalf("got %+v, want sync_done s2 count 1", f)
	}
	// Another's conversation is not read: nothing, silently.
	tablet.send(protocol.Frame{Type: protocol.TypeSync, ID: "s3", After: map[string]uint64{"d=carol=dave": 0}})
	if f := tablet.next(); f.Type != protocol.TypeSyncDone || f.ID != "s3" || f.Count != 0 {
		t.Fatalf("got %+v, want sync_done s3 count 0", f)
	}
}

func equalFrames(a, b protocol.Frame) bool {
	return a.Type == b.Type && a.ID == b.ID && a.MsgID == b.MsgID && a.Conv == b.Conv && a.Seq == b.Seq &&
		a.From == b.From && a.FromDevice == b.FromDevice && a.Group == b.Group && a.Body == b.Body &&
		a.Probe == b.Probe && a.Trace == b.Trace && a.TS == b.TS && a.Sync == b.Sync && a.Dup == b.Dup
}

// TestRedeliveryUntilAcked: a pushed message not acknowledged comes again
// with the same msg_id and seq; once acknowledged it stops.
func TestRedeliveryUntilAcked(t *testing.T) {
	const ackTimeout = 300 * time.Millisecond
	_, url := startCluster(t, nil, func(o *cluster.Options) {
		o.TuneLogic = func(c *logic.Config) { c.AckTimeout, c.MaxAttempts = ackTimeout, 10 }
	})
	alice := dialAuthed(t, url, "alice", "phone")
	bob := dialAuthed(t, url, "bob", "phone")
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", To: "bob", Body: "are you there"})
	ack := alice.next()
	first := bob.next()
	again := bob.nextWithin(10 * ackTimeout)
	for _, f := range []protocol.Frame{first, again} {
		if f.Type != protocol.TypeDeliver || f.MsgID != ack.MsgID || f.Seq != ack.Seq || f.Sync {
			t.Fatalf("got %+v, want the push of %s", f, ack.MsgID)
		}
	}
	bob.send(protocol.Frame{Type: protocol.TypeDeliverAck, MsgID: ack.MsgID})
	// Nothing more: at most one push was already on its way.
	deadline := time.After(5 * ackTimeout)
	extra := 0
	for {
		select {
		case f := <-bob.frames:
			if f.MsgID != ack.MsgID || extra > 0 {
				t.Fatalf("after the ack: %+v", f)
			}
			extra++
			bob.send(protocol.Frame{Type: protocol.TypeDeliverAck, MsgID: ack.MsgID})
			continue
		case <-deadline:
		}
		break
	}
	bob.ping()
}

func TestGroupErrors(t *testing.T) {
	_, url := startCluster(t, nil)
	alice := dialAuthed(t, url, "alice", "phone")
	bob := dialAuthed(t, url, "bob", "phone")
	carol := dialAuthed(t, url, "carol", "phone")

	result := func(rc *rawConn, id string, members ...string) {
		t.Helper()
		f := rc.next()
		if f.Type != protocol.TypeResult || f.ID != id || f.Group != "team" || !slices.Equal(f.Members, members) {
			t.Fatalf("got %+v, want result %s for team with %v", f, id, members)
		}
	}
	group := func(rc *rawConn, typ, id, group string, members ...string) {
		t.Helper()
		rc.send(protocol.Frame{Type: typ, ID: id, Group: group, Members: members})
	}

	group(alice, protocol.TypeGroupCreate, "g1", "team", "bob")
	result(alice, "g1", "alice", "bob")

	group(alice, protocol.TypeGroupCreate, "g2", "team")
	alice.expectError(protocol.CodeGroupExists, "g2")
	group(bob, protocol.TypeGroupCreate, "g3", "team", "carol")
	bob.expectError(protocol.CodeGroupExists, "g3")

	carol.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", Group: "team", Body: "let me in"})
	carol.expectError(protocol.CodeNotMember, "c1")
	carol.send(protocol.Frame{Type: protocol.TypeSend, ID: "c2", Group: "nosuch", Body: "hello?"})
	carol.expectError(protocol.CodeNoSuchGroup, "c2")

	group(bob, protocol.TypeGroupAdd, "g4", "team", "carol")
	bob.expectError(protocol.CodeForbidden, "g4")
	group(bob, protocol.TypeGroupRemove, "g5", "team", "alice")
	bob.expectError(protocol.CodeForbidden, "g5")
	group(alice, protocol.TypeGroupAdd, "g6", "nosuch", "carol")
	alice.expectError(protocol.CodeNoSuchGroup, "g6")
	group(alice, protocol.TypeGroupRemove, "g7", "nosuch", "bob")
	alice.expectError(protocol.CodeNoSuchGroup, "g7")

	// deliverTo checks rc gets the push of body in the group, and acknowledges it.
	deliverTo := func(rc *rawConn, from, body string, seq uint64) {
		t.Helper()
		f := rc.next()
		if f.Type != protocol.TypeDeliver || f.Group != "team" || f.Conv != "g=team" || f.From != from || f.Body != body || f.Seq != seq {
			t.Fatalf("got %+v, want the push of %q from %s seq %d in team", f, body, from, seq)
		}
		rc.send(protocol.Frame{Type: protocol.TypeDeliverAck, MsgID: f.MsgID})
	}

	// A member sends: every other member gets it, with the group named.
	bob.send(protocol.Frame{Type: protocol.TypeSend, ID: "b1", Group: "team", Body: "hi team"})
	ack := bob.next()
	if ack.Type != protocol.TypeSendAck || ack.ID != "b1" || ack.Conv != "g=team" || ack.Seq != 1 {
		t.Fatalf("got %+v, want send_ack b1 in g=team", ack)
	}
	deliverTo(alice, "bob", "hi team", 1)

	group(alice, protocol.TypeGroupAdd, "g8", "team", "carol")
	result(alice, "g8", "alice", "bob", "carol")
	carol.send(protocol.Frame{Type: protocol.TypeSend, ID: "c3", Group: "team", Body: "thanks"})
	if f := carol.next(); f.Type != protocol.TypeSendAck || f.ID != "c3" || f.Seq != 2 {
		t.Fatalf("carol got %+v, want send_ack c3 seq 2", f)
	}
	deliverTo(alice, "carol", "thanks", 2)
	deliverTo(bob, "carol", "thanks", 2)

	// A member may leave; then he may not send, and gets nothing more.
	group(bob, protocol.TypeGroupRemove, "g9", "team", "bob")
	result(bob, "g9", "alice", "carol")
	bob.send(protocol.Frame{Type: protocol.TypeSend, ID: "b2", Group: "team", Body: "still here?"})
	bob.expectError(protocol.CodeNotMember, "b2")
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "a1", Group: "team", Body: "bye bob"})
	if f := alice.next(); f.Type != protocol.TypeSendAck || f.ID != "a1" || f.Seq != 3 {
		t.Fatalf("alice got %+v, want send_ack a1 seq 3", f)
	}
	deliverTo(carol, "alice", "bye bob", 3)
	bob.ping() // the pong comes first: bob got no push of "bye bob"
}
