package gateway_test

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/gateway"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/nats-io/nats.go"
)

// These tests play the logic node on the bus, to check what the gateway
// puts on it and makes of the answers.

func decodeMsg(t *testing.T, m *nats.Msg, v any) {
	t.Helper()
	if err := json.Unmarshal(m.Data, v); err != nil {
		t.Fatalf("bus message on %s: %v: %s", m.Subject, err, m.Data)
	}
}

func TestSendOnTheBus(t *testing.T) {
	b := startBareGateway(t, nil)
	reqs := b.busRequests(t, bus.SubjSend)
	alice := dialAuthed(t, b.url, "alice", "phone")

	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", To: "bob", Body: "hi", Probe: true, Trace: traceparent})
	m := nextMsg(t, reqs)
	if got := m.Header.Get(bus.HeaderTrace); got != traceparent {
		t.Fatalf("NATS header %s = %q, want %q", bus.HeaderTrace, got, traceparent)
	}
	var req bus.SendRequest
	decodeMsg(t, m, &req)
	if age := time.Since(time.Unix(0, req.RecvNS)); req.RecvNS == 0 || age < 0 || age > time.Minute {
		t.Fatalf("recv_ns %d is not the time the gateway read the frame", req.RecvNS)
	}
	req.RecvNS = 0
	// The context rides in the header only, not in the JSON as well.
	want := bus.SendRequest{From: "alice", Device: "phone", Gateway: "gw-bare", ID: "c1", To: "bob", Body: "hi", Probe: true}
	if req != want {
		t.Fatalf("send request %+v, want %+v", req, want)
	}
	reply(t, m, bus.SendReply{MsgID: "M1", Conv: "d=alice=bob", Seq: 7, TS: 1234, Dup: true})
	ack := alice.next()
	wantAck := protocol.Frame{Type: protocol.TypeSendAck, ID: "c1", MsgID: "M1", Conv: "d=alice=bob", Seq: 7, TS: 1234, Dup: true}
	if !reflect.DeepEqual(ack, wantAck) {
		t.Fatalf("send_ack %+v, want %+v", ack, wantAck)
	}

	// Without a traceparent there is no header; a group send names the group.
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c2", Group: "team", Body: "yo"})
	m = nextMsg(t, reqs)
	if m.Header != nil && m.Header.Get(bus.HeaderTrace) != "" {
		t.Fatalf("header %v on a send without traceparent", m.Header)
	}
	req = bus.SendRequest{}
	decodeMsg(t, m, &req)
	req.RecvNS = 0
	if want := (bus.SendRequest{From: "alice", Device: "phone", Gateway: "gw-bare", ID: "c2", Group: "team", Body: "yo"}); req != want {
		t.Fatalf("send request %+v, want %+v", req, want)
	}
	// The logic node's error code and message reach the client as they are.
	reply(t, m, bus.SendReply{Code: protocol.CodeNotMember, Error: "you are not a member of group team"})
	if f := alice.expectError(protocol.CodeNotMember, "c2"); f.Message != "you are not a member of group team" {
		t.Fatalf("message %q", f.Message)
	}

	// An answer the gateway cannot read is an internal error.
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c3", To: "bob"})
	m = nextMsg(t, reqs)
	if err := m.Respond([]byte("not json")); err != nil {
		t.Fatal(err)
	}
	alice.expectError(protocol.CodeInternal, "c3")
}

