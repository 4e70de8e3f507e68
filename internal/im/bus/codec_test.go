package bus_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/imwatch/imwatch/internal/im/bus"
)

// codec is one bus message type: its jsonwire encoder and decoder, and a
// fresh value for encoding/json.
type codec struct {
	name   string
	fresh  func() any
	decode func([]byte, any) error
}

var codecs = []codec{
	{"SendRequest", func() any { return &bus.SendRequest{} }, func(b []byte, v any) error { return bus.DecodeSendRequest(b, v.(*bus.SendRequest)) }},
	{"SendReply", func() any { return &bus.SendReply{} }, func(b []byte, v any) error { return bus.DecodeSendReply(b, v.(*bus.SendReply)) }},
	{"StoredMessage", func() any { return &bus.StoredMessage{} }, func(b []byte, v any) error { return bus.DecodeStoredMessage(b, v.(*bus.StoredMessage)) }},
	{"Deliver", func() any { return &bus.Deliver{} }, func(b []byte, v any) error { return bus.DecodeDeliver(b, v.(*bus.Deliver)) }},
	{"DeliverAck", func() any { return &bus.DeliverAck{} }, func(b []byte, v any) error { return bus.DecodeDeliverAck(b, v.(*bus.DeliverAck)) }},
}

var busSeeds = []string{
	`{"from":"alice","device":"laptop","gateway":"gw-1","id":"7f3c9a1e","to":"bob","body":"hello","probe":false,"traceparent":"00-…-01","recv_ns":17}`,
	`{"msg_id":"Zq8bHk2mN4pR7sT1vW3xY5","conv":"d=alice=bob","seq":42,"ts":1764000000123,"dup":false}`,
	`{"code":"not_member","error":"you are not a member of group team"}`,
	`{"msg_id":"Z","conv":"d=alice=bob","seq":42,"from":"alice","from_device":"laptop","group":"","body":"hello","probe":false,"traceparent":"00-…-01","ts":1764000000123}`,
	`{"node":"logic-1","targets":[{"u":"bob","d":"phone"},{"u":"bob","d":"laptop"}],"msg":{"msg_id":"Z","conv":"g=t","seq":1,"from":"a","from_device":"p","body":"x","ts":1}}`,
	`{"node":"n","targets":null,"msg":{}}`, `{"node":"n","targets":[],"msg":{"seq":1},"msg":{"ts":2}}`,
	`{"msg_id":"Z","u":"bob","d":"phone"}`, `{"msg_id":"Z","U":"bob"}`, `{"acks":[{"msg_id":"A","u":"b","d":"p"},{"msg_id":"B","u":"b","d":"p"}]}`,
	`{"acks":null}`, `{"node":"n","targets":[],"msg":{},"ack_batch":true}`, `{"seq":-1}`, `{"seq":1e3}`, `{"body":"a\nb"}`,
}

// FuzzDecodeBus checks every bus decoder against encoding/json on any input:
// the same value, and an error exactly when encoding/json gives one.
func FuzzDecodeBus(f *testing.F) {
	for _, s := range busSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range codecs {
			got, want := c.fresh(), c.fresh()
			gotErr := c.decode(data, got)
			wantErr := json.Unmarshal(data, want)
			if (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("%s %q: error %v, encoding/json %v", c.name, data, gotErr, wantErr)
			}
			if gotErr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%s %q: %+v, encoding/json %+v", c.name, data, got, want)
			}
		}
		got, gotErr := bus.DecodeAcks(data, nil)
		var m bus.AckMessage
		wantErr := json.Unmarshal(data, &m)
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("DecodeAcks %q: error %v, encoding/json %v", data, gotErr, wantErr)
		}
		if gotErr != nil {
			return
		}
		var want []bus.DeliverAck
		if m.MsgID != "" {
			want = append(want, bus.DeliverAck{MsgID: m.MsgID, User: m.User, Device: m.Device})
		}
		want = append(want, m.Acks...)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodeAcks %q: %+v, encoding/json %+v", data, got, want)
		}
	})
}

// FuzzAppendBus checks that every Append function writes what json.Marshal
// writes for the same value.
func FuzzAppendBus(f *testing.F) {
	f.Add("alice", "hello <b>&</b>\u2029\x00\"", "d=a=b", uint64(42), int64(-7), true, 2)
	f.Add("", "\xff", "", uint64(0), int64(0), false, -1)
	f.Fuzz(func(t *testing.T, s, body, conv string, seq uint64, n int64, flag bool, targets int) {
		sm := bus.StoredMessage{MsgID: s, Conv: conv, Seq: seq, From: s, FromDevice: body, Group: conv, Body: body, Probe: flag, Trace: s, TS: n, RecvNS: -n}
		d := bus.Deliver{Node: s, Msg: sm, AckBatch: flag}
		batch := bus.DeliverAckBatch{}
		for i := 0; i < targets%3; i++ {
			batch.Acks = append(batch.Acks, bus.DeliverAck{MsgID: s, User: conv, Device: body})
		}
		for i := 0; i < targets%4; i++ {
			d.Targets = append(d.Targets, bus.Target{User: s, Device: body})
		}
		if targets == 0 {
			d.Targets = []bus.Target{}
		}
		cases := []struct {
			v   any
			got []byte
		}{
			{bus.SendRequest{From: s, Device: body, Gateway: conv, ID: s, To: conv, Group: s, Body: body, Probe: flag, Trace: body, RecvNS: n},
				bus.AppendSendRequest(nil, &bus.SendRequest{From: s, Device: body, Gateway: conv, ID: s, To: conv, Group: s, Body: body, Probe: flag, Trace: body, RecvNS: n})},
			{bus.SendReply{MsgID: s, Conv: conv, Seq: seq, TS: n, Dup: flag, Code: body, Error: s},
				bus.AppendSendReply(nil, &bus.SendReply{MsgID: s, Conv: conv, Seq: seq, TS: n, Dup: flag, Code: body, Error: s})},
			{sm, bus.AppendStoredMessage(nil, &sm)},
			{d, bus.AppendDeliver(nil, &d)},
			{bus.DeliverAck{MsgID: s, User: conv, Device: body}, bus.AppendDeliverAck(nil, &bus.DeliverAck{MsgID: s, User: conv, Device: body})},
			{batch, bus.AppendDeliverAckBatch(nil, &batch)},
		}
		for _, c := range cases {
			want, err := json.Marshal(c.v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(c.got, want) {
				t.Fatalf("%T\n got %s\nwant %s", c.v, c.got, want)
			}
		}
	})
}
