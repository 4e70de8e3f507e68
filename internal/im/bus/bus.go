// Package bus is the reference IM's use of NATS: subjects, the messages that
// travel on them, the JetStream stream and key-value buckets, and the NATS
// server a process embeds when it is not pointed at an external one.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Subjects and names on the bus. docs/protocol.md lists them.
const (
	SubjSend   = "im.logic.send"  // request: SendRequest -> SendReply, queue group QueueLogic
	SubjSync   = "im.logic.sync"  // request: SyncRequest -> SyncReply
	SubjGroup  = "im.logic.group" // request: GroupRequest -> GroupReply
	QueueLogic = "logic"

	StreamMsgs     = "IM_MSGS" // every stored message, subject im.msg.<conv>
	ConsumerPush   = "pusher"  // durable consumer shared by all logic nodes
	BucketPresence = "im_presence"
	BucketGateways = "im_gateways"
	BucketConvs    = "im_convs"
	BucketGroups   = "im_groups"

	// HeaderTrace carries the W3C traceparent of the message's send span.
	HeaderTrace = "traceparent"
)

// MsgSubject is the stream subject a conversation's messages are stored under.
func MsgSubject(conv string) string { return "im.msg." + conv }

// DeliverSubject is where a gateway receives messages to push to its clients.
func DeliverSubject(gateway string) string { return "im.gw." + gateway + ".deliver" }

// AckSubject is where the logic node that pushed a message hears its deliver-acks.
func AckSubject(node string) string { return "im.logic.ack." + node }

// SendRequest is a client's send, forwarded by its gateway to a logic node.
type SendRequest struct {
	From    string `json:"from"`
	Device  string `json:"device"`
	Gateway string `json:"gateway"`
	ID      string `json:"id"` // client message id: (From, ID) is de-duplicated
	To      string `json:"to,omitempty"`
	Group   string `json:"group,omitempty"`
	Body    string `json:"body"`
	Probe   bool   `json:"probe,omitempty"`
	Trace   string `json:"traceparent,omitempty"`
	RecvNS  int64  `json:"recv_ns,omitempty"` // when the gateway read the send frame, Unix ns
}

