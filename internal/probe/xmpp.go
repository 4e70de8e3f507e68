package probe

import (
	"context"
	"errors"
)

type xmppDriver struct{}

var saslMechanisms = map[string]bool{"SCRAM-SHA-256": true, "SCRAM-SHA-1": true, "PLAIN": true}

func (xmppDriver) Open(ctx context.Context, req OpenRequest) (Endpoint, error) {
	return nil, errors.New("todo")
}
