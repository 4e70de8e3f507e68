package protocol

import (
	"slices"
	"strconv"

	"github.com/imwatch/imwatch/internal/im/jsonwire"
)

// AppendFrame appends f as JSON: the same bytes json.Marshal(f) gives,
// without reflection. Every frame the gateway and the Go client write goes
// through it.
func AppendFrame(dst []byte, f *Frame) []byte {
	// Room for the whole frame at once, so that appending to nil or to a
	// small buffer does not grow it several times: the keys and numbers
	// (126 bytes of a one-to-one deliver) and the strings, unescaped.
	n := 192 + len(f.Type) + len(f.ID) + len(f.Token) + len(f.To) + len(f.Group) + len(f.Body) + len(f.Trace) +
		len(f.MsgID) + len(f.Conv) + len(f.From) + len(f.FromDevice) + len(f.User) + len(f.Device) +
		len(f.Gateway) + len(f.Code) + len(f.Message)
	if cap(dst)-len(dst) < n {
		dst = slices.Grow(dst, n)
	}
	e := jsonwire.Enc{B: dst}
	top := e.Open("")
	e.Str("type", f.Type, false)
	e.Str("id", f.ID, true)
	e.Str("token", f.Token, true)
	e.Str("to", f.To, true)
	e.Str("group", f.Group, true)
	e.Str("body", f.Body, true)
	e.Bool("probe", f.Probe, true)
	e.Str("traceparent", f.Trace, true)
	e.Str("msg_id", f.MsgID, true)
	e.Str("conv", f.Conv, true)
	e.Uint("seq", f.Seq, true)
	e.Str("from", f.From, true)
	e.Str("from_device", f.FromDevice, true)
	e.Int("ts", f.TS, true)
	e.Bool("dup", f.Dup, true)
	e.Bool("sync", f.Sync, true)
	if len(f.After) > 0 {
		// encoding/json writes map keys sorted.
		keys := make([]string, 0, len(f.After))
		for k := range f.After {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		after := e.Open("after")
		for i, k := range keys {
			if i > 0 {
				e.B = append(e.B, ',')
			}
			e.B = append(jsonwire.AppendString(e.B, k), ':')
			e.B = strconv.AppendUint(e.B, f.After[k], 10)
		}
		e.Close(after)
	}
	e.Bool("full", f.Full, true)
	if len(f.Members) > 0 {
		arr := e.OpenArray("members")
		for i, m := range f.Members {
			if i > 0 {
				e.B = append(e.B, ',')
			}
			e.B = jsonwire.AppendString(e.B, m)
		}
		e.CloseArray(arr)
	}
	e.Int("count", int64(f.Count), true)
	e.Bool("more", f.More, true)
	e.Str("user", f.User, true)
	e.Str("device", f.Device, true)
	e.Str("gateway", f.Gateway, true)
	e.Int("heartbeat_ms", f.HeartbeatMS, true)
	e.Str("code", f.Code, true)
	e.Str("message", f.Message, true)
	e.Close(top)
	return e.B
}

// decodeFrameFast decodes data into f when jsonwire can do it exactly as
// encoding/json would; false means: use encoding/json. Frames with after or
// members (sync and group requests, results) always take encoding/json.
func decodeFrameFast(data []byte, f *Frame) bool {
	d := jsonwire.NewDec(data)
	var n int64
	ok := d.Object(func(k []byte) bool {
		switch string(k) {
		case "type":
			return d.Str(&f.Type)
		case "id":
			return d.Str(&f.ID)
		case "token":
			return d.Str(&f.Token)
		case "to":
			return d.Str(&f.To)
		case "group":
			return d.Str(&f.Group)
		case "body":
			return d.Str(&f.Body)
		case "probe":
			return d.Bool(&f.Probe)
		case "traceparent":
			return d.Str(&f.Trace)
		case "msg_id":
			return d.Str(&f.MsgID)
		case "conv":
			return d.Str(&f.Conv)
		case "seq":
			return d.Uint(&f.Seq)
		case "from":
			return d.Str(&f.From)
		case "from_device":
			return d.Str(&f.FromDevice)
		case "ts":
			return d.Int(&f.TS)
		case "dup":
			return d.Bool(&f.Dup)
		case "sync":
			return d.Bool(&f.Sync)
		case "full":
			return d.Bool(&f.Full)
		case "count":
			if !d.Int(&n) {
				return false
			}
			f.Count = int(n)
			return true
		case "more":
			return d.Bool(&f.More)
		case "user":
			return d.Str(&f.User)
		case "device":
			return d.Str(&f.Device)
		case "gateway":
			return d.Str(&f.Gateway)
		case "heartbeat_ms":
			return d.Int(&f.HeartbeatMS)
		case "code":
			return d.Str(&f.Code)
		case "message":
			return d.Str(&f.Message)
		}
		return false
	})
	return ok && d.End()
}
