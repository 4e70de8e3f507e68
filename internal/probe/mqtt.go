package probe

import (
	"context"
	"errors"
)

type mqttDriver struct{}

func (mqttDriver) Open(ctx context.Context, req OpenRequest) (Endpoint, error) {
	return nil, errors.New("todo")
}
