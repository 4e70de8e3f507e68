package bus

import (
	"encoding/json"

	"github.com/imwatch/imwatch/internal/im/jsonwire"
)

// The messages of the message path are encoded and decoded with jsonwire:
// the same JSON as encoding/json (the Append functions write exactly the
// bytes json.Marshal writes), without reflection. Decode falls back to
// encoding/json for whatever jsonwire does not take, so that any valid JSON
// a part of another version sends is read as before.

// decode decodes data into v with fast, or with encoding/json when fast
// cannot do it exactly.
func decode[T any](data []byte, v *T, fast func(*jsonwire.Dec, *T) bool) error {
	d := jsonwire.NewDec(data)
	if fast(d, v) && d.End() {
		return nil
	}
	var zero T
	*v = zero
	return json.Unmarshal(data, v)
}

// AppendSendRequest appends r as JSON.
func AppendSendRequest(b []byte, r *SendRequest) []byte {
	e := jsonwire.Enc{B: b}
	top := e.Open("")
	e.Str("from", r.From, false)
	e.Str("device", r.Device, false)
	e.Str("gateway", r.Gateway, false)
	e.Str("id", r.ID, false)
	e.Str("to", r.To, true)
	e.Str("group", r.Group, true)
	e.Str("body", r.Body, false)
	e.Bool("probe", r.Probe, true)
	e.Str("traceparent", r.Trace, true)
	e.Int("recv_ns", r.RecvNS, true)
	e.Close(top)
	return e.B
}

// DecodeSendRequest decodes data into r, which must be zero.
func DecodeSendRequest(data []byte, r *SendRequest) error {
	return decode(data, r, func(d *jsonwire.Dec, r *SendRequest) bool {
		return d.Object(func(k []byte) bool {
			switch string(k) {
			case "from":
				return d.Str(&r.From)
			case "device":
				return d.Str(&r.Device)
			case "gateway":
				return d.Str(&r.Gateway)
			case "id":
				return d.Str(&r.ID)
			case "to":
				return d.Str(&r.To)
			case "group":
				return d.Str(&r.Group)
			case "body":
				return d.Str(&r.Body)
			case "probe":
				return d.Bool(&r.Probe)
			case "traceparent":
				return d.Str(&r.Trace)
			case "recv_ns":
				return d.Int(&r.RecvNS)
			}
			return false
		})
	})
}

// AppendSendReply appends r as JSON.
func AppendSendReply(b []byte, r *SendReply) []byte {
	e := jsonwire.Enc{B: b}
	top := e.Open("")
	e.Str("msg_id", r.MsgID, true)
	e.Str("conv", r.Conv, true)
	e.Uint("seq", r.Seq, true)
	e.Int("ts", r.TS, true)
	e.Bool("dup", r.Dup, true)
	e.Str("code", r.Code, true)
	e.Str("error", r.Error, true)
	e.Close(top)
	return e.B
}

// DecodeSendReply decodes data into r, which must be zero.
func DecodeSendReply(data []byte, r *SendReply) error {
	return decode(data, r, func(d *jsonwire.Dec, r *SendReply) bool {
		return d.Object(func(k []byte) bool {
			switch string(k) {
			case "msg_id":
				return d.Str(&r.MsgID)
			case "conv":
				return d.Str(&r.Conv)
			case "seq":
				return d.Uint(&r.Seq)
			case "ts":
				return d.Int(&r.TS)
			case "dup":
				return d.Bool(&r.Dup)
			case "code":
				return d.Str(&r.Code)
			case "error":
				return d.Str(&r.Error)
			}
			return false
		})
	})
}

func encodeStored(e *jsonwire.Enc, key string, m *StoredMessage) {
	o := e.Open(key)
	e.Str("msg_id", m.MsgID, false)
	e.Str("conv", m.Conv, false)
	e.Uint("seq", m.Seq, false)
	e.Str("from", m.From, false)
	e.Str("from_device", m.FromDevice, false)
	e.Str("group", m.Group, true)
	e.Str("body", m.Body, false)
	e.Bool("probe", m.Probe, true)
	e.Str("traceparent", m.Trace, true)
	e.Int("ts", m.TS, false)
	e.Int("recv_ns", m.RecvNS, true)
	e.Close(o)
}

func decodeStored(d *jsonwire.Dec, m *StoredMessage) bool {
	return d.Object(func(k []byte) bool {
		switch string(k) {
		case "msg_id":
			return d.Str(&m.MsgID)
		case "conv":
			return d.Str(&m.Conv)
		case "seq":
			return d.Uint(&m.Seq)
		case "from":
			return d.Str(&m.From)
		case "from_device":
			return d.Str(&m.FromDevice)
		case "group":
			return d.Str(&m.Group)
		case "body":
			return d.Str(&m.Body)
		case "probe":
			return d.Bool(&m.Probe)
		case "traceparent":
			return d.Str(&m.Trace)
		case "ts":
			return d.Int(&m.TS)
		case "recv_ns":
			return d.Int(&m.RecvNS)
		}
		return false
	})
}

