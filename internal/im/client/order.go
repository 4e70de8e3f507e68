package client

import (
	"sync"
	"sync/atomic"
	"time"
)

const maxBuffered = 100000 // out-of-order messages held per client

// orderer turns at-least-once, possibly out-of-order deliveries into
// exactly-once, in-order messages per conversation.
type orderer struct {
	mu    sync.Mutex
	convs map[string]*convOrder
	emit  func(Message)
	held  int
	dups  atomic.Int64
	// gapOpened is signalled when a conversation starts waiting on a gap,
	// so that the gap loop sleeps while there are none.
	gapOpened chan struct{}
	gapsOpen  int // conversations with gapSince set

	// user and device are who this client is; messages from this device
	// that arrive while a send of it in the conversation awaits its ack are
	// its own, come back by sync before the ack did.
	user, device string

	// During a sync, the first synced message of a conversation that this
	// client has not seen from its start may skip ahead: what lies before it
	// is no longer kept by the server.
	syncing bool
	full    bool
	fresh   map[string]bool
}

type convOrder struct {
	next     uint64
	buf      map[uint64]queued
	gapSince time.Time
	started  bool // a message of this conversation was handed over
	sending  int  // sends of this client in the conversation awaiting their send-ack
}

// queued is a message waiting for its turn. An own one is a message this client
// sent: it takes its place in the sequence but is not handed to the
// application, which has its send-ack instead.
type queued struct {
	m   Message
	own bool
}

func newOrderer(emit func(Message)) *orderer {
	return &orderer{convs: map[string]*convOrder{}, emit: emit, fresh: map[string]bool{}, gapOpened: make(chan struct{}, 1)}
}

func (o *orderer) conv(id string) *convOrder {
	co := o.convs[id]
	if co == nil {
		co = &convOrder{next: 1, buf: map[uint64]queued{}}
		o.convs[id] = co
	}
	return co
}

func (o *orderer) add(m Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	co := o.conv(m.Conv)
	if m.Sync && o.syncing && !co.started && (o.full || o.fresh[m.Conv]) && m.Seq > co.next {
		for s := range co.buf {
			if s < m.Seq {
				delete(co.buf, s)
				o.held--
			}
		}
		co.next = m.Seq
	}
	if m.Sync && o.syncing {
		delete(o.fresh, m.Conv)
	}
	if _, ok := co.buf[m.Seq]; m.Seq < co.next || ok {
		o.dups.Add(1)
		return
	}
	if o.held >= maxBuffered {
		return // the gap sync brings it back
	}
	own := co.sending > 0 && m.From == o.user && m.FromDevice == o.device
	co.buf[m.Seq] = queued{m: m, own: own}
	o.held++
	o.drain(co)
}

// drain hands over the messages that are next in line.
func (o *orderer) drain(co *convOrder) {
	for {
		next, ok := co.buf[co.next]
		if !ok {
			break
		}
		delete(co.buf, co.next)
		o.held--
		co.next++
		co.started = true
		if !next.own {
			o.emit(next.m)
		}
	}
	if len(co.buf) == 0 {
		if !co.gapSince.IsZero() {
			o.gapsOpen--
		}
		co.gapSince = time.Time{}
	} else if co.gapSince.IsZero() {
		co.gapSince = time.Now()
		o.gapsOpen++
		select {
		case o.gapOpened <- struct{}{}:
		default:
		}
	}
}

// hasGaps reports whether a conversation waits on a gap.
func (o *orderer) hasGaps() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.gapsOpen > 0
}

// setSelf records who this client is.
func (o *orderer) setSelf(user, device string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.user, o.device = user, device
}

// sending counts a send of this client in conv as started (+1) or finished (-1).
func (o *orderer) sending(conv string, delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	co := o.conv(conv)
	co.sending += delta
}

// own takes the place of a message this client sent and got the send-ack
// for: it counts in the conversation's sequence, so that the next message
// does not wait on a gap, and it is never handed to the application.
func (o *orderer) own(conv string, seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	co := o.conv(conv)
	if seq < co.next {
		return
	}
	if _, ok := co.buf[seq]; !ok {
		if o.held >= maxBuffered {
			return
		}
		o.held++
	}
	co.buf[seq] = queued{own: true}
	o.drain(co)
}

// positions is, per conversation, the last sequence handed over.
func (o *orderer) positions(only []string) map[string]uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]uint64{}
	if only != nil {
		for _, c := range only {
			if co := o.convs[c]; co != nil {
				out[c] = co.next - 1
			}
		}
		return out
	}
	for c, co := range o.convs {
		out[c] = co.next - 1
	}
	return out
}

func (o *orderer) beginSync(convs []string, full bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.syncing, o.full = true, full
	o.fresh = map[string]bool{}
	for _, c := range convs {
		o.fresh[c] = true
	}
}

func (o *orderer) endSync() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.syncing, o.full = false, false
	o.fresh = map[string]bool{}
}

// gaps lists conversations holding messages behind a gap older than d.
func (o *orderer) gaps(d time.Duration) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	now := time.Now()
	for c, co := range o.convs {
		if !co.gapSince.IsZero() && now.Sub(co.gapSince) > d {
			out = append(out, c)
			co.gapSince = now // wait another d before asking again
		}
	}
	return out
}