// SendReply answers a SendRequest once the message is durably stored, or with an error code.
type SendReply struct {
	MsgID string `json:"msg_id,omitempty"`
	Conv  string `json:"conv,omitempty"`
	Seq   uint64 `json:"seq,omitempty"`
	TS    int64  `json:"ts,omitempty"`
	Dup   bool   `json:"dup,omitempty"`
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// StoredMessage is a message as kept in the stream and pushed to gateways.
type StoredMessage struct {
	MsgID      string `json:"msg_id"`
	Conv       string `json:"conv"`
	Seq        uint64 `json:"seq"`
	From       string `json:"from"`
	FromDevice string `json:"from_device"`
	Group      string `json:"group,omitempty"`
	Body       string `json:"body"`
	Probe      bool   `json:"probe,omitempty"`
	Trace      string `json:"traceparent,omitempty"`
	TS         int64  `json:"ts"`                // Unix ms when stored
	RecvNS     int64  `json:"recv_ns,omitempty"` // when the sender's gateway read it, Unix ns
}

// Target is one device of one user.
type Target struct {
	User   string `json:"u"`
	Device string `json:"d"`
}

// Deliver asks a gateway to push Msg to the listed devices connected to it
// and to send their deliver-acks to AckSubject(Node).
type Deliver struct {
	Node    string        `json:"node"`
	Targets []Target      `json:"targets"`
	Msg     StoredMessage `json:"msg"`
	// AckBatch says that Node also takes its deliver-acks gathered in a
	// DeliverAckBatch. A gateway sends single DeliverAcks to a node that
	// does not say so (an older one).
	AckBatch bool `json:"ack_batch,omitempty"`
	// Attempt counts the pushes of Msg to these devices: 1, then 2 and more
	// for redeliveries (0 from a node that does not say).
	Attempt int `json:"attempt,omitempty"`
}

// DeliverAck tells the pushing logic node that a device received a message.
type DeliverAck struct {
	MsgID  string `json:"msg_id"`
	User   string `json:"u"`
	Device string `json:"d"`
	// Trace is the traceparent the device's deliver_ack frame carried (its
	// im.client.ack span): one per ack, since a batch mixes messages.
	Trace string `json:"traceparent,omitempty"`
}

// DeliverAckBatch is deliver-acks a gateway gathered for one logic node, at
// most MaxAckBatch, sent on AckSubject like a single DeliverAck.
type DeliverAckBatch struct {
	Acks []DeliverAck `json:"acks"`
}

// MaxAckBatch bounds a DeliverAckBatch.
const MaxAckBatch = 1000

// SyncRequest asks for the messages a device missed.
type SyncRequest struct {
	User   string            `json:"user"`
	Device string            `json:"device"`
	After  map[string]uint64 `json:"after,omitempty"`
	Full   bool              `json:"full,omitempty"`
}

// SyncReply carries missed messages in per-conversation sequence order.
type SyncReply struct {
	Msgs  []StoredMessage `json:"msgs,omitempty"`
	More  bool            `json:"more,omitempty"`
	Code  string          `json:"code,omitempty"`
	Error string          `json:"error,omitempty"`
}

// GroupRequest creates a group or changes its members.
type GroupRequest struct {
	Op      string   `json:"op"` // group_create, group_add, group_remove
	User    string   `json:"user"`
	Group   string   `json:"group"`
	Members []string `json:"members,omitempty"`
}

// GroupReply is the group's members after the change, or an error code.
type GroupReply struct {
	Members []string `json:"members,omitempty"`
	Code    string   `json:"code,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// Group is a group as kept in the groups bucket.
type Group struct {
	Owner   string   `json:"owner"`
	Members []string `json:"members"`
	// Left maps each removed user to the last sequence of the group's
	// conversation stored before the removal: the messages up to it were
	// sent to them, and they still get them by push and sync.
	Left map[string]uint64 `json:"left,omitempty"`
}

// MaxGroupLeft bounds Group.Left; past it the earliest removals are forgotten.
const MaxGroupLeft = 1000

// GatewayInfo is a gateway's liveness record, refreshed every GatewayRefresh.
type GatewayInfo struct {
	ID    string `json:"id"`
	Epoch string `json:"epoch"`
	Addr  string `json:"addr"`
	TS    int64  `json:"ts"` // Unix ms of the last refresh
}

// Presence says which gateway (and which start of it) a device is connected to.
type Presence struct {
	Gateway string `json:"gw"`
	Epoch   string `json:"epoch"`
}

// Liveness timing: a gateway refreshes its record every GatewayRefresh and is
// taken for dead when the record is older than GatewayDead.
const (
	GatewayRefresh = 1 * time.Second
	GatewayDead    = 4 * time.Second
)

// StoreConfig bounds the durable message store.
type StoreConfig struct {
	MaxAge      time.Duration // how long messages are kept for sync
	MaxBytes    int64
	MaxPerConv  int64 // messages kept per conversation
	DedupWindow time.Duration
	Replicas    int
	PushAckWait time.Duration // redelivery to another logic node when one dies
	MaxPushAcks int           // messages being pushed at once, cluster-wide
}

// DefaultStoreConfig is the store of `imwatch up`.
func DefaultStoreConfig() StoreConfig {
	return StoreConfig{
		MaxAge:      7 * 24 * time.Hour,
		MaxBytes:    4 << 30,
		MaxPerConv:  10000,
		DedupWindow: 2 * time.Minute,
		Replicas:    1,
		PushAckWait: 6 * time.Second,
		MaxPushAcks: 200000,
	}
}

// Connect dials NATS for one part of the IM, reconnecting for ever.
func Connect(url, name string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			// Asynchronous errors, such as a watcher's consumer vanishing while
			// the server shuts down: worth a log line, not a crash or stderr noise.
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Debug("nats async error", "subject", subj, "err", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	return nc, nil
}

// Setup creates or updates the stream, consumer and buckets the IM needs.
// Every part calls it at start; it is idempotent.
func Setup(ctx context.Context, js jetstream.JetStream, cfg StoreConfig) error {
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              StreamMsgs,
		Subjects:          []string{"im.msg.>"},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		MaxAge:            cfg.MaxAge,
		MaxBytes:          cfg.MaxBytes,
		MaxMsgsPerSubject: cfg.MaxPerConv,
		Duplicates:        cfg.DedupWindow,
		Replicas:          cfg.Replicas,
		AllowDirect:       true,
		Discard:           jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("create stream %s: %w", StreamMsgs, err)
	}
	_, err = st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       ConsumerPush,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.PushAckWait,
		MaxAckPending: cfg.MaxPushAcks,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		MaxWaiting:    512,
	})
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", ConsumerPush, err)
	}
	buckets := []jetstream.KeyValueConfig{
		{Bucket: BucketPresence, History: 1, Storage: jetstream.MemoryStorage, Replicas: cfg.Replicas},
		{Bucket: BucketGateways, History: 1, Storage: jetstream.MemoryStorage, Replicas: cfg.Replicas, TTL: 10 * GatewayDead},
		{Bucket: BucketConvs, History: 1, Storage: jetstream.FileStorage, Replicas: cfg.Replicas},
		{Bucket: BucketGroups, History: 1, Storage: jetstream.FileStorage, Replicas: cfg.Replicas},
	}
	for _, b := range buckets {
		if _, err := js.CreateOrUpdateKeyValue(ctx, b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b.Bucket, err)
		}
	}
	return nil
}

// SetupWithRetry is Setup retried while another part is creating the same
// objects or the server is still starting its JetStream.
func SetupWithRetry(ctx context.Context, js jetstream.JetStream, cfg StoreConfig) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = Setup(ctx, js, cfg); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return err
}