func TestSyncAndGroupOnTheBus(t *testing.T) {
	b := startBareGateway(t, nil)
	syncs := b.busRequests(t, bus.SubjSync)
	groups := b.busRequests(t, bus.SubjGroup)
	bob := dialAuthed(t, b.url, "bob", "tablet")

	bob.send(protocol.Frame{Type: protocol.TypeSync, ID: "s1", After: map[string]uint64{"d=alice=bob": 3}, Full: true})
	m := nextMsg(t, syncs)
	var sreq bus.SyncRequest
	decodeMsg(t, m, &sreq)
	if want := (bus.SyncRequest{User: "bob", Device: "tablet", After: map[string]uint64{"d=alice=bob": 3}, Full: true}); !reflect.DeepEqual(sreq, want) {
		t.Fatalf("sync request %+v, want %+v", sreq, want)
	}
	msgs := []bus.StoredMessage{
		{MsgID: "M4", Conv: "d=alice=bob", Seq: 4, From: "alice", FromDevice: "phone", Body: "four", Trace: traceparent, TS: 40},
		{MsgID: "M9", Conv: "g=team", Seq: 9, From: "carol", FromDevice: "pc", Group: "team", Body: "nine", Probe: true, TS: 90},
	}
	reply(t, m, bus.SyncReply{Msgs: msgs, More: true})
	for _, sm := range msgs {
		want := protocol.Frame{Type: protocol.TypeDeliver, MsgID: sm.MsgID, Conv: sm.Conv, Seq: sm.Seq, From: sm.From,
			FromDevice: sm.FromDevice, Group: sm.Group, Body: sm.Body, Probe: sm.Probe, Trace: sm.Trace, TS: sm.TS, Sync: true}
		if f := bob.next(); !reflect.DeepEqual(f, want) {
			t.Fatalf("got %+v, want %+v", f, want)
		}
	}
	if f := bob.next(); !reflect.DeepEqual(f, protocol.Frame{Type: protocol.TypeSyncDone, ID: "s1", Count: 2, More: true}) {
		t.Fatalf("got %+v, want sync_done s1 count 2 more", f)
	}

	bob.send(protocol.Frame{Type: protocol.TypeGroupAdd, ID: "g1", Group: "team", Members: []string{"dave", "erin"}})
	m = nextMsg(t, groups)
	var greq bus.GroupRequest
	decodeMsg(t, m, &greq)
	if want := (bus.GroupRequest{Op: protocol.TypeGroupAdd, User: "bob", Group: "team", Members: []string{"dave", "erin"}}); !reflect.DeepEqual(greq, want) {
		t.Fatalf("group request %+v, want %+v", greq, want)
	}
	reply(t, m, bus.GroupReply{Members: []string{"bob", "dave", "erin"}})
	if f := bob.next(); !reflect.DeepEqual(f, protocol.Frame{Type: protocol.TypeResult, ID: "g1", Group: "team", Members: []string{"bob", "dave", "erin"}}) {
		t.Fatalf("got %+v, want the result of g1", f)
	}
	bob.send(protocol.Frame{Type: protocol.TypeGroupRemove, ID: "g2", Group: "team", Members: []string{"dave"}})
	reply(t, nextMsg(t, groups), bus.GroupReply{Code: protocol.CodeForbidden, Error: "only the owner may remove others"})
	bob.expectError(protocol.CodeForbidden, "g2")
}

func TestUnavailable(t *testing.T) {
	const timeout = 300 * time.Millisecond
	b := startBareGateway(t, func(c *gateway.Config) { c.RequestTimeout = timeout })
	alice := dialAuthed(t, b.url, "alice", "phone")

	// No logic node at all.
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c1", To: "bob"})
	alice.expectError(protocol.CodeUnavailable, "c1")

	// A logic node that does not answer in time.
	reqs := b.busRequests(t, bus.SubjSend)
	start := time.Now()
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c2", To: "bob"})
	nextMsg(t, reqs)
	alice.expectError(protocol.CodeUnavailable, "c2")
	if d := time.Since(start); d < timeout {
		t.Fatalf("unavailable after %s, before the request timeout of %s", d, timeout)
	}
	alice.ping()
}

func TestInflightLimit(t *testing.T) {
	b := startBareGateway(t, func(c *gateway.Config) { c.MaxInflight = 2 })
	reqs := b.busRequests(t, bus.SubjSend)
	alice := dialAuthed(t, b.url, "alice", "phone")
	for _, id := range []string{"c1", "c2", "c3"} {
		alice.send(protocol.Frame{Type: protocol.TypeSend, ID: id, To: "bob"})
	}
	held := []*nats.Msg{nextMsg(t, reqs), nextMsg(t, reqs)}
	alice.expectError(protocol.CodeOverloaded, "c3")
	for i, m := range held {
		var req bus.SendRequest
		decodeMsg(t, m, &req)
		reply(t, m, bus.SendReply{MsgID: "M" + req.ID, Conv: "d=alice=bob", Seq: uint64(i + 1), TS: 1})
	}
	got := map[string]bool{}
	for range held {
		f := alice.next()
		if f.Type != protocol.TypeSendAck || f.MsgID != "M"+f.ID {
			t.Fatalf("got %+v, want a send_ack", f)
		}
		got[f.ID] = true
	}
	if !got["c1"] || !got["c2"] {
		t.Fatalf("acks for %v, want c1 and c2", got)
	}
	// With room again, a send goes through.
	alice.send(protocol.Frame{Type: protocol.TypeSend, ID: "c4", To: "bob"})
	reply(t, nextMsg(t, reqs), bus.SendReply{MsgID: "M4", Conv: "d=alice=bob", Seq: 3, TS: 1})
	if f := alice.next(); f.Type != protocol.TypeSendAck || f.ID != "c4" {
		t.Fatalf("got %+v, want send_ack c4", f)
	}
}

