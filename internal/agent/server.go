package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Server serves an Agent's /metrics over HTTP. It is a service.Service:
// Start listens, Stop shuts down, letting scrapes in flight finish.
type Server struct {
	listen string
	agent  *Agent
	srv    *http.Server
	ln     net.Listener
	done   chan struct{}
}

// NewServer makes a server for a on listen (host:port; port 0 picks one).
func NewServer(listen string, a *Agent) *Server {
	return &Server{listen: listen, agent: a}
}

// Name is the service's name.
func (s *Server) Name() string { return "agent" }

// Start listens and serves in the background.
func (s *Server) Start(context.Context) error {
	ln, err := net.Listen("tcp", s.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w (give another --listen)", s.listen, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.agent.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.agent.log.Error("serve", "err", err)
		}
	}()
	s.agent.log.Info("serving metrics", "addr", ln.Addr().String(), "collectors", s.agent.CollectorNames())
	return nil
}

// Addr is the address the server listens on, once started.
func (s *Server) Addr() string {
	if s.ln == nil {
		return s.listen
	}
	return s.ln.Addr().String()
}

// Stop stops accepting scrapes and waits for those in flight, until ctx ends.
func (s *Server) Stop(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	select {
	case <-s.done:
	case <-ctx.Done():
	}
	return err
}
