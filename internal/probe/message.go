package probe

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Marker starts the body of every probe message, so that a probe message is
// told from a user's at a glance and from another prober's by its fields.
const Marker = "imwatch-probe/1"

// maxBodyLen bounds a probe message body; longer ones are not ours.
const maxBodyLen = 512

// Message is what one probe round sends. Its body is the Marker and
// key=value fields separated by spaces:
//
//	imwatch-probe/1 loc=lab-1 target=prosody run=Zx3k seq=42 sent=1764000000123456789 tp=00-…-01
//
// The run id is fresh for every start of the prober, so that a message of
// an earlier run (stored offline, synced on login) is never counted twice.
type Message struct {
	Location string
	Target   string
	Run      string
	Seq      uint64
	Sent     time.Time // the prober's clock when the send began
	Trace    string    // W3C traceparent of the round's send span
}

// ErrNotProbe means a body is not a probe message (or not a well-formed one).
var ErrNotProbe = errors.New("not a probe message")

// Body encodes m.
func (m Message) Body() string {
	var b strings.Builder
	b.Grow(160)
	b.WriteString(Marker)
	b.WriteString(" loc=")
	b.WriteString(m.Location)
	b.WriteString(" target=")
	b.WriteString(m.Target)
	b.WriteString(" run=")
	b.WriteString(m.Run)
	b.WriteString(" seq=")
	b.WriteString(strconv.FormatUint(m.Seq, 10))
	b.WriteString(" sent=")
	b.WriteString(strconv.FormatInt(m.Sent.UnixNano(), 10))
	if m.Trace != "" {
		b.WriteString(" tp=")
		b.WriteString(m.Trace)
	}
	return b.String()
}

// ParseMessage decodes a body made by Body. Unknown fields are skipped (a
// newer prober may add some); a missing or malformed field is ErrNotProbe.
func ParseMessage(body string) (Message, error) {
	var m Message
	if len(body) > maxBodyLen {
		return m, ErrNotProbe
	}
	rest, ok := strings.CutPrefix(body, Marker+" ")
	if !ok {
		return m, ErrNotProbe
	}
	var haveSeq, haveSent bool
	for _, f := range strings.Split(rest, " ") {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return Message{}, ErrNotProbe
		}
		switch k {
		case "loc":
			m.Location = v
		case "target":
			m.Target = v
		case "run":
			m.Run = v
		case "seq":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return Message{}, ErrNotProbe
			}
			m.Seq, haveSeq = n, true
		case "sent":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return Message{}, ErrNotProbe
			}
			m.Sent, haveSent = time.Unix(0, n), true
		case "tp":
			m.Trace = v
		}
	}
	if m.Location == "" || m.Target == "" || m.Run == "" || !haveSeq || !haveSent {
		return Message{}, ErrNotProbe
	}
	return m, nil
}