func TestPushAndDeliverAckOnTheBus(t *testing.T) {
	b := startBareGateway(t, nil)
	acks := b.busRequests(t, bus.AckSubject("node-7"))
	bob := dialAuthed(t, b.url, "bob", "phone")
	carol := dialAuthed(t, b.url, "carol", "phone")

	push := func(sm bus.StoredMessage, targets ...bus.Target) {
		t.Helper()
		data, err := json.Marshal(bus.Deliver{Node: "node-7", Targets: targets, Msg: sm})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.nc.Publish(bus.DeliverSubject("gw-bare"), data); err != nil {
			t.Fatal(err)
		}
	}
	sm := bus.StoredMessage{MsgID: "M1", Conv: "d=alice=bob", Seq: 5, From: "alice", FromDevice: "phone", Body: "hi", Probe: true, Trace: traceparent, TS: 99}
	// Bob's tablet is not here, nor is dave: only bob's phone gets it.
	push(sm, bus.Target{User: "bob", Device: "phone"}, bus.Target{User: "bob", Device: "tablet"}, bus.Target{User: "dave", Device: "phone"})
	want := protocol.Frame{Type: protocol.TypeDeliver, MsgID: "M1", Conv: "d=alice=bob", Seq: 5, From: "alice", FromDevice: "phone",
		Body: "hi", Probe: true, Trace: traceparent, TS: 99}
	if f := bob.next(); !reflect.DeepEqual(f, want) {
		t.Fatalf("got %+v, want %+v", f, want)
	}
	// A logic node puts the context in the header only: the frame carries
	// it all the same (this gateway does not trace: it passes it on).
	hm := sm
	hm.MsgID, hm.Seq, hm.Trace = "M0", 4, ""
	data, err := json.Marshal(bus.Deliver{Node: "node-7", Targets: []bus.Target{{User: "carol", Device: "phone"}}, Msg: hm})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.PublishMsg(&nats.Msg{Subject: bus.DeliverSubject("gw-bare"), Data: data, Header: nats.Header{bus.HeaderTrace: []string{traceparent}}}); err != nil {
		t.Fatal(err)
	}
	if f := carol.next(); f.MsgID != "M0" || f.Trace != traceparent {
		t.Fatalf("push with the context in the header: got %+v, want M0 with traceparent %s", f, traceparent)
	}
	carol.write(`{"type":"deliver_ack","msg_id":"M0"}`)
	var ack0 bus.DeliverAck
	if decodeMsg(t, nextMsg(t, acks), &ack0); ack0.MsgID != "M0" {
		t.Fatalf("deliver-ack %+v, want M0's", ack0)
	}
	// An ack of a message nobody waits for is not passed on; the real one is.
	bob.write(`{"type":"deliver_ack","msg_id":"M-unknown"}`)
	bob.write(`{"type":"deliver_ack","msg_id":"M1","conv":"d=alice=bob","seq":5}`)
	var ack bus.DeliverAck
	decodeMsg(t, nextMsg(t, acks), &ack)
	if want := (bus.DeliverAck{MsgID: "M1", User: "bob", Device: "phone"}); ack != want {
		t.Fatalf("deliver-ack %+v, want %+v", ack, want)
	}
	// Acking again is ignored too: the next ack on the bus is for M2.
	bob.write(`{"type":"deliver_ack","msg_id":"M1"}`)
	push(bus.StoredMessage{MsgID: "M2", Conv: "d=alice=bob", Seq: 6, From: "alice", FromDevice: "phone", Body: "again", TS: 100}, bus.Target{User: "bob", Device: "phone"})
	if f := bob.next(); f.MsgID != "M2" {
		t.Fatalf("got %+v, want M2", f)
	}
	bob.write(`{"type":"deliver_ack","msg_id":"M2"}`)
	decodeMsg(t, nextMsg(t, acks), &ack)
	if ack.MsgID != "M2" {
		t.Fatalf("deliver-ack for %s, want M2", ack.MsgID)
	}
	// Carol got nothing.
	carol.ping()
	// An undecodable push is dropped; the gateway goes on.
	if err := b.nc.Publish(bus.DeliverSubject("gw-bare"), []byte("{")); err != nil {
		t.Fatal(err)
	}
	push(bus.StoredMessage{MsgID: "M3", Conv: "d=bob=carol", Seq: 1, From: "bob", FromDevice: "phone", Body: "3", TS: 1}, bus.Target{User: "carol", Device: "phone"})
	if f := carol.next(); f.MsgID != "M3" {
		t.Fatalf("got %+v, want M3", f)
	}
}

