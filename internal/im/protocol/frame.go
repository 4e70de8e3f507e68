// Package protocol defines the reference IM's WebSocket wire protocol: the JSON
// frames a client and a gateway exchange, their limits and their error codes.
// docs/protocol.md is the user-facing description of the same contract.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Frame types. Client to server: auth, ping, send, deliver_ack, sync,
// group_create, group_add, group_remove. Server to client: auth_ok, pong,
// send_ack, deliver, sync_done, result, error.
const (
	TypeAuth        = "auth"
	TypePing        = "ping"
	TypeSend        = "send"
	TypeDeliverAck  = "deliver_ack"
	TypeSync        = "sync"
	TypeGroupCreate = "group_create"
	TypeGroupAdd    = "group_add"
	TypeGroupRemove = "group_remove"

	TypeAuthOK   = "auth_ok"
	TypePong     = "pong"
	TypeSendAck  = "send_ack"
	TypeDeliver  = "deliver"
	TypeSyncDone = "sync_done"
	TypeResult   = "result"
	TypeError    = "error"
)

// Limits of the wire protocol. A client frame over MaxFrameBytes closes the
// connection. A server frame can be larger than the client frame it carries:
// JSON escapes a body's control characters and < > & as \u00XX, six bytes for
// one, so a deliver of a MaxBodyBytes body takes up to about 97 KiB.
// MaxServerFrameBytes bounds what a client must accept.
const (
	MaxFrameBytes       = 32 << 10
	MaxServerFrameBytes = 4 * MaxFrameBytes
	MaxBodyBytes        = 16 << 10
	MaxIDLen            = 64
	MaxGroupMembers     = 500
	MaxSyncConvs        = 1000
)

// Error codes carried in error frames. They are stable: clients match on them.
const (
	CodeBadFrame        = "bad_frame"       // not a JSON object, a field of the wrong type, or a binary message
	CodeUnknownType     = "unknown_type"    // the type field names no frame type
	CodeFrameTooLarge   = "frame_too_large" // over MaxFrameBytes; the connection is closed
	CodeUnauthenticated = "unauthenticated" // a frame other than a valid auth before auth_ok; closed
	CodeBadToken        = "bad_token"       // token malformed or its signature is wrong
	CodeTokenExpired    = "token_expired"   // token past its expiry
	CodeRateLimited     = "rate_limited"    // the connection sends faster than allowed; frame dropped
	CodeBadRequest      = "bad_request"     // a required field is missing or invalid
	CodeNotMember       = "not_member"      // sender is not a member of the group
	CodeGroupExists     = "group_exists"    // group_create for an existing group
	CodeNoSuchGroup     = "no_such_group"   // the group does not exist
	CodeForbidden       = "forbidden"       // only the group's owner may do that
	CodeUnavailable     = "unavailable"     // the back end did not answer in time; retry
	CodeOverloaded      = "overloaded"      // the server refuses work it cannot queue; retry later
	CodeIdleTimeout     = "idle_timeout"    // nothing received within the idle timeout; closed
	CodeAuthTimeout     = "auth_timeout"    // no auth frame in time; closed
	CodeSlowConsumer    = "slow_consumer"   // the client did not read its frames; closed
	CodeReplaced        = "replaced"        // the same user and device connected again; closed
	CodeInternal        = "internal"        // a server fault; retry
)

