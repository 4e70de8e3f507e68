// Package fault injects faults into the reference IM on purpose, so that a
// user (and bench/mttd) can watch imwatch find a broken link: drop a share of
// the messages at one hop, add latency at one hop, stop and restart a
// gateway or logic node, or make a gateway accept messages and never deliver
// them. The center keeps the faults (Registry); the IM parts apply them
// (Agent, Injector), told over NATS (docs/protocol.md, Faults).
package fault

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind is what a fault does.
type Kind string

// The kinds of fault.
const (
	KindDrop      Kind = "drop"      // drop Percent of the messages at Hop
	KindLatency   Kind = "latency"   // hold each message Delay at Hop
	KindStop      Kind = "stop"      // stop the instance; restart it when the fault ends
	KindBlackhole Kind = "blackhole" // a gateway acks sends and takes pushes, and delivers nothing
)

// Kinds lists every kind, in the order the docs and the UI show them.
var Kinds = []Kind{KindDrop, KindLatency, KindStop, KindBlackhole}

// Hop is a step of a message's way through the IM, named as its span
// (im.<hop>, docs/tracing.md). HopNone is a fault of a whole instance.
type Hop uint8

// The hops a drop or latency fault can sit at.
const (
	HopNone           Hop = iota
	HopGatewayReceive     // gateway: a send frame read from the sender's connection
	HopLogicHandle        // logic: a send request taken from the bus
	HopStoreAppend        // logic: the message appended to JetStream
	HopGatewayPush        // gateway: a message pushed from the bus to a device's connection
	numHops
)

var hopNames = [numHops]string{"", "gateway.receive", "logic.handle", "store.append", "gateway.push"}

// Hops lists the hops a drop or latency fault can sit at.
var Hops = []Hop{HopGatewayReceive, HopLogicHandle, HopStoreAppend, HopGatewayPush}

func (h Hop) String() string {
	if h >= numHops {
		return fmt.Sprintf("hop(%d)", uint8(h))
	}
	return hopNames[h]
}

// Service is the service whose instances have the hop.
func (h Hop) Service() string {
	switch h {
	case HopGatewayReceive, HopGatewayPush:
		return ServiceGateway
	case HopLogicHandle, HopStoreAppend:
		return ServiceLogic
	}
	return ""
}

// ParseHop reads a hop name; "" is HopNone.
func ParseHop(s string) (Hop, error) {
	for i, n := range hopNames {
		if n == s {
			return Hop(i), nil
		}
	}
	return HopNone, fmt.Errorf("hop %q: want one of %s", s, hopList())
}

func hopList() string {
	var s []string
	for _, h := range Hops {
		s = append(s, h.String())
	}
	return strings.Join(s, ", ")
}

// MarshalText writes the hop's name.
func (h Hop) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads a hop's name.
func (h *Hop) UnmarshalText(b []byte) error {
	v, err := ParseHop(string(b))
	if err != nil {
		return err
	}
	*h = v
	return nil
}

// Services of the reference IM that take faults: the values of
// Instance.Service and of the IM metric set's service label.
const (
	ServiceGateway = "gateway"
	ServiceLogic   = "logic"
)

// Duration is a time.Duration that JSON carries as a Go duration string
// ("250ms", "30s", "5m").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`want a duration string such as "500ms", "30s" or "5m"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration: use e.g. 500ms, 30s or 5m", s)
	}
	*d = Duration(v)
	return nil
}

// D is the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Limits of a fault.
const (
	DefaultDuration  = 5 * time.Minute // how long a fault lasts when the request does not say
	MaxDuration      = time.Hour       // the longest a fault may last: it always ends by itself
	MinDuration      = time.Second
	DefaultDelay     = time.Second // latency added when the request does not say
	MaxDelay         = 30 * time.Second
	DefaultMaxActive = 16 // faults active at once
)

// Spec is a fault as asked for: POST /api/faults, `imwatch fault add`.
type Spec struct {
	Kind     Kind     `json:"kind"`
	Hop      Hop      `json:"hop,omitempty"`      // drop, latency
	Instance string   `json:"instance"`           // gw-1, logic-1, ...
	Percent  float64  `json:"percent,omitempty"`  // drop: share dropped, (0, 100], default 100
	Delay    Duration `json:"delay,omitempty"`    // latency: added per message, default 1s, at most 30s
	Duration Duration `json:"duration,omitempty"` // until it ends by itself: default 5m, 1s to 1h
}

