package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// device is one client whose application-level messages are recorded, per
// conversation, in the order the client handed them over.
type device struct {
	name string // user/device
	user string
	c    *client.Client

	mu  sync.Mutex
	got map[string][]client.Message
}

// dial connects user/device to the gateways at urls (tried in turn) and
// records what it receives until the test ends.
func dial(t *testing.T, urls []string, user, dev string) *device {
	t.Helper()
	return dialToken(t, urls, user, dev, imtest.Token(user, dev))
}

// dialToken is dial with the tokens of token.
func dialToken(t *testing.T, urls []string, user, dev string, token func() (string, error)) *device {
	t.Helper()
	d := &device{name: user + "/" + dev, user: user, got: map[string][]client.Message{}}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URLs: urls, Token: token, Log: imtest.Logger()})
	if err != nil {
		t.Fatalf("dial %s: %v", d.name, err)
	}
	t.Cleanup(func() { c.Close() })
	d.c = c
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		for {
			select {
			case <-stop:
				return
			case m := <-d.c.Messages():
				d.mu.Lock()
				d.got[m.Conv] = append(d.got[m.Conv], m)
				d.mu.Unlock()
			}
		}
	}()
	return d
}

func (d *device) received(conv string) []client.Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]client.Message(nil), d.got[conv]...)
}