// Frame is every frame of the protocol in one struct: each type uses the
// fields its description in docs/protocol.md names and leaves the rest empty.
type Frame struct {
	Type string `json:"type"`

	// ID is the client's id for a send (its client message id, the key of
	// de-duplication) or for a group request; results and errors echo it.
	ID string `json:"id,omitempty"`

	Token string `json:"token,omitempty"` // auth

	To    string `json:"to,omitempty"`          // send: recipient user of a one-to-one message
	Group string `json:"group,omitempty"`       // send, group_*: group id
	Body  string `json:"body,omitempty"`        // send, deliver
	Probe bool   `json:"probe,omitempty"`       // send, deliver: a probe message, always traced
	Trace string `json:"traceparent,omitempty"` // W3C traceparent of the message's send span

	MsgID      string `json:"msg_id,omitempty"` // send_ack, deliver, deliver_ack
	Conv       string `json:"conv,omitempty"`   // send_ack, deliver, deliver_ack
	Seq        uint64 `json:"seq,omitempty"`    // send_ack, deliver, deliver_ack: per-conversation sequence
	From       string `json:"from,omitempty"`   // deliver
	FromDevice string `json:"from_device,omitempty"`
	TS         int64  `json:"ts,omitempty"`   // send_ack, deliver: server time the message was stored, Unix ms
	Dup        bool   `json:"dup,omitempty"`  // send_ack: the id was seen before; the first send's result
	Sync       bool   `json:"sync,omitempty"` // deliver: sent in answer to a sync

	After map[string]uint64 `json:"after,omitempty"` // sync: conversation -> last sequence held
	Full  bool              `json:"full,omitempty"`  // sync: also every conversation not in After

	Members []string `json:"members,omitempty"` // group_*, result
	Count   int      `json:"count,omitempty"`   // sync_done
	More    bool     `json:"more,omitempty"`    // sync_done: a limit was reached; sync again

	User        string `json:"user,omitempty"`         // auth_ok
	Device      string `json:"device,omitempty"`       // auth_ok
	Gateway     string `json:"gateway,omitempty"`      // auth_ok
	HeartbeatMS int64  `json:"heartbeat_ms,omitempty"` // auth_ok: send a ping at least this often

	Code    string `json:"code,omitempty"`    // error
	Message string `json:"message,omitempty"` // error
}

// Error is a protocol error: a code from the list above and a human message.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns a protocol error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorFrame is the error frame for err, echoing the id of the frame that caused it.
func ErrorFrame(id string, err *Error) Frame {
	return Frame{Type: TypeError, ID: id, Code: err.Code, Message: err.Message}
}

var clientTypes = map[string]bool{
	TypeAuth: true, TypePing: true, TypeSend: true, TypeDeliverAck: true, TypeSync: true,
	TypeGroupCreate: true, TypeGroupAdd: true, TypeGroupRemove: true,
}

// DecodeClientFrame parses and validates one frame a client sent. The error is
// always a *Error whose code says what was wrong.
func DecodeClientFrame(data []byte) (Frame, error) {
	var f Frame
	if len(data) > MaxFrameBytes {
		return f, Errorf(CodeFrameTooLarge, "frame of %d bytes is over the limit of %d", len(data), MaxFrameBytes)
	}
	if !decodeFrameFast(data, &f) {
		f = Frame{}
		if perr := decodeFrameSlow(data, &f); perr != nil {
			return f, perr
		}
	}
	if f.Type == "" {
		return f.echo(), Errorf(CodeBadFrame, "frame has no type")
	}
	if !clientTypes[f.Type] {
		return f.echo(), Errorf(CodeUnknownType, "unknown frame type %q", truncate(f.Type, 32))
	}
	if err := f.validate(); err != nil {
		return f.echo(), err
	}
	return f, nil
}

// decodeFrameSlow is encoding/json's decoding of a client frame, for what
// decodeFrameFast does not take, and the source of every decoding error.
func decodeFrameSlow(data []byte, f *Frame) *Error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(f); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			// The object is well-formed and was decoded as far as it goes: the
			// error can still echo the id, so that the request is answered.
			*f = f.echo()
			return Errorf(CodeBadFrame, "field %q has the wrong type: %v", typeErr.Field, err)
		}
		*f = Frame{}
		return Errorf(CodeBadFrame, "frame is not a valid JSON object: %v", err)
	}
	// Decoder.More is false for a stray '}' or ']': check the rest by hand.
	if rest := bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		*f = Frame{}
		return Errorf(CodeBadFrame, "trailing data after the JSON object")
	}
	return nil
}

// echo is what a frame that failed to decode still says about itself: its
// type if it is a client frame type and its id if the id is valid, so that
// the error frame can answer it.
func (f *Frame) echo() Frame {
	var e Frame
	if clientTypes[f.Type] {
		e.Type = f.Type
	}
	if ValidID(f.ID) {
		e.ID = f.ID
	}
	return e
}

// DecodeServerFrame parses one frame a server sent; the client uses it.
func DecodeServerFrame(data []byte) (Frame, error) {
	var f Frame
	if len(data) > MaxServerFrameBytes {
		return f, Errorf(CodeFrameTooLarge, "frame of %d bytes is over the limit of %d", len(data), MaxServerFrameBytes)
	}
	if !decodeFrameFast(data, &f) {
		f = Frame{}
		if err := json.Unmarshal(data, &f); err != nil {
			return Frame{}, Errorf(CodeBadFrame, "frame is not a valid JSON object: %v", err)
		}
	}
	if f.Type == "" {
		return Frame{}, Errorf(CodeBadFrame, "frame has no type")
	}
	return f, nil
}

