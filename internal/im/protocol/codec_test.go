package protocol_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/imwatch/imwatch/internal/im/protocol"
)

// codecSeeds are frames the wire carries, and strings that encoding/json escapes.
var codecSeeds = []string{
	`{"type":"send","id":"c1","to":"bob","body":"hello","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
	`{"type":"deliver","msg_id":"Zq8bHk2mN4pR7sT1vW3xY5","conv":"d=alice=bob","seq":42,"from":"alice","from_device":"laptop","body":"hi","ts":1764000000123}`,
	`{"type":"send_ack","id":"c1","msg_id":"M","conv":"d=a=b","seq":1,"ts":5,"dup":true}`,
	`{"type":"deliver_ack","msg_id":"M","conv":"d=a=b","seq":18446744073709551615}`,
	`{"type":"sync","id":"s","after":{"d=a=b":3},"full":true}`,
	`{"type":"group_add","id":"g","group":"team","members":["a","b"]}`,
	` { "type" : "ping" , "probe" : true , "count" : -3 } `,
	`{"type":"ping","body":"\u00e9\n<&>"}`,
	`{"Type":"ping"}`, `{"type":"ping","seq":1.0}`, `{"type":"ping","seq":-1}`, `{"type":"ping","ts":01}`,
	`{"type":"ping","probe":null}`, `{"type":"ping"}x`, `{"type":"ping",}`, `{"type":"ping","x":1}`,
	`{"type":"pïng","body":"é€𝄞"}`, "{\"type\":\"\xff\"}", `{"type":"ping","probe":truex}`, `{}`, `[]`, `null`,
}

// FuzzDecodeFrameFast checks the hand-written decoder against encoding/json:
// whatever it accepts, encoding/json decodes to the same frame.
func FuzzDecodeFrameFast(f *testing.F) {
	for _, s := range codecSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast protocol.Frame
		if !protocol.DecodeFrameFast(data, &fast) {
			return
		}
		var want protocol.Frame
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("fast decoder took %q, encoding/json says %v", data, err)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("%q: fast decoder %+v, encoding/json %+v", data, fast, want)
		}
	})
}

// FuzzAppendFrame checks that AppendFrame writes what json.Marshal writes,
// and that what it writes decodes back to the same frame.
func FuzzAppendFrame(f *testing.F) {
	f.Add("deliver", "M1", "hello <b>&amp;</b>\u2028\x01\"\\", "d=a=b", uint64(7), int64(-5), true, "k", uint64(3), "m")
	f.Add("send", "", "\xff\xfe é", "", uint64(0), int64(0), false, "", uint64(0), "")
	f.Fuzz(func(t *testing.T, typ, id, body, conv string, seq uint64, ts int64, flag bool, afterKey string, afterSeq uint64, member string) {
		fr := protocol.Frame{Type: typ, ID: id, Token: id, To: member, Group: member, Body: body, Probe: flag, Trace: id,
			MsgID: id, Conv: conv, Seq: seq, From: conv, FromDevice: body, TS: ts, Dup: flag, Sync: !flag, Full: flag,
			Count: int(ts), More: !flag, User: typ, Device: body, Gateway: conv, HeartbeatMS: ts, Code: typ, Message: body}
		if afterKey != "" {
			fr.After = map[string]uint64{afterKey: afterSeq, afterKey + "z": seq, "a" + afterKey: 1}
		}
		if member != "" {
			fr.Members = []string{member, body}
		}
		want, err := json.Marshal(fr)
		if err != nil {
			t.Fatal(err)
		}
		got := protocol.AppendFrame(nil, &fr)
		if !bytes.Equal(got, want) {
			t.Fatalf("AppendFrame\n got %s\nwant %s", got, want)
		}
		var back protocol.Frame
		if protocol.DecodeFrameFast(got, &back) {
			var ref protocol.Frame
			_ = json.Unmarshal(got, &ref)
			if !reflect.DeepEqual(back, ref) {
				t.Fatalf("decoded back %+v, encoding/json %+v", back, ref)
			}
		}
	})
}

// TestFastDecodeTakesTheHotFrames makes sure the frames of the message path
// do not fall back to encoding/json, which would make the codec pointless.
func TestFastDecodeTakesTheHotFrames(t *testing.T) {
	for _, s := range codecSeeds[:4] {
		var f protocol.Frame
		if !protocol.DecodeFrameFast([]byte(s), &f) {
			t.Errorf("%s: fell back to encoding/json", s)
		}
	}
	for _, s := range codecSeeds[4:6] {
		var f protocol.Frame
		if protocol.DecodeFrameFast([]byte(s), &f) {
			t.Errorf("%s: took a frame with a map or list", s)
		}
	}
}

func BenchmarkDecodeClientFrame(b *testing.B) {
	data := []byte(codecSeeds[0])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := protocol.DecodeClientFrame(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendFrame(b *testing.B) {
	var f protocol.Frame
	_ = json.Unmarshal([]byte(codecSeeds[1]), &f)
	b.ReportAllocs()
	buf := make([]byte, 0, 512)
	for b.Loop() {
		buf = protocol.AppendFrame(buf[:0], &f)
	}
}

// BenchmarkAppendFrameNew: a frame into a new buffer, as the gateway sends
// each frame (AppendFrame sizes it once).
func BenchmarkAppendFrameNew(b *testing.B) {
	var f protocol.Frame
	_ = json.Unmarshal([]byte(codecSeeds[1]), &f)
	b.ReportAllocs()
	for b.Loop() {
		sink = protocol.AppendFrame(nil, &f)
	}
}

var sink []byte

// The same two with encoding/json, as the peer of the two above.
func BenchmarkDecodeClientFrameJSON(b *testing.B) {
	data := []byte(codecSeeds[0])
	b.ReportAllocs()
	for b.Loop() {
		var f protocol.Frame
		if err := json.Unmarshal(data, &f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendFrameJSON(b *testing.B) {
	var f protocol.Frame
	_ = json.Unmarshal([]byte(codecSeeds[1]), &f)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(f); err != nil {
			b.Fatal(err)
		}
	}
}
