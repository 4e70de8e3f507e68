package probe

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// imwatchDriver probes the reference IM through its Go client: a probe
// account is a user with a token signed by the target's secret; sending to
// itself, its "tx" device sends and its "rx" device receives (the logic
// nodes push a message to every device of the recipient but the sender's).
// The send-ack (stored in JetStream) is the server's ack. Deliveries are
// watched raw, before the client de-duplicates and orders them, so that
// redeliveries and reordering show.
type imwatchDriver struct{}

// tokenTTL is the lifetime of the tokens the prober signs for itself; the
// client asks for a fresh one at every reconnect.
const tokenTTL = time.Hour

func (imwatchDriver) Open(ctx context.Context, req OpenRequest) (Endpoint, error) {
	t := req.Target
	user, device := req.Account.User, "probe"
	if req.Role != "" {
		device = "probe-" + req.Role
	}
	e := &imwatchEndpoint{user: user, deliver: req.Deliver, lost: newLost(), closed: make(chan struct{})}
	dialTimeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		dialTimeout = max(time.Until(dl), time.Millisecond)
	}
	secret := t.Secret
	c, err := client.Dial(ctx, client.Config{
		URLs:        []string{t.Address},
		Token:       func() (string, error) { return protocol.NewToken(secret, user, device, tokenTTL) },
		DialTimeout: dialTimeout,
		Raw:         true, // the prober reads deliveries as they arrive, through OnDeliver
		Log:         req.Log,
		OnState: func(connected bool, _ string) {
			if !connected {
				e.lost.close()
			}
		},
		OnDeliver: e.onDeliver,
		Tracer:    req.Tracer,
	})
	if err != nil {
		if errors.Is(err, client.ErrAuth) {
			return nil, fail(ReasonAuth, err)
		}
		return nil, fail(ReasonConnect, err)
	}
	e.c = c
	// Only from here on: what came before (a push of an earlier round
	// redelivered) belongs to no round of this connection.
	e.ready.Store(true)
	if req.Timing != nil {
		req.Timing.Connect, req.Timing.Login = c.LastConnect()
	}
	return e, nil
}

type imwatchEndpoint struct {
	c       *client.Client
	user    string
	deliver func(Delivery)
	ready   atomic.Bool
	lost    lostChan
	closed  chan struct{}
}

func (e *imwatchEndpoint) Address() string       { return e.user }
func (e *imwatchEndpoint) Lost() <-chan struct{} { return e.lost.ch }

func (e *imwatchEndpoint) onDeliver(m client.Message) {
	if !m.Probe || !e.ready.Load() {
		return
	}
	e.deliver(Delivery{Body: m.Body, Trace: m.Trace, At: m.Received})
}

func (e *imwatchEndpoint) Send(ctx context.Context, to string, m Message) error {
	_, err := e.c.Send(ctx, to, m.Body(), client.WithProbe(), client.WithTrace(m.Trace))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fail(ReasonAckTimeout, errors.New("no send-ack from the IM in time"))
	case errors.Is(err, client.ErrClosed):
		return fail(ReasonConnect, err)
	}
	var perr *protocol.Error
	if errors.As(err, &perr) {
		return fail(ReasonSend, fmt.Errorf("the IM refused the send: %w", err))
	}
	return fail(ReasonSend, err)
}

func (e *imwatchEndpoint) Close() error {
	select {
	case <-e.closed:
		return nil
	default:
	}
	close(e.closed)
	return e.c.Close()
}
