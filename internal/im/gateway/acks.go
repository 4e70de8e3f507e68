package gateway

import (
	"sync"

	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/nats-io/nats.go"
)

// ackTo is the logic node a push came from, which waits for its deliver_ack,
// and whether that node takes its acks batched (bus.Deliver.AckBatch).
type ackTo struct {
	node  string
	batch bool
}

// ackBatcher gathers deliver-acks per logic node and sends them as
// bus.DeliverAckBatch messages. The connection that adds an ack while no
// send is in progress sends at once, itself: whatever the other connections
// add meanwhile goes into the next batch. So a loaded gateway sends few large
// batches and an idle one each ack at once, with no timer and no hand-over
// to another goroutine. After flushRounds rounds the sender hands what is
// left to the batcher's goroutine, so that no client's read loop is held up.
type ackBatcher struct {
	nc *nats.Conn

	mu       sync.Mutex
	pending  map[string][]bus.DeliverAck // logic node -> acks
	spare    map[string][]bus.DeliverAck
	flushing bool

	wake chan struct{}
	quit chan struct{}
	done chan struct{}
}

const flushRounds = 4

func newAckBatcher(nc *nats.Conn) *ackBatcher {
	return &ackBatcher{nc: nc, pending: map[string][]bus.DeliverAck{}, spare: map[string][]bus.DeliverAck{},
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

func (b *ackBatcher) add(node string, a bus.DeliverAck) {
	b.mu.Lock()
	b.pending[node] = append(b.pending[node], a)
	if b.flushing {
		b.mu.Unlock()
		return
	}
	left := b.flushLocked(flushRounds)
	b.mu.Unlock()
	if left {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// flushLocked sends what is pending, for at most rounds rounds, releasing
// the lock while it sends; it reports whether acks are left.
func (b *ackBatcher) flushLocked(rounds int) bool {
	b.flushing = true
	for ; rounds > 0 && len(b.pending) > 0; rounds-- {
		all := b.pending
		b.pending, b.spare = b.spare, nil
		b.mu.Unlock()
		for node, acks := range all {
			for len(acks) > 0 {
				n := min(len(acks), bus.MaxAckBatch)
				b.send(node, acks[:n])
				acks = acks[n:]
			}
		}
		clear(all)
		b.mu.Lock()
		b.spare = all
	}
	b.flushing = false
	return len(b.pending) > 0
}

func (b *ackBatcher) send(node string, acks []bus.DeliverAck) {
	batch := bus.DeliverAckBatch{Acks: acks}
	_ = b.nc.Publish(bus.AckSubject(node), bus.AppendDeliverAckBatch(make([]byte, 0, 16+64*len(acks)), &batch))
}

// run sends what a sender left over.
func (b *ackBatcher) run() {
	defer close(b.done)
	for {
		select {
		case <-b.wake:
		case <-b.quit:
		}
		b.mu.Lock()
		left := true
		if !b.flushing {
			left = b.flushLocked(1 << 30)
		}
		b.mu.Unlock()
		select {
		case <-b.quit:
			if !left {
				return
			}
		default:
		}
	}
}

// stop sends what is gathered and ends the goroutine.
func (b *ackBatcher) stop() {
	close(b.quit)
	<-b.done
}
