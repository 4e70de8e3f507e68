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

	// During a sync, the first synced message of a conversation that this
	// client has not seen from its start may skip ahead: what lies before it
	// is no longer kept by the server.
	syncing bool
	full    bool
	fresh   map[string]bool
}

type convOrder struct {
	next     uint64
	buf      map[uint64]Message
	gapSince time.Time
	started  bool // a message of this conversation was handed over
}

func newOrderer(emit func(Message)) *orderer {
	return &orderer{convs: map[string]*convOrder{}, emit: emit, fresh: map[string]bool{}}
}

func (o *orderer) add(m Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	co := o.convs[m.Conv]
	if co == nil {
		co = &convOrder{next: 1, buf: map[uint64]Message{}}
		o.convs[m.Conv] = co
	}
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
	if _, held := co.buf[m.Seq]; m.Seq < co.next || held {
		o.dups.Add(1)
		return
	}
	if o.held >= maxBuffered {
		return // the gap sync brings it back
	}
	co.buf[m.Seq] = m
	o.held++
	for {
		next, ok := co.buf[co.next]
		if !ok {
			break
		}
		delete(co.buf, co.next)
		o.held--
		co.next++
		co.started = true
		o.emit(next)
	}
	if len(co.buf) == 0 {
		co.gapSince = time.Time{}
	} else if co.gapSince.IsZero() {
		co.gapSince = time.Now()
	}
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
