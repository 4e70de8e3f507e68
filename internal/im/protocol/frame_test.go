package protocol_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/imwatch/imwatch/internal/im/protocol"
)

type decodeCase struct {
	name string
	in   string
	want protocol.Frame // the frame on success, or what the error still echoes
	code string         // the error code, "" for success
}

func decodeCases() []decodeCase {
	id64 := strings.Repeat("i", protocol.MaxIDLen)
	id65 := id64 + "i"
	user64 := strings.Repeat("u", 64)
	body := strings.Repeat("b", protocol.MaxBodyBytes)
	trace := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	manyConvs := func(n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprintf(`"g=g%d":%d`, i, i)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	manyMembers := func(n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprintf(`"u%d"`, i)
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	padded := func(frame string, size int) string { return frame + strings.Repeat(" ", size-len(frame)) }

	return []decodeCase{
		// Every client frame type, valid.
		{name: "auth", in: `{"type":"auth","token":"p.s"}`, want: protocol.Frame{Type: "auth", Token: "p.s"}},
		{name: "ping", in: `{"type":"ping"}`, want: protocol.Frame{Type: "ping"}},
		{name: "ping with id", in: `{"type":"ping","id":"p1"}`, want: protocol.Frame{Type: "ping", ID: "p1"}},
		{name: "send to user", in: `{"type":"send","id":"c1","to":"bob","body":"hi","probe":true,"traceparent":"` + trace + `"}`,
			want: protocol.Frame{Type: "send", ID: "c1", To: "bob", Body: "hi", Probe: true, Trace: trace}},
		{name: "send to group", in: `{"type":"send","id":"c2","group":"team-1","body":""}`,
			want: protocol.Frame{Type: "send", ID: "c2", Group: "team-1"}},
		{name: "send body at the limit", in: `{"type":"send","id":"c3","to":"bob","body":"` + body + `"}`,
			want: protocol.Frame{Type: "send", ID: "c3", To: "bob", Body: body}},
		{name: "send traceparent of 128 bytes", in: `{"type":"send","id":"c4","to":"bob","traceparent":"` + strings.Repeat("t", 128) + `"}`,
			want: protocol.Frame{Type: "send", ID: "c4", To: "bob", Trace: strings.Repeat("t", 128)}},
		{name: "send to self", in: `{"type":"send","id":"c5","to":"alice"}`, want: protocol.Frame{Type: "send", ID: "c5", To: "alice"}},
		{name: "id of 64 printable characters", in: `{"type":"send","id":"` + id64 + `","to":"bob"}`,
			want: protocol.Frame{Type: "send", ID: id64, To: "bob"}},
		{name: "id with punctuation", in: `{"type":"send","id":"a/b:c.d~!","to":"bob"}`,
			want: protocol.Frame{Type: "send", ID: "a/b:c.d~!", To: "bob"}},
		{name: "user id of 64 characters", in: `{"type":"send","id":"c6","to":"` + user64 + `"}`,
			want: protocol.Frame{Type: "send", ID: "c6", To: user64}},
		{name: "deliver_ack", in: `{"type":"deliver_ack","msg_id":"M1","conv":"d=alice=bob","seq":7}`,
			want: protocol.Frame{Type: "deliver_ack", MsgID: "M1", Conv: "d=alice=bob", Seq: 7}},
		{name: "sync", in: `{"type":"sync","id":"s1","after":{"d=alice=bob":4,"g=team":0},"full":true}`,
			want: protocol.Frame{Type: "sync", ID: "s1", After: map[string]uint64{"d=alice=bob": 4, "g=team": 0}, Full: true}},
		{name: "sync of nothing", in: `{"type":"sync","id":"s2"}`, want: protocol.Frame{Type: "sync", ID: "s2"}},
		{name: "sync of 1000 conversations", in: `{"type":"sync","id":"s3","after":` + manyConvs(protocol.MaxSyncConvs) + `}`,
			want: protocol.Frame{Type: "sync", ID: "s3", After: func() map[string]uint64 {
				m := map[string]uint64{}
				for i := 0; i < protocol.MaxSyncConvs; i++ {
					m[fmt.Sprintf("g=g%d", i)] = uint64(i)
				}
				return m
			}()}},
		{name: "group_create alone", in: `{"type":"group_create","id":"g1","group":"team"}`,
			want: protocol.Frame{Type: "group_create", ID: "g1", Group: "team"}},
		{name: "group_create with members", in: `{"type":"group_create","id":"g2","group":"team","members":["bob","carol"]}`,
			want: protocol.Frame{Type: "group_create", ID: "g2", Group: "team", Members: []string{"bob", "carol"}}},
		{name: "group_add", in: `{"type":"group_add","id":"g3","group":"team","members":["dave"]}`,
			want: protocol.Frame{Type: "group_add", ID: "g3", Group: "team", Members: []string{"dave"}}},
		{name: "group_remove", in: `{"type":"group_remove","id":"g4","group":"team","members":["dave"]}`,
			want: protocol.Frame{Type: "group_remove", ID: "g4", Group: "team", Members: []string{"dave"}}},
		{name: "500 members", in: `{"type":"group_add","id":"g5","group":"team","members":` + manyMembers(protocol.MaxGroupMembers) + `}`,
			want: protocol.Frame{Type: "group_add", ID: "g5", Group: "team", Members: func() []string {
				var m []string
				for i := 0; i < protocol.MaxGroupMembers; i++ {
					m = append(m, fmt.Sprintf("u%d", i))
				}
				return m
			}()}},
		{name: "white space around", in: " \t\r\n{\"type\":\"ping\"}\n ", want: protocol.Frame{Type: "ping"}},
		{name: "unknown fields are ignored", in: `{"type":"ping","x":{"y":[1,2]}}`, want: protocol.Frame{Type: "ping"}},
		{name: "frame of exactly MaxFrameBytes", in: padded(`{"type":"ping"}`, protocol.MaxFrameBytes), want: protocol.Frame{Type: "ping"}},

		// frame_too_large
		{name: "one byte over MaxFrameBytes", in: padded(`{"type":"ping"}`, protocol.MaxFrameBytes+1), code: protocol.CodeFrameTooLarge},

		// bad_frame
		{name: "empty", in: ``, code: protocol.CodeBadFrame},
		{name: "only white space", in: "  \n", code: protocol.CodeBadFrame},
		{name: "truncated object", in: `{"type":"ping"`, code: protocol.CodeBadFrame},
		{name: "not JSON", in: `ping`, code: protocol.CodeBadFrame},
		{name: "array", in: `[{"type":"ping"}]`, code: protocol.CodeBadFrame},
		{name: "string", in: `"ping"`, code: protocol.CodeBadFrame},
		{name: "number", in: `42`, code: protocol.CodeBadFrame},
		{name: "null", in: `null`, code: protocol.CodeBadFrame},
		{name: "empty object", in: `{}`, code: protocol.CodeBadFrame},
		{name: "empty type", in: `{"type":"","id":"x1"}`, want: protocol.Frame{ID: "x1"}, code: protocol.CodeBadFrame},
		{name: "two objects", in: `{"type":"ping"}{"type":"ping"}`, code: protocol.CodeBadFrame},
		{name: "trailing garbage", in: `{"type":"ping"} x`, code: protocol.CodeBadFrame},
		{name: "trailing brace", in: `{"type":"ping"}}`, code: protocol.CodeBadFrame},
		{name: "trailing bracket", in: `{"type":"ping"}]`, code: protocol.CodeBadFrame},
		{name: "type of the wrong type", in: `{"type":5,"id":"x2"}`, want: protocol.Frame{ID: "x2"}, code: protocol.CodeBadFrame},
		{name: "field of the wrong type echoes type and id", in: `{"type":"send","id":"c7","to":7}`,
			want: protocol.Frame{Type: "send", ID: "c7"}, code: protocol.CodeBadFrame},
		{name: "negative seq", in: `{"type":"deliver_ack","msg_id":"M","seq":-1}`, want: protocol.Frame{Type: "deliver_ack"}, code: protocol.CodeBadFrame},
		{name: "fractional seq", in: `{"type":"deliver_ack","msg_id":"M","seq":1.5}`, want: protocol.Frame{Type: "deliver_ack"}, code: protocol.CodeBadFrame},
		{name: "members not a list", in: `{"type":"group_add","id":"g6","group":"t","members":"bob"}`,
			want: protocol.Frame{Type: "group_add", ID: "g6"}, code: protocol.CodeBadFrame},
		{name: "wrong type with an invalid id echoes no id", in: `{"type":"send","id":"a b","to":7}`,
			want: protocol.Frame{Type: "send"}, code: protocol.CodeBadFrame},

		// unknown_type
		{name: "unknown type", in: `{"type":"nope","id":"r1"}`, want: protocol.Frame{ID: "r1"}, code: protocol.CodeUnknownType},
		{name: "type is case-sensitive", in: `{"type":"PING"}`, code: protocol.CodeUnknownType},
		{name: "server frame type from a client", in: `{"type":"deliver","msg_id":"M"}`, code: protocol.CodeUnknownType},
		{name: "pong from a client", in: `{"type":"pong"}`, code: protocol.CodeUnknownType},
		{name: "unknown type with a long id echoes no id", in: `{"type":"nope","id":"` + id65 + `"}`, code: protocol.CodeUnknownType},

		// bad_token
		{name: "auth without token", in: `{"type":"auth"}`, want: protocol.Frame{Type: "auth"}, code: protocol.CodeBadToken},
		{name: "auth with empty token", in: `{"type":"auth","token":"","id":"a1"}`, want: protocol.Frame{Type: "auth", ID: "a1"}, code: protocol.CodeBadToken},

		// bad_request
		{name: "id over 64 bytes", in: `{"type":"ping","id":"` + id65 + `"}`, want: protocol.Frame{Type: "ping"}, code: protocol.CodeBadRequest},
		{name: "id with a space", in: `{"type":"send","id":"a b","to":"bob"}`, want: protocol.Frame{Type: "send"}, code: protocol.CodeBadRequest},
		{name: "id with a line break", in: `{"type":"send","id":"a\nb","to":"bob"}`, want: protocol.Frame{Type: "send"}, code: protocol.CodeBadRequest},
		{name: "id not ASCII", in: `{"type":"send","id":"é","to":"bob"}`, want: protocol.Frame{Type: "send"}, code: protocol.CodeBadRequest},
		{name: "send without id", in: `{"type":"send","to":"bob","body":"x"}`, want: protocol.Frame{Type: "send"}, code: protocol.CodeBadRequest},
		{name: "send to nobody", in: `{"type":"send","id":"c8","body":"x"}`, want: protocol.Frame{Type: "send", ID: "c8"}, code: protocol.CodeBadRequest},
		{name: "send to user and group", in: `{"type":"send","id":"c9","to":"bob","group":"team"}`, want: protocol.Frame{Type: "send", ID: "c9"}, code: protocol.CodeBadRequest},
		{name: "send to an invalid user", in: `{"type":"send","id":"c10","to":"bob smith"}`, want: protocol.Frame{Type: "send", ID: "c10"}, code: protocol.CodeBadRequest},
		{name: "send to a user id of 65", in: `{"type":"send","id":"c11","to":"` + user64 + `x"}`, want: protocol.Frame{Type: "send", ID: "c11"}, code: protocol.CodeBadRequest},
		{name: "send to an invalid group", in: `{"type":"send","id":"c12","group":"a.b"}`, want: protocol.Frame{Type: "send", ID: "c12"}, code: protocol.CodeBadRequest},
		{name: "send body over the limit", in: `{"type":"send","id":"c13","to":"bob","body":"` + body + `b"}`, want: protocol.Frame{Type: "send", ID: "c13"}, code: protocol.CodeBadRequest},
		{name: "deliver_ack traceparent over 128", in: `{"type":"deliver_ack","msg_id":"M","traceparent":"` + strings.Repeat("t", 129) + `"}`, want: protocol.Frame{Type: "deliver_ack"}, code: protocol.CodeBadRequest},
		{name: "deliver_ack with traceparent", in: `{"type":"deliver_ack","msg_id":"M","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
			want: protocol.Frame{Type: "deliver_ack", MsgID: "M", Trace: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
		{name: "send traceparent over 128", in: `{"type":"send","id":"c14","to":"bob","traceparent":"` + strings.Repeat("t", 129) + `"}`, want: protocol.Frame{Type: "send", ID: "c14"}, code: protocol.CodeBadRequest},
		{name: "deliver_ack without msg_id", in: `{"type":"deliver_ack","conv":"g=t","seq":1}`, want: protocol.Frame{Type: "deliver_ack"}, code: protocol.CodeBadRequest},
		{name: "deliver_ack msg_id over 64", in: `{"type":"deliver_ack","msg_id":"` + id65 + `"}`, want: protocol.Frame{Type: "deliver_ack"}, code: protocol.CodeBadRequest},
		{name: "sync of a bad conversation", in: `{"type":"sync","id":"s4","after":{"x=y":1}}`, want: protocol.Frame{Type: "sync", ID: "s4"}, code: protocol.CodeBadRequest},
		{name: "sync of an unsorted conversation", in: `{"type":"sync","id":"s5","after":{"d=bob=alice":1}}`, want: protocol.Frame{Type: "sync", ID: "s5"}, code: protocol.CodeBadRequest},
		{name: "sync of 1001 conversations", in: `{"type":"sync","id":"s6","after":` + manyConvs(protocol.MaxSyncConvs+1) + `}`, want: protocol.Frame{Type: "sync", ID: "s6"}, code: protocol.CodeBadRequest},
		{name: "group_create without id", in: `{"type":"group_create","group":"team"}`, want: protocol.Frame{Type: "group_create"}, code: protocol.CodeBadRequest},
		{name: "group_create without group", in: `{"type":"group_create","id":"g7"}`, want: protocol.Frame{Type: "group_create", ID: "g7"}, code: protocol.CodeBadRequest},
		{name: "group_create of an invalid group", in: `{"type":"group_create","id":"g8","group":"te am"}`, want: protocol.Frame{Type: "group_create", ID: "g8"}, code: protocol.CodeBadRequest},
		{name: "group_create with an invalid member", in: `{"type":"group_create","id":"g9","group":"team","members":["bob",""]}`, want: protocol.Frame{Type: "group_create", ID: "g9"}, code: protocol.CodeBadRequest},
		{name: "group_add of 501 members", in: `{"type":"group_add","id":"g10","group":"team","members":` + manyMembers(protocol.MaxGroupMembers+1) + `}`, want: protocol.Frame{Type: "group_add", ID: "g10"}, code: protocol.CodeBadRequest},
		{name: "group_add without members", in: `{"type":"group_add","id":"g11","group":"team"}`, want: protocol.Frame{Type: "group_add", ID: "g11"}, code: protocol.CodeBadRequest},
		{name: "group_remove without members", in: `{"type":"group_remove","id":"g12","group":"team","members":[]}`, want: protocol.Frame{Type: "group_remove", ID: "g12"}, code: protocol.CodeBadRequest},
	}
}

func TestDecodeClientFrame(t *testing.T) {
	for _, tc := range decodeCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.DecodeClientFrame([]byte(tc.in))
			if tc.code == "" {
				if err != nil {
					t.Fatalf("DecodeClientFrame: %v", err)
				}
			} else {
				var perr *protocol.Error
				if !errors.As(err, &perr) {
					t.Fatalf("error %v (%T), want a *protocol.Error with code %s", err, err, tc.code)
				}
				if perr.Code != tc.code {
					t.Fatalf("code %q (%s), want %q", perr.Code, perr.Message, tc.code)
				}
				if perr.Message == "" {
					t.Fatalf("error %s has no message", perr.Code)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("frame\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestDecodeClientFrameCoversEveryType fails when a client frame type is added
// without a case above.
func TestDecodeClientFrameCoversEveryType(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range decodeCases() {
		if tc.code == "" {
			seen[tc.want.Type] = true
		}
	}
	for _, typ := range []string{protocol.TypeAuth, protocol.TypePing, protocol.TypeSend, protocol.TypeDeliverAck,
		protocol.TypeSync, protocol.TypeGroupCreate, protocol.TypeGroupAdd, protocol.TypeGroupRemove} {
		if !seen[typ] {
			t.Errorf("no valid case for %s", typ)
		}
	}
}

func TestDecodeServerFrame(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want protocol.Frame
		code string
	}{
		{name: "auth_ok", in: `{"type":"auth_ok","user":"alice","device":"phone","gateway":"gw-1","heartbeat_ms":20000}`,
			want: protocol.Frame{Type: "auth_ok", User: "alice", Device: "phone", Gateway: "gw-1", HeartbeatMS: 20000}},
		{name: "deliver", in: `{"type":"deliver","msg_id":"M","conv":"g=t","seq":3,"from":"bob","from_device":"pc","group":"t","body":"x","ts":17,"sync":true}`,
			want: protocol.Frame{Type: "deliver", MsgID: "M", Conv: "g=t", Seq: 3, From: "bob", FromDevice: "pc", Group: "t", Body: "x", TS: 17, Sync: true}},
		{name: "error", in: `{"type":"error","id":"c1","code":"not_member","message":"no"}`,
			want: protocol.Frame{Type: "error", ID: "c1", Code: "not_member", Message: "no"}},
		{name: "unknown type is left to the caller", in: `{"type":"future"}`, want: protocol.Frame{Type: "future"}},
		{name: "no type", in: `{"id":"x"}`, code: protocol.CodeBadFrame},
		{name: "not JSON", in: `<html>`, code: protocol.CodeBadFrame},
		{name: "trailing data", in: `{"type":"pong"} {}`, code: protocol.CodeBadFrame},
		{name: "over the limit", in: `{"type":"pong"}` + strings.Repeat(" ", protocol.MaxServerFrameBytes), code: protocol.CodeFrameTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.DecodeServerFrame([]byte(tc.in))
			if tc.code != "" {
				var perr *protocol.Error
				if !errors.As(err, &perr) || perr.Code != tc.code {
					t.Fatalf("error %v, want code %s", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeServerFrame: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("frame\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestLargestDeliverFrameDecodes: the deliver of the largest body a client
// can send, in the characters JSON escapes worst, still fits what a client
// accepts. '<' is one byte in the send and six (\u003c) in the deliver.
func TestLargestDeliverFrameDecodes(t *testing.T) {
	for _, tc := range []struct{ body, wire string }{
		{strings.Repeat("<", protocol.MaxBodyBytes), strings.Repeat("<", protocol.MaxBodyBytes)},
		{strings.Repeat("&", protocol.MaxBodyBytes), strings.Repeat("&", protocol.MaxBodyBytes)},
		{strings.Repeat("\u2028", protocol.MaxBodyBytes/3), strings.Repeat("\u2028", protocol.MaxBodyBytes/3)},
		{strings.Repeat("\x01", 5000), strings.Repeat(`\u0001`, 5000)}, // escaped in the send too: what fits
	} {
		body := tc.body
		send := fmt.Sprintf(`{"type":"send","id":"%s","group":"%s","body":"%s","traceparent":"%s"}`,
			strings.Repeat("i", 64), strings.Repeat("g", 64), tc.wire, strings.Repeat("<", 128))
		in, err := protocol.DecodeClientFrame([]byte(send))
		if err != nil {
			t.Fatalf("%.8q: the send itself is refused: %v", body, err)
		}
		deliver := protocol.Frame{Type: protocol.TypeDeliver, MsgID: strings.Repeat("m", 64), Conv: protocol.GroupConv(in.Group),
			Seq: 1<<64 - 1, From: strings.Repeat("f", 64), FromDevice: strings.Repeat("d", 64), Group: in.Group,
			Body: in.Body, Probe: true, Trace: in.Trace, TS: 1<<63 - 1, Sync: true}
		data := []byte(mustJSON(t, deliver))
		got, err := protocol.DecodeServerFrame(data)
		if err != nil {
			t.Fatalf("%.8q: deliver of %d bytes: %v", body, len(data), err)
		}
		if got.Body != body {
			t.Fatalf("%.8q: body changed", body)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestErrorFrame(t *testing.T) {
	f := protocol.ErrorFrame("c1", protocol.Errorf(protocol.CodeNotMember, "not in %s", "team"))
	want := protocol.Frame{Type: protocol.TypeError, ID: "c1", Code: protocol.CodeNotMember, Message: "not in team"}
	if !reflect.DeepEqual(f, want) {
		t.Fatalf("got %+v, want %+v", f, want)
	}
	if got := mustJSON(t, f); got != `{"type":"error","id":"c1","code":"not_member","message":"not in team"}` {
		t.Fatalf("wire form %s", got)
	}
	if s := protocol.Errorf(protocol.CodeInternal, "x").Error(); s != "internal: x" {
		t.Fatalf("Error() = %q", s)
	}
}

func TestValidUser(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"alice", true}, {"A-Z_09", true}, {"a", true}, {strings.Repeat("x", 64), true},
		{"", false}, {strings.Repeat("x", 65), false}, {"a b", false}, {"a.b", false}, {"a=b", false},
		{"a*", false}, {"a>", false}, {"é", false}, {"alice\n", false}, {"\nalice", false},
	}
	for _, tc := range tests {
		if got := protocol.ValidUser(tc.in); got != tc.want {
			t.Errorf("ValidUser(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"1", true}, {"abc-DEF_123", true}, {"a/b.c:d~!{}", true}, {strings.Repeat("x", 64), true},
		{"", false}, {strings.Repeat("x", 65), false}, {"a b", false}, {" a", false}, {"a\r", false},
		{"a\tb", false}, {"\x00", false}, {"\x7f", false}, {"é", false},
	}
	for _, tc := range tests {
		if got := protocol.ValidID(tc.in); got != tc.want {
			t.Errorf("ValidID(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseConv(t *testing.T) {
	tests := []struct {
		in   string
		want protocol.Conv
		ok   bool
	}{
		{"d=alice=bob", protocol.Conv{Users: [2]string{"alice", "bob"}}, true},
		{"d=alice=alice", protocol.Conv{Users: [2]string{"alice", "alice"}}, true},
		{"d=B=a", protocol.Conv{Users: [2]string{"B", "a"}}, true}, // byte order: upper case sorts first
		{"g=team", protocol.Conv{Group: "team"}, true},
		{"g=" + strings.Repeat("g", 64), protocol.Conv{Group: strings.Repeat("g", 64)}, true},
		{"", protocol.Conv{}, false},
		{"d=bob=alice", protocol.Conv{}, false},
		{"d=a=B", protocol.Conv{}, false},
		{"d=alice", protocol.Conv{}, false},
		{"d=alice=", protocol.Conv{}, false},
		{"d==bob", protocol.Conv{}, false},
		{"d=a=b=c", protocol.Conv{}, false},
		{"g=", protocol.Conv{}, false},
		{"g=a=b", protocol.Conv{}, false},
		{"g=a b", protocol.Conv{}, false},
		{"g=" + strings.Repeat("g", 65), protocol.Conv{}, false},
		{"x=team", protocol.Conv{}, false},
		{"G=team", protocol.Conv{}, false},
		{"team", protocol.Conv{}, false},
	}
	for _, tc := range tests {
		got, err := protocol.ParseConv(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("ParseConv(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if err != nil && !errors.Is(err, protocol.ErrBadConv) {
			t.Errorf("ParseConv(%q) error %v, want ErrBadConv", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("ParseConv(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestDirectAndGroupConv(t *testing.T) {
	tests := []struct {
		a, b string
		want string
	}{
		{"alice", "bob", "d=alice=bob"},
		{"bob", "alice", "d=alice=bob"},
		{"alice", "alice", "d=alice=alice"},
		{"a", "B", "d=B=a"},
		{"u-1", "u_1", "d=u-1=u_1"},
	}
	for _, tc := range tests {
		got := protocol.DirectConv(tc.a, tc.b)
		if got != tc.want {
			t.Errorf("DirectConv(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
		c, err := protocol.ParseConv(got)
		if err != nil {
			t.Errorf("ParseConv(DirectConv(%q, %q)): %v", tc.a, tc.b, err)
			continue
		}
		if c.Group != "" || !(c.Users == [2]string{tc.a, tc.b} || c.Users == [2]string{tc.b, tc.a}) {
			t.Errorf("ParseConv(%q) = %+v", got, c)
		}
	}
	if got := protocol.GroupConv("team"); got != "g=team" {
		t.Errorf("GroupConv = %q", got)
	}
	if c, err := protocol.ParseConv(protocol.GroupConv("team")); err != nil || c.Group != "team" {
		t.Errorf("ParseConv(GroupConv) = %+v, %v", c, err)
	}
}