// AppendStoredMessage appends m as JSON.
func AppendStoredMessage(b []byte, m *StoredMessage) []byte {
	e := jsonwire.Enc{B: b}
	encodeStored(&e, "", m)
	return e.B
}

// DecodeStoredMessage decodes data into m, which must be zero.
func DecodeStoredMessage(data []byte, m *StoredMessage) error {
	return decode(data, m, decodeStored)
}

// AppendDeliver appends d as JSON.
func AppendDeliver(b []byte, d *Deliver) []byte {
	e := jsonwire.Enc{B: b}
	top := e.Open("")
	e.Str("node", d.Node, false)
	if d.Targets == nil {
		e.Null("targets")
	} else {
		arr := e.OpenArray("targets")
		for i := range d.Targets {
			o := e.Open("")
			e.Str("u", d.Targets[i].User, false)
			e.Str("d", d.Targets[i].Device, false)
			e.Close(o)
		}
		e.CloseArray(arr)
	}
	encodeStored(&e, "msg", &d.Msg)
	e.Bool("ack_batch", d.AckBatch, true)
	e.Close(top)
	return e.B
}

// DecodeDeliver decodes data into v, which must be zero.
func DecodeDeliver(data []byte, v *Deliver) error {
	return decode(data, v, func(d *jsonwire.Dec, v *Deliver) bool {
		return d.Object(func(k []byte) bool {
			switch string(k) {
			case "node":
				return d.Str(&v.Node)
			case "targets":
				v.Targets = make([]Target, 0, 2)
				return d.Array(func() bool {
					var t Target
					if !decodeTarget(d, &t) {
						return false
					}
					v.Targets = append(v.Targets, t)
					return true
				})
			case "msg":
				return decodeStored(d, &v.Msg)
			case "ack_batch":
				return d.Bool(&v.AckBatch)
			}
			return false
		})
	})
}

func decodeTarget(d *jsonwire.Dec, t *Target) bool {
	return d.Object(func(k []byte) bool {
		switch string(k) {
		case "u":
			return d.Str(&t.User)
		case "d":
			return d.Str(&t.Device)
		}
		return false
	})
}

// AppendDeliverAck appends a as JSON.
func AppendDeliverAck(b []byte, a *DeliverAck) []byte {
	e := jsonwire.Enc{B: b}
	top := e.Open("")
	e.Str("msg_id", a.MsgID, false)
	e.Str("u", a.User, false)
	e.Str("d", a.Device, false)
	e.Close(top)
	return e.B
}

// DecodeDeliverAck decodes data into a, which must be zero.
func DecodeDeliverAck(data []byte, a *DeliverAck) error {
	return decode(data, a, decodeAck)
}

// AppendDeliverAckBatch appends b as JSON.
func AppendDeliverAckBatch(buf []byte, b *DeliverAckBatch) []byte {
	e := jsonwire.Enc{B: buf}
	top := e.Open("")
	if b.Acks == nil {
		e.Null("acks")
	} else {
		arr := e.OpenArray("acks")
		for i := range b.Acks {
			o := e.Open("")
			e.Str("msg_id", b.Acks[i].MsgID, false)
			e.Str("u", b.Acks[i].User, false)
			e.Str("d", b.Acks[i].Device, false)
			e.Close(o)
		}
		e.CloseArray(arr)
	}
	e.Close(top)
	return e.B
}

// ackMessage is either form of what arrives on AckSubject: a DeliverAck's
// fields at the top level, or a DeliverAckBatch's acks.
type ackMessage struct {
	MsgID  string       `json:"msg_id"`
	User   string       `json:"u"`
	Device string       `json:"d"`
	Acks   []DeliverAck `json:"acks"`
}

// DecodeAcks decodes a message from AckSubject, a single DeliverAck or a
// DeliverAckBatch, appending its acks to dst.
func DecodeAcks(data []byte, dst []DeliverAck) ([]DeliverAck, error) {
	var m ackMessage
	err := decode(data, &m, func(d *jsonwire.Dec, m *ackMessage) bool {
		return d.Object(func(k []byte) bool {
			switch string(k) {
			case "msg_id":
				return d.Str(&m.MsgID)
			case "u":
				return d.Str(&m.User)
			case "d":
				return d.Str(&m.Device)
			case "acks":
				m.Acks = make([]DeliverAck, 0, 8)
				return d.Array(func() bool {
					var a DeliverAck
					if !decodeAck(d, &a) {
						return false
					}
					m.Acks = append(m.Acks, a)
					return true
				})
			}
			return false
		})
	})
	if err != nil {
		return dst, err
	}
	if m.MsgID != "" {
		dst = append(dst, DeliverAck{MsgID: m.MsgID, User: m.User, Device: m.Device})
	}
	return append(dst, m.Acks...), nil
}

func decodeAck(d *jsonwire.Dec, a *DeliverAck) bool {
	return d.Object(func(k []byte) bool {
		switch string(k) {
		case "msg_id":
			return d.Str(&a.MsgID)
		case "u":
			return d.Str(&a.User)
		case "d":
			return d.Str(&a.Device)
		}
		return false
	})
}
