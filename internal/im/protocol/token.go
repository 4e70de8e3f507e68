package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Claims is what an auth token asserts: who the user is, on which device,
// until when.
type Claims struct {
	User   string `json:"u"`
	Device string `json:"d"`
	Expiry int64  `json:"exp"` // Unix seconds
}

// Token errors, matched with errors.Is.
var (
	// ErrTokenMalformed means the token is not payload.signature in base64url.
	ErrTokenMalformed = errors.New("token is malformed")
	// ErrTokenSignature means the signature does not match the secret: forged or from another cluster.
	ErrTokenSignature = errors.New("token signature is invalid")
	// ErrTokenExpired means the token's expiry has passed.
	ErrTokenExpired = errors.New("token has expired")
)

const maxTokenLen = 1024

var b64 = base64.RawURLEncoding

// SignToken makes a token for c, signed with HMAC-SHA256 under secret.
func SignToken(secret []byte, c Claims) (string, error) {
	if !ValidUser(c.User) || !ValidUser(c.Device) {
		return "", fmt.Errorf("sign token: user and device must be %s", userRule)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	p := b64.EncodeToString(payload)
	return p + "." + b64.EncodeToString(mac(secret, p)), nil
}

// NewToken is SignToken for user and device, valid for ttl from now.
func NewToken(secret []byte, user, device string, ttl time.Duration) (string, error) {
	return SignToken(secret, Claims{User: user, Device: device, Expiry: time.Now().Add(ttl).Unix()})
}

// VerifyToken checks token's signature and expiry and returns its claims.
func VerifyToken(secret []byte, token string, now time.Time) (Claims, error) {
	var c Claims
	if len(token) > maxTokenLen {
		return c, ErrTokenMalformed
	}
	p, sig, ok := strings.Cut(token, ".")
	if !ok || p == "" || sig == "" {
		return c, ErrTokenMalformed
	}
	// Only the signer's spelling of the MAC: the decoder would also take one
	// with non-zero padding bits or with line breaks inside, making several
	// spellings of one token valid.
	gotMAC, err := b64.DecodeString(sig)
	if err != nil || b64.EncodeToString(gotMAC) != sig {
		return c, ErrTokenMalformed
	}
	if !hmac.Equal(gotMAC, mac(secret, p)) {
		return c, ErrTokenSignature
	}
	payload, err := b64.DecodeString(p)
	if err != nil {
		return c, ErrTokenMalformed
	}
	if err := json.Unmarshal(payload, &c); err != nil || !ValidUser(c.User) || !ValidUser(c.Device) {
		return Claims{}, ErrTokenMalformed
	}
	if now.Unix() >= c.Expiry {
		return Claims{}, ErrTokenExpired
	}
	return c, nil
}

func mac(secret []byte, payload string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(payload))
	return h.Sum(nil)
}
