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

// ackBatcher gathers deliver-acks per logic node and one goroutine sends
// them as bus.DeliverAckBatch messages. It sends whenever it is woken and
// waits for nothing: while it sends one batch the next gathers, so a loaded
// gateway sends few large batches and an idle one single acks at once, with
// no timer. A node's batch is sent early when it reaches bus.MaxAckBatch.
type ackBatcher struct {
	mu      sync.Mutex
	pending map[string][]bus.DeliverAck // logic node -> acks
	nc      *nats.Conn
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
}

func newAckBatcher(nc *nats.Conn) *ackBatcher {
	return &ackBatcher{pending: map[string][]bus.DeliverAck{}, nc: nc, wake: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{})}
}

func (b *ackBatcher) add(node string, a bus.DeliverAck) {
	b.mu.Lock()
	acks := append(b.pending[node], a)
	if len(acks) >= bus.MaxAckBatch {
		delete(b.pending, node)
		b.mu.Unlock()
		b.send(node, acks)
		return
	}
	b.pending[node] = acks
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *ackBatcher) run() {
	defer close(b.done)
	for {
		select {
		case <-b.wake:
			b.flush()
		case <-b.quit:
			b.flush()
			return
		}
	}
}

func (b *ackBatcher) flush() {
	b.mu.Lock()
	if len(b.pending) == 0 {
		b.mu.Unlock()
		return
	}
	all := b.pending
	b.pending = make(map[string][]bus.DeliverAck, len(all))
	b.mu.Unlock()
	for node, acks := range all {
		b.send(node, acks)
	}
}

func (b *ackBatcher) send(node string, acks []bus.DeliverAck) {
	batch := bus.DeliverAckBatch{Acks: acks}
	_ = b.nc.Publish(bus.AckSubject(node), bus.AppendDeliverAckBatch(make([]byte, 0, 16+64*len(acks)), &batch))
}

// stop sends what is gathered and ends the goroutine.
func (b *ackBatcher) stop() {
	close(b.quit)
	<-b.done
}