func (f *Frame) validate() *Error {
	if f.ID != "" && !ValidID(f.ID) {
		return Errorf(CodeBadRequest, "id: %s", idRule)
	}
	switch f.Type {
	case TypeAuth:
		if f.Token == "" {
			return Errorf(CodeBadToken, "auth frame has no token")
		}
	case TypeSend:
		if f.ID == "" {
			return Errorf(CodeBadRequest, "send needs an id (the client message id)")
		}
		if (f.To == "") == (f.Group == "") {
			return Errorf(CodeBadRequest, "send needs exactly one of to and group")
		}
		if f.To != "" && !ValidUser(f.To) {
			return Errorf(CodeBadRequest, "to: %s", userRule)
		}
		if f.Group != "" && !ValidUser(f.Group) {
			return Errorf(CodeBadRequest, "group: %s", userRule)
		}
		if len(f.Body) > MaxBodyBytes {
			return Errorf(CodeBadRequest, "body of %d bytes is over the limit of %d", len(f.Body), MaxBodyBytes)
		}
		if f.Trace != "" && len(f.Trace) > 128 {
			return Errorf(CodeBadRequest, "traceparent too long")
		}
	case TypeDeliverAck:
		if !ValidID(f.MsgID) {
			return Errorf(CodeBadRequest, "deliver_ack needs the msg_id of the delivered message")
		}
	case TypeSync:
		if len(f.After) > MaxSyncConvs {
			return Errorf(CodeBadRequest, "sync names %d conversations, over the limit of %d", len(f.After), MaxSyncConvs)
		}
		for c := range f.After {
			if _, err := ParseConv(c); err != nil {
				return Errorf(CodeBadRequest, "sync: %v", err)
			}
		}
	case TypeGroupCreate, TypeGroupAdd, TypeGroupRemove:
		if f.ID == "" {
			return Errorf(CodeBadRequest, "%s needs an id", f.Type)
		}
		if !ValidUser(f.Group) {
			return Errorf(CodeBadRequest, "group: %s", userRule)
		}
		if len(f.Members) > MaxGroupMembers {
			return Errorf(CodeBadRequest, "%d members, over the limit of %d", len(f.Members), MaxGroupMembers)
		}
		for _, m := range f.Members {
			if !ValidUser(m) {
				return Errorf(CodeBadRequest, "member %q: %s", truncate(m, 64), userRule)
			}
		}
		if f.Type != TypeGroupCreate && len(f.Members) == 0 {
			return Errorf(CodeBadRequest, "%s needs members", f.Type)
		}
	}
	return nil
}

const (
	userRule = "1 to 64 characters of A-Z a-z 0-9 _ -"
	idRule   = "1 to 64 printable ASCII characters, no spaces"
)

// ValidID reports whether s may be the id of a client frame: 1 to MaxIDLen
// printable ASCII characters other than space. The id of a send becomes part
// of a NATS header (the de-duplication key), where surrounding white space is
// trimmed and line breaks are replaced: ids allowed those would collide.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// ValidUser reports whether s may be a user, device or group id: 1 to 64 of
// A-Z a-z 0-9 _ -. The alphabet keeps ids safe as NATS subject tokens and
// key-value keys.
func ValidUser(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Conv is a conversation: one-to-one between two users, or a group.
type Conv struct {
	Group string    // set for a group conversation
	Users [2]string // the two users of a one-to-one conversation, sorted
}

// DirectConv is the conversation id of the one-to-one conversation of a and b.
func DirectConv(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return "d=" + a + "=" + b
}

// GroupConv is the conversation id of a group.
func GroupConv(group string) string { return "g=" + group }

// ParseConv parses a conversation id made by DirectConv or GroupConv.
func ParseConv(id string) (Conv, error) {
	parts := strings.Split(id, "=")
	switch {
	case len(parts) == 2 && parts[0] == "g" && ValidUser(parts[1]):
		return Conv{Group: parts[1]}, nil
	case len(parts) == 3 && parts[0] == "d" && ValidUser(parts[1]) && ValidUser(parts[2]) && parts[1] <= parts[2]:
		return Conv{Users: [2]string{parts[1], parts[2]}}, nil
	}
	return Conv{}, ErrBadConv
}

// ErrBadConv is returned for a conversation id that is neither d=A=B nor g=G.
var ErrBadConv = errors.New("conversation id must be d=USER=USER (sorted) or g=GROUP")

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
