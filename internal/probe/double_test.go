package probe

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// A server double for the unit tests: endpoints in memory, and a script
// that says what happens to each probe message by its seq.
type double struct {
	mu     sync.Mutex
	eps    map[string]*doubleEndpoint
	script func(seq uint64) action
	held   map[uint64]func() // messages held back until release
}

type action struct {
	drop     bool          // never delivered
	copies   int           // delivered this many times (default 1)
	delay    time.Duration // delivered after this long
	holdFor  uint64        // delivered right after message holdFor is
	noAck    bool          // the server never acks
	sendErr  bool          // the server refuses the send
	refuseIn bool          // login refused
}

var theDouble = &double{eps: map[string]*doubleEndpoint{}, held: map[uint64]func(){}}

func init() { drivers["double"] = doubleDriver{} }

// doubleTrace, when set, sees every message sent through the double.
var doubleTrace func(Message)

type doubleDriver struct{}

func (doubleDriver) Open(_ context.Context, req OpenRequest) (Endpoint, error) {
	if req.Account.User == "refused" {
		return nil, failf(ReasonAuth, "login refused by the double")
	}
	e := &doubleEndpoint{addr: req.Name, deliver: req.Deliver, lost: newLost()}
	theDouble.mu.Lock()
	theDouble.eps[e.addr] = e
	theDouble.mu.Unlock()
	if req.Timing != nil {
		req.Timing.Connect, req.Timing.Login = time.Millisecond, time.Millisecond
	}
	return e, nil
}

type doubleEndpoint struct {
	addr    string
	deliver func(Delivery)
	lost    lostChan
}

func (e *doubleEndpoint) Address() string       { return e.addr }
func (e *doubleEndpoint) Lost() <-chan struct{} { return e.lost.ch }
func (e *doubleEndpoint) Close() error          { e.lost.close(); return nil }

func (e *doubleEndpoint) Send(ctx context.Context, to string, m Message) error {
	d := theDouble
	d.mu.Lock()
	a := action{copies: 1}
	if d.script != nil {
		a = d.script(m.Seq)
		if a.copies == 0 {
			a.copies = 1
		}
	}
	dest := d.eps[to]
	d.mu.Unlock()
	if doubleTrace != nil {
		doubleTrace(m)
	}
	if a.sendErr {
		return failf(ReasonSend, "refused by the double")
	}
	body := m.Body()
	deliver := func() {
		for i := 0; i < a.copies; i++ {
			dest.deliver(Delivery{Body: body, At: time.Now()})
		}
		d.mu.Lock()
		release := d.held[m.Seq]
		delete(d.held, m.Seq)
		d.mu.Unlock()
		if release != nil {
			release()
		}
	}
	switch {
	case a.drop:
	case a.holdFor != 0:
		d.mu.Lock()
		d.held[a.holdFor] = deliver
		d.mu.Unlock()
	case a.delay > 0:
		time.AfterFunc(a.delay, deliver)
	default:
		deliver()
	}
	if a.noAck {
		<-ctx.Done()
		return fail(ReasonAckTimeout, errors.New("no ack from the double"))
	}
	return nil
}

// Every kind of outcome, from a script per seq, counted exactly.
func TestRoundOutcomesAgainstADouble(t *testing.T) {
	const timeout = 300 * time.Millisecond
	theDouble.mu.Lock()
	theDouble.script = func(seq uint64) action {
		switch seq {
		case 3:
			return action{copies: 3} // two duplicates
		case 5:
			return action{holdFor: 6} // overtaken by 6, within its timeout: reordered
		case 8:
			return action{drop: true} // lost
		case 10:
			return action{delay: timeout + 200*time.Millisecond, copies: 2} // lost, then late, then a duplicate
		case 12:
			return action{noAck: true} // delivered, but the round fails: ack_timeout
		case 14:
			return action{sendErr: true, drop: true} // send fails: lost
		}
		return action{}
	}
	theDouble.mu.Unlock()
	var mu sync.Mutex
	results := map[uint64]RoundResult{}
	tg := Target{Name: "double", Protocol: "double", Address: "double", Interval: config.Duration(100 * time.Millisecond),
		Timeout: config.Duration(timeout), Accounts: []Account{{User: "p"}}}
	p := startProber(t, Config{Targets: []Target{tg}}, Options{OnRound: func(r RoundResult) {
		mu.Lock()
		results[r.Seq] = r
		mu.Unlock()
	}})
	imtest.Eventually(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for seq := uint64(1); seq <= 16; seq++ {
			if _, ok := results[seq]; !ok {
				return errors.New("rounds 1-16 not finished yet")
			}
		}
		return nil
	})
	// Wait for the late copies of 10 too.
	imtest.Eventually(t, 5*time.Second, atLeast(t, p, "probe_messages_late_total", nil, 1))
	p.Stop(context.Background())

	mu.Lock()
	defer mu.Unlock()
	wantReason := map[uint64]string{8: ReasonDeliveryTimeout, 10: ReasonDeliveryTimeout, 12: ReasonAckTimeout, 14: ReasonSend}
	for seq := uint64(1); seq <= 16; seq++ {
		r := results[seq]
		if r.Reason != wantReason[seq] || r.OK != (wantReason[seq] == "") {
			t.Errorf("round %d: ok %v reason %q, want reason %q", seq, r.OK, r.Reason, wantReason[seq])
		}
		if r.TraceID == "" || len(r.TraceID) != 32 {
			t.Errorf("round %d: trace id %q", seq, r.TraceID)
		}
	}
	l := map[string]string{"target": "double"}
	sent := metricValue(t, p, "probe_messages_sent_total", l)
	for _, c := range []struct {
		metric string
		want   float64
	}{
		{"probe_messages_duplicated_total", 3}, // 2 extra copies of 3, the second copy of 10
		{"probe_messages_reordered_total", 1},  // 5
		{"probe_messages_lost_total", 3},       // 8, 10, 14
		{"probe_messages_late_total", 1},       // 10
		{"probe_failures_total", 4},
		{"probe_messages_received_total", sent - 3}, // sent = received + lost
	} {
		if got := metricValue(t, p, c.metric, l); got != c.want {
			t.Errorf("%s = %g, want %g", c.metric, got, c.want)
		}
	}
	for reason, want := range map[string]float64{ReasonDeliveryTimeout: 2, ReasonAckTimeout: 1, ReasonSend: 1, ReasonConnect: 0, ReasonAuth: 0} {
		if got := metricValue(t, p, "probe_failures_total", map[string]string{"reason": reason}); got != want {
			t.Errorf("failures %s = %g, want %g", reason, got, want)
		}
	}
}
