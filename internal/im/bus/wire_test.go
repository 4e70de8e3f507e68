package bus_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/jsonwire/wiretest"
)

// wireCase is one bus message type: its hand-written encoder, and its
// decoder (nil when it has none of its own).
type wireCase struct {
	name   string
	filled any // *T with every field set
	zero   any // *T
	encode func(any) []byte
	decode func([]byte) (any, error)
}

func wireCases() []wireCase {
	return []wireCase{
		{"SendRequest", wiretest.Filled[bus.SendRequest](), &bus.SendRequest{},
			func(v any) []byte { return bus.AppendSendRequest(nil, v.(*bus.SendRequest)) },
			func(b []byte) (any, error) { var v bus.SendRequest; return &v, bus.DecodeSendRequest(b, &v) }},
		{"SendReply", wiretest.Filled[bus.SendReply](), &bus.SendReply{},
			func(v any) []byte { return bus.AppendSendReply(nil, v.(*bus.SendReply)) },
			func(b []byte) (any, error) { var v bus.SendReply; return &v, bus.DecodeSendReply(b, &v) }},
		{"StoredMessage", wiretest.Filled[bus.StoredMessage](), &bus.StoredMessage{},
			func(v any) []byte { return bus.AppendStoredMessage(nil, v.(*bus.StoredMessage)) },
			func(b []byte) (any, error) { var v bus.StoredMessage; return &v, bus.DecodeStoredMessage(b, &v) }},
		{"Deliver", wiretest.Filled[bus.Deliver](), &bus.Deliver{},
			func(v any) []byte { return bus.AppendDeliver(nil, v.(*bus.Deliver)) },
			func(b []byte) (any, error) { var v bus.Deliver; return &v, bus.DecodeDeliver(b, &v) }},
		{"DeliverAck", wiretest.Filled[bus.DeliverAck](), &bus.DeliverAck{},
			func(v any) []byte { return bus.AppendDeliverAck(nil, v.(*bus.DeliverAck)) },
			func(b []byte) (any, error) {
				acks, err := bus.DecodeAcks(b, nil)
				if err != nil || len(acks) != 1 {
					return &bus.DeliverAck{}, err
				}
				return &acks[0], nil
			}},
		{"DeliverAckBatch", wiretest.Filled[bus.DeliverAckBatch](), &bus.DeliverAckBatch{},
			func(v any) []byte { return bus.AppendDeliverAckBatch(nil, v.(*bus.DeliverAckBatch)) },
			func(b []byte) (any, error) {
				acks, err := bus.DecodeAcks(b, nil)
				return &bus.DeliverAckBatch{Acks: acks}, err
			}},
	}
}

// TestCodecsCoverEveryField fills every exported field of each bus message
// by reflection: the hand-written encoder must write what encoding/json
// writes, and the decoder must read it all back. A field added to a bus
// message but not to its codec fails here instead of vanishing on the bus.
func TestCodecsCoverEveryField(t *testing.T) {
	for _, c := range wireCases() {
		t.Run(c.name, func(t *testing.T) {
			for _, v := range []any{c.filled, c.zero} {
				want, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				if got := c.encode(v); !bytes.Equal(got, want) {
					t.Fatalf("encoder\n got %s\nwant %s", got, want)
				}
			}
			data, _ := json.Marshal(c.filled)
			back, err := c.decode(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, c.filled) {
				t.Fatalf("decoded %+v\nwant    %+v (unset: %v)", back, c.filled, wiretest.Unset(back))
			}
		})
	}
}