func (d *device) convs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for c := range d.got {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// acked is a message the server acknowledged to its sender.
type acked struct {
	MsgID string
	Seq   uint64
	Body  string
	by    *device
}

// ledger holds every send-ack of a test, per conversation.
type ledger struct {
	mu    sync.Mutex
	convs map[string]map[string]acked // conv -> msg id -> message
}

func newLedger() *ledger { return &ledger{convs: map[string]map[string]acked{}} }

func (l *ledger) add(by *device, r client.SendResult, body string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.convs[r.Conv]
	if m == nil {
		m = map[string]acked{}
		l.convs[r.Conv] = m
	}
	if old, ok := m[r.MsgID]; ok && (old.Body != body || old.Seq != r.Seq) {
		return fmt.Errorf("msg id %s acked twice: seq %d %q and seq %d %q", r.MsgID, old.Seq, old.Body, r.Seq, body)
	}
	m[r.MsgID] = acked{MsgID: r.MsgID, Seq: r.Seq, Body: body, by: by}
	return nil
}

// conv is the acknowledged messages of conv in sequence order. Every send was
// retried until acknowledged, so they must be exactly sequences 1..N.
func (l *ledger) conv(t *testing.T, conv string) []acked {
	t.Helper()
	l.mu.Lock()
	var out []acked
	for _, a := range l.convs[conv] {
		out = append(out, a)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	for i, a := range out {
		if a.Seq != uint64(i+1) {
			t.Fatalf("conversation %s: acknowledged sequences are not 1..%d: position %d holds seq %d (%q)", conv, len(out), i, a.Seq, a.Body)
		}
	}
	return out
}

// sendLoop sends from d to a user (or a group) every interval until stop is
// closed, each Send retried until acknowledged, and records the acks.
type sendLoop struct {
	d             *device
	to, group     string
	prefix        string
	n             atomic.Int64
	maxAckLatency atomic.Int64 // ns: the longest Send, which spans the outages
	sendingSince  atomic.Int64 // Unix ns when the Send under way began; 0 between sends
	err           error
	done          chan struct{}
}

func startSending(ctx context.Context, l *ledger, d *device, to, group, prefix string, every time.Duration, stop <-chan struct{}) *sendLoop {
	s := &sendLoop{d: d, to: to, group: group, prefix: prefix, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			body := fmt.Sprintf("%s-%d", prefix, i)
			t0 := time.Now()
			s.sendingSince.Store(t0.UnixNano())
			var r client.SendResult
			var err error
			if group != "" {
				r, err = d.c.SendGroup(ctx, group, body)
			} else {
				r, err = d.c.Send(ctx, to, body)
			}
			if err != nil {
				s.err = fmt.Errorf("%s sending %q: %w", d.name, body, err)
				return
			}
			s.sendingSince.Store(0)
			if lat := int64(time.Since(t0)); lat > s.maxAckLatency.Load() {
				s.maxAckLatency.Store(lat)
			}
			if err := l.add(d, r, body); err != nil {
				s.err = err
				return
			}
			s.n.Add(1)
		}
	}()
	return s
}

// waitAcked waits until every loop has at least n more acks than it had when called.
func waitAcked(t *testing.T, timeout time.Duration, n int64, loops ...*sendLoop) {
	t.Helper()
	base := make([]int64, len(loops))
	for i, s := range loops {
		base[i] = s.n.Load()
	}
	imtest.Eventually(t, timeout, func() error {
		for i, s := range loops {
			select {
			case <-s.done:
				return fmt.Errorf("%s stopped sending: %v", s.d.name, s.err)
			default:
			}
			if got := s.n.Load() - base[i]; got < n {
				return fmt.Errorf("%s: %d of %d acks", s.d.name, got, n)
			}
		}
		return nil
	})
}

// waitStuck waits until every loop has had one Send waiting for its ack for
// at least d: the outage is real and the senders are in the middle of it.
func waitStuck(t *testing.T, timeout, d time.Duration, loops ...*sendLoop) {
	t.Helper()
	imtest.Eventually(t, timeout, func() error {
		for _, s := range loops {
			since := s.sendingSince.Load()
			if since == 0 || time.Since(time.Unix(0, since)) < d {
				return fmt.Errorf("%s is not stuck in a send", s.d.name)
			}
		}
		return nil
	})
}

// stopSending ends the loops (each finishes its current Send) and checks they did not fail.
func stopSending(t *testing.T, stop chan struct{}, loops ...*sendLoop) {
	t.Helper()
	close(stop)
	for _, s := range loops {
		select {
		case <-s.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: send loop did not stop", s.d.name)
		}
		if s.err != nil {
			t.Fatalf("send loop: %v", s.err)
		}
		t.Logf("%s: %d messages acked, slowest send-ack %s", s.d.name, s.n.Load(), time.Duration(s.maxAckLatency.Load()).Round(time.Millisecond))
	}
}

// expect says that dev must get conversation conv: all of it, or, for a
// group member who joined or left, the part while it was a member.
type expect struct {
	dev  *device
	conv string
	// joined: the first sequence sent after dev's user joined the group. The
	// history before it may be handed over too, but from its start on, in
	// order and without a gap.
	joined uint64
	// left: the last sequence stored before dev's user left; nothing after it.
	left uint64
}

// want is what e.dev must end up with of msgs (conv's acknowledged messages),
// given what it got so far.
func (e expect) want(msgs []acked, got []client.Message) ([]acked, error) {
	var out []acked
	first := uint64(1)
	if e.joined > 0 && len(got) > 0 {
		first = got[0].Seq
		if first > e.joined {
			return nil, fmt.Errorf("first message is seq %d, want at most %d: the first messages after joining are missing", first, e.joined)
		}
	}
	for _, a := range msgs {
		if a.by != e.dev && a.Seq >= first && (e.left == 0 || a.Seq <= e.left) {
			out = append(out, a)
		}
	}
	return out, nil
}

// checkDelivered waits until every device holds exactly the acknowledged
// messages of its conversations, in sequence order, once each, leaving out
// only the messages that device sent itself. It fails at once on a
// duplicate, a reordering or a message nobody acknowledged, and checks again
// after a quiet second that nothing more arrived.
func checkDelivered(t *testing.T, l *ledger, timeout time.Duration, exps ...expect) {
	t.Helper()
	msgs := make([][]acked, len(exps))
	for i, e := range exps {
		msgs[i] = l.conv(t, e.conv)
		if w, _ := e.want(msgs[i], nil); len(w) == 0 {
			t.Fatalf("%s: nothing expected in %s: the test sent nothing there", e.dev.name, e.conv)
		}
	}
	check := func() error {
		for i, e := range exps {
			got := e.dev.received(e.conv)
			want, err := e.want(msgs[i], got)
			if err == nil {
				err = matchPrefix(got, want)
			}
			if err != nil {
				t.Fatalf("%s, conversation %s: %v", e.dev.name, e.conv, err)
			}
			if len(got) < len(want) || len(got) == 0 {
				return fmt.Errorf("%s has %d of %d messages of %s", e.dev.name, len(got), len(want), e.conv)
			}
		}
		return nil
	}
	imtest.Eventually(t, timeout, check)
	// Late redeliveries and syncs must all be dropped as duplicates by now.
	time.Sleep(time.Second)
	if err := check(); err != nil {
		t.Fatal(err)
	}
	for _, e := range exps {
		for _, c := range e.dev.convs() {
			if !expected(exps, e.dev, c) {
				t.Errorf("%s received %d messages in %s, a conversation it is not in", e.dev.name, len(e.dev.received(c)), c)
			}
		}
	}
}

func expected(exps []expect, d *device, conv string) bool {
	for _, e := range exps {
		if e.dev == d && e.conv == conv {
			return true
		}
	}
	return false
}

// matchPrefix checks that got is want or a prefix of it, and says where it is
// not: a duplicate, a gap, a reordering or a message never acknowledged.
func matchPrefix(got []client.Message, want []acked) error {
	seen := map[string]int{}
	for i, m := range got {
		if j, dup := seen[m.MsgID]; dup {
			return fmt.Errorf("duplicate at the application: message %d is %q (seq %d, msg id %s), already handed over as message %d", i, m.Body, m.Seq, m.MsgID, j)
		}
		seen[m.MsgID] = i
		if i >= len(want) {
			return fmt.Errorf("message %d is %q (seq %d, msg id %s), but only %d messages were acknowledged", i, m.Body, m.Seq, m.MsgID, len(want))
		}
		if w := want[i]; m.MsgID != w.MsgID || m.Seq != w.Seq || m.Body != w.Body {
			return fmt.Errorf("message %d is %q (seq %d, msg id %s), want %q (seq %d, msg id %s); received so far: %s",
				i, m.Body, m.Seq, m.MsgID, w.Body, w.Seq, w.MsgID, summary(got))
		}
	}
	return nil
}

// summary lists the sequences of msgs compactly, for failure messages.
func summary(msgs []client.Message) string {
	var b strings.Builder
	for i, m := range msgs {
		if i > 0 && m.Seq == msgs[i-1].Seq+1 && (i+1 == len(msgs) || msgs[i+1].Seq == m.Seq+1) {
			if !strings.HasSuffix(b.String(), "..") {
				b.WriteString("..")
			}
			continue
		}
		if i > 0 && !strings.HasSuffix(b.String(), "..") {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%d", m.Seq)
	}
	return b.String()
}
