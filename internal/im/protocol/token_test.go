package protocol_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/protocol"
)

var (
	secret      = []byte("0123456789abcdef-test-secret")
	otherSecret = []byte("fedcba9876543210-other-secret")
	now         = time.Unix(1_700_000_000, 0)
)

func sign(t testing.TB, key []byte, c protocol.Claims) string {
	t.Helper()
	tok, err := protocol.SignToken(key, c)
	if err != nil {
		t.Fatalf("SignToken(%+v): %v", c, err)
	}
	return tok
}

// rawToken makes payload.signature by hand, signed correctly with key.
func rawToken(key []byte, payload string) string {
	p := base64.RawURLEncoding.EncodeToString([]byte(payload))
	return p + "." + base64.RawURLEncoding.EncodeToString(hmacSHA256(key, p))
}

func TestVerifyToken(t *testing.T) {
	good := protocol.Claims{User: "alice", Device: "phone", Expiry: now.Add(time.Hour).Unix()}
	goodTok := sign(t, secret, good)
	payload, sig, _ := strings.Cut(goodTok, ".")
	bobPayload := base64.RawURLEncoding.EncodeToString([]byte(`{"u":"bob","d":"phone","exp":` + jsonInt(good.Expiry) + `}`))
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	// The last character of a 32-byte MAC carries 2 padding bits: one with
	// them set decodes to the same MAC unless decoding is strict.
	lastVal := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", sig[len(sig)-1])
	paddedSig := sig[:len(sig)-1] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[lastVal|1])

	tests := []struct {
		name  string
		key   []byte
		token string
		at    time.Time
		want  protocol.Claims
		err   error
	}{
		{name: "good", key: secret, token: goodTok, at: now, want: good},
		{name: "good one second before expiry", key: secret, token: goodTok, at: time.Unix(good.Expiry-1, 0), want: good},
		{name: "expired at expiry", key: secret, token: goodTok, at: time.Unix(good.Expiry, 0), err: protocol.ErrTokenExpired},
		{name: "expired", key: secret, token: sign(t, secret, protocol.Claims{User: "a", Device: "b", Expiry: now.Add(-time.Second).Unix()}), at: now, err: protocol.ErrTokenExpired},
		{name: "no expiry is expired", key: secret, token: rawToken(secret, `{"u":"a","d":"b"}`), at: now, err: protocol.ErrTokenExpired},
		{name: "other secret", key: otherSecret, token: goodTok, at: now, err: protocol.ErrTokenSignature},
		{name: "signed with other secret", key: secret, token: sign(t, otherSecret, good), at: now, err: protocol.ErrTokenSignature},
		{name: "forged payload, original signature", key: secret, token: bobPayload + "." + sig, at: now, err: protocol.ErrTokenSignature},
		{name: "signature changed", key: secret, token: payload + "." + flip(sig, 0), at: now, err: protocol.ErrTokenSignature},
		{name: "payload changed", key: secret, token: flip(payload, 3) + "." + sig, at: now, err: protocol.ErrTokenSignature},
		{name: "signature truncated", key: secret, token: payload + "." + sig[:len(sig)-3], at: now, err: protocol.ErrTokenSignature},
		{name: "signature with padding bits set", key: secret, token: payload + "." + paddedSig, at: now, err: protocol.ErrTokenMalformed},
		{name: "signature with a line break", key: secret, token: payload + "." + sig[:20] + "\n" + sig[20:], at: now, err: protocol.ErrTokenMalformed},
		{name: "signature with a carriage return", key: secret, token: payload + "." + sig + "\r", at: now, err: protocol.ErrTokenMalformed},
		{name: "expired and forged is a bad signature", key: secret, token: bobPayload + "." + sig, at: time.Unix(good.Expiry+10, 0), err: protocol.ErrTokenSignature},
		{name: "empty", key: secret, token: "", at: now, err: protocol.ErrTokenMalformed},
		{name: "no dot", key: secret, token: payload + sig, at: now, err: protocol.ErrTokenMalformed},
		{name: "only a dot", key: secret, token: ".", at: now, err: protocol.ErrTokenMalformed},
		{name: "no signature", key: secret, token: payload + ".", at: now, err: protocol.ErrTokenMalformed},
		{name: "no payload", key: secret, token: "." + sig, at: now, err: protocol.ErrTokenMalformed},
		{name: "three parts", key: secret, token: goodTok + ".x", at: now, err: protocol.ErrTokenMalformed},
		{name: "signature not base64url", key: secret, token: payload + "." + strings.Repeat("+", 43), at: now, err: protocol.ErrTokenMalformed},
		{name: "padded base64", key: secret, token: payload + "." + sig + "=", at: now, err: protocol.ErrTokenMalformed},
		{name: "too long", key: secret, token: goodTok + strings.Repeat("A", 1025-len(goodTok)), at: now, err: protocol.ErrTokenMalformed},
		{name: "signed payload not base64", key: secret, token: "!!!." + base64.RawURLEncoding.EncodeToString(hmacSHA256(secret, "!!!")), at: now, err: protocol.ErrTokenMalformed},
		{name: "signed payload not JSON", key: secret, token: rawToken(secret, `hello`), at: now, err: protocol.ErrTokenMalformed},
		{name: "signed payload with an invalid user", key: secret, token: rawToken(secret, `{"u":"a b","d":"x","exp":9999999999}`), at: now, err: protocol.ErrTokenMalformed},
		{name: "signed payload without device", key: secret, token: rawToken(secret, `{"u":"a","exp":9999999999}`), at: now, err: protocol.ErrTokenMalformed},
		{name: "signed payload with exp as a string", key: secret, token: rawToken(secret, `{"u":"a","d":"b","exp":"9999999999"}`), at: now, err: protocol.ErrTokenMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.VerifyToken(tc.key, tc.token, tc.at)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
				if got != (protocol.Claims{}) {
					t.Fatalf("claims %+v returned with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("VerifyToken: %v", err)
			}
			if got != tc.want {
				t.Fatalf("claims %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTokenLengthLimit(t *testing.T) {
	// A token of 1024 bytes is judged on its signature; one of 1025 is not read.
	tok := sign(t, secret, protocol.Claims{User: "a", Device: "b", Expiry: now.Add(time.Hour).Unix()})
	_, sig, _ := strings.Cut(tok, ".")
	at := strings.Repeat("A", 1024-1-len(sig)) + "." + sig
	if _, err := protocol.VerifyToken(secret, at, now); !errors.Is(err, protocol.ErrTokenSignature) {
		t.Fatalf("1024 bytes: %v, want ErrTokenSignature", err)
	}
	if _, err := protocol.VerifyToken(secret, "A"+at, now); !errors.Is(err, protocol.ErrTokenMalformed) {
		t.Fatalf("1025 bytes: %v, want ErrTokenMalformed", err)
	}
	// The longest claims still make a token under the limit.
	long := sign(t, secret, protocol.Claims{User: strings.Repeat("u", 64), Device: strings.Repeat("d", 64), Expiry: 1<<63 - 1})
	if _, err := protocol.VerifyToken(secret, long, now); err != nil {
		t.Fatalf("longest token (%d bytes): %v", len(long), err)
	}
}

func TestSignToken(t *testing.T) {
	tests := []struct {
		name string
		c    protocol.Claims
		ok   bool
	}{
		{"valid", protocol.Claims{User: "alice", Device: "phone", Expiry: 1}, true},
		{"empty user", protocol.Claims{Device: "phone"}, false},
		{"empty device", protocol.Claims{User: "alice"}, false},
		{"user with a dot", protocol.Claims{User: "a.b", Device: "phone"}, false},
		{"device too long", protocol.Claims{User: "a", Device: strings.Repeat("d", 65)}, false},
	}
	for _, tc := range tests {
		tok, err := protocol.SignToken(secret, tc.c)
		if tc.ok != (err == nil) {
			t.Errorf("%s: SignToken error %v, want ok=%v", tc.name, err, tc.ok)
		}
		if !tc.ok && tok != "" {
			t.Errorf("%s: token %q returned with an error", tc.name, tok)
		}
	}
	// The payload is base64url JSON with the short keys u, d, exp.
	tok := sign(t, secret, protocol.Claims{User: "alice", Device: "phone", Expiry: 42})
	p, _, _ := strings.Cut(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != `{"u":"alice","d":"phone","exp":42}` {
		t.Fatalf("payload %s", raw)
	}
}

func TestNewToken(t *testing.T) {
	tok, err := protocol.NewToken(secret, "alice", "phone", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := protocol.VerifyToken(secret, tok, time.Now())
	if err != nil {
		t.Fatalf("VerifyToken: %v", err)
	}
	if c.User != "alice" || c.Device != "phone" {
		t.Fatalf("claims %+v", c)
	}
	if d := time.Until(time.Unix(c.Expiry, 0)); d < 59*time.Minute || d > time.Hour+time.Second {
		t.Fatalf("expiry in %s, want about an hour", d)
	}
	if _, err := protocol.VerifyToken(secret, tok, time.Now().Add(time.Hour+time.Second)); !errors.Is(err, protocol.ErrTokenExpired) {
		t.Fatalf("after ttl: %v, want ErrTokenExpired", err)
	}
	if _, err := protocol.NewToken(secret, "", "phone", time.Hour); err == nil {
		t.Fatal("NewToken accepted an empty user")
	}
}

func jsonInt(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func hmacSHA256(key []byte, s string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(s))
	return h.Sum(nil)
}
