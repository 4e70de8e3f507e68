package fault

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// NATS subjects of the fault control plane (docs/protocol.md, Faults).
const (
	// SubjectState carries StateMsg from the center to every IM part: the
	// whole set of faults in force, on every change and every second.
	SubjectState = "imwatch.faults.state"
	// SubjectAgents carries AgentsMsg from every process of the IM to the
	// center, every AnnounceInterval: which instances take faults, and
	// which faults each applies.
	SubjectAgents = "imwatch.faults.agents"
)

// Timing of the control plane.
const (
	AnnounceInterval = time.Second
	// Lease is how long a part keeps faults without hearing the state
	// again: when the center goes away, its faults end within it.
	Lease = 5 * time.Second
	// instanceTTL is how long the center counts an instance that stopped
	// announcing itself.
	instanceTTL = 3 * AnnounceInterval
)

// Bounds of the control messages.
const (
	MaxMessageBytes = 256 << 10
	MaxFaults       = 64 // in one StateMsg (the registry holds at most MaxActive)
	MaxInstances    = 64 // in one AgentsMsg
	WireVersion     = 1
)

// StateMsg is the body of SubjectState.
type StateMsg struct {
	V       int     `json:"v"`
	LeaseMS int64   `json:"lease_ms"` // keep these faults this long without a new StateMsg
	Faults  []Fault `json:"faults"`
}

// AgentsMsg is the body of SubjectAgents.
type AgentsMsg struct {
	V         int        `json:"v"`
	Instances []Instance `json:"instances"`
}

// ErrMessage is a control message that cannot be read.
var ErrMessage = errors.New("bad fault control message")

func decodeStrict(data []byte, v any) error {
	if len(data) > MaxMessageBytes {
		return fmt.Errorf("%w: %d bytes, over %d", ErrMessage, len(data), MaxMessageBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMessage, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: data after the JSON object", ErrMessage)
	}
	return nil
}

// DecodeState reads a StateMsg and checks every fault in it.
func DecodeState(data []byte) (StateMsg, error) {
	var m StateMsg
	if err := decodeStrict(data, &m); err != nil {
		return StateMsg{}, err
	}
	if m.V != WireVersion {
		return StateMsg{}, fmt.Errorf("%w: version %d, want %d", ErrMessage, m.V, WireVersion)
	}
	if m.LeaseMS <= 0 || m.LeaseMS > int64(time.Hour/time.Millisecond) {
		return StateMsg{}, fmt.Errorf("%w: lease_ms %d: want 1 to 3600000", ErrMessage, m.LeaseMS)
	}
	if len(m.Faults) > MaxFaults {
		return StateMsg{}, fmt.Errorf("%w: %d faults, over %d", ErrMessage, len(m.Faults), MaxFaults)
	}
	for i := range m.Faults {
		f := &m.Faults[i]
		if !validInstance(f.ID) {
			return StateMsg{}, fmt.Errorf("%w: fault %d: bad id %q", ErrMessage, i, f.ID)
		}
		if err := f.Spec.Normalize(); err != nil {
			return StateMsg{}, fmt.Errorf("%w: fault %s: %v", ErrMessage, f.ID, err)
		}
	}
	return m, nil
}

// DecodeAgents reads an AgentsMsg and checks every instance in it.
func DecodeAgents(data []byte) (AgentsMsg, error) {
	var m AgentsMsg
	if err := decodeStrict(data, &m); err != nil {
		return AgentsMsg{}, err
	}
	if m.V != WireVersion {
		return AgentsMsg{}, fmt.Errorf("%w: version %d, want %d", ErrMessage, m.V, WireVersion)
	}
	if len(m.Instances) > MaxInstances {
		return AgentsMsg{}, fmt.Errorf("%w: %d instances, over %d", ErrMessage, len(m.Instances), MaxInstances)
	}
	for i, in := range m.Instances {
		if !validInstance(in.Name) {
			return AgentsMsg{}, fmt.Errorf("%w: instance %d: bad name %q", ErrMessage, i, in.Name)
		}
		if in.Service != ServiceGateway && in.Service != ServiceLogic {
			return AgentsMsg{}, fmt.Errorf("%w: instance %s: service %q, want gateway or logic", ErrMessage, in.Name, in.Service)
		}
		if len(in.Kinds) > len(Kinds) || len(in.Applied) > MaxFaults {
			return AgentsMsg{}, fmt.Errorf("%w: instance %s: too many kinds or applied faults", ErrMessage, in.Name)
		}
		for _, k := range in.Kinds {
			if !validKind(k) {
				return AgentsMsg{}, fmt.Errorf("%w: instance %s: kind %q", ErrMessage, in.Name, k)
			}
		}
		for _, id := range in.Applied {
			if !validInstance(id) {
				return AgentsMsg{}, fmt.Errorf("%w: instance %s: bad fault id %q", ErrMessage, in.Name, id)
			}
		}
	}
	return m, nil
}

func validKind(k Kind) bool {
	for _, x := range Kinds {
		if x == k {
			return true
		}
	}
	return false
}
