package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// HTTP is an HTTP listener as a Service, such as a part's /metrics.
type HTTP struct {
	N       string
	Listen  string
	Handler http.Handler
	Log     *slog.Logger

	ln  net.Listener
	srv *http.Server
}

func (h *HTTP) Name() string { return h.N }

// Start binds the listener and serves in the background.
func (h *HTTP) Start(context.Context) error {
	ln, err := net.Listen("tcp", h.Listen)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", h.N, h.Listen, err)
	}
	h.ln = ln
	h.srv = &http.Server{Handler: h.Handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && h.Log != nil {
			h.Log.Error("http server failed", "server", h.N, "err", err)
		}
	}()
	return nil
}

// Stop shuts the server down, letting requests in flight finish.
func (h *HTTP) Stop(ctx context.Context) error {
	if h.srv == nil {
		return nil
	}
	return h.srv.Shutdown(ctx)
}

// Addr is the bound address, once started.
func (h *HTTP) Addr() string { return h.ln.Addr().String() }
