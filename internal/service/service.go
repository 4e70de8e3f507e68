// Package service runs the parts of imwatch that live in one process: each
// part is a Service with Start and Stop, started in order and stopped in
// reverse order when the process is told to stop.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Service is one long-running part.
type Service interface {
	Name() string
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// Func adapts two functions to a Service.
type Func struct {
	N       string
	StartFn func(ctx context.Context) error
	StopFn  func(ctx context.Context) error
}

func (f Func) Name() string { return f.N }

func (f Func) Start(ctx context.Context) error {
	if f.StartFn == nil {
		return nil
	}
	return f.StartFn(ctx)
}

func (f Func) Stop(ctx context.Context) error {
	if f.StopFn == nil {
		return nil
	}
	return f.StopFn(ctx)
}

// Group starts services in order and stops the started ones in reverse.
type Group struct {
	log     *slog.Logger
	started []Service
}

// NewGroup makes an empty group.
func NewGroup(log *slog.Logger) *Group { return &Group{log: log} }

// Start starts s; on failure the caller should Stop the group.
func (g *Group) Start(ctx context.Context, s Service) error {
	if err := s.Start(ctx); err != nil {
		return fmt.Errorf("start %s: %w", s.Name(), err)
	}
	g.started = append(g.started, s)
	return nil
}

// Stop stops every started service, newest first, within timeout.
func (g *Group) Stop(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	for i := len(g.started) - 1; i >= 0; i-- {
		s := g.started[i]
		if err := s.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", s.Name(), err))
		}
	}
	g.started = nil
	return errors.Join(errs...)
}

// WaitForSignal blocks until SIGINT or SIGTERM (or ctx ends) and says which.
func WaitForSignal(ctx context.Context) string {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(ch)
	select {
	case s := <-ch:
		return s.String()
	case <-ctx.Done():
		return "context done"
	}
}
