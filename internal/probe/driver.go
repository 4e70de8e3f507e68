package probe

import (
	"context"
	"errors"
	"fmt"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"log/slog"
	"sort"
	"time"
)

// Driver speaks one protocol. Open connects one probe account and logs it
// in; the deadline of ctx bounds both. One file per protocol implements it
// (imwatch.go, xmpp.go, mqtt.go), registered in drivers.
type Driver interface {
	Open(ctx context.Context, req OpenRequest) (Endpoint, error)
}

// OpenRequest says what to open.
type OpenRequest struct {
	Target  *Target
	Account Account
	// Role tells the two connections of one account apart when it sends
	// to itself ("tx", "rx"); "" when the account is one connection.
	Role string
	// Name is unique to this connection among the prober's (location,
	// target, account index, role): an MQTT client id, an XMPP resource.
	Name string
	// Deliver is called for every message the endpoint receives, as soon
	// as it is read, with At the prober's clock then. It must not block.
	Deliver func(Delivery)
	// Timing is filled in with the time connect and login took.
	Timing *Timing
	Log    *slog.Logger
	// Tracer traces the client's hops of probe messages, for drivers whose
	// client is instrumented (the reference IM's); nil traces nothing.
	Tracer *imtrace.Tracer
}

// Timing is how long an Open's steps took.
type Timing struct {
	Connect time.Duration // TCP (and TLS or WebSocket) connection
	Login   time.Duration // authentication up to being able to send
}

// Endpoint is one logged-in probe connection.
type Endpoint interface {
	// Address is where to send a message so that this endpoint receives it.
	Address() string
	// Send sends m to the endpoint at address to and returns once the
	// server acknowledged it; the deadline of ctx bounds the wait.
	Send(ctx context.Context, to string, m Message) error
	// Lost is closed when the connection is gone.
	Lost() <-chan struct{}
	Close() error
}

// Delivery is one message as an endpoint received it.
type Delivery struct {
	Body  string
	Trace string // the traceparent the protocol carried beside the body, if any
	At    time.Time
	// Receipt is set for a delivery receipt (XEP-0184) of the message
	// whose body this is not: Receipt holds the probe message's seq.
	Receipt bool
	Seq     uint64
}

// drivers maps a protocol name to its driver.
var drivers = map[string]Driver{
	ProtoIMWatch: imwatchDriver{},
	ProtoXMPP:    xmppDriver{},
	ProtoMQTT:    mqttDriver{},
}

func driverNames() []string {
	out := make([]string, 0, len(drivers))
	for n := range drivers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Reasons a round fails, the label reason of probe_failures_total.
const (
	ReasonConnect         = "connect"
	ReasonAuth            = "auth"
	ReasonSend            = "send"
	ReasonAckTimeout      = "ack_timeout"
	ReasonDeliveryTimeout = "delivery_timeout"
)

// Reasons lists every reason, in the order of a round's steps.
var Reasons = []string{ReasonConnect, ReasonAuth, ReasonSend, ReasonAckTimeout, ReasonDeliveryTimeout}

// Failure is an error with the reason a round failed. Drivers return one
// from Open and Send; its message must never hold a credential.
type Failure struct {
	Reason string
	Err    error
}

func (f *Failure) Error() string { return f.Reason + ": " + f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

// fail wraps err as a Failure with reason.
func fail(reason string, err error) error {
	if err == nil {
		return nil
	}
	var f *Failure
	if errors.As(err, &f) {
		return err
	}
	return &Failure{Reason: reason, Err: err}
}

func failf(reason, format string, args ...any) error {
	return &Failure{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// reasonOf is the reason of err: its Failure's, or def.
func reasonOf(err error, def string) string {
	var f *Failure
	if errors.As(err, &f) {
		return f.Reason
	}
	return def
}

// lostChan is an Endpoint's Lost channel, closed once.
type lostChan struct {
	ch   chan struct{}
	once chan struct{}
}

func newLost() lostChan { return lostChan{ch: make(chan struct{}), once: make(chan struct{}, 1)} }

func (l lostChan) close() {
	select {
	case l.once <- struct{}{}:
		close(l.ch)
	default:
	}
}
