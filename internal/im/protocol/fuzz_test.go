package protocol_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/protocol"
)

var clientTypes = map[string]bool{
	protocol.TypeAuth: true, protocol.TypePing: true, protocol.TypeSend: true, protocol.TypeDeliverAck: true,
	protocol.TypeSync: true, protocol.TypeGroupCreate: true, protocol.TypeGroupAdd: true, protocol.TypeGroupRemove: true,
}

// decodeCodes are the codes DecodeClientFrame may return.
var decodeCodes = map[string]bool{
	protocol.CodeFrameTooLarge: true, protocol.CodeBadFrame: true, protocol.CodeUnknownType: true,
	protocol.CodeBadToken: true, protocol.CodeBadRequest: true,
}

// normalize makes the frames JSON cannot tell apart equal: an empty list or
// map is omitted on the wire and decodes as nil.
func normalize(f protocol.Frame) protocol.Frame {
	if len(f.After) == 0 {
		f.After = nil
	}
	if len(f.Members) == 0 {
		f.Members = nil
	}
	return f
}

func FuzzDecodeClientFrame(f *testing.F) {
	for _, tc := range decodeCases() {
		f.Add([]byte(tc.in))
	}
	for _, s := range []string{
		`{"type":"send","id":"c1","to":"bob","body":"\u003c\u0000\ud800 é","traceparent":"00-x"}`,
		`{"TYPE":"Ping"}`,
		`{"type":"ping","type":"auth","token":"t"}`,
		`{"type":"sync","id":"s","after":{}}`,
		`{"type":"group_create","id":"g","group":"t","members":[]}`,
		`{"type":"send","id":"c","to":"b","body":"` + strings.Repeat("<", protocol.MaxBodyBytes) + `"}`,
		"{\"type\":\"send\",\"id\":\"c\",\"to\":\"b\",\"body\":\"\xff\xfe\"}",
		`{"type":"deliver_ack","msg_id":"m","seq":18446744073709551615}`,
		`{"type":"deliver_ack","msg_id":"m","seq":18446744073709551616}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := protocol.DecodeClientFrame(data)
		if err != nil {
			var perr *protocol.Error
			if !errors.As(err, &perr) {
				t.Fatalf("error %v is a %T, not a *protocol.Error", err, err)
			}
			if !decodeCodes[perr.Code] {
				t.Fatalf("unexpected code %q", perr.Code)
			}
			if (perr.Code == protocol.CodeFrameTooLarge) != (len(data) > protocol.MaxFrameBytes) {
				t.Fatalf("code %s for a frame of %d bytes", perr.Code, len(data))
			}
			// What a refused frame echoes is only its client type and a valid id.
			if !reflect.DeepEqual(got, protocol.Frame{Type: got.Type, ID: got.ID}) {
				t.Fatalf("refused frame carries more than type and id: %+v", got)
			}
			if got.Type != "" && !clientTypes[got.Type] {
				t.Fatalf("refused frame echoes type %q", got.Type)
			}
			if got.ID != "" && !protocol.ValidID(got.ID) {
				t.Fatalf("refused frame echoes invalid id %q", got.ID)
			}
			return
		}
		checkValidClientFrame(t, got)
		enc, err := json.Marshal(got)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", got, err)
		}
		var again protocol.Frame
		if len(enc) <= protocol.MaxFrameBytes {
			// JSON escaping can grow a frame over the limit (< is \u003c);
			// within it, the re-encoded frame must be accepted again.
			again, err = protocol.DecodeClientFrame(enc)
		} else {
			err = json.Unmarshal(enc, &again)
		}
		if err != nil {
			t.Fatalf("re-encoded frame %s refused: %v", enc, err)
		}
		if !reflect.DeepEqual(normalize(again), normalize(got)) {
			t.Fatalf("round trip changed the frame\nfirst  %+v\nsecond %+v", got, again)
		}
	})
}

// checkValidClientFrame asserts what DecodeClientFrame promises of a frame it accepts.
func checkValidClientFrame(t *testing.T, f protocol.Frame) {
	t.Helper()
	if !clientTypes[f.Type] {
		t.Fatalf("accepted frame of type %q", f.Type)
	}
	if f.ID != "" && !protocol.ValidID(f.ID) {
		t.Fatalf("accepted invalid id %q", f.ID)
	}
	switch f.Type {
	case protocol.TypeAuth:
		if f.Token == "" {
			t.Fatal("accepted auth without token")
		}
	case protocol.TypeSend:
		if f.ID == "" || (f.To == "") == (f.Group == "") || len(f.Body) > protocol.MaxBodyBytes || len(f.Trace) > 128 {
			t.Fatalf("accepted invalid send %+v", f)
		}
		if (f.To != "" && !protocol.ValidUser(f.To)) || (f.Group != "" && !protocol.ValidUser(f.Group)) {
			t.Fatalf("accepted send to invalid id %+v", f)
		}
	case protocol.TypeDeliverAck:
		if !protocol.ValidID(f.MsgID) {
			t.Fatalf("accepted deliver_ack with msg_id %q", f.MsgID)
		}
	case protocol.TypeSync:
		if len(f.After) > protocol.MaxSyncConvs {
			t.Fatalf("accepted sync of %d conversations", len(f.After))
		}
		for c := range f.After {
			if _, err := protocol.ParseConv(c); err != nil {
				t.Fatalf("accepted sync of conversation %q", c)
			}
		}
	case protocol.TypeGroupCreate, protocol.TypeGroupAdd, protocol.TypeGroupRemove:
		if f.ID == "" || !protocol.ValidUser(f.Group) || len(f.Members) > protocol.MaxGroupMembers {
			t.Fatalf("accepted invalid %s %+v", f.Type, f)
		}
		if f.Type != protocol.TypeGroupCreate && len(f.Members) == 0 {
			t.Fatalf("accepted %s without members", f.Type)
		}
		for _, m := range f.Members {
			if !protocol.ValidUser(m) {
				t.Fatalf("accepted member %q", m)
			}
		}
	}
}

func FuzzDecodeServerFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"auth_ok","user":"alice","device":"phone","gateway":"gw-1","heartbeat_ms":20000}`,
		`{"type":"pong"}`,
		`{"type":"send_ack","id":"c1","msg_id":"M","conv":"d=a=b","seq":1,"ts":1700000000000,"dup":true}`,
		`{"type":"deliver","msg_id":"M","conv":"g=t","seq":3,"from":"bob","from_device":"pc","group":"t","body":"x","probe":true,"traceparent":"00-a-b-01","ts":17,"sync":true}`,
		`{"type":"sync_done","id":"s1","count":1000,"more":true}`,
		`{"type":"result","id":"g1","group":"t","members":["a","b"]}`,
		`{"type":"error","id":"c1","code":"not_member","message":"you are not a member"}`,
		`{"type":"error","code":"rate_limited","message":"over 200 frames/s"}`,
		`{"type":"sync","after":{"g=t":1,"d=a=b":2}}`,
		`{}`, `[]`, `null`, `{"type":1}`, `{"type":"x"} `, `{"type":"x"}}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := protocol.DecodeServerFrame(data)
		if err != nil {
			var perr *protocol.Error
			if !errors.As(err, &perr) {
				t.Fatalf("error %v is a %T, not a *protocol.Error", err, err)
			}
			if perr.Code != protocol.CodeBadFrame && perr.Code != protocol.CodeFrameTooLarge {
				t.Fatalf("unexpected code %q", perr.Code)
			}
			if (perr.Code == protocol.CodeFrameTooLarge) != (len(data) > protocol.MaxServerFrameBytes) {
				t.Fatalf("code %s for a frame of %d bytes", perr.Code, len(data))
			}
			return
		}
		if got.Type == "" {
			t.Fatal("accepted a frame without type")
		}
		enc, err := json.Marshal(got)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", got, err)
		}
		if len(enc) > protocol.MaxServerFrameBytes {
			return
		}
		again, err := protocol.DecodeServerFrame(enc)
		if err != nil {
			t.Fatalf("re-encoded frame %s refused: %v", enc, err)
		}
		if !reflect.DeepEqual(normalize(again), normalize(got)) {
			t.Fatalf("round trip changed the frame\nfirst  %+v\nsecond %+v", got, again)
		}
	})
}

func FuzzVerifyToken(f *testing.F) {
	far := time.Unix(4_102_444_800, 0).Unix() // 2100
	seedTokens := []string{
		sign(f, secret, protocol.Claims{User: "alice", Device: "phone", Expiry: far}),
		sign(f, secret, protocol.Claims{User: "bob", Device: "d", Expiry: now.Unix() - 1}),
		sign(f, otherSecret, protocol.Claims{User: "alice", Device: "phone", Expiry: far}),
		rawToken(secret, `{"u":"a","d":"b","exp":4102444800,"x":1}`),
		rawToken(secret, `not json`),
		"", ".", "a.b", "abc", strings.Repeat("A", 1025),
	}
	// Found by this fuzz test: the base64 decoder skips line breaks, so a
	// signature with one inside verified.
	seedTokens = append(seedTokens, seedTokens[0][:len(seedTokens[0])-12]+"\n"+seedTokens[0][len(seedTokens[0])-12:])
	for _, tok := range seedTokens {
		f.Add(tok, "alice", "phone", far)
	}
	f.Add("x.y", "", "phone", int64(0))
	f.Add("x.y", "a b", "c", int64(-1))
	f.Add("x.y", strings.Repeat("u", 64), strings.Repeat("d", 65), int64(1<<63-1))
	f.Fuzz(func(t *testing.T, token, user, device string, exp int64) {
		// Any token: accepted only if it is, byte for byte, what SignToken
		// makes of its claims with that secret; never under two secrets.
		accepted := 0
		for _, key := range [][]byte{secret, otherSecret} {
			c, err := protocol.VerifyToken(key, token, now)
			if err != nil {
				if !errors.Is(err, protocol.ErrTokenMalformed) && !errors.Is(err, protocol.ErrTokenSignature) && !errors.Is(err, protocol.ErrTokenExpired) {
					t.Fatalf("unexpected error %v", err)
				}
				if c != (protocol.Claims{}) {
					t.Fatalf("claims %+v with error %v", c, err)
				}
				continue
			}
			accepted++
			if !protocol.ValidUser(c.User) || !protocol.ValidUser(c.Device) || c.Expiry <= now.Unix() {
				t.Fatalf("accepted claims %+v", c)
			}
			p, _, _ := strings.Cut(token, ".")
			if want := p + "." + base64.RawURLEncoding.EncodeToString(hmacSHA256(key, p)); token != want {
				t.Fatalf("accepted %q, which is not the signer's spelling %q", token, want)
			}
		}
		if accepted > 1 {
			t.Fatalf("token %q verifies under two secrets", token)
		}

		// Claims: signed then verified give the same claims back, or the
		// expiry error; SignToken refuses what VerifyToken would.
		claims := protocol.Claims{User: user, Device: device, Expiry: exp}
		tok, err := protocol.SignToken(secret, claims)
		if err != nil {
			if protocol.ValidUser(user) && protocol.ValidUser(device) {
				t.Fatalf("SignToken refused valid claims %+v: %v", claims, err)
			}
			return
		}
		got, err := protocol.VerifyToken(secret, tok, now)
		switch {
		case exp <= now.Unix():
			if !errors.Is(err, protocol.ErrTokenExpired) {
				t.Fatalf("token with exp %d at %d: %v, want ErrTokenExpired", exp, now.Unix(), err)
			}
		case err != nil:
			t.Fatalf("VerifyToken(SignToken(%+v)): %v", claims, err)
		case got != claims:
			t.Fatalf("claims %+v came back as %+v", claims, got)
		}
		if _, err := protocol.VerifyToken(otherSecret, tok, now); !errors.Is(err, protocol.ErrTokenSignature) {
			t.Fatalf("token of one secret under another: %v, want ErrTokenSignature", err)
		}
	})
}
