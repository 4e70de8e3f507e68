package service

import (
	"context"
	"fmt"
	"sync"
)

// Restartable is a Service that can be stopped and started again while
// the process runs (a stop fault, internal/fault): each start builds the
// part anew with New, since a stopped part is not started twice.
type Restartable struct {
	N string
	// New builds a fresh part; OnStart, when set, is told of each one once
	// it runs.
	New     func() (Service, error)
	OnStart func(Service)

	mu   sync.Mutex
	cur  Service
	down bool // held down by SetDown
}

// Name implements Service.
func (r *Restartable) Name() string { return r.N }

// Start builds and starts the part.
func (r *Restartable) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.startLocked(ctx)
}

func (r *Restartable) startLocked(ctx context.Context) error {
	s, err := r.New()
	if err != nil {
		return err
	}
	if err := s.Start(ctx); err != nil {
		return err
	}
	r.cur = s
	if r.OnStart != nil {
		r.OnStart(s)
	}
	return nil
}

// Stop stops the part, unless it is down already.
func (r *Restartable) Stop(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return nil
	}
	err := r.cur.Stop(ctx)
	r.cur = nil
	return err
}

// SetDown stops the part (down) or starts a new one (up); it implements
// fault.Part.
func (r *Restartable) SetDown(ctx context.Context, down bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
	switch {
	case down && r.cur != nil:
		err := r.cur.Stop(ctx)
		r.cur = nil
		if err != nil {
			return fmt.Errorf("stop %s: %w", r.N, err)
		}
	case !down && r.cur == nil:
		if err := r.startLocked(ctx); err != nil {
			return fmt.Errorf("restart %s: %w", r.N, err)
		}
	}
	return nil
}

// Down reports whether the part is held down.
func (r *Restartable) Down() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.down
}