// ErrInvalid is a fault that cannot be: a bad kind, hop, value or instance.
var ErrInvalid = errors.New("invalid fault")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Normalize fills in the defaults and checks the spec on its own (Registry
// also checks the instance against the parts that exist).
func (s *Spec) Normalize() error {
	if s.Duration == 0 {
		s.Duration = Duration(DefaultDuration)
	}
	if s.Duration.D() < MinDuration || s.Duration.D() > MaxDuration {
		return invalid("duration %s: want %s to %s", s.Duration.D(), MinDuration, MaxDuration)
	}
	if !validInstance(s.Instance) {
		return invalid("instance %q: want the name of a gateway or logic node (1 to 64 characters of A-Z a-z 0-9 _ - .), e.g. gw-1 or logic-1", s.Instance)
	}
	switch s.Kind {
	case KindDrop, KindLatency:
		if s.Hop == HopNone {
			return invalid("a %s fault needs a hop: one of %s", s.Kind, hopList())
		}
		if s.Hop >= numHops {
			return invalid("hop %s: want one of %s", s.Hop, hopList())
		}
	case KindStop, KindBlackhole:
		if s.Hop != HopNone {
			return invalid("a %s fault takes no hop (it is about the whole instance)", s.Kind)
		}
	case "":
		return invalid("kind missing: want one of %s", kindList())
	default:
		return invalid("kind %q: want one of %s", s.Kind, kindList())
	}
	if s.Kind == KindDrop {
		if s.Percent == 0 {
			s.Percent = 100
		}
		if !(s.Percent > 0 && s.Percent <= 100) { // also refuses NaN
			return invalid("percent %g: want more than 0 and at most 100", s.Percent)
		}
	} else if s.Percent != 0 {
		return invalid("percent is for drop faults only")
	}
	if s.Kind == KindLatency {
		if s.Delay == 0 {
			s.Delay = Duration(DefaultDelay)
		}
		if s.Delay.D() < time.Millisecond || s.Delay.D() > MaxDelay {
			return invalid("delay %s: want 1ms to %s", s.Delay.D(), MaxDelay)
		}
	} else if s.Delay != 0 {
		return invalid("delay is for latency faults only")
	}
	return nil
}

// Service is the service the spec's instance must be of: the hop's, a
// gateway for a blackhole, either for a stop.
func (s Spec) Service() string {
	if s.Kind == KindBlackhole {
		return ServiceGateway
	}
	return s.Hop.Service()
}

// Where says where the fault sits, for messages: "gateway.receive of gw-1".
func (s Spec) Where() string {
	if s.Hop == HopNone {
		return s.Instance
	}
	return s.Hop.String() + " of " + s.Instance
}

// What says what the fault does, for messages and the UI: "drop 50%".
func (s Spec) What() string {
	switch s.Kind {
	case KindDrop:
		return fmt.Sprintf("drop %g%%", s.Percent)
	case KindLatency:
		return "latency +" + s.Delay.D().String()
	}
	return string(s.Kind)
}

func kindList() string {
	var s []string
	for _, k := range Kinds {
		s = append(s, string(k))
	}
	return strings.Join(s, ", ")
}

func validInstance(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// State of a fault.
const (
	StateActive  = "active"
	StateCleared = "cleared" // ended by a user: DELETE /api/faults/ID
	StateExpired = "expired" // ended by itself at Until
)

// Fault is a fault the registry took: its spec, id and times.
type Fault struct {
	ID string `json:"id"`
	Spec
	State string    `json:"state"`
	Start time.Time `json:"start"`
	Until time.Time `json:"until"`        // when it ends by itself
	End   time.Time `json:"end,omitzero"` // when it ended, if it did
	// Applied says whether the instance has reported applying it.
	Applied bool `json:"applied"`
}

// Active reports whether the fault is still in force.
func (f Fault) Active() bool { return f.State == StateActive }