func TestGatewayStopGoesAway(t *testing.T) {
	b := startBareGateway(t, nil)
	alice := dialAuthed(t, b.url, "alice", "phone")
	pending := dialRaw(t, b.url) // not authenticated yet
	start := time.Now()
	b.stop(t)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stop took %s", d)
	}
	for _, rc := range []*rawConn{alice, pending} {
		if frames := rc.expectClosed(websocket.StatusGoingAway, "gateway shutting down", wait); len(frames) != 0 {
			t.Fatalf("frames before going away: %+v", frames)
		}
	}
	if n := b.gw.Conns(); n != 0 {
		t.Fatalf("%d connections after stop", n)
	}
}

func TestSlowConsumer(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the gateway's write timeout")
	}
	b := startBareGateway(t, func(c *gateway.Config) { c.OutQueue = 16 })
	alice := dialAuthed(t, b.url, "alice", "phone")
	slow := dialNoRead(t, b.url)
	slow.write(`{"type":"auth","token":"` + token(t, "bob", "phone") + `"}`)
	imtest.Eventually(t, wait, hasConns(b.gw, 2))

	// Push to bob, who reads nothing, until the gateway lets him go.
	body := strings.Repeat("x", protocol.MaxBodyBytes)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			data, _ := json.Marshal(bus.Deliver{Node: "n", Targets: []bus.Target{{User: "bob", Device: "phone"}},
				Msg: bus.StoredMessage{MsgID: "M" + strconv.Itoa(i), Conv: "d=alice=bob", Seq: uint64(i + 1), From: "alice", FromDevice: "phone", Body: body}})
			if b.nc.Publish(bus.DeliverSubject("gw-bare"), data) != nil {
				return
			}
			if i%100 == 99 {
				_ = b.nc.Flush()
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	// The writer is stuck on a full socket for at most its write timeout (10s).
	imtest.Eventually(t, 20*time.Second, hasConns(b.gw, 1))
	alice.ping()
}

// TestDeliverAcksBatchedForNodesThatSaySo checks both forms of deliver-acks:
// batched to a node whose pushes carry ack_batch, single to one whose do not
// (a logic node of an older version).
func TestDeliverAcksBatchedForNodesThatSaySo(t *testing.T) {
	b := startBareGateway(t, nil)
	newAcks := b.busRequests(t, bus.AckSubject("node-new"))
	oldAcks := b.busRequests(t, bus.AckSubject("node-old"))
	bob := dialAuthed(t, b.url, "bob", "phone")
	push := func(node string, batch bool, id string, seq uint64) {
		t.Helper()
		d := bus.Deliver{Node: node, AckBatch: batch, Targets: []bus.Target{{User: "bob", Device: "phone"}},
			Msg: bus.StoredMessage{MsgID: id, Conv: "d=alice=bob", Seq: seq, From: "alice", FromDevice: "phone", Body: "hi", TS: 1}}
		if err := b.nc.Publish(bus.DeliverSubject("gw-bare"), bus.AppendDeliver(nil, &d)); err != nil {
			t.Fatal(err)
		}
		if f := bob.next(); f.MsgID != id {
			t.Fatalf("got %+v, want %s", f, id)
		}
	}
	const n = 50
	for i := 0; i < n; i++ {
		push("node-new", true, "N"+strconv.Itoa(i), uint64(i+1))
	}
	push("node-old", false, "O1", n+1)
	for i := 0; i < n; i++ {
		bob.write(`{"type":"deliver_ack","msg_id":"N` + strconv.Itoa(i) + `"}`)
	}
	bob.write(`{"type":"deliver_ack","msg_id":"O1"}`)

	var single bus.DeliverAck
	decodeMsg(t, nextMsg(t, oldAcks), &single)
	if want := (bus.DeliverAck{MsgID: "O1", User: "bob", Device: "phone"}); single != want {
		t.Fatalf("old node got %+v, want %+v", single, want)
	}
	got := map[string]bool{}
	for len(got) < n {
		var batch bus.DeliverAckBatch
		decodeMsg(t, nextMsg(t, newAcks), &batch)
		if len(batch.Acks) == 0 {
			t.Fatalf("empty or single-form ack for the batching node")
		}
		for _, a := range batch.Acks {
			if a.User != "bob" || a.Device != "phone" || got[a.MsgID] {
				t.Fatalf("ack %+v: wrong device or twice", a)
			}
			got[a.MsgID] = true
		}
	}
	select {
	case m := <-newAcks:
		t.Fatalf("more acks than deliveries: %s", m.Data)
	case <-time.After(200 * time.Millisecond):
	}
}
